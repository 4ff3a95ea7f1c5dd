//! Request path normalization before matching and forwarding (DESIGN.md
//! "Command line"; `reference/istio-semantics.md` §3.12). Matching and the
//! backend must see the same path, otherwise `/a/../admin` or `//admin`
//! slips past a DENY on `/admin*`.

use std::borrow::Cow;

use super::PathNormalization;

/// Split target into normalized path and the original query (without `?`).
/// `Err` for paths Envoy rejects with 400 (`%00`).
/// A path Envoy answers with 400 instead of routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("path contains an encoded NUL (%00)")]
pub struct InvalidPath;

pub fn normalize(
    target: &str,
    mode: PathNormalization,
) -> Result<(String, Option<String>), InvalidPath> {
    let (path, query) = normalize_borrowed(target, mode)?;
    Ok((path.into_owned(), query.map(str::to_owned)))
}

/// `normalize` without copies: the query is borrowed from `target`, and so is
/// the path when normalization would leave it as it is (the common case).
pub(crate) fn normalize_borrowed(
    target: &str,
    mode: PathNormalization,
) -> Result<(Cow<'_, str>, Option<&str>), InvalidPath> {
    // The fragment never reaches the server legitimately; Envoy drops it.
    let target = target.split('#').next().unwrap_or("");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if already_normal(path, mode) {
        return Ok((Cow::Borrowed(path), query));
    }
    Ok((Cow::Owned(rewrite(path, mode)?), query))
}

/// True when `rewrite` would return `path` unchanged: rooted, nothing to
/// decode (no `%`), no backslash, nothing to escape, no `.`/`..` segment,
/// and no `//` unless the mode keeps them. Each condition is the no-op case
/// of one step of `rewrite`, so skipping it cannot change a result
/// (`fast_path_agrees`).
pub(crate) fn already_normal(path: &str, mode: PathNormalization) -> bool {
    path.starts_with('/')
        && !path
            .bytes()
            .any(|b| b == b'%' || b == b'\\' || must_escape(b))
        && (mode == PathNormalization::Base || !path.contains("//"))
        && !path.split('/').any(|seg| seg == "." || seg == "..")
}

/// The normalization steps proper, on the path without query.
pub(crate) fn rewrite(path: &str, mode: PathNormalization) -> Result<String, InvalidPath> {
    let decode_slashes = mode == PathNormalization::DecodeAndMergeSlashes;
    // Envoy order: unescape slashes, then canonicalize, then merge slashes.
    let decoded = percent_decode(path, decode_slashes)?;
    let with_slashes = decoded.replace('\\', "/");
    let rooted = if with_slashes.starts_with('/') {
        with_slashes
    } else {
        format!("/{with_slashes}")
    };
    let mut out = remove_dot_segments(&rooted);
    if mode != PathNormalization::Base {
        out = merge_slashes(&out);
    }
    Ok(out)
}

/// Envoy's path canonicalizer (Chromium's `CanonicalizePath`) on escapes:
/// `%XX` of an RFC 3986 unreserved character is decoded (and `%2F`/`%5C`
/// when `slashes`); every other escape is kept exactly as the client wrote
/// it, hex case included (`%2f` stays `%2f`: Chromium copies the two
/// characters "in case the server is sensitive to that"); a `%` not
/// followed by two hex digits stays as it is; the characters Chromium
/// escapes (`must_escape`) become `%XX` in upper case.
fn percent_decode(path: &str, slashes: bool) -> Result<String, InvalidPath> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    // Where in `out` the last `%` that began no valid escape is.
    let mut stray_percent: Option<usize> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex_digit(b[i + 1]), hex_digit(b[i + 2])) {
                let decoded = (h << 4) | l;
                if decoded == 0 {
                    return Err(InvalidPath);
                }
                let unreserved =
                    decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~');
                if unreserved || (slashes && (decoded == b'/' || decoded == b'\\')) {
                    out.push(decoded);
                    if let Some(p) = stray_percent {
                        escape_nested(&mut out, p, b.get(i + 3).copied());
                    }
                } else {
                    out.extend_from_slice(&b[i..i + 3]);
                }
                i += 3;
                continue;
            }
        }
        if c == b'%' {
            stray_percent = Some(out.len());
        }
        // A raw NUL is refused like `%00`: escaping it would turn it into
        // exactly the `%00` a second normalization refuses, so the two
        // would disagree (found by fuzzing). HTTP codecs refuse it anyway.
        if c == 0 {
            return Err(InvalidPath);
        }
        if must_escape(c) {
            out.extend_from_slice(&[
                b'%',
                HEX_UPPER[usize::from(c >> 4)],
                HEX_UPPER[usize::from(c & 15)],
            ]);
        } else {
            out.push(c);
        }
        i += 1;
    }
    // Every byte ≥ 0x80 was escaped above, so the output is ASCII.
    Ok(String::from_utf8(out).unwrap_or_default())
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Bytes Chromium's path canonicalizer escapes (`kPathCharLookup` ESCAPE,
/// the same in the table Envoy forked and in today's): controls, space,
/// `"`, `<`, `>`, `^`, `` ` ``, `{`, `|`, `}`, DEL and every non-ASCII byte.
/// (`#` never reaches here: the fragment is cut off first.)
fn must_escape(c: u8) -> bool {
    c <= b' ' || c >= 0x7f || matches!(c, b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}')
}

