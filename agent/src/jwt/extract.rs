//! Where tokens are taken from (`reference/istio-semantics.md` §2.3, Envoy
//! `extractor.cc`).

/// One configured token location of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// Header (name lower case) with an optional value prefix.
    Header {
        name: String,
        prefix: String,
    },
    /// Query parameter.
    Param(String),
    Cookie(String),
}

impl TokenLocation {
    /// Envoy's defaults, used only when a rule names no location at all.
    pub fn defaults() -> Vec<TokenLocation> {
        vec![
            TokenLocation::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            },
            TokenLocation::Param("access_token".into()),
        ]
    }
}

/// A token found in a request, with where it came from (for removal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken {
    pub token: String,
    pub location: TokenLocation,
}

const B64URL_OR_DOT: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

/// All tokens at `locations`. One token per matching header line: a second
/// token is verified too, so two different tokens cannot smuggle one past.
pub fn extract(
    locations: &[TokenLocation],
    headers: &[(String, String)],
    query: Option<&str>,
) -> Vec<FoundToken> {
    let mut found = Vec::new();
    for loc in locations {
        match loc {
            TokenLocation::Header { name, prefix } => {
                for (n, v) in headers {
                    if !n.eq_ignore_ascii_case(name) {
                        continue;
                    }
                    if let Some(token) = from_header_value(trim_ows(v), prefix) {
                        found.push(FoundToken {
                            token,
                            location: loc.clone(),
                        });
                    }
                }
            }
            TokenLocation::Param(name) => {
                let value =
                    query.and_then(|q| query_pairs(q).find(|(k, _)| k == name).map(|(_, v)| v));
                if let Some(token) = value.filter(|v| !v.is_empty()) {
                    found.push(FoundToken {
                        token,
                        location: loc.clone(),
                    });
                }
            }
            TokenLocation::Cookie(name) => {
                let value = headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
                    .flat_map(|(_, v)| v.split(';'))
                    .filter_map(|c| c.trim().split_once('='))
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| unquote(v.trim()).to_owned());
                if let Some(token) = value.filter(|v| !v.is_empty()) {
                    found.push(FoundToken {
                        token,
                        location: loc.clone(),
                    });
                }
            }
        }
    }
    found
}

/// HTTP codecs strip optional whitespace around field values; Envoy sees the
/// trimmed value, so `Authorization: Bearer ` carries no token at all.
fn trim_ows(v: &str) -> &str {
    v.trim_matches([' ', '\t'])
}

/// Envoy ≥ 1.29 (`token_passed_entirely`): the prefix is found anywhere
/// (case-sensitive), the token starts at the next base64url-or-dot character
/// and runs to the end of the value, trailing junk included.
fn from_header_value(value: &str, prefix: &str) -> Option<String> {
    if prefix.is_empty() {
        return Some(value.to_owned()).filter(|v| !v.is_empty());
    }
    let after = value.find(prefix)? + prefix.len();
    match value.as_bytes()[after..]
        .iter()
        .position(|b| B64URL_OR_DOT.contains(b))
    {
        Some(start) => Some(value[after + start..].to_owned()),
        None => Some(value.to_owned()),
    }
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v)
}

/// `key=value` pairs of a query string, URL-decoded.
pub(crate) fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (url_decode(k), url_decode(v))
    })
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn default_locations() {
        // §2.3: (headers, query, expected tokens).
        let d = TokenLocation::defaults();
        type Case<'a> = (Vec<(String, String)>, Option<&'a str>, Vec<&'a str>);
        let cases: Vec<Case> = vec![
            (h(&[("Authorization", "Bearer a.b.c")]), None, vec!["a.b.c"]),
            (h(&[("authorization", "Bearer a.b.c")]), None, vec!["a.b.c"]),
            // lower-case scheme or no scheme ⇒ missing (istio#22608, #29024)
            (h(&[("Authorization", "bearer a.b.c")]), None, vec![]),
            (h(&[("Authorization", "a.b.c")]), None, vec![]),
            // rest of the value after the prefix, junk included
            (
                h(&[("Authorization", "Bearer a.b.c .jjj")]),
                None,
                vec!["a.b.c .jjj"],
            ),
            (h(&[("Authorization", "Bearer ")]), None, vec![]),
            (
                h(&[("Authorization", "Bearer  ==")]),
                None,
                vec!["Bearer  =="],
            ),
            (
                vec![],
                Some("x=1&access_token=a.b.c&access_token=z"),
                vec!["a.b.c"],
            ),
            (vec![], Some("access_token=a%2Eb.c"), vec!["a.b.c"]),
            (vec![], Some("access_token="), vec![]),
            (
                h(&[
                    ("Authorization", "Bearer t1"),
                    ("Authorization", "Bearer t2"),
                ]),
                Some("access_token=t3"),
                vec!["t1", "t2", "t3"],
            ),
        ];
        for (headers, query, want) in cases {
            let got: Vec<String> = extract(&d, &headers, query)
                .into_iter()
                .map(|f| f.token)
                .collect();
            assert_eq!(got, want, "{headers:?} {query:?}");
        }
    }

    #[test]
    fn explicit_locations_replace_defaults() {
        // §2.3: fromHeaders / fromCookies; istio test "invalid-header".
        let locs = vec![
            TokenLocation::Header {
                name: "x-jwt".into(),
                prefix: String::new(),
            },
            TokenLocation::Cookie("session".into()),
        ];
        let headers = h(&[
            ("Authorization", "Bearer a.b.c"),
            ("X-JWT", "x.y.z"),
            ("Cookie", "a=1; session=\"c.d.e\""),
        ]);
        let got: Vec<String> = extract(&locs, &headers, Some("access_token=q"))
            .into_iter()
            .map(|f| f.token)
            .collect();
        assert_eq!(got, vec!["x.y.z", "c.d.e"]);
    }
}
