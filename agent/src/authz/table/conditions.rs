//! `when` conditions (§3.8, §3.9, §3.10) with `values` and `notValues`.

use super::*;

fn cases() -> Vec<Case> {
    vec![
        // request.auth.principal (§3.7 split).
        c("§3.9 request.auth.principal exact", "ALLOW", "[{when: [{key: request.auth.principal, values: ['test-issuer-1@istio.io/sub-1']}]}]", get("/").tok("TokenIssuer1"), 200),
        c("§3.9 request.auth.principal 'iss/*'", "ALLOW", "[{when: [{key: request.auth.principal, values: ['testing@secure.istio.io/*']}]}]", get("/").tok("demo"), 200),
        c("§3.9 request.auth.principal no JWT", "ALLOW", "[{when: [{key: request.auth.principal, values: ['*']}]}]", get("/"), 403),
        c("§3.10 request.auth.principal notValues, no JWT ⇒ matches", "ALLOW", "[{when: [{key: request.auth.principal, notValues: ['test-issuer-1@istio.io/sub-1']}]}]", get("/"), 200),
        c("§3.10 request.auth.principal notValues excludes", "ALLOW", "[{when: [{key: request.auth.principal, notValues: ['test-issuer-1@istio.io/sub-1']}]}]", get("/").tok("TokenIssuer1"), 403),
        // request.auth.audiences = claim aud, string or list (§3.8, TestAuthz_JWT aud).
        c("§3.8 audiences string aud", "ALLOW", "[{when: [{key: request.auth.audiences, values: ['foo']}]}]", get("/").tok("TokenIssuer1WithAud"), 200),
        c("§3.8 audiences list aud", "ALLOW", "[{when: [{key: request.auth.audiences, values: ['buzz']}]}]", get("/").tok("TokenIssuer1WithAudList"), 200),
        c("§3.8 audiences mismatch", "ALLOW", "[{when: [{key: request.auth.audiences, values: ['bar']}]}]", get("/").tok("TokenIssuer1WithAudList"), 403),
        c("§3.8 audiences absent claim", "ALLOW", "[{when: [{key: request.auth.audiences, values: ['*']}]}]", get("/").tok("TokenIssuer1"), 403),
        c("§3.8 audiences notValues on list", "DENY", "[{when: [{key: request.auth.audiences, notValues: ['foo']}]}]", get("/").tok("TokenIssuer1WithAudList"), 200),
        // request.auth.presenter = claim azp.
        c("§3.8 presenter", "ALLOW", "[{when: [{key: request.auth.presenter, values: ['bar']}]}]", get("/").tok("TokenIssuer1WithAzp"), 200),
        c("§3.8 presenter mismatch", "ALLOW", "[{when: [{key: request.auth.presenter, values: ['baz']}]}]", get("/").tok("TokenIssuer1WithAzp"), 403),
        c("§3.8 presenter absent", "ALLOW", "[{when: [{key: request.auth.presenter, values: ['*']}]}]", get("/").tok("TokenIssuer1"), 403),
        // request.auth.claims[...] (§3.8, TestAuthz_JWT claims).
        c("§3.8 string claim", "ALLOW", "[{when: [{key: 'request.auth.claims[foo]', values: ['bar']}]}]", get("/").tok("demo"), 200),
        c("§3.8 string claim prefix", "ALLOW", "[{when: [{key: 'request.auth.claims[foo]', values: ['b*']}]}]", get("/").tok("demo"), 200),
        c("§3.8 string claim suffix", "ALLOW", "[{when: [{key: 'request.auth.claims[iss]', values: ['*@istio.io']}]}]", get("/").tok("TokenIssuer2"), 200),
        c("§3.8 list claim element (groups)", "ALLOW", "[{when: [{key: 'request.auth.claims[groups]', values: ['group-1']}]}]", get("/").tok("TokenIssuer1"), 200),
        c("§3.8 list claim, other element", "ALLOW", "[{when: [{key: 'request.auth.claims[groups]', values: ['group2']}]}]", get("/").tok("groups"), 200),
        c("§3.8 list claim, no element", "ALLOW", "[{when: [{key: 'request.auth.claims[groups]', values: ['group-2']}]}]", get("/").tok("TokenIssuer1"), 403),
        c("§3.8 list claim scope as list", "ALLOW", "[{when: [{key: 'request.auth.claims[scope]', values: ['scope1']}]}]", get("/").tok("groups"), 200),
        c("§3.8 space-delimited scope split (TestAuthz_JWT /scope)", "ALLOW", "[{when: [{key: 'request.auth.claims[scope]', values: ['read']}]}]", get("/").tok("TokenIssuer2WithSpaceDelimitedScope"), 200),
        c("§3.8 space-delimited scope: whole string no longer matches", "ALLOW", "[{when: [{key: 'request.auth.claims[scope]', values: ['write read']}]}]", get("/").tok("TokenIssuer2WithSpaceDelimitedScope"), 403),
        c("§3.8 space-delimited permission split (TestAuthz_JWT /permission)", "ALLOW", "[{when: [{key: 'request.auth.claims[permission]', values: ['write']}]}]", get("/").tok("TokenIssuer2WithSpaceDelimitedPermission"), 200),
        c("§3.8 spaceDelimitedClaims custom_scope (TestAuthz_JWT /custom-scope)", "ALLOW", "[{when: [{key: 'request.auth.claims[custom_scope]', values: ['admin']}]}]", get("/").tok("TokenIssuer2WithCustomScopeSpaceDelimitedScope"), 200),
        c("§3.8 nested claim string [nested][key2]", "ALLOW", "[{when: [{key: 'request.auth.claims[nested][key2]', values: ['valueC']}]}]", get("/").tok("TokenIssuer1WithNestedClaims2"), 200),
        c("§3.8 nested claim list [nested][key1]", "ALLOW", "[{when: [{key: 'request.auth.claims[nested][key1]', values: ['valueB']}]}]", get("/").tok("TokenIssuer1WithNestedClaims1"), 200),
        c("§3.8 three levels [nested][nested-2][key1]", "ALLOW", "[{when: [{key: 'request.auth.claims[nested][nested-2][key1]', values: ['valueA']}]}]", get("/").tok("TokenIssuer1WithNestedClaims1"), 200),
        c("§3.8 nested claim absent", "ALLOW", "[{when: [{key: 'request.auth.claims[nested][key2]', values: ['valueC']}]}]", get("/").tok("TokenIssuer1WithNestedClaims1"), 403),
        c("§3.8 object claim never matches a string", "ALLOW", "[{when: [{key: 'request.auth.claims[nested]', values: ['*']}]}]", get("/").tok("TokenIssuer1WithNestedClaims1"), 403),
        c("§3.8 brackets are literal: claim name with '/' and '@' (collision-resistant)", "ALLOW", "[{when: [{key: 'request.auth.claims[test-issuer-1@istio.io/simple]', values: ['valueC']}]}]", get("/").tok("TokenIssuer1WithCollisionResistantName"), 200),
        c("§3.8 collision-resistant nested", "ALLOW", "[{when: [{key: 'request.auth.claims[test-issuer-1@istio.io/nested][nested-2][key1]', values: ['valueC']}]}]", get("/").tok("TokenIssuer1WithCollisionResistantName"), 200),
        c("§3.8 number claim never matches", "ALLOW", "[{when: [{key: 'request.auth.claims[iat]', values: ['1532389700']}]}]", get("/").tok("demo"), 403),
        c("§3.8 claim values ORed", "ALLOW", "[{when: [{key: 'request.auth.claims[foo]', values: ['x', 'bar']}]}]", get("/").tok("demo"), 200),
        c("§3.8 claim case-sensitive", "ALLOW", "[{when: [{key: 'request.auth.claims[foo]', values: ['BAR']}]}]", get("/").tok("demo"), 403),
        c("§3.10 claim notValues, no JWT ⇒ matches", "ALLOW", "[{when: [{key: 'request.auth.claims[groups]', notValues: ['group-1']}]}]", get("/"), 200),
        c("§3.10 claim notValues, listed ⇒ no match", "ALLOW", "[{when: [{key: 'request.auth.claims[groups]', notValues: ['group-1']}]}]", get("/").tok("TokenIssuer1"), 403),
        c("§3.3 values AND notValues in one condition", "ALLOW", "[{when: [{key: 'request.auth.claims[groups]', values: ['group*'], notValues: ['group2']}]}]", get("/").tok("groups"), 403),
        c("§3.3 values AND notValues, passes", "ALLOW", "[{when: [{key: 'request.auth.claims[groups]', values: ['group*'], notValues: ['group-9']}]}]", get("/").tok("TokenIssuer1"), 200),
        c("§3.3 all when conditions ANDed", "ALLOW", "[{when: [{key: 'request.auth.claims[groups]', values: ['group-1']}, {key: request.auth.principal, values: ['*/sub-2']}]}]", get("/").tok("TokenIssuer1"), 403),
        // request.headers[...] (§3.4).
        c("§3.9 header exact", "ALLOW", "[{when: [{key: 'request.headers[x-token]', values: ['admin']}]}]", get("/").h("x-token", "admin"), 200),
        c("§3.9 header name case-insensitive", "ALLOW", "[{when: [{key: 'request.headers[X-Token]', values: ['admin']}]}]", get("/").h("x-TOKEN", "admin"), 200),
        c("§3.9 header value case-sensitive", "ALLOW", "[{when: [{key: 'request.headers[x-token]', values: ['admin']}]}]", get("/").h("x-token", "Admin"), 403),
        c("§3.9 header prefix", "ALLOW", "[{when: [{key: 'request.headers[user-agent]', values: ['curl/*']}]}]", get("/").h("User-Agent", "curl/8.5"), 200),
        c("§3.9 header missing", "ALLOW", "[{when: [{key: 'request.headers[x-token]', values: ['*']}]}]", get("/"), 403),
        c("§3.4 header '*' present even when empty", "ALLOW", "[{when: [{key: 'request.headers[x-token]', values: ['*']}]}]", get("/").h("x-token", ""), 200),
        // Repeated header lines: each line matched on its own, any line
        // matching (Envoy's fix for CVE-2026-26308, Istio 1.29.1 /
        // ISTIO-SECURITY-2026-001); before it, lines were joined with ','.
        c("CVE-2026-26308 DENY evasion: X-Role user + admin is denied", "DENY", "[{when: [{key: 'request.headers[x-role]', values: ['admin']}]}]", get("/").h("X-Role", "user").h("X-Role", "admin"), 403),
        c("CVE-2026-26308 DENY evasion, admin line first", "DENY", "[{when: [{key: 'request.headers[x-role]', values: ['admin']}]}]", get("/").h("x-role", "admin").h("x-role", "user"), 403),
        c("CVE-2026-26308 DENY prefix on any line", "DENY", "[{when: [{key: 'request.headers[x-role]', values: ['adm*']}]}]", get("/").h("x-role", "user").h("x-role", "admin"), 403),
        c("CVE-2026-26308 joined value no longer matches", "ALLOW", "[{when: [{key: 'request.headers[x-a]', values: ['1,2']}]}]", get("/").h("x-a", "1").h("x-a", "2"), 403),
        c("CVE-2026-26308 ALLOW: any line matching", "ALLOW", "[{when: [{key: 'request.headers[x-a]', values: ['1']}]}]", get("/").h("x-a", "1").h("x-a", "2"), 200),
        c("CVE-2026-26308 notValues: no line may match", "ALLOW", "[{when: [{key: 'request.headers[x-role]', notValues: ['admin']}]}]", get("/").h("x-role", "user").h("x-role", "admin"), 403),
        c("CVE-2026-26308 notValues: no line matches", "ALLOW", "[{when: [{key: 'request.headers[x-role]', notValues: ['admin']}]}]", get("/").h("x-role", "user").h("x-role", "guest"), 200),
        c("one line 'user,admin' is one value, not split (as Envoy)", "DENY", "[{when: [{key: 'request.headers[x-role]', values: ['admin']}]}]", get("/").h("x-role", "user,admin"), 200),
        c("one line 'user,admin': suffix rule catches it", "DENY", "[{when: [{key: 'request.headers[x-role]', values: ['*admin']}]}]", get("/").h("x-role", "user,admin"), 403),
        c("§3.4 '*' present when any line is", "ALLOW", "[{when: [{key: 'request.headers[x-a]', values: ['*']}]}]", get("/").h("x-a", "").h("x-a", "2"), 200),
        c("§3.10 header notValues, missing ⇒ matches", "ALLOW", "[{when: [{key: 'request.headers[x-token]', notValues: ['guest']}]}]", get("/"), 200),
        c("§3.10 header notValues", "DENY", "[{when: [{key: 'request.headers[x-token]', notValues: ['admin']}]}]", get("/").h("x-token", "guest"), 403),
        c("§3.9 header :authority", "DENY", "[{when: [{key: 'request.headers[:authority]', values: ['httpbin.foo:8000']}]}]", get("/"), 403),
        // source.ip / remote.ip / destination.* (§3.4).
        c("§3.9 source.ip", "ALLOW", "[{when: [{key: source.ip, values: ['10.0.0.0/24']}]}]", get("/"), 200),
        c("§3.9 source.ip notValues", "ALLOW", "[{when: [{key: source.ip, notValues: ['10.0.0.1']}]}]", get("/"), 403),
        c("§3.9 source.ip ignores XFF", "ALLOW", "[{when: [{key: source.ip, values: ['192.0.2.1']}]}]", get("/").h("x-forwarded-for", "192.0.2.1"), 403),
        c("§3.9 remote.ip from XFF", "ALLOW", "[{when: [{key: remote.ip, values: ['192.0.2.1']}]}]", get("/").h("x-forwarded-for", "192.0.2.1"), 200),
        c("§3.9 remote.ip = peer without XFF", "ALLOW", "[{when: [{key: remote.ip, values: ['10.0.0.1']}]}]", get("/"), 200),
        c("§3.9 destination.ip", "ALLOW", "[{when: [{key: destination.ip, values: ['10.0.0.2']}]}]", get("/"), 200),
        c("§3.9 destination.ip mismatch", "ALLOW", "[{when: [{key: destination.ip, values: ['10.0.0.0/31']}]}]", get("/").dst("10.0.0.9"), 403),
        c("§3.9 destination.port", "DENY", "[{when: [{key: destination.port, values: ['8000']}]}]", get("/"), 403),
        c("§3.9 destination.port notValues", "DENY", "[{when: [{key: destination.port, notValues: ['8000', '9000']}]}]", get("/").port(9000), 200),
        // Plaintext: no SNI, no peer identity (§3.4, §3.5).
        c("§3.4 connection.sni never matches plaintext", "ALLOW", "[{when: [{key: connection.sni, values: ['*']}]}]", get("/"), 403),
        c("§3.4 connection.sni notValues matches plaintext", "ALLOW", "[{when: [{key: connection.sni, notValues: ['httpbin.foo']}]}]", get("/"), 200),
        c("§3.5 source.principal never matches plaintext", "DENY", "[{when: [{key: source.principal, values: ['*']}]}]", get("/"), 200),
        c("§3.5 source.namespace notValues matches plaintext", "DENY", "[{when: [{key: source.namespace, notValues: ['foo']}]}]", get("/"), 403),
        c("§3.5 source.serviceAccount never matches plaintext", "ALLOW", "[{when: [{key: source.serviceAccount, values: ['foo/sleep']}]}]", get("/"), 403),
        c("§3.5 source.trustDomain never matches plaintext", "ALLOW", "[{when: [{key: source.trustDomain, values: ['cluster.local']}]}]", get("/"), 403),
        // Fields jwtgate cannot evaluate fail safe (docs/policies.md).
        c("experimental metadata: ALLOW rule never matches", "ALLOW", "[{when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]']}]}]", get("/"), 403),
        c("experimental metadata: DENY drops the field", "DENY", "[{when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]']}]}]", get("/"), 403),
    ]
}

#[test]
fn conditions_table() {
    run_all(&cases());
}

pub fn count() -> usize {
    cases().len()
}
