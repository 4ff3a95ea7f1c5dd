//! Actions, their order, empty policies, CUSTOM, AUDIT and scoping (§1,
//! §2.1, §3.1, §3.2).

use super::*;

const POLICY_ALLOW_ADMIN_FOR_JWT: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-jwt, namespace: foo}
spec:
  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-public, namespace: foo}
spec:
  rules: [{to: [{operation: {paths: ['/public*']}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ['/admin*']}}]}]
";

const SCOPED: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root-deny, namespace: istio-system}
spec:
  selector: {matchLabels: {tier: db}}
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-deny, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ['/foo-only']}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sel-deny, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin, version: v2}}
  action: DENY
  rules: [{to: [{operation: {paths: ['/v2-only']}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gateway-deny, namespace: foo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ['/mesh-wide']}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-ns, namespace: bar}
spec:
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-run-deny
  namespace: foo
  annotations: {istio.io/dry-run: 'true'}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ['/dry']}}]}]
";

fn cases() -> Vec<Case> {
    vec![
        // §3.2 empty things (builder testdata allow-nil-rule / allow-empty-rule / deny-empty-rule).
        c(
            "§3.2 spec {} = allow-nothing (allow-nil-rule)",
            "SPEC",
            "  {}\n",
            get("/"),
            403,
        ),
        c(
            "§3.2 allow-nothing also for a valid JWT",
            "SPEC",
            "  {}\n",
            get("/").tok("demo"),
            403,
        ),
        c(
            "§3.2 ALLOW rules: [] = allow-nothing (proto3: same as absent)",
            "ALLOW",
            "[]",
            get("/"),
            403,
        ),
        c(
            "§3.2 ALLOW rules: [{}] = allow-all (allow-empty-rule)",
            "ALLOW",
            "[{}]",
            get("/any"),
            200,
        ),
        c(
            "§3.2 allow-all with a JWT",
            "ALLOW",
            "[{}]",
            get("/").tok("TokenIssuer1"),
            200,
        ),
        c(
            "§3.2 DENY rules: [{}] = deny-all (deny-empty-rule)",
            "DENY",
            "[{}]",
            get("/"),
            403,
        ),
        c(
            "§3.2 deny-all also with a JWT",
            "DENY",
            "[{}]",
            get("/").tok("demo"),
            403,
        ),
        c(
            "§1 no AuthorizationPolicy at all ⇒ allow",
            "DOCS",
            "",
            get("/"),
            200,
        ),
        // §1 order: authentication before DENY/ALLOW.
        c(
            "§1 invalid JWT ⇒ 401 before an allow-all",
            "ALLOW",
            "[{}]",
            get("/").tok("TokenExpired"),
            401,
        ),
        c(
            "§1 unknown issuer ⇒ 401 before DENY",
            "DENY",
            "[{to: [{operation: {paths: ['/x']}}]}]",
            get("/").tok("TokenIssuer3"),
            401,
        ),
        c(
            "§1 missing JWT passes authn, RBAC decides",
            "DENY",
            "[{to: [{operation: {paths: ['/x']}}]}]",
            get("/"),
            200,
        ),
        // §1/§3.1 DENY before ALLOW; ALLOW semantics across policies.
        c(
            "§3.1 DENY wins over a matching ALLOW",
            "DOCS",
            POLICY_ALLOW_ADMIN_FOR_JWT,
            get("/admin").tok("demo"),
            403,
        ),
        c(
            "§3.1 one ALLOW policy of several matches ⇒ allow",
            "DOCS",
            POLICY_ALLOW_ADMIN_FOR_JWT,
            get("/public/x"),
            200,
        ),
        c(
            "§3.1 other ALLOW policy matches ⇒ allow",
            "DOCS",
            POLICY_ALLOW_ADMIN_FOR_JWT,
            get("/private").tok("demo"),
            200,
        ),
        c(
            "§3.1 ALLOW policies exist and none matches ⇒ deny",
            "DOCS",
            POLICY_ALLOW_ADMIN_FOR_JWT,
            get("/private"),
            403,
        ),
        c(
            "§3.1 DENY applies to anonymous requests too",
            "DOCS",
            POLICY_ALLOW_ADMIN_FOR_JWT,
            get("/admin/x"),
            403,
        ),
        c(
            "§1 DENY only policies: no match ⇒ allow",
            "DENY",
            "[{to: [{operation: {paths: ['/admin']}}]}]",
            get("/user"),
            200,
        ),
        // AUDIT never denies (§1, Envoy LOG action).
        c(
            "§3.1 AUDIT rules: [{}] never denies",
            "AUDIT",
            "[{}]",
            get("/"),
            200,
        ),
        c(
            "§3.1 AUDIT matching rule never denies",
            "AUDIT",
            "[{to: [{operation: {paths: ['/audit']}}]}]",
            get("/audit"),
            200,
        ),
        c(
            "§3.1 AUDIT with a JWT",
            "AUDIT",
            "[{from: [{source: {requestPrincipals: ['*']}}]}]",
            get("/").tok("demo"),
            200,
        ),
        // CUSTOM: jwtgate has no ext_authz; matching ⇒ 403 (istiod's DENY
        // fallback for an unknown provider, builder.go), other requests go on.
        c(
            "§3.1 CUSTOM matching rule ⇒ 403",
            "CUSTOM",
            "[{to: [{operation: {paths: ['/admin*']}}]}]",
            get("/admin/x"),
            403,
        ),
        c(
            "§3.1 CUSTOM rules: [{}] ⇒ every request 403",
            "CUSTOM",
            "[{}]",
            get("/"),
            403,
        ),
        c(
            "§3.1 CUSTOM not matching ⇒ not sent to ext_authz ⇒ allowed",
            "CUSTOM",
            "[{to: [{operation: {paths: ['/admin*']}}]}]",
            get("/x"),
            200,
        ),
        c(
            "§1 CUSTOM runs before jwt_authn: bad JWT on a CUSTOM path ⇒ 403",
            "CUSTOM",
            "[{to: [{operation: {paths: ['/admin*']}}]}]",
            get("/admin").tok("TokenExpired"),
            403,
        ),
        c(
            "§1 CUSTOM not matching: bad JWT ⇒ 401 from authn",
            "CUSTOM",
            "[{to: [{operation: {paths: ['/admin*']}}]}]",
            get("/x").tok("TokenExpired"),
            401,
        ),
        c(
            "§3.1 CUSTOM by ipBlocks",
            "CUSTOM",
            "[{from: [{source: {ipBlocks: ['10.0.0.0/8']}}]}]",
            get("/"),
            403,
        ),
        // §2.1 scoping.
        c(
            "§2.1 root-namespace policy with selector applies in every namespace",
            "DOCS",
            SCOPED,
            get("/").wl("baz", &[("tier", "db")]),
            403,
        ),
        c(
            "§2.1 root-namespace selector not matching",
            "DOCS",
            SCOPED,
            get("/").wl("baz", &[("tier", "web")]),
            200,
        ),
        c(
            "§2.1 namespace-wide policy (no selector) applies",
            "DOCS",
            SCOPED,
            get("/foo-only"),
            403,
        ),
        c(
            "§2.1 namespace-wide policy: other namespace unaffected",
            "DOCS",
            SCOPED,
            get("/foo-only").wl("baz", &[]),
            200,
        ),
        c(
            "§2.1 selector matchLabels ⊆ labels",
            "DOCS",
            SCOPED,
            get("/v2-only").wl("foo", &[("app", "httpbin"), ("version", "v2"), ("x", "y")]),
            403,
        ),
        c(
            "§2.1 selector needs every label",
            "DOCS",
            SCOPED,
            get("/v2-only"),
            200,
        ),
        c(
            "§2.1 targetRefs policy ignored for a plain workload",
            "DOCS",
            SCOPED,
            get("/gw"),
            200,
        ),
        c(
            "§2.1 root-namespace policy without selector is mesh-wide",
            "DOCS",
            SCOPED,
            get("/mesh-wide").wl("baz", &[]),
            403,
        ),
        c(
            "§2.1 policies of another namespace never apply",
            "DOCS",
            SCOPED,
            get("/anything"),
            200,
        ),
        c(
            "§3.1 istio.io/dry-run policy is not enforced",
            "DOCS",
            SCOPED,
            get("/dry"),
            200,
        ),
    ]
}

#[test]
fn actions_table() {
    run_all(&cases());
}

#[test]
fn audit_is_reported_not_enforced() {
    let case = c(
        "§3.1 AUDIT",
        "AUDIT",
        "[{to: [{operation: {paths: ['/audit']}}]}]",
        get("/audit"),
        200,
    );
    let d = decide(&case);
    assert_eq!(d.audit.as_deref(), Some("foo/p rule 0"));
    assert!(d.allowed);
}

#[test]
fn custom_reason_names_the_policy() {
    let case = c("§3.1 CUSTOM", "CUSTOM", "[{}]", get("/"), 403);
    let d = decide(&case);
    assert_eq!((d.status, d.body.as_str()), (403, "RBAC: access denied"));
    assert_eq!(d.policy.as_deref(), Some("foo/p"));
    assert!(
        d.reason
            .to_string()
            .contains("CUSTOM action is not supported"),
        "{}",
        d.reason
    );
}

pub fn count() -> usize {
    cases().len()
}
