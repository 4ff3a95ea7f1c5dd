//! `authz::evaluate` on structured random requests against a fixed policy
//! set (`fixtures::policy_yaml`: every token location, action and match
//! attribute), with the Istio sample tokens and HMAC tokens whose claims
//! the rules look at.
//!
//! Properties:
//! - a decision is well formed: 200/400/401/403, `allowed` iff 200, a body
//!   iff denied, a forwarded path only when allowed;
//! - the token cache changes nothing: the decision without a cache, with a
//!   fresh one (miss) and again (hit) are equal;
//! - a header no policy mentions never changes the decision, wherever it
//!   is added;
//! - a request and the same request with its path already normalized get
//!   the same decision (the backend, which receives the normalized path,
//!   is judged by the same rules);
//! - heap held ≤ 64 × request size + 256 KiB (docs/fuzzing.md).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use jwtgate::authz::{evaluate, normalize_path, Decision, PathNormalization, Request};
use jwtgate_fuzz::request::OwnedRequest;
use jwtgate::jwt::{CacheConfig, TokenCache};
use jwtgate::policy::{PolicySet, WorkloadPolicy, WorkloadRef};
use jwtgate_fuzz::alloc::{measure, Bound};
use jwtgate_fuzz::fixtures::{lookup, policy_tokens, policy_yaml, Lookup, MENTIONED_HEADERS, NOW};
use jwtgate_fuzz::pick::{nth, Text};
use libfuzzer_sys::fuzz_target;

const METHODS: &[&str] = &["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "get"];
const SEGMENTS: &[&str] = &[
    "public", "admin", "secure", "api", "v1", "items", "audit", "custom", "mtls", "net", "health",
    "q", "x.json", "private", "%2e%2e", "%2F", "%5C", "Admin", "%61dmin", "..;", "a%00b",
];
const HOSTS: &[&str] = &[
    "httpbin.foo:8000",
    "api.example.com",
    "db.internal",
    "HTTPBIN.FOO",
    "",
];
const HEADER_NAMES: &[&str] = MENTIONED_HEADERS;
const HEADER_VALUES: &[&str] = &[
    "1",
    "yes-please",
    "curl/8.5",
    "admin",
    "db-ops",
    "*",
    "",
    "https://a.example",
    "GET",
    "198.51.100.7",
    "203.0.113.9, 10.0.0.9",
    "session=a.b.c",
    "x=1",
];
const QUERY_KEYS: &[&str] = &["token", "access_token", "x", "a"];
const IPS: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0209)),
];
const PORTS: &[u16] = &[8000, 80, 9999, 7777, 0];
const NOWS: &[u64] = &[NOW, NOW + 7200, 0, u64::MAX];

#[derive(Arbitrary, Debug)]
enum Seg {
    Known(u8),
    Dot,
    DotDot,
    Empty,
    Encoded(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Tok {
    Known(u8),
    /// A known token with one byte changed.
    Tampered(u8, u16, u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Placement {
    Bearer(Tok),
    Header(Text, Tok),
    Query(Text, Tok),
    Cookie(Text, Tok),
}

#[derive(Arbitrary, Debug)]
enum Ip {
    Known(u8),
    V4(u32),
    V6(u128),
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: Text,
    segments: Vec<Seg>,
    raw_path: Option<String>,
    query: Option<Vec<(Text, Text)>>,
    fragment: Option<String>,
    host: Text,
    headers: Vec<(Text, Text)>,
    tokens: Vec<Placement>,
    source: Ip,
    destination: Ip,
    port: Result<u8, u16>,
    mode: u8,
    now: u8,
    unrelated_at: u8,
    unrelated_name: String,
    unrelated_value: String,
}

struct Fixed {
    policy: WorkloadPolicy,
    lookup: Lookup,
    tokens: Vec<String>,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let (set, errors) = PolicySet::parse(&[("fixed.yaml".into(), policy_yaml())]);
        assert!(errors.is_empty(), "fixture policies: {errors:?}");
        let w = WorkloadRef {
            namespace: "foo".into(),
            labels: [("app".to_string(), "httpbin".to_string())].into(),
        };
        Fixed {
            policy: set.for_workload(&w, "istio-system"),
            lookup: lookup(),
            tokens: policy_tokens(),
        }
    })
}

fn token(t: &Tok, pool: &[String]) -> String {
    match t {
        Tok::Known(i) => pool[*i as usize % pool.len()].clone(),
        Tok::Tampered(i, at, b) => {
            let mut bytes = pool[*i as usize % pool.len()].clone().into_bytes();
            if !bytes.is_empty() {
                let at = *at as usize % bytes.len();
                bytes[at] = b"ABCabc012-_."[*b as usize % 12];
            }
            String::from_utf8(bytes).expect("ASCII")
        }
        Tok::Raw(s) => s.clone(),
    }
}

fn ip(i: &Ip) -> IpAddr {
    match i {
        Ip::Known(k) => nth(IPS, *k),
        Ip::V4(v) => IpAddr::V4(Ipv4Addr::from(*v)),
        Ip::V6(v) => IpAddr::V6(Ipv6Addr::from(*v)),
    }
}

fn request(input: &Input, f: &Fixed) -> OwnedRequest {
    let mut path = match &input.raw_path {
        Some(p) => p.clone(),
        None => {
            let mut p = String::new();
            for s in &input.segments {
                p.push('/');
                match s {
                    Seg::Known(i) => p.push_str(nth(SEGMENTS, *i)),
                    Seg::Dot => p.push('.'),
                    Seg::DotDot => p.push_str(".."),
                    Seg::Empty => {}
                    Seg::Encoded(b) => p.push_str(&format!("%{b:02x}")),
                    Seg::Raw(r) => p.push_str(r),
                }
            }
            if p.is_empty() {
                p.push('/');
            }
            p
        }
    };
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.get(HEADER_NAMES).to_owned(),
                v.get(HEADER_VALUES).to_owned(),
            )
        })
        .collect();
    let mut query: Vec<String> = input
        .query
        .iter()
        .flatten()
        .map(|(k, v)| format!("{}={}", k.get(QUERY_KEYS), v.get(HEADER_VALUES)))
        .collect();
    for p in &input.tokens {
        match p {
            Placement::Bearer(t) => headers.push((
                "authorization".into(),
                format!("Bearer {}", token(t, &f.tokens)),
            )),
            Placement::Header(n, t) => {
                headers.push((n.get(HEADER_NAMES).to_owned(), token(t, &f.tokens)))
            }
            Placement::Query(k, t) => {
                query.push(format!("{}={}", k.get(QUERY_KEYS), token(t, &f.tokens)))
            }
            Placement::Cookie(k, t) => headers.push((
                "cookie".into(),
                format!("{}={}", k.get(&["session", "token"]), token(t, &f.tokens)),
            )),
        }
    }
    if input.query.is_some() || !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    if let Some(frag) = &input.fragment {
        path.push('#');
        path.push_str(frag);
    }
    OwnedRequest {
        method: input.method.get(METHODS).to_owned(),
        path,
        host: input.host.get(HOSTS).to_owned(),
        headers,
        source_ip: ip(&input.source),
        destination_ip: ip(&input.destination),
        destination_port: match input.port {
            Ok(i) => nth(PORTS, i),
            Err(p) => p,
        },
    }
}

