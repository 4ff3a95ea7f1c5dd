//! The path-normalization bypass list of issue #4 (§3.12, DESIGN.md "Path
//! normalization"): `..`, `//`, `%2F`, `%2e%2e`, `;`, case, backslash,
//! encoded unreserved characters. Each attempt is tried in jwtgate's default
//! (decode-and-merge-slashes, Istio's DECODE_AND_MERGE_SLASHES) and in
//! `base` (Istio's default, BASE). Where BASE lets a trick past a DENY list,
//! the case says so: that is what Istio does too, and jwtgate's default
//! closes it. No attempt is allowed by jwtgate where Istio denies it.

use super::*;
use PathNormalization::MergeSlashes;

const FAQ_EXCLUDE: &str = "[{from: [{source: {notRequestPrincipals: ['*']}}], to: [{operation: {notPaths: ['/productpage']}}]}]";
const DENY_ADMIN: &str = "[{to: [{operation: {paths: ['/admin*']}}]}]";
const DENY_ADMIN_EXACT: &str = "[{to: [{operation: {paths: ['/admin']}}]}]";

fn cases() -> Vec<Case> {
    vec![
        // ASM/Istio FAQ exclude-path policy, anonymous requests.
        c(
            "FAQ /productpage exempt",
            "DENY",
            FAQ_EXCLUDE,
            get("/productpage"),
            200,
        ),
        c(
            "FAQ /productpage/../api ⇒ /api",
            "DENY",
            FAQ_EXCLUDE,
            get("/productpage/../api/v1/products/0"),
            403,
        ),
        c(
            "FAQ /productpage/../api ⇒ /api (base)",
            "DENY",
            FAQ_EXCLUDE,
            get("/productpage/../api/v1/products/0").base(),
            403,
        ),
        c(
            "FAQ //api merged",
            "DENY",
            FAQ_EXCLUDE,
            get("//api/v1/products/0"),
            403,
        ),
        c(
            "FAQ //api (base: not /productpage either)",
            "DENY",
            FAQ_EXCLUDE,
            get("//api/v1/products/0").base(),
            403,
        ),
        c(
            "FAQ //productpage merged = /productpage",
            "DENY",
            FAQ_EXCLUDE,
            get("//productpage"),
            200,
        ),
        c(
            "FAQ //productpage (base: kept, so not exempt)",
            "DENY",
            FAQ_EXCLUDE,
            get("//productpage").base(),
            403,
        ),
        c(
            "FAQ /productpage%2F..%2Fapi decoded ⇒ /api",
            "DENY",
            FAQ_EXCLUDE,
            get("/productpage%2F..%2Fapi/v1/products/0"),
            403,
        ),
        c(
            "FAQ /productpage%2F..%2Fapi (base: stays encoded)",
            "DENY",
            FAQ_EXCLUDE,
            get("/productpage%2F..%2Fapi/v1/products/0").base(),
            403,
        ),
        c(
            "FAQ /productpage/%2e%2e/api",
            "DENY",
            FAQ_EXCLUDE,
            get("/productpage/%2e%2e/api/v1/products/0"),
            403,
        ),
        c(
            "FAQ /productpage/%2E%2e/api (base)",
            "DENY",
            FAQ_EXCLUDE,
            get("/productpage/%2E%2e/api/v1/products/0").base(),
            403,
        ),
        c(
            "FAQ /productpage;/../api",
            "DENY",
            FAQ_EXCLUDE,
            get("/productpage;/../api/v1/products/0"),
            403,
        ),
        c(
            "FAQ /productpage;x is not /productpage",
            "DENY",
            FAQ_EXCLUDE,
            get("/productpage;x"),
            403,
        ),
        c(
            "FAQ /PRODUCTPAGE is not /productpage (case-sensitive)",
            "DENY",
            FAQ_EXCLUDE,
            get("/PRODUCTPAGE"),
            403,
        ),
        c(
            "FAQ query is not the path",
            "DENY",
            FAQ_EXCLUDE,
            get("/api/v1/products/0?x=/productpage"),
            403,
        ),
        c(
            "FAQ query after /productpage",
            "DENY",
            FAQ_EXCLUDE,
            get("/productpage?x=/api"),
            200,
        ),
        c(
            "FAQ backslash ⇒ slash",
            "DENY",
            FAQ_EXCLUDE,
            get("/productpage\\..\\api"),
            403,
        ),
        // A DENY list on a prefix.
        c(
            "deny /admin*: //admin merged",
            "DENY",
            DENY_ADMIN,
            get("//admin"),
            403,
        ),
        c(
            "deny /admin*: //admin merged (merge-slashes)",
            "DENY",
            DENY_ADMIN,
            get("//admin").norm(MergeSlashes),
            403,
        ),
        c(
            "deny /admin*: //admin under BASE passes, as in Istio",
            "DENY",
            DENY_ADMIN,
            get("//admin").base(),
            200,
        ),
        c(
            "deny /admin*: /x/../admin",
            "DENY",
            DENY_ADMIN,
            get("/x/../admin"),
            403,
        ),
        c(
            "deny /admin*: /x/../admin (base)",
            "DENY",
            DENY_ADMIN,
            get("/x/../admin").base(),
            403,
        ),
        c(
            "deny /admin*: /%2e%2e/admin",
            "DENY",
            DENY_ADMIN,
            get("/%2e%2e/admin"),
            403,
        ),
        c(
            "deny /admin*: /./admin",
            "DENY",
            DENY_ADMIN,
            get("/./admin").base(),
            403,
        ),
        c(
            "deny /admin*: /x%2F..%2Fadmin decoded",
            "DENY",
            DENY_ADMIN,
            get("/x%2F..%2Fadmin"),
            403,
        ),
        c(
            "deny /admin*: /x%2F..%2Fadmin under BASE stays encoded, as in Istio",
            "DENY",
            DENY_ADMIN,
            get("/x%2F..%2Fadmin").base(),
            200,
        ),
        c(
            "deny /admin*: /x/..%2fadmin decoded",
            "DENY",
            DENY_ADMIN,
            get("/x/..%2fadmin"),
            403,
        ),
        c(
            "deny /admin*: /admin%2Fusers",
            "DENY",
            DENY_ADMIN,
            get("/admin%2Fusers").base(),
            403,
        ),
        c(
            "deny /admin*: /%61dmin (unreserved decoded)",
            "DENY",
            DENY_ADMIN,
            get("/%61dmin").base(),
            403,
        ),
        c(
            "deny /admin*: \\admin",
            "DENY",
            DENY_ADMIN,
            get("\\admin").base(),
            403,
        ),
        c(
            "deny /admin*: /admin;x",
            "DENY",
            DENY_ADMIN,
            get("/admin;x"),
            403,
        ),
        c(
            "deny /admin*: /ADMIN is another path (case-sensitive, as Istio)",
            "DENY",
            DENY_ADMIN,
            get("/ADMIN"),
            200,
        ),
        c(
            "deny /admin*: /admin?x",
            "DENY",
            DENY_ADMIN,
            get("/admin?x=1"),
            403,
        ),
        c(
            "deny /admin*: %00 ⇒ 400",
            "DENY",
            DENY_ADMIN,
            get("/admin%00"),
            400,
        ),
        // An exact DENY: `;` parameters are not stripped (Envoy does not).
        c(
            "deny exact /admin: /admin;jsessionid=x passes, as in Istio",
            "DENY",
            DENY_ADMIN_EXACT,
            get("/admin;jsessionid=x"),
            200,
        ),
        c(
            "deny exact /admin: /admin/ passes, as in Istio",
            "DENY",
            DENY_ADMIN_EXACT,
            get("/admin/"),
            200,
        ),
        c(
            "deny exact /admin: /admin/. ⇒ /admin/",
            "DENY",
            DENY_ADMIN_EXACT,
            get("/admin/."),
            200,
        ),
        c(
            "deny exact /admin: /admin/x/.. ⇒ /admin/",
            "DENY",
            DENY_ADMIN_EXACT,
            get("/admin/x/.."),
            200,
        ),
        c(
            "deny exact /admin: /a/../admin",
            "DENY",
            DENY_ADMIN_EXACT,
            get("/a/../admin"),
            403,
        ),
        // The ALLOW-list style the docs recommend is immune to these tricks.
        c(
            "allow /public*: /public/../admin ⇒ /admin denied",
            "ALLOW",
            "[{to: [{operation: {paths: ['/public*']}}]}]",
            get("/public/../admin"),
            403,
        ),
        c(
            "allow /public*: /public%2F..%2Fadmin (base) stays under /public",
            "ALLOW",
            "[{to: [{operation: {paths: ['/public*']}}]}]",
            get("/public%2F..%2Fadmin").base(),
            200,
        ),
        c(
            "allow /public*: /public%2F..%2Fadmin decoded ⇒ /admin denied",
            "ALLOW",
            "[{to: [{operation: {paths: ['/public*']}}]}]",
            get("/public%2F..%2Fadmin"),
            403,
        ),
    ]
}

#[test]
fn paths_table() {
    run_all(&cases());
}

#[test]
fn forwarded_path_is_the_matched_path() {
    // §3.12: the backend receives the normalized path it was judged on.
    let case = c("§3.12", "ALLOW", "[{}]", get("/a/%2e%2e//b%2Fc?q=/x"), 200);
    assert_eq!(decide(&case).forward_path, "/b/c?q=/x");
    let case = c(
        "§3.12",
        "ALLOW",
        "[{}]",
        get("/a/%2e%2e//b%2Fc?q=/x").base(),
        200,
    );
    assert_eq!(decide(&case).forward_path, "//b%2Fc?q=/x");
}

pub fn count() -> usize {
    cases().len()
}
