//! Where tokens are taken from (`reference/istio-semantics.md` §2.3, Envoy
//! `extractor.cc`).

use std::borrow::Cow;

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

/// One request header line as extraction reads it: the engine's borrowed
/// `(&str, &str)` (`authz::Request`), or an owned pair (tests, tools).
pub trait HeaderLine {
    fn name(&self) -> &str;
    fn value(&self) -> &str;
}

impl HeaderLine for (&str, &str) {
    fn name(&self) -> &str {
        self.0
    }
    fn value(&self) -> &str {
        self.1
    }
}

impl HeaderLine for (String, String) {
    fn name(&self) -> &str {
        &self.0
    }
    fn value(&self) -> &str {
        &self.1
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
pub fn extract<L: HeaderLine>(
    locations: &[TokenLocation],
    headers: &[L],
    query: Option<&str>,
) -> Vec<FoundToken> {
    extract_borrowed(locations, headers, &[], query)
        .into_iter()
        .map(|f| FoundToken {
            token: f.token.into_owned(),
            location: f.location.clone(),
        })
        .collect()
}

/// A token as `extract` finds it, borrowing from the request and the rule:
/// the per-request path (`authn`) needs neither a copy of the ~1 KB token
/// nor of the location's strings.
#[derive(Debug)]
pub(crate) struct Found<'a> {
    /// Borrowed unless URL-decoding a query parameter changed it.
    pub token: Cow<'a, str>,
    pub location: &'a TokenLocation,
}

/// `extract`, without copies. Header lines named in `hidden` (lower case)
/// are not looked at: jwt_authn clears its output headers before it
/// extracts (§2.6), so a token can never be read from one of them.
pub(crate) fn extract_borrowed<'a, L: HeaderLine>(
    locations: &'a [TokenLocation],
    headers: &'a [L],
    hidden: &[String],
    query: Option<&'a str>,
) -> Vec<Found<'a>> {
    let visible = |n: &str| !hidden.iter().any(|h| h.eq_ignore_ascii_case(n));
    let mut found = Vec::new();
    for loc in locations {
        match loc {
            TokenLocation::Header { name, prefix } => {
                for line in headers {
                    let n = line.name();
                    if !n.eq_ignore_ascii_case(name) || !visible(n) {
                        continue;
                    }
                    if let Some(token) = from_header_value(trim_ows(line.value()), prefix) {
                        found.push(Found {
                            token: Cow::Borrowed(token),
                            location: loc,
                        });
                    }
                }
            }
            TokenLocation::Param(name) => {
                // Only the value of the first pair whose (decoded) key
                // matches is decoded.
                let value = query.and_then(|q| {
                    raw_pairs(q)
                        .find(|(k, _)| url_decode(k) == name.as_str())
                        .map(|(_, v)| url_decode(v))
                });
                if let Some(token) = value.filter(|v| !v.is_empty()) {
                    found.push(Found {
                        token,
                        location: loc,
                    });
                }
            }
            TokenLocation::Cookie(name) => {
                let value = headers
                    .iter()
                    .filter(|l| l.name().eq_ignore_ascii_case("cookie") && visible(l.name()))
                    .flat_map(|l| l.value().split(';'))
                    .filter_map(|c| c.trim().split_once('='))
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| unquote(v.trim()));
                if let Some(token) = value.filter(|v| !v.is_empty()) {
                    found.push(Found {
                        token: Cow::Borrowed(token),
                        location: loc,
                    });
                }
            }
        }
    }
    found
}

/// `query` without every `key=value` pair whose (decoded) key is one of
/// `names`: the token parameters jwt_authn consumed (§2.6). The key is
/// compared decoded, as extraction compares it, so `access%5Ftoken=` cannot
/// keep a consumed token in the forwarded query; every pair of that key goes,
/// not only the first one extraction read. The other pairs are kept byte for
/// byte. `None` when nothing is left (no `?` is forwarded then).
pub(crate) fn without_params<'q>(query: &'q str, names: &[String]) -> Option<Cow<'q, str>> {
    let consumed = |pair: &str| {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        names.iter().any(|n| url_decode(key) == n.as_str())
    };
    if names.is_empty() || !query.split('&').any(consumed) {
        return Some(Cow::Borrowed(query));
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !consumed(p)).collect();
    if kept.is_empty() {
        None
    } else {
        Some(Cow::Owned(kept.join("&")))
    }
}

/// HTTP codecs strip optional whitespace around field values; Envoy sees the
/// trimmed value, so `Authorization: Bearer ` carries no token at all.
fn trim_ows(v: &str) -> &str {
    v.trim_matches([' ', '\t'])
}

/// Envoy ≥ 1.29 (`token_passed_entirely`): the prefix is found anywhere
/// (case-sensitive), the token starts at the next base64url-or-dot character
/// and runs to the end of the value, trailing junk included.
fn from_header_value<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    if prefix.is_empty() {
        return Some(value).filter(|v| !v.is_empty());
    }
    let after = value.find(prefix)? + prefix.len();
    match value.as_bytes()[after..]
        .iter()
        .position(|b| B64URL_OR_DOT.contains(b))
    {
        Some(start) => Some(&value[after + start..]),
        None => Some(value),
    }
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v)
}

/// `key=value` pairs of a query string, as written (not decoded).
fn raw_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// `+` and `%XX` decoding; text without either is returned as is (the
/// decoder would copy it unchanged: it is valid UTF-8 already).
fn url_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|c| c == b'+' || c == b'%') {
        return Cow::Borrowed(s);
    }
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
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
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
    fn consumed_parameters_leave_the_query() {
        // (query, consumed, forwarded query)
        let names = vec!["access_token".to_string()];
        let cases: &[(&str, &[String], Option<&str>)] = &[
            ("access_token=a.b.c", &names, None),
            ("x=1&access_token=a.b.c&y=%2F", &names, Some("x=1&y=%2F")),
            // Encoded key: extraction decodes it, so removal must too.
            ("access%5Ftoken=a.b.c&x=1", &names, Some("x=1")),
            // Every pair of the key goes, not only the one that was read.
            ("access_token=t1&access_token=t2", &names, None),
            ("access_tokenx=1", &names, Some("access_tokenx=1")),
            ("x=1", &[], Some("x=1")),
            ("", &names, Some("")),
        ];
        for (query, consumed, want) in cases {
            assert_eq!(
                without_params(query, consumed).as_deref(),
                *want,
                "{query} - {consumed:?}"
            );
        }
    }

    #[test]
    fn hidden_headers_carry_no_token() {
        // A header jwt_authn clears (an output header) is never a token source.
        let locs = vec![
            TokenLocation::Header {
                name: "x-jwt".into(),
                prefix: String::new(),
            },
            TokenLocation::Cookie("session".into()),
        ];
        let headers = h(&[("X-JWT", "x.y.z"), ("Cookie", "session=c.d.e")]);
        let all = extract_borrowed(&locs, &headers, &[], None);
        assert_eq!(all.len(), 2);
        let hidden = ["x-jwt".to_string(), "cookie".to_string()];
        assert!(extract_borrowed(&locs, &headers, &hidden, None).is_empty());
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