const BOUND: Bound = Bound {
    per_byte: 64,
    fixed: 256 * 1024,
};

fn small_cache() -> TokenCache {
    TokenCache::new(CacheConfig {
        max_entries: 16,
        max_bytes: 64 * 1024,
        negative_ttl_secs: 30,
        negative_max_entries: 16,
        negative_max_bytes: 64 * 1024,
        max_ttl_secs: 3600,
    })
}

fuzz_target!(|input: Input| {
    let f = fixed();
    let req = request(&input, f);
    let mode = nth(
        &[
            PathNormalization::DecodeAndMergeSlashes,
            PathNormalization::MergeSlashes,
            PathNormalization::Base,
        ],
        input.mode,
    );
    let now = nth(NOWS, input.now);
    let decide = |r: &OwnedRequest, cache: Option<&TokenCache>| {
        let view: Request = r.view();
        evaluate(&f.policy, &view, &f.lookup, now, mode, cache)
    };

    let (d, peak) = measure(|| decide(&req, None));
    BOUND.check("evaluate", req.size(), peak);
    well_formed(&d);

    let cache = small_cache();
    assert_eq!(
        decide(&req, Some(&cache)),
        d,
        "decision changed with a cache (miss)"
    );
    assert_eq!(
        decide(&req, Some(&cache)),
        d,
        "decision changed with a cache (hit)"
    );

    // A header no policy mentions.
    let suffix: String = input
        .unrelated_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let name = format!("x-fuzz-{suffix}");
    assert!(!MENTIONED_HEADERS
        .iter()
        .any(|m| m.eq_ignore_ascii_case(&name)));
    let mut more = req.clone();
    more.headers.insert(
        input.unrelated_at as usize % (more.headers.len() + 1),
        (name, input.unrelated_value.clone()),
    );
    assert_eq!(
        decide(&more, None),
        d,
        "an unmentioned header changed the decision"
    );

    // The normalized path is decided like the original.
    if let Ok((path, query)) = normalize_path(&req.path, mode) {
        let mut normal = req.clone();
        normal.path = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        assert_eq!(
            decide(&normal, None),
            d,
            "normalized path {:?} decided differently",
            normal.path
        );
    }
});

fn well_formed(d: &Decision) {
    assert!(
        matches!(d.status, 200 | 400 | 401 | 403),
        "status {}",
        d.status
    );
    assert_eq!(d.allowed, d.status == 200);
    // Envoy's connection manager refuses a path it cannot normalize (`%00`)
    // with an empty 400, before any filter; every other refusal has a body.
    if d.status != 400 {
        assert_eq!(d.body.is_empty(), d.allowed, "body {:?}", d.body);
    }
    if d.allowed {
        assert!(
            d.forward_path.starts_with('/'),
            "forward path {:?}",
            d.forward_path
        );
        assert!(d.www_authenticate.is_none());
    } else {
        assert!(d.forward_path.is_empty());
        assert!(d.headers.add.is_empty() && d.headers.remove.is_empty());
    }
    // Authentication failures (all 401s, and the audience 403) carry a
    // `www-authenticate` challenge; RBAC denials do not.
    let authn = d.status == 401 || d.body == "Audiences in Jwt are not allowed";
    assert_eq!(d.www_authenticate.is_some(), authn, "{d:?}");
}
