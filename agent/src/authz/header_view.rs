//! The request headers as Envoy's RBAC filters see them: the client's lines
//! after jwt_authn changed them (§1 filter order, §2.6). jwt_authn runs
//! before RBAC and edits the request in place: it removes the output headers
//! (anti-spoofing) and the consumed token header, then adds the headers it
//! writes from the verified token. RBAC matches that edited request, and the
//! application receives it, so a client cannot satisfy a `request.headers`
//! condition with a claim header it wrote itself.
//!
//! A view rather than an edited copy: most requests carry a token whose
//! header is removed, and copying every header line per request to drop one
//! would cost an allocation per line.

/// Header lines in arrival order, minus `removed`, plus `added`.
#[derive(Debug, Clone, Copy)]
pub struct HeaderView<'a> {
    lines: &'a [(&'a str, &'a str)],
    /// Lower-case names whose every line is gone.
    removed: &'a [String],
    /// Lines appended after the removal (jwt_authn's `addCopy`).
    added: &'a [(String, String)],
}

impl<'a> HeaderView<'a> {
    /// The client's headers, unchanged (what CUSTOM sees: it runs before
    /// jwt_authn).
    pub fn client(lines: &'a [(&'a str, &'a str)]) -> HeaderView<'a> {
        HeaderView {
            lines,
            removed: &[],
            added: &[],
        }
    }

    /// `lines` after removing every line named in `removed` (lower case) and
    /// appending `added`, exactly the edits the proxy applies before
    /// forwarding.
    pub fn edited(
        lines: &'a [(&'a str, &'a str)],
        removed: &'a [String],
        added: &'a [(String, String)],
    ) -> HeaderView<'a> {
        HeaderView {
            lines,
            removed,
            added,
        }
    }

    /// Every value of the header `name` (compared case-insensitively), one
    /// per line: the client's surviving lines first, then the added ones.
    /// (The view is covariant, so `'a` shrinks to the name's lifetime.)
    pub fn values(self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let removed = self.removed;
        let gone = removed.iter().any(|r| r.eq_ignore_ascii_case(name));
        let kept = self.lines.iter().filter(move |_| !gone).copied();
        let added = self.added.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        kept.chain(added)
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn borrowed(lines: &[(String, String)]) -> Vec<(&str, &str)> {
        lines
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn edits_apply_in_envoy_order() {
        // (client lines, removed, added, name, values RBAC sees)
        type Case<'a> = (
            Vec<(String, String)>,
            Vec<String>,
            Vec<(String, String)>,
            &'a str,
            Vec<&'a str>,
        );
        let cases: Vec<Case> = vec![
            // Unchanged request: every line, in order, name case ignored.
            (
                lines(&[("X-Role", "user"), ("x-role", "admin")]),
                vec![],
                vec![],
                "x-role",
                vec!["user", "admin"],
            ),
            // A spoofed claim header is removed and replaced.
            (
                lines(&[("X-Sub", "admin"), ("accept", "*/*")]),
                vec!["x-sub".into()],
                lines(&[("x-sub", "alice")]),
                "x-sub",
                vec!["alice"],
            ),
            // Removed without a replacement (no token, or claim missing).
            (
                lines(&[("x-sub", "admin")]),
                vec!["x-sub".into()],
                vec![],
                "X-SUB",
                vec![],
            ),
            // The consumed token header is gone for RBAC too.
            (
                lines(&[("Authorization", "Bearer a.b.c")]),
                vec!["authorization".into()],
                vec![],
                "authorization",
                vec![],
            ),
            // Other headers are not touched.
            (
                lines(&[("accept", "*/*")]),
                vec!["x-sub".into()],
                lines(&[("x-sub", "alice")]),
                "accept",
                vec!["*/*"],
            ),
        ];
        for (lines, removed, added, name, want) in &cases {
            let lines = borrowed(lines);
            let view = HeaderView::edited(&lines, removed, added);
            let got: Vec<&str> = view.values(name).collect();
            assert_eq!(&got, want, "{name} in {lines:?} - {removed:?} + {added:?}");
        }
        let l = [("x-a", "1")];
        assert_eq!(
            HeaderView::client(&l).values("X-A").collect::<Vec<_>>(),
            ["1"]
        );
    }
}
