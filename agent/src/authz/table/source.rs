//! `from.source` fields (§3.5, §3.7, §3.10): request principals, peer
//! identities on plaintext, ipBlocks and remoteIpBlocks.

use super::*;

fn cases() -> Vec<Case> {
    vec![
        // requestPrincipals (§3.7, generator_test.go TestRequestPrincipal).
        c("§3.7 exact iss/sub", "ALLOW", "[{from: [{source: {requestPrincipals: ['testing@secure.istio.io/testing@secure.istio.io']}}]}]", get("/").tok("demo"), 200),
        c("§3.7 exact iss/sub, other token", "ALLOW", "[{from: [{source: {requestPrincipals: ['testing@secure.istio.io/testing@secure.istio.io']}}]}]", get("/").tok("TokenIssuer1"), 403),
        c("§3.7 exact, tests/common/jwt issuer 1", "ALLOW", "[{from: [{source: {requestPrincipals: ['test-issuer-1@istio.io/sub-1']}}]}]", get("/").tok("TokenIssuer1"), 200),
        c("§3.7 '*' requires a JWT", "ALLOW", "[{from: [{source: {requestPrincipals: ['*']}}]}]", get("/"), 403),
        c("§3.7 '*' with a JWT", "ALLOW", "[{from: [{source: {requestPrincipals: ['*']}}]}]", get("/").tok("TokenIssuer2"), 200),
        c("§3.7 'iss/*' any sub", "ALLOW", "[{from: [{source: {requestPrincipals: ['test-issuer-2@istio.io/*']}}]}]", get("/").tok("TokenIssuer2"), 200),
        c("§3.7 'iss/*' other issuer", "ALLOW", "[{from: [{source: {requestPrincipals: ['test-issuer-2@istio.io/*']}}]}]", get("/").tok("TokenIssuer1"), 403),
        c("§3.7 '*/sub' any issuer", "ALLOW", "[{from: [{source: {requestPrincipals: ['*/sub-1']}}]}]", get("/").tok("TokenIssuer1"), 200),
        c("§3.7 '*/sub' other sub", "ALLOW", "[{from: [{source: {requestPrincipals: ['*/sub-1']}}]}]", get("/").tok("TokenIssuer2"), 403),
        c("§3.7 'prefix*' without '/' = iss prefix", "ALLOW", "[{from: [{source: {requestPrincipals: ['test-issuer-*']}}]}]", get("/").tok("TokenIssuer2"), 200),
        c("§3.7 'iss/prefix*' = iss exact, sub prefix", "ALLOW", "[{from: [{source: {requestPrincipals: ['test-issuer-1@istio.io/sub*']}}]}]", get("/").tok("TokenIssuer1"), 200),
        c("§3.7 'iss/prefix*' sub prefix mismatch", "ALLOW", "[{from: [{source: {requestPrincipals: ['test-issuer-1@istio.io/xyz*']}}]}]", get("/").tok("TokenIssuer1"), 403),
        c("§3.7 '*suffix' without '/' = sub suffix", "ALLOW", "[{from: [{source: {requestPrincipals: ['*-2']}}]}]", get("/").tok("TokenIssuer2"), 200),
        c("§3.7 '*suffix/sub'", "ALLOW", "[{from: [{source: {requestPrincipals: ['*istio.io/sub-2']}}]}]", get("/").tok("TokenIssuer2"), 200),
        c("§3.7 '*suffix/sub' suffix mismatch", "ALLOW", "[{from: [{source: {requestPrincipals: ['*example.com/sub-2']}}]}]", get("/").tok("TokenIssuer2"), 403),
        c("§3.7 no '/' and no '*' ⇒ sub must be empty: never matches", "ALLOW", "[{from: [{source: {requestPrincipals: ['test-issuer-1@istio.io']}}]}]", get("/").tok("TokenIssuer1"), 403),
        c("§3.7 list values are ORed", "ALLOW", "[{from: [{source: {requestPrincipals: ['a/b', 'test-issuer-2@istio.io/sub-2']}}]}]", get("/").tok("TokenIssuer2"), 200),
        c("§3.7 case-sensitive", "ALLOW", "[{from: [{source: {requestPrincipals: ['Test-Issuer-1@istio.io/sub-1']}}]}]", get("/").tok("TokenIssuer1"), 403),
        c("§3.10 notRequestPrincipals '*' DENY idiom, no JWT (istio.io authn-policy task)", "DENY", "[{from: [{source: {notRequestPrincipals: ['*']}}]}]", get("/"), 403),
        c("§3.10 notRequestPrincipals '*' DENY idiom, JWT", "DENY", "[{from: [{source: {notRequestPrincipals: ['*']}}]}]", get("/").tok("demo"), 200),
        c("§3.10 notRequestPrincipals in ALLOW admits anonymous", "ALLOW", "[{from: [{source: {notRequestPrincipals: ['test-issuer-1@istio.io/sub-1']}}]}]", get("/"), 200),
        c("§3.10 notRequestPrincipals excludes that principal", "ALLOW", "[{from: [{source: {notRequestPrincipals: ['test-issuer-1@istio.io/sub-1']}}]}]", get("/").tok("TokenIssuer1"), 403),
        c("§3.3 requestPrincipals AND notRequestPrincipals", "ALLOW", "[{from: [{source: {requestPrincipals: ['*'], notRequestPrincipals: ['test-issuer-2@istio.io/*']}}]}]", get("/").tok("TokenIssuer1"), 200),
        c("§3.3 requestPrincipals AND notRequestPrincipals, excluded", "ALLOW", "[{from: [{source: {requestPrincipals: ['*'], notRequestPrincipals: ['test-issuer-2@istio.io/*']}}]}]", get("/").tok("TokenIssuer2"), 403),
        c("§3.3 any of several from entries", "ALLOW", "[{from: [{source: {requestPrincipals: ['x/y']}}, {source: {ipBlocks: ['10.0.0.1']}}]}]", get("/"), 200),
        // Peer identity: plaintext, no mTLS (§3.5, TestAuthz_DenyPlaintext).
        c("§3.5 principals never match plaintext", "ALLOW", "[{from: [{source: {principals: ['*']}}]}]", get("/").tok("demo"), 403),
        c("§3.5 DENY notPrincipals '*' rejects plaintext (TestAuthz_DenyPlaintext)", "DENY", "[{from: [{source: {notPrincipals: ['*']}}]}]", get("/"), 403),
        c("§3.5 DENY principals: plaintext never matches", "DENY", "[{from: [{source: {principals: ['cluster.local/ns/foo/sa/sleep']}}]}]", get("/"), 200),
        c("§3.5 ALLOW notPrincipals matches plaintext", "ALLOW", "[{from: [{source: {notPrincipals: ['cluster.local/ns/foo/sa/sleep']}}]}]", get("/"), 200),
        c("§3.5 namespaces never match plaintext", "ALLOW", "[{from: [{source: {namespaces: ['foo']}}]}]", get("/"), 403),
        c("§3.5 DENY namespaces: plaintext never matches", "DENY", "[{from: [{source: {namespaces: ['x']}}]}]", get("/"), 200),
        c("§3.5 DENY notNamespaces matches plaintext", "DENY", "[{from: [{source: {notNamespaces: ['foo']}}]}]", get("/"), 403),
        c("§3.5 serviceAccounts never match plaintext", "ALLOW", "[{from: [{source: {serviceAccounts: ['foo/sleep']}}]}]", get("/"), 403),
        c("§3.5 notServiceAccounts matches plaintext", "ALLOW", "[{from: [{source: {notServiceAccounts: ['sleep']}}]}]", get("/"), 200),
        c("§3.5 trustDomains never match plaintext", "ALLOW", "[{from: [{source: {trustDomains: ['cluster.local']}}]}]", get("/"), 403),
        c("§3.5 notTrustDomains matches plaintext", "DENY", "[{from: [{source: {notTrustDomains: ['*']}}]}]", get("/"), 403),
        c("§3.3 principals AND ipBlocks: AND fails on plaintext", "DENY", "[{from: [{source: {principals: ['*'], ipBlocks: ['10.0.0.0/8']}}]}]", get("/"), 200),
        // ipBlocks: the direct peer (§3.4 direct_remote_ip).
        c("§3.5 ipBlocks single address", "ALLOW", "[{from: [{source: {ipBlocks: ['10.0.0.1']}}]}]", get("/"), 200),
        c("§3.5 ipBlocks CIDR", "ALLOW", "[{from: [{source: {ipBlocks: ['10.0.0.0/24']}}]}]", get("/").src("10.0.0.200"), 200),
        c("§3.5 ipBlocks outside", "ALLOW", "[{from: [{source: {ipBlocks: ['10.0.0.0/24']}}]}]", get("/").src("10.0.1.1"), 403),
        c("§3.5 ipBlocks non-canonical prefix is masked (Envoy CidrRange)", "ALLOW", "[{from: [{source: {ipBlocks: ['10.0.0.77/8']}}]}]", get("/").src("10.9.9.9"), 200),
        c("§3.5 ipBlocks /0", "DENY", "[{from: [{source: {ipBlocks: ['0.0.0.0/0']}}]}]", get("/").src("192.0.2.1"), 403),
        c("§3.5 ipBlocks IPv6", "ALLOW", "[{from: [{source: {ipBlocks: ['fd00::/8']}}]}]", get("/").src("fd00::1"), 200),
        c("§3.5 ipBlocks IPv4 rule, IPv4-mapped peer", "ALLOW", "[{from: [{source: {ipBlocks: ['10.0.0.0/8']}}]}]", get("/").src("::ffff:10.1.2.3"), 200),
        c("§3.5 notIpBlocks", "DENY", "[{from: [{source: {notIpBlocks: ['10.0.0.0/24']}}]}]", get("/").src("192.0.2.1"), 403),
        c("§3.5 notIpBlocks inside", "DENY", "[{from: [{source: {notIpBlocks: ['10.0.0.0/24']}}]}]", get("/"), 200),
        c("§3.4 ipBlocks ignore X-Forwarded-For", "ALLOW", "[{from: [{source: {ipBlocks: ['192.0.2.0/24']}}]}]", get("/").h("x-forwarded-for", "192.0.2.7"), 403),
        // remoteIpBlocks: X-Forwarded-For (use_remote_address false, 0 trusted hops) or the peer.
        c("§3.4 remoteIpBlocks without XFF = peer", "ALLOW", "[{from: [{source: {remoteIpBlocks: ['10.0.0.1/32']}}]}]", get("/"), 200),
        c("§3.4 remoteIpBlocks from XFF", "ALLOW", "[{from: [{source: {remoteIpBlocks: ['192.0.2.0/24']}}]}]", get("/").h("X-Forwarded-For", "192.0.2.7"), 200),
        c("§3.4 remoteIpBlocks: last XFF entry is the client (0 trusted hops)", "ALLOW", "[{from: [{source: {remoteIpBlocks: ['192.0.2.0/24']}}]}]", get("/").h("x-forwarded-for", "192.0.2.7, 198.51.100.1"), 403),
        c("§3.4 remoteIpBlocks: last entry matches", "DENY", "[{from: [{source: {remoteIpBlocks: ['198.51.100.0/24']}}]}]", get("/").h("x-forwarded-for", "192.0.2.7, 198.51.100.1"), 403),
        c("§3.4 remoteIpBlocks: XFF not an IP ⇒ peer", "ALLOW", "[{from: [{source: {remoteIpBlocks: ['10.0.0.1']}}]}]", get("/").h("x-forwarded-for", "unknown"), 200),
        c("§3.4 notRemoteIpBlocks", "DENY", "[{from: [{source: {notRemoteIpBlocks: ['192.0.2.0/24']}}]}]", get("/").h("x-forwarded-for", "203.0.113.9"), 403),
        c("§3.4 notRemoteIpBlocks inside", "DENY", "[{from: [{source: {notRemoteIpBlocks: ['192.0.2.0/24']}}]}]", get("/").h("x-forwarded-for", "192.0.2.9"), 200),
    ]
}

#[test]
fn source_table() {
    run_all(&cases());
}

pub fn count() -> usize {
    cases().len()
}
