//! `jwtgate check` as operators (and outside tests) drive it: the real
//! binary, JSON on stdout, exit 0 allowed / 1 denied / 2 bad input
//! (DESIGN.md "Command line"). The FAQ scenario's jwksUri is served by a
//! small HTTP server on 127.0.0.1, so the agent's fetch path is exercised.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn sample(name: &str) -> String {
    let p = format!(
        "{}/testdata/istio-samples/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&p).unwrap().trim().to_owned()
}

/// Serves `body` to every request, like the FAQ's nginx `/get_jwks`.
fn serve(body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/get_jwks")
}

/// The FAQ's two policies (RequestAuthentication jwt-example with jwksUri,
/// AuthorizationPolicy test-exclude), written to a fresh folder.
fn faq_dir(jwks_uri: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("faq.yaml"),
        format!(
            "apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {{name: jwt-example, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  jwtRules:
  - issuer: testing@secure.istio.io
    jwksUri: {jwks_uri}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: test-exclude, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  action: DENY
  rules:
  - from: [{{source: {{notRequestPrincipals: ['*']}}}}]
    to: [{{operation: {{notPaths: [/productpage]}}}}]
"
        ),
    )
    .unwrap();
    dir
}

/// Run `jwtgate check`; (exit code, JSON or Null, stderr).
fn check(dir: &Path, args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .arg("check")
        // The test's JWKS server is on loopback, refused by default.
        .arg("--jwks-allow-cidr")
        .arg("127.0.0.0/8")
        .arg("--policies")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const WL: [&str; 4] = ["--namespace", "foo", "--labels", "app=productpage"];

#[test]
fn faq_scenario_through_check() {
    let dir = faq_dir(&serve(sample("jwks.json")));
    let token = sample("demo.jwt");
    let good = format!("Authorization: Bearer {token}");
    let mut t = token.into_bytes();
    let i = t.len() - 10;
    t[i] = if t[i] == b'A' { b'B' } else { b'A' };
    let tampered = format!("Authorization: Bearer {}", String::from_utf8(t).unwrap());
    // (path, header, exit, status, body): the README's demo table.
    let rows: &[(&str, Option<&str>, i32, u64, &str)] = &[
        ("/productpage", None, 0, 200, ""),
        ("/api/v1/products/0", None, 1, 403, "RBAC: access denied"),
        ("/api/v1/products/1", None, 1, 403, "RBAC: access denied"),
        ("/productpage", Some(&good), 0, 200, ""),
        ("/api/v1/products/0", Some(&good), 0, 200, ""),
        ("/api/v1/products/1", Some(&good), 0, 200, ""),
        (
            "/productpage",
            Some(&tampered),
            1,
            401,
            "Jwt verification fails",
        ),
        (
            "/api/v1/products/1",
            Some(&tampered),
            1,
            401,
            "Jwt verification fails",
        ),
        (
            "/productpage/../api/v1/products/0",
            None,
            1,
            403,
            "RBAC: access denied",
        ),
        ("//api/v1/products/0", None, 1, 403, "RBAC: access denied"),
    ];
    for (path, header, code, status, body) in rows {
        let mut args = WL.to_vec();
        args.extend(["--path", path]);
        if let Some(h) = header {
            args.extend(["--header", h]);
        }
        let (got, json, stderr) = check(dir.path(), &args);
        assert_eq!(got, *code, "{path} {header:?}: {json} {stderr}");
        assert_eq!(json["status"], *status, "{path}: {json}");
        assert_eq!(json["allowed"], *code == 0, "{path}: {json}");
        assert_eq!(json["body"], *body, "{path}: {json}");
    }
    // Details of an allowed request with a token.
    let (_, json, _) = check(
        dir.path(),
        &[
            &WL[..],
            &["--path", "/api/v1/products/0?x=1", "--header", &good],
        ]
        .concat(),
    );
    assert_eq!(
        json["principal"],
        "testing@secure.istio.io/testing@secure.istio.io"
    );
    assert_eq!(json["policy"], Value::Null);
    assert_eq!(
        json["headers"]["removed"],
        serde_json::json!(["authorization"])
    );
    assert_eq!(json["path"], "/api/v1/products/0?x=1");
    // A denial names the policy; a 401 carries www-authenticate.
    let (_, json, _) = check(dir.path(), &[&WL[..], &["--path", "/api"]].concat());
    assert_eq!(json["policy"], "foo/test-exclude");
    assert!(json["reason"]
        .as_str()
        .unwrap()
        .contains("DENY policy foo/test-exclude"));
    let (_, json, _) = check(
        dir.path(),
        &[
            &WL[..],
            &[
                "--path",
                "/productpage",
                "--header",
                &tampered,
                "--host",
                "bookinfo:9080",
            ],
        ]
        .concat(),
    );
    assert_eq!(
        json["headers"]["www-authenticate"],
        "Bearer realm=\"http://bookinfo:9080/productpage\", error=\"invalid_token\""
    );
    // --now: demo.jwt expires at 4685989700; 60 s of clock skew (§2.4).
    let (code, json, _) = check(
        dir.path(),
        &[
            &WL[..],
            &[
                "--path",
                "/productpage",
                "--header",
                &good,
                "--now",
                "4685989760",
            ],
        ]
        .concat(),
    );
    assert_eq!((code, json["status"].as_u64()), (0, Some(200)), "{json}");
    let (code, json, _) = check(
        dir.path(),
        &[
            &WL[..],
            &[
                "--path",
                "/productpage",
                "--header",
                &good,
                "--now",
                "4685989761",
            ],
        ]
        .concat(),
    );
    assert_eq!(
        (code, json["body"].as_str()),
        (1, Some("Jwt is expired")),
        "{json}"
    );
    // --labels select: without app=productpage nothing applies.
    let (code, json, _) = check(dir.path(), &["--namespace", "foo", "--path", "/api"]);
    assert_eq!((code, json["status"].as_u64()), (0, Some(200)));
}

#[test]
fn jwks_uri_unreachable_rejects_tokens_only() {
    // §2.7: a provider without keys answers 401 to tokens; token-less
    // requests still reach authorization.
    let dir = faq_dir("http://127.0.0.1:9/get_jwks");
    let good = format!("Authorization: Bearer {}", sample("demo.jwt"));
    let (code, json, stderr) = check(
        dir.path(),
        &[&WL[..], &["--path", "/productpage", "--header", &good]].concat(),
    );
    assert_eq!(
        (code, json["status"].as_u64(), json["body"].as_str()),
        (1, Some(401), Some("Jwt verification fails")),
        "{json}"
    );
    assert!(stderr.contains("JWKS fetch failed"), "{stderr}");
    let (code, _, _) = check(dir.path(), &[&WL[..], &["--path", "/productpage"]].concat());
    assert_eq!(code, 0);
}

#[test]
fn request_flags_reach_the_matchers() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = sample("jwks.json").replace('\n', "");
    std::fs::write(
        dir.path().join("p.yaml"),
        format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: ra, namespace: foo}}
