//! The ASM/Istio FAQ scenario "skip JWT authentication for specific paths", shared
//! by `cargo xtask demo` and the end-to-end tests: the two policies, the tokens and
//! the expected table.
//!
//! The FAQ applies its policies to the ingress gateway in `istio-system`; here the
//! same two policies select the pod `productpage` in namespace `foo` directly, and the
//! JWKS comes from nginx like the FAQ's `nginx-proxy` `/get_jwks`.

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::Result;

use crate::agent::AgentOptions;
use crate::topology::{Client, PodHandle, PodSpec, TestNode};

pub const ISSUER: &str = "testing@secure.istio.io";
pub const NAMESPACE: &str = "foo";
pub const POD: &str = "productpage";
pub const APP_LABEL: &str = "productpage";
/// Bookinfo productpage's port; steered.
pub const MESH_PORT: u16 = 9080;
/// Served by the same app, but not in workloads.yaml: never steered.
pub const PLAIN_PORT: u16 = 9091;
/// Envoy's jwt_authn body for a failed verification.
pub const BODY_401: &str = "Jwt verification fails";
/// Envoy's RBAC filter body.
pub const BODY_403: &str = "RBAC: access denied";

/// The token a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    None,
    /// Istio's `demo.jwt`.
    Valid,
    /// `demo.jwt` with one signature character changed.
    Tampered,
}

impl Token {
    pub fn label(self) -> &'static str {
        match self {
            Token::None => "no token",
            Token::Valid => "demo.jwt",
            Token::Tampered => "tampered demo.jwt",
        }
    }

    pub fn value(self) -> Option<String> {
        match self {
            Token::None => None,
            Token::Valid => Some(demo_jwt()),
            Token::Tampered => Some(tampered_jwt()),
        }
    }
}

/// One row of the FAQ's expected results.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub path: &'static str,
    pub token: Token,
    pub status: u16,
    /// Exact body expected for agent-generated answers.
    pub body: Option<&'static str>,
}

const fn row(path: &'static str, token: Token, status: u16) -> Row {
    let body = match status {
        401 => Some(BODY_401),
        403 => Some(BODY_403),
        _ => None,
    };
    Row {
        path,
        token,
        status,
        body,
    }
}

/// FAQ: no token → 200/403/403; valid → 200×3; and (Istio semantics) an invalid
/// token is rejected by RequestAuthentication with 401 whatever the path.
pub const ROWS: [Row; 9] = [
    row("/productpage", Token::None, 200),
    row("/api/v1/products/0", Token::None, 403),
    row("/api/v1/products/1", Token::None, 403),
    row("/productpage", Token::Valid, 200),
    row("/api/v1/products/0", Token::Valid, 200),
    row("/api/v1/products/1", Token::Valid, 200),
    row("/productpage", Token::Tampered, 401),
    row("/api/v1/products/0", Token::Tampered, 401),
    row("/api/v1/products/1", Token::Tampered, 401),
];

/// Istio's sample token (issuer and subject testing@secure.istio.io, exp 2118).
pub fn demo_jwt() -> String {
    let path = crate::testdata("istio-samples/demo.jwt");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// `demo.jwt` with a character in the middle of the signature replaced, so the
/// decoded signature bytes differ (the last character may only carry padding bits).
pub fn tampered_jwt() -> String {
    let jwt = demo_jwt();
    let sig_start = jwt.rfind('.').expect("a JWT has three segments") + 1;
    let mid = sig_start + (jwt.len() - sig_start) / 2;
    let mut bytes = jwt.into_bytes();
    bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("base64url is ASCII")
}

/// The FAQ's RequestAuthentication `jwt-example`, selecting `app: <app>`.
pub fn request_authentication(namespace: &str, app: &str, jwks_uri: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata:
  name: jwt-example
  namespace: {namespace}
spec:
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: '{jwks_uri}'
  selector:
    matchLabels:
      app: {app}
"#
    )
}

/// The FAQ's AuthorizationPolicy `test-exclude`: DENY requests without a valid
/// principal, except on `/productpage`.
pub fn authorization_policy(namespace: &str, app: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: test-exclude
  namespace: {namespace}
spec:
  action: DENY
  rules:
  - from:
    - source:
        notRequestPrincipals:
        - '*'
    to:
    - operation:
        notPaths:
        - /productpage
  selector:
    matchLabels:
      app: {app}
"#
    )
}

/// The FAQ topology: node, nginx JWKS, pod `productpage` (ports 9080 steered, 9091
/// not), a client, and the two policies written. The agent is not started yet.
pub struct FaqBed {
    pub node: TestNode,
    pub pod: PodHandle,
    pub client: Client,
    pub jwks_uri: String,
}