/// A decoded character right after a stray `%` can form a new escape with
/// it (`%%32%65` decodes to `%2e`), which the backend — or a second
/// normalization — would decode once more: `/public/%%32%65%%32%65/admin`
/// would be matched as `/public/...` and served as `/admin`. Like Envoy's
/// URL canonicalizer (Chromium's `CheckForNestedEscapes`), escape that `%`
/// as `%25` when `out` now ends in `%` plus two hex digits, the second
/// possibly being the next input byte `next`.
fn escape_nested(out: &mut Vec<u8>, percent: usize, next: Option<u8>) {
    let tail = &out[percent + 1..];
    let pair = match (tail, next) {
        (&[a], Some(n)) => [a, n],
        (&[a, b], _) => [a, b],
        _ => return,
    };
    if pair.iter().all(|c| hex_digit(*c).is_some()) {
        out.splice(percent..=percent, *b"%25");
    }
}

/// RFC 3986 §5.2.4 on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut stack: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                stack.pop();
                trailing_slash = i == last;
            }
            s => {
                stack.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &stack {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathNormalization::*;

    #[test]
    fn normalization_vectors() {
        // (input, mode, expected path, expected query): DESIGN.md path
        // normalization, §3.12 BASE rules, bypass attempts from the brief.
        let cases: &[(&str, PathNormalization, &str, Option<&str>)] = &[
            ("/productpage", DecodeAndMergeSlashes, "/productpage", None),
            (
                "/api?x=1&y=/..",
                DecodeAndMergeSlashes,
                "/api",
                Some("x=1&y=/.."),
            ),
            ("//api/v1", DecodeAndMergeSlashes, "/api/v1", None),
            ("//api/v1", Base, "//api/v1", None),
            ("//api/v1", MergeSlashes, "/api/v1", None),
            (
                "/productpage/../api/v1/products/0",
                Base,
                "/api/v1/products/0",
                None,
            ),
            ("/productpage/%2e%2e/api", Base, "/api", None),
            (
                "/productpage/%2E%2e/api",
                DecodeAndMergeSlashes,
                "/api",
                None,
            ),
            (
                "/productpage%2F..%2Fapi",
                DecodeAndMergeSlashes,
                "/api",
                None,
            ),
            (
                "/productpage%2F..%2Fapi",
                Base,
                "/productpage%2F..%2Fapi",
                None,
            ),
            ("/admin%2fx", DecodeAndMergeSlashes, "/admin/x", None),
            ("/admin%5Cx", DecodeAndMergeSlashes, "/admin/x", None),
            ("/a\\b\\..\\c", Base, "/a/c", None),
            ("/%61%7e%2d", Base, "/a~-", None),
            // Kept escapes keep the client's hex case, in every mode.
            ("/a%20b%3f", Base, "/a%20b%3f", None),
            ("/admin%2fx", Base, "/admin%2fx", None),
            ("/admin%2fx", MergeSlashes, "/admin%2fx", None),
            ("/a%3Fb%3fc", DecodeAndMergeSlashes, "/a%3Fb%3fc", None),
            ("/%7e%7E%2D", Base, "/~~-", None),
            ("/%252F", DecodeAndMergeSlashes, "/%252F", None),
            // What Chromium escapes, in upper-case hex.
            ("/a b", Base, "/a%20b", None),
            ("/q\"<>^`{|}", Base, "/q%22%3C%3E%5E%60%7B%7C%7D", None),
            ("/a/./b/.", Base, "/a/b/", None),
            ("/a/b/..", Base, "/a/", None),
            ("/../../x", Base, "/x", None),
            ("", Base, "/", None),
            ("/x#frag?no", Base, "/x", None),
            ("/%252e%252e/x", Base, "/%252e%252e/x", None),
            ("/bad%zz%", Base, "/bad%zz%", None),
            ("/é/../ü", Base, "/%C3%BC", None),
            ("/%zz%4", Base, "/%zz%4", None),
        ];
        for (input, mode, path, query) in cases {
            let got = normalize(input, *mode).unwrap();
            assert_eq!(
                (got.0.as_str(), got.1.as_deref()),
                (*path, *query),
                "{input} {mode:?}"
            );
        }
        // %00 is refused outright, as Envoy does.
        assert!(normalize("/a%00b", Base).is_err());
    }

    #[test]
    fn nested_escapes_stay_escaped() {
        // Found by the path_normalize fuzz target (docs/fuzzing.md): a stray
        // `%` followed by decoded hex digits formed a new escape, so
        // normalizing twice differed from once, and a backend decoding the
        // forwarded path saw `..` the matcher never saw.
        let cases: &[(&str, &str)] = &[
            ("/public/%%32%65%%32%65/admin", "/public/%252e%252e/admin"),
            ("%%6161e%2d/%617e%2d", "/%25a61e-/a7e-"),
            ("/%%30%30", "/%2500"),
            ("/%6%31", "/%2561"),
            ("/%%36%31", "/%2561"),
            ("/%%2e", "/%."),
            ("/%zz%41/%", "/%zzA/%"),
        ];
        for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
            for (input, want) in cases {
                let once = normalize(input, mode).unwrap().0;
                assert_eq!(once, *want, "{input} {mode:?}");
                assert_eq!(
                    normalize(&once, mode).unwrap().0,
                    once,
                    "{input} {mode:?} twice"
                );
            }
        }
    }

    #[test]
    fn raw_nul_is_refused_like_an_encoded_one() {
        // Found by the authz_evaluate fuzz target: a raw NUL was escaped to
        // `%00`, which normalizing again refused, so a request and its own
        // normalized form were decided differently (401 vs 400).
        for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
            assert_eq!(normalize("/m/\0", mode), Err(InvalidPath), "{mode:?}");
            assert_eq!(normalize("/m/%00", mode), Err(InvalidPath), "{mode:?}");
        }
    }

    #[test]
    fn fast_path_agrees() {
        // Paths `already_normal` lets through unchanged must be exactly what
        // the full rewrite gives; the others must really need the rewrite
        // in at least one mode.
        let paths = [
            "/",
            "/a",
            "/a/",
            "/a/b",
            "//a",
            "/a//b",
            "/a/",
            "/.a",
            "/a./b",
            "/..a/b.",
            "/a/...",
            "/é/ü",
            "/a b",
            "/api/v1/orders/42",
            "/./a",
            "/a/.",
            "/a/..",
            "/..",
            "/a\\b",
            "/a%2e",
            "a/b",
            "",
            "/a?b",
            "/a b",
            "/a{b}",
            "/a|b",
        ];
        for path in paths {
            for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
                let full = rewrite(path, mode);
                if already_normal(path, mode) {
                    assert_eq!(full.as_deref(), Ok(path), "{path} {mode:?}");
                }
                assert_eq!(
                    normalize_borrowed(path, mode).map(|(p, _)| p.into_owned()),
                    rewrite(path.split('?').next().unwrap(), mode),
                    "{path} {mode:?}"
                );
            }
        }
        assert!(!already_normal("/a//b", MergeSlashes) && already_normal("/a//b", Base));
    }
}