spec:
  jwtRules: [{{issuer: testing@secure.istio.io, jwks: '{jwks}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow, namespace: foo}}
spec:
  rules:
  - from: [{{source: {{ipBlocks: [192.0.2.0/24], remoteIpBlocks: [198.51.100.7]}}}}]
    to: [{{operation: {{hosts: ['api.example.com:*'], ports: ['9080'], methods: [POST], paths: ['/v1/{{*}}']}}}}]
    when:
    - {{key: 'request.headers[x-tenant]', values: ['b']}}
    - {{key: 'request.auth.claims[foo]', values: [bar]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: audit, namespace: foo}}
spec:
  action: AUDIT
  rules: [{{to: [{{operation: {{methods: [POST]}}}}]}}]
"
        ),
    )
    .unwrap();
    let token = format!("Authorization: Bearer {}", sample("demo.jwt"));
    let full: Vec<&str> = vec![
        "--namespace",
        "foo",
        "--method",
        "POST",
        "--path",
        "/v1/items",
        "--host",
        "API.example.com:9080",
        "--port",
        "9080",
        "--source-ip",
        "192.0.2.10",
        "--header",
        "X-Forwarded-For: 198.51.100.7",
        "--header",
        "x-tenant: a",
        "--header",
        "x-tenant: b",
        "--header",
        &token,
    ];
    let (code, json, stderr) = check(dir.path(), &full);
    assert_eq!(code, 0, "{json} {stderr}");
    assert_eq!(json["policy"], "foo/allow");
    assert_eq!(json["audit"], "foo/audit rule 0");
    // Change one input at a time: each one alone turns the answer into 403.
    let swaps: &[(&str, &str)] = &[
        ("POST", "GET"),
        ("/v1/items", "/v1/items/x"),
        ("API.example.com:9080", "api.example.com"),
        ("9080", "8080"),
        ("192.0.2.10", "192.0.3.10"),
        (
            "X-Forwarded-For: 198.51.100.7",
            "X-Forwarded-For: 198.51.100.8",
        ),
        ("x-tenant: b", "x-other: b"),
    ];
    for (from, to) in swaps {
        let args: Vec<&str> = full
            .iter()
            .map(|a| if a == from { *to } else { *a })
            .collect();
        let (code, json, _) = check(dir.path(), &args);
        assert_eq!(
            (code, json["status"].as_u64()),
            (1, Some(403)),
            "{from} → {to}: {json}"
        );
    }
    // --path-normalization: `//v1/items` is `/v1/items` by default, not under base.
    let args: Vec<&str> = full
        .iter()
        .map(|a| if *a == "/v1/items" { "//v1/items" } else { *a })
        .collect();
    assert_eq!(check(dir.path(), &args).0, 0);
    let base = [&args[..], &["--path-normalization", "base"]].concat();
    assert_eq!(check(dir.path(), &base).0, 1);
}