impl FaqBed {
    pub fn build(tag: &str) -> Result<Self> {
        Self::build_with(tag, |spec| spec)
    }

    /// Like `build`, with a chance to adjust the pod (e.g. `fail_open(true)`).
    pub fn build_with(tag: &str, adjust: impl FnOnce(PodSpec) -> PodSpec) -> Result<Self> {
        let mut node = TestNode::new(tag)?;
        let jwks_uri = node.start_jwks_server()?;
        let spec = PodSpec::new(POD)
            .namespace(NAMESPACE)
            .labels(&[("app", APP_LABEL)])
            .port(MESH_PORT)
            .plain_port(PLAIN_PORT);
        let pod = node.add_pod(adjust(spec))?;
        let client = node.add_client("client")?;
        node.write_policy(
            "jwt-example.yaml",
            &request_authentication(NAMESPACE, APP_LABEL, &jwks_uri),
        )?;
        node.write_policy(
            "test-exclude.yaml",
            &authorization_policy(NAMESPACE, APP_LABEL),
        )?;
        Ok(FaqBed {
            node,
            pod,
            client,
            jwks_uri,
        })
    }

    pub fn start_agent(&mut self) -> Result<()> {
        self.node.start_agent(&AgentOptions::default()).map(|_| ())
    }

    /// Sends every FAQ row from the client to the pod's mesh port.
    pub fn run_rows(&self) -> Vec<RowResult> {
        run_rows(&self.client, self.pod.mesh_addr())
    }
}

/// What one FAQ request got.
#[derive(Debug, Clone)]
pub struct RowResult {
    pub row: Row,
    pub got: Result<(u16, String), String>,
}

impl RowResult {
    pub fn ok(&self) -> bool {
        match &self.got {
            Ok((status, body)) => {
                *status == self.row.status && self.row.body.is_none_or(|b| body.trim() == b)
            }
            Err(_) => false,
        }
    }

    pub fn got_text(&self) -> String {
        match &self.got {
            Ok((s, body)) if self.row.body.is_some() || *s != self.row.status => {
                format!("{s} {:?}", truncate(body.trim(), 40))
            }
            Ok((s, _)) => s.to_string(),
            Err(e) => format!("error: {e}"),
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).collect::<String>() + "…"
    }
}

/// Each row on its own connection, as the FAQ's curl commands do.
pub fn run_rows(client: &Client, addr: SocketAddr) -> Vec<RowResult> {
    ROWS.iter()
        .map(|row| {
            let token = row.token.value();
            let got = client
                .get(addr, row.path, token.as_deref())
                .map(|r| (r.status, r.text()))
                .map_err(|e| format!("{e:#}"));
            RowResult { row: *row, got }
        })
        .collect()
}

/// `request | token | expected | got` as an aligned text table.
pub fn format_table(results: &[RowResult]) -> String {
    let rows: Vec<[String; 5]> = results
        .iter()
        .map(|r| {
            let expected = match r.row.body {
                Some(b) => format!("{} {b:?}", r.row.status),
                None => r.row.status.to_string(),
            };
            [
                format!("GET {}", r.row.path),
                r.row.token.label().to_string(),
                expected,
                r.got_text(),
                if r.ok() { "ok" } else { "MISMATCH" }.to_string(),
            ]
        })
        .collect();
    let header = ["request", "token", "expected", "got", "result"].map(String::from);
    let mut widths = [0usize; 5];
    for r in std::iter::once(&header).chain(&rows) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (i, r) in std::iter::once(&header).chain(&rows).enumerate() {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join(" | ").trim_end());
        if i == 0 {
            let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "{}", dashes.join("-|-"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampered_token_differs_only_in_the_signature() {
        let (good, bad) = (demo_jwt(), tampered_jwt());
        assert_ne!(good, bad);
        assert_eq!(good.len(), bad.len());
        let prefix = |t: &str| t[..t.rfind('.').unwrap()].to_string();
        assert_eq!(prefix(&good), prefix(&bad));
    }

    #[test]
    fn table_has_every_row_and_marks_mismatches() {
        let results: Vec<RowResult> = ROWS
            .iter()
            .map(|r| RowResult {
                row: *r,
                got: Ok((200, "{}".into())),
            })
            .collect();
        let t = format_table(&results);
        assert_eq!(t.lines().count(), 2 + ROWS.len());
        // Four rows expect 200; the five 401/403 rows mismatch.
        assert_eq!(t.matches("MISMATCH").count(), 5);
    }
}
