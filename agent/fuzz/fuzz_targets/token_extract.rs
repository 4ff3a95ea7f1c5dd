//! Token extraction from headers, query parameters and cookies
//! (agent/src/jwt/extract.rs), for random locations and requests.
//!
//! Properties:
//! - tokens come out in location order; at most one per matching header
//!   line for a header location, at most one per query or cookie location;
//! - no token is empty; a header token is a suffix of that header's
//!   trimmed value (or the value itself); a cookie token is part of a
//!   `cookie` header; a query token without `%`/`+` is part of the query;
//! - a header whose name no location and not `cookie` names changes nothing;
//! - heap held ≤ 4 × (request + locations) × (1 + locations) + 4 KiB: each
//!   configured location may copy the request's values once (docs/fuzzing.md).
#![no_main]

use arbitrary::Arbitrary;
use jwtgate::jwt::{extract, FoundToken, TokenLocation};
use jwtgate_fuzz::alloc::{measure, Bound};
use jwtgate_fuzz::pick::Text;
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "authorization",
    "Authorization",
    "x-jwt",
    "cookie",
    "Cookie",
    "access_token",
    "session",
    "token",
    "x-jwt-assertion",
];
const PREFIXES: &[&str] = &["Bearer ", "", "Bearer", "JWT ", " "];
const VALUES: &[&str] = &[
    "Bearer a.b.c",
    "Bearer  a.b.c ",
    "bearer a.b.c",
    "a.b.c",
    "session=a.b.c; other=1",
    "session=\"a.b.c\"",
    "x=1;session=;session=z",
    "Bearer ==a.b",
    "",
];
const QUERIES: &[&str] = &[
    "access_token=a.b.c",
    "x=1&access_token=a%2Eb.c&access_token=z",
    "access%5Ftoken=q&token=+a+",
    "token=&token=b",
    "&&=&",
];

#[derive(Arbitrary, Debug)]
enum Loc {
    Header { name: Text, prefix: Text },
    Param(Text),
    Cookie(Text),
}

#[derive(Arbitrary, Debug)]
struct Input {
    defaults: bool,
    locations: Vec<Loc>,
    headers: Vec<(Text, Text)>,
    query: Option<Text>,
    unrelated_at: u8,
    unrelated_value: String,
}

const BOUND: Bound = Bound {
    per_byte: 4,
    fixed: 4096,
};

fuzz_target!(|input: Input| {
    let mut locations: Vec<TokenLocation> = input
        .locations
        .iter()
        .map(|l| match l {
            Loc::Header { name, prefix } => TokenLocation::Header {
                // Rules hold header names in lower case.
                name: name.get(NAMES).to_ascii_lowercase(),
                prefix: prefix.get(PREFIXES).to_owned(),
            },
            Loc::Param(n) => TokenLocation::Param(n.get(NAMES).to_owned()),
            Loc::Cookie(n) => TokenLocation::Cookie(n.get(NAMES).to_owned()),
        })
        .collect();
    if input.defaults {
        locations.extend(TokenLocation::defaults());
    }
    let headers: Vec<(String, String)> = input
        .headers
        .iter()
        .map(|(n, v)| (n.get(NAMES).to_owned(), v.get(VALUES).to_owned()))
        .collect();
    let query = input.query.as_ref().map(|q| q.get(QUERIES));

    // Every location may yield a copy of the request's header values: the
    // bound is linear in the request for each configured location.
    let request = headers
        .iter()
        .map(|(n, v)| n.len() + v.len())
        .sum::<usize>()
        + query.map_or(0, str::len);
    let config = locations
        .iter()
        .map(|l| match l {
            TokenLocation::Header { name, prefix } => 64 + name.len() + prefix.len(),
            TokenLocation::Param(n) | TokenLocation::Cookie(n) => 64 + n.len(),
        })
        .sum::<usize>();
    let (found, peak) = measure(|| extract(&locations, &headers, query));
    BOUND.check("extract", (request + config) * (1 + locations.len()), peak);

    check(&locations, &headers, query, &found);

    // A header no location names changes nothing.
    let unrelated = "x-fuzz-unrelated";
    let named = |l: &TokenLocation| matches!(l, TokenLocation::Header { name, .. } if name.eq_ignore_ascii_case(unrelated));
    if !locations.iter().any(named) {
        let mut more = headers.clone();
        more.insert(
            input.unrelated_at as usize % (more.len() + 1),
            (unrelated.into(), input.unrelated_value.clone()),
        );
        assert_eq!(
            extract(&locations, &more, query),
            found,
            "unrelated header changed extraction"
        );
    }
});

fn check(
    locations: &[TokenLocation],
    headers: &[(String, String)],
    query: Option<&str>,
    found: &[FoundToken],
) {
    // Walk the locations in order, each taking at most what it can yield
    // (one per matching header line, one per query or cookie location):
    // every token must be accounted for this way.
    let mut next = 0;
    for loc in locations {
        let lines: Vec<&str> = match loc {
            TokenLocation::Header { name, .. } => headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim_matches([' ', '\t']))
                .collect(),
            _ => Vec::new(),
        };
        let most = match loc {
            TokenLocation::Header { .. } => lines.len(),
            _ => 1,
        };
        let mine: Vec<&FoundToken> = found[next..]
            .iter()
            .take_while(|f| &f.location == loc)
            .take(most)
            .collect();
        next += mine.len();
        for f in &mine {
            let t = f.token.as_str();
            assert!(!t.is_empty(), "empty token from {loc:?}");
            match loc {
                TokenLocation::Header { name, .. } => assert!(
                    lines.iter().any(|v| v.ends_with(t)),
                    "header token {t:?} is not from a {name} value"
                ),
                TokenLocation::Param(_) => {
                    let q = query.expect("a query token needs a query");
                    if !q.contains(['%', '+']) {
                        assert!(q.contains(t), "query token not from the query");
                    }
                }
                TokenLocation::Cookie(_) => assert!(
                    headers
                        .iter()
                        .any(|(n, v)| n.eq_ignore_ascii_case("cookie") && v.contains(t)),
                    "cookie token not from a cookie header"
                ),
            }
        }
    }
    assert_eq!(
        next,
        found.len(),
        "tokens out of location order, or too many"
    );
}