#[test]
fn invalid_policies_are_reported_and_the_rest_applies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-cidr, namespace: foo}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: ['10.0.0.0/99']}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ['/admin*']}}]}]
",
    )
    .unwrap();
    let (code, json, stderr) = check(dir.path(), &["--namespace", "foo", "--path", "/admin"]);
    assert_eq!((code, json["status"].as_u64()), (1, Some(403)), "{json}");
    let errors = json["policy_errors"].to_string();
    assert!(
        errors.contains(
            "bad.yaml: AuthorizationPolicy foo/bad-cidr: spec.rules[0].from[0].source.ipBlocks[0]"
        ),
        "{errors}"
    );
    assert!(stderr.contains("bad-cidr"), "{stderr}");
    let (code, _, _) = check(dir.path(), &["--namespace", "foo", "--path", "/x"]);
    assert_eq!(code, 0);
}

#[test]
fn a_file_that_is_not_yaml_stops_the_decision() {
    // A dry run must not decide while ignoring a policy: the broken file
    // could hold the DENY that matters. Exit 2, file and line named.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deny.yaml"),
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ['/admin*']}}]}]
",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: security.istio.io/v1\nkind: [\n",
    )
    .unwrap();
    let (code, json, stderr) = check(dir.path(), &["--namespace", "foo", "--path", "/x"]);
    assert_eq!(code, 2, "{json} {stderr}");
    assert!(json.is_null(), "no decision on stdout: {json}");
    assert!(stderr.contains("broken.yaml"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    // Fixed: the decision is made again.
    std::fs::write(dir.path().join("broken.yaml"), "").unwrap();
    let (code, json, _) = check(dir.path(), &["--namespace", "foo", "--path", "/admin"]);
    assert_eq!((code, json["status"].as_u64()), (1, Some(403)), "{json}");
}

/// Policies for the request-shape and header cases: a RequestAuthentication
/// writing `sub` into `x-sub`, and the AuthorizationPolicies given.
fn header_dir(policies: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let jwks = sample("jwks.json").replace('\n', "");
    std::fs::write(
        dir.path().join("p.yaml"),
        format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: ra, namespace: foo}}
spec:
  jwtRules:
  - issuer: testing@secure.istio.io
    jwks: '{jwks}'
    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]
{policies}"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn claim_headers_are_what_rbac_sees() {
    let dir = header_dir(
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sub, namespace: foo}
spec:
  rules: [{when: [{key: 'request.headers[x-sub]', values: ['testing@secure.istio.io']}]}]
",
    );
    let token = format!("Authorization: Bearer {}", sample("demo.jwt"));
    let ns = ["--namespace", "foo"];
    // A client without a token cannot write the claim header itself.
    let (code, json, _) = check(
        dir.path(),
        &[&ns[..], &["--header", "X-Sub: testing@secure.istio.io"]].concat(),
    );
    assert_eq!((code, json["status"].as_u64()), (1, Some(403)), "{json}");
    // With the token, the claim header is written from it and matched.
    let (code, json, _) = check(
        dir.path(),
        &[&ns[..], &["--header", &token, "--header", "x-sub: forged"]].concat(),
    );
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["headers"]["added"]["x-sub"], "testing@secure.istio.io");
    assert_eq!(
        json["headers"]["removed"],
        serde_json::json!(["x-sub", "authorization"])
    );
}

#[test]
fn repeated_header_cannot_evade_a_deny() {
    // CVE-2026-26308 (Istio 1.29.1): each line is matched on its own.
    let dir = header_dir(
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{when: [{key: 'request.headers[x-role]', values: ['admin']}]}]
",
    );
    let ns = ["--namespace", "foo"];
    let (code, json, _) = check(
        dir.path(),
        &[
            &ns[..],
            &["--header", "X-Role: user", "--header", "X-Role: admin"],
        ]
        .concat(),
    );
    assert_eq!((code, json["status"].as_u64()), (1, Some(403)), "{json}");
    assert_eq!(json["policy"], "foo/deny-admin");
    let (code, _, _) = check(
        dir.path(),
        &[&ns[..], &["--header", "X-Role: user"]].concat(),
    );
    assert_eq!(code, 0);
}

