//! Request path normalization (agent/src/authz/path.rs), in each mode.
//!
//! Properties, for every mode:
//! - the fast path agrees with the full rewrite: `normalize` gives exactly
//!   what `rewrite` gives for the path part, and a path the fast path lets
//!   through unchanged is one the rewrite leaves unchanged;
//! - normalizing twice equals normalizing once;
//! - the result is rooted, has no `.`/`..` segment, no `\`, and no `//`
//!   unless the mode keeps them; the query is passed on untouched;
//! - only a NUL, encoded (`%00`) or raw, is refused;
//! - the path grows at most threefold (escaped bytes) plus the added
//!   leading `/`, and the heap
//!   held is ≤ 64 × input + 1 KiB (segment lists are 16 B per
//!   segment, doubled by growth) (docs/fuzzing.md).
#![no_main]

use jwtgate::authz::{normalize_path, PathNormalization};
use jwtgate::fuzzing::{path_already_normal, path_rewrite};
use jwtgate_fuzz::alloc::{measure, Bound};
use libfuzzer_sys::fuzz_target;

const MODES: [PathNormalization; 3] = [
    PathNormalization::Base,
    PathNormalization::MergeSlashes,
    PathNormalization::DecodeAndMergeSlashes,
];

const BOUND: Bound = Bound {
    per_byte: 64,
    fixed: 1024,
};

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let no_fragment = target.split('#').next().unwrap_or("");
    let (path, query) = match no_fragment.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (no_fragment, None),
    };
    for mode in MODES {
        let (got, peak) = measure(|| normalize_path(target, mode));
        BOUND.check("normalize", target.len(), peak);

        // Fast path == full rewrite.
        let full = path_rewrite(path, mode);
        assert_eq!(
            got.as_ref().map(|(p, _)| p.as_str()),
            full.as_deref(),
            "normalize and the full rewrite disagree ({mode:?})"
        );
        if path_already_normal(path, mode) {
            assert_eq!(
                full.as_deref(),
                Ok(path),
                "fast path let a change through ({mode:?})"
            );
        }

        assert_eq!(
            got.is_err(),
            path.contains("%00") || path.contains('\0'),
            "only %00 and NUL are refused ({mode:?})"
        );
        let Ok((normal, q)) = got else { continue };
        assert_eq!(q.as_deref(), query, "query changed ({mode:?})");
        // Each byte becomes at most an escape of three (Chromium's escaped
        // characters, a nested `%` as `%25`), plus the leading `/`.
        assert!(normal.len() <= 3 * path.len() + 1, "path grew ({mode:?})");
        assert!(normal.starts_with('/'), "not rooted ({mode:?})");
        assert!(!normal.contains('\\'), "backslash left ({mode:?})");
        assert!(
            !normal.split('/').any(|s| s == "." || s == ".."),
            "dot segment left ({mode:?}): {normal:?}"
        );
        if mode != PathNormalization::Base {
            assert!(!normal.contains("//"), "slashes not merged ({mode:?})");
        }

        // Twice == once.
        let again = normalize_path(&normal, mode);
        assert_eq!(
            again.as_ref().map(|(p, q)| (p.as_str(), q.as_deref())),
            Ok((normal.as_str(), None)),
            "normalizing {path:?} twice differs from once ({mode:?})"
        );
    }
});