#[test]
fn envoy_request_shape_and_head() {
    let dir = header_dir(
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-host, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {hosts: ['admin.example.com'], methods: [GET]}}]}]
",
    );
    let ns = ["--namespace", "foo"];
    // (args, exit, status, body): Envoy's answers before any filter.
    let rows: &[(&[&str], i32, u64, &str)] = &[
        (&["--method", "get"], 1, 400, "Bad Request"),
        (&["--method", "FOO"], 1, 400, "Bad Request"),
        (
            &["--header", "Host: second.example.com"],
            1,
            400,
            "Bad Request",
        ),
        (&["--host", "bad host"], 1, 400, "Bad Request"),
        // Absolute-form: the URL's authority is the host policies match.
        (
            &["--path", "http://admin.example.com/x"],
            1,
            403,
            "RBAC: access denied",
        ),
        (
            &["--host", "admin.example.com"],
            1,
            403,
            "RBAC: access denied",
        ),
        (
            &[
                "--host",
                "admin.example.com",
                "--path",
                "http://other.example.com/x",
            ],
            0,
            200,
            "",
        ),
        // HEAD: the client receives no body, in check's JSON too.
        (
            &["--method", "HEAD", "--header", "Authorization: Bearer x"],
            1,
            401,
            "",
        ),
        (
            &["--method", "HEAD", "--host", "admin.example.com"],
            0,
            200,
            "",
        ),
    ];
    for (args, exit, status, body) in rows {
        let (code, json, stderr) = check(dir.path(), &[&ns[..], args].concat());
        assert_eq!(code, *exit, "{args:?}: {json} {stderr}");
        assert_eq!(json["status"], *status, "{args:?}: {json}");
        assert_eq!(json["body"], *body, "{args:?}: {json}");
    }
    // The same 401 for GET carries its body.
    let (_, json, _) = check(
        dir.path(),
        &[&ns[..], &["--header", "Authorization: Bearer x"]].concat(),
    );
    assert_eq!(
        json["body"],
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    );
}

#[test]
fn base_normalization_keeps_escapes_as_sent() {
    // Envoy's canonicalizer copies the escapes it keeps byte for byte.
    let dir = header_dir("");
    let path_of = |args: &[&str]| {
        let (code, json, stderr) = check(dir.path(), &[&["--namespace", "foo"][..], args].concat());
        assert_eq!(code, 0, "{json} {stderr}");
        json["path"].as_str().unwrap().to_owned()
    };
    let base = ["--path-normalization", "base"];
    let rows: &[(&str, &str, &str)] = &[
        // (target, base, default decode-and-merge-slashes)
        ("/a%2fb", "/a%2fb", "/a/b"),
        ("/a%2Fb", "/a%2Fb", "/a/b"),
        ("/x%3fy%3Fz?q=%2f", "/x%3fy%3Fz?q=%2f", "/x%3fy%3Fz?q=%2f"),
        ("/%7euser", "/~user", "/~user"),
    ];
    for (target, want_base, want_default) in rows {
        assert_eq!(
            path_of(&[&["--path", target][..], &base[..]].concat()),
            *want_base
        );
        assert_eq!(path_of(&["--path", target]), *want_default);
    }
}

#[test]
fn bad_input_exits_2() {
    let dir = faq_dir("http://127.0.0.1:9/x");
    let cases: &[&[&str]] = &[
        &["--namespace", "foo", "--header", "no colon here"],
        &["--namespace", "foo", "--header", "bad name: x"],
        &["--namespace", "foo", "--labels", "app"],
        &["--namespace", "foo", "--source-ip", "not-an-ip"],
        &["--namespace", "foo", "--port", "70000"],
        &["--namespace", "foo", "--now", "yesterday"],
        &["--namespace", "foo", "--path-normalization", "none"],
        &["--path", "/"],
    ];
    for args in cases {
        let (code, json, stderr) = check(dir.path(), args);
        assert_eq!(code, 2, "{args:?}: {json} {stderr}");
        assert!(json.is_null(), "{args:?}: nothing on stdout");
        assert!(!stderr.is_empty(), "{args:?}: say why");
    }
    let (code, _, stderr) = check(Path::new("/nonexistent/jwtgate"), &["--namespace", "foo"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read policy folder"), "{stderr}");
}
