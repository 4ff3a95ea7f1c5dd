//! Parsing, validation and selection (§2.1, §2.8, §3.14).

use super::*;

fn parse(yaml: &str) -> (PolicySet, Vec<PolicyError>) {
    PolicySet::parse(&[("p.yaml".into(), yaml.into())])
}

fn wl(ns: &str, labels: &[(&str, &str)]) -> WorkloadRef {
    WorkloadRef {
        namespace: ns.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

const RA: &str = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n";
const AP: &str = "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n";

#[test]
fn invalid_resources_are_reported_and_others_load() {
    // (spec snippet, expected message fragment); each must name the field.
    let cases: &[(&str, &str, &str)] = &[
        (RA, "jwtRules: [{issuer: a, issuerr: b}]", "spec.jwtRules[0].issuerr: unknown field `issuerr`"),
        (RA, "jwtRules: [{audiences: [x]}]", "spec.jwtRules[0].issuer: issuer or jwksUri must be set"),
        (RA, "jwtRules: [{issuer: a, jwks: '{}', jwksUri: 'https://x'}]", "jwtRules[0].jwks: only one of"),
        (RA, "jwtRules: [{issuer: a, jwks: 'nope'}]", "jwtRules[0].jwks: Jwks is an invalid JSON"),
        (RA, "jwtRules: [{issuer: a, jwksUri: 'ftp://x'}]", "jwtRules[0].jwksUri"),
        (RA, "jwtRules: [{issuer: a, timeout: 5 seconds}]", "jwtRules[0].timeout"),
        (RA, "jwtRules: [{issuer: a, fromHeaders: [{name: ''}]}]", "fromHeaders[0].name"),
        (RA, "jwtRules: [{issuer: a, outputClaimToHeaders: [{header: 'a b', claim: c}]}]", "outputClaimToHeaders[0].header"),
        (RA, "jwtRules: [{issuer: a, audiences: 'x'}]", "spec.jwtRules[0].audiences"),
        (RA, "selector: {matchLabels: {a: b}}\n  targetRef: {kind: Gateway, name: g}", "only one of selector"),
        (AP, "action: MAYBE", "spec.action"),
        (AP, "action: DENY", "spec.rules: required"),
        (AP, "action: CUSTOM\n  rules: [{}]", "spec.provider.name"),
        (AP, "provider: {name: x}\n  rules: [{}]", "spec.provider: only allowed"),
        (AP, "rules: [{from: []}]", "spec.rules[0].from"),
        (AP, "rules: [{to: [{}]}]", "spec.rules[0].to[0].operation: required"),
        (AP, "rules: [{to: [{operation: {}}]}]", "operation: at least one field"),
        (AP, "rules: [{to: [{operation: {ports: ['80x']}}]}]", "to[0].operation.ports[0]: invalid value"),
        (AP, "rules: [{to: [{operation: {ports: ['70000']}}]}]", "ports[0]"),
        (AP, "rules: [{to: [{operation: {paths: ['']}}]}]", "paths[0]: must not be empty"),
        (AP, "rules: [{to: [{operation: {paths: ['/a/{x}']}}]}]", "paths[0]: invalid value"),
        (AP, "rules: [{from: [{source: {ipBlocks: ['1.2.3.4/40']}}]}]", "ipBlocks[0]"),
        (AP, "rules: [{when: [{key: destination.namespace, values: [a]}]}]", "when[0].key: unknown condition key"),
        (AP, "rules: [{when: [{key: request.headers, values: [a]}]}]", "when[0].key"),
        (AP, "rules: [{when: [{key: 'request.auth.claims[a]'}]}]", "when[0].values"),
        (AP, "rules: [{to: [{operation: {path: [/a]}}]}]", "unknown field `path`"),
        (
            AP,
            "action: CUSTOM\n  provider: {name: x}\n  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]",
            "not allowed with action CUSTOM",
        ),
        // §3.14, added for issue #4.
        (AP, "selector: {matchLabels: {a: b}}\n  targetRef: {kind: Gateway, name: g}", "only one of selector"),
        (AP, "action: DENY\n  rules: []", "spec.rules: required"),
        (AP, "action: CUSTOM\n  provider: {name: x}\n  rules: [{from: [{source: {namespaces: [a]}}]}]", "namespaces: not allowed with action CUSTOM"),
        (AP, "action: CUSTOM\n  provider: {name: x}\n  rules: [{when: [{key: 'request.auth.claims[a]', values: [b]}]}]", "not allowed with action CUSTOM"),
        (AP, "rules: [{from: [{source: {ipBlocks: ['10.0.0.0/+8']}}]}]", "from[0].source.ipBlocks[0]: invalid value"),
        (AP, "rules: [{from: [{source: {remoteIpBlocks: ['bogus']}}]}]", "remoteIpBlocks[0]"),
        (AP, "rules: [{when: [{key: source.ip, values: ['300.1.1.1']}]}]", "when[0].values[0]"),
        (AP, "rules: [{from: [{source: {serviceAccounts: ['a/b/c']}}]}]", "serviceAccounts[0]"),
        (AP, "rules: [{from: [{source: {serviceAccounts: ['sa*']}}]}]", "without wildcards"),
        (AP, "rules: [{from: [{source: {serviceAccounts: [a], principals: [b]}}]}]", "cannot be combined"),
        (AP, "rules: [{from: [{source: {trustDomains: ['a*b']}}]}]", "trustDomains[0]"),
        (AP, "rules: [{from: [{source: {notTrustDomains: ['td/x']}}]}]", "notTrustDomains[0]"),
        (AP, "rules: [{to: [{operation: {paths: ['/a/{**}/{*}']}}]}]", "paths[0]: invalid value"),
        (AP, "rules: [{to: [{operation: {paths: ['/a b/{*}']}}]}]", "paths[0]: invalid value"),
        (AP, "rules: [{when: [{key: experimental.envoy.filters.x, values: [a]}]}]", "when[0].key"),
        (AP, "rules: [{when: [{key: 'request.auth.claims[]', values: [a]}]}]", "unknown condition key"),
        (AP, "rules: [{when: [{key: remote.port, values: ['1']}]}]", "unknown condition key"),
        (AP, "rules: [{from: [{}]}]", "from[0].source: required"),
        (AP, "rules: [{from: [{source: {}}]}]", "source: at least one field"),
        (AP, "rules: [{to: []}]", "spec.rules[0].to"),
        (AP, "rules: [{from: [{source: {principals: ['']}}]}]", "principals[0]: must not be empty"),
        (AP, "action: AUDIT\n  provider: {name: x}\n  rules: [{}]", "spec.provider: only allowed"),
    ];
    for (head, spec, want) in cases {
        let yaml = format!(
            "{head}metadata: {{name: bad, namespace: foo}}\nspec:\n  {spec}\n---\n{RA}metadata: {{name: good}}\nspec: {{jwtRules: [{{issuer: x}}]}}\n"
        );
        let (set, errors) = parse(&yaml);
        assert_eq!(errors.len(), 1, "{spec}: {errors:?}");
        let e = &errors[0];
        assert!(e.message.contains(want), "{spec}: got {:?}", e.message);
        assert_eq!(e.origin, "p.yaml");
        let kind = if *head == RA {
            "RequestAuthentication"
        } else {
            "AuthorizationPolicy"
        };
        assert_eq!(e.resource, format!("{kind} foo/bad"));
        // The good resource still loads; its namespace defaults to "default".
        assert_eq!(set.counts().0, 1, "{spec}");
        assert_eq!(
            set.for_workload(&wl("default", &[]), "istio-system")
                .jwt_rules
                .len(),
            1
        );
    }
}

#[test]
fn documents_kinds_and_versions() {
    let yaml = format!(
        "---\n# only a comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n---\n\
         apiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: old}}\n---\n\
         {AP}metadata: {{name: noname-ns}}\n---\n{AP}spec: {{}}\n---\n\
         apiVersion: v1\nkind: List\nitems:\n- {{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {{name: in-list}}}}\n"
    );
    let (set, errors) = parse(&yaml);
    assert_eq!(set.counts(), (0, 2));
    let msgs: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.resource, e.message))
        .collect();
    assert_eq!(errors.len(), 2, "{msgs:?}");
    // Documents that cannot be read come first, then those that do not parse.
    assert!(
        msgs[0].contains("document 5: AuthorizationPolicy: metadata.name is required"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].contains("AuthorizationPolicy default/old: apiVersion security.istio.io/v1alpha1"),
        "{msgs:?}"
    );
    // Broken YAML is reported with the document number.
    let (_, errors) = parse("a: [\n");
    assert_eq!(errors[0].resource, "document 1");
}

#[test]
fn selection_and_union() {
    // §2.1: workload namespace + root namespace, matchLabels ⊆ labels,
    // targetRef policies ignored, rules unioned and sorted by issuer.
    let yaml = format!(
        "{RA}metadata: {{name: ns-wide, namespace: foo}}\nspec: {{jwtRules: [{{issuer: c}}]}}\n---\n\
         {RA}metadata: {{name: sel, namespace: foo}}\nspec: {{selector: {{matchLabels: {{app: a}}}}, jwtRules: [{{issuer: b, jwksUri: 'https://k/1', timeout: 1m30s}}]}}\n---\n\
         {RA}metadata: {{name: other-sel, namespace: foo}}\nspec: {{selector: {{matchLabels: {{app: z}}}}, jwtRules: [{{issuer: z}}]}}\n---\n\
         {RA}metadata: {{name: mesh, namespace: istio-system}}\nspec: {{jwtRules: [{{issuer: a, jwksUri: 'https://k/1'}}]}}\n---\n\
         {RA}metadata: {{name: gw, namespace: foo}}\nspec: {{targetRefs: [{{kind: Gateway, name: g}}], jwtRules: [{{issuer: g}}]}}\n---\n\
         {RA}metadata: {{name: elsewhere, namespace: bar}}\nspec: {{jwtRules: [{{issuer: e}}]}}\n---\n\
         {AP}metadata: {{name: dry, namespace: foo, annotations: {{istio.io/dry-run: 'true'}}}}\nspec: {{}}\n---\n\
         {AP}metadata: {{name: allow-nothing, namespace: foo}}\nspec: {{}}\n"
    );
    let (set, errors) = parse(&yaml);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(set.counts(), (6, 2));
    let w = set.for_workload(&wl("foo", &[("app", "a"), ("v", "1")]), "istio-system");
    let issuers: Vec<&str> = w.jwt_rules.iter().map(|r| r.issuer.as_str()).collect();
    assert_eq!(issuers, vec!["a", "b", "c"]);
    assert_eq!(w.authz.len(), 1);
    assert_eq!(w.authz[0].id(), "foo/allow-nothing");
    let w = set.for_workload(&wl("baz", &[]), "istio-system");
    assert_eq!(w.jwt_rules.len(), 1);
    assert!(w.authz.is_empty() && !w.is_empty());
    assert!(set.for_workload(&wl("baz", &[]), "other-root").is_empty());
    assert_eq!(
        set.jwks_uris(),
        vec![(
            "https://k/1".to_string(),
            std::time::Duration::from_secs(90)
        )]
    );
}

#[test]
fn unsupported_fields_are_reported() {
    let yaml = format!(
        "{AP}metadata: {{name: p, namespace: foo}}\nspec:\n  rules:\n  - from: [{{source: {{principals: [a], notNamespaces: [b]}}}}]\n    when: [{{key: source.namespace, values: [x]}}]\n"
    );
    let (set, errors) = parse(&yaml);
    assert!(errors.is_empty());
    assert_eq!(set.warnings().len(), 1);
    let m = &set.warnings()[0].message;
    assert!(
        m.contains("source.principals")
            && m.contains("source.notNamespaces")
            && m.contains("when.source.namespace"),
        "{m}"
    );
}

#[test]
fn jwt_rule_defaults() {
    let (set, _) = parse(&format!(
        "{RA}metadata: {{name: r}}\nspec:\n  jwtRules:\n  - issuer: i\n  - issuer: j\n    fromParams: [t]\n    spaceDelimitedClaims: [roles]\n    timeout: 250ms\n"
    ));
    let w = set.for_workload(&wl("default", &[]), "istio-system");
    let (i, j) = (&w.jwt_rules[0], &w.jwt_rules[1]);
    assert_eq!(i.locations, crate::jwt::TokenLocation::defaults());
    assert_eq!(i.timeout, std::time::Duration::from_secs(5));
    assert_eq!(
        j.locations,
        vec![crate::jwt::TokenLocation::Param("t".into())]
    );
    assert_eq!(
        j.space_delimited_claims,
        vec!["scope", "permission", "roles"]
    );
    assert_eq!(j.timeout, std::time::Duration::from_millis(250));
    assert!(matches!(i.jwks, JwksSource::Unset));
}

#[test]
fn principal_split() {
    // §3.7 examples.
    use StringPattern::*;
    let cases: &[(&str, StringPattern, StringPattern)] = &[
        ("*", Present, Present),
        ("foo*", Prefix("foo".into()), Present),
        ("foo/*", Exact("foo".into()), Present),
        ("foo/ba*", Exact("foo".into()), Prefix("ba".into())),
        ("*/foo", Present, Exact("foo".into())),
        ("*bar/foo", Suffix("bar".into()), Exact("foo".into())),
        ("*foo", Present, Suffix("foo".into())),
        (
            "https://ex.com/realms/x/sub-1",
            Exact("https://ex.com/realms/x".into()),
            Exact("sub-1".into()),
        ),
        ("foo", Exact("foo".into()), Exact(String::new())),
    ];
    for (v, iss, sub) in cases {
        assert_eq!(
            rules::principal(v),
            Some(ValueMatch::Principal {
                iss: iss.clone(),
                sub: sub.clone()
            }),
            "{v}"
        );
    }
}

#[test]
fn dry_run_is_read_and_validated_as_istio_does() {
    // istiod reads the value with Go's strconv.ParseBool; its webhook
    // refuses other values, other actions and other kinds (§3.1).
    let with = |value: &str, spec: &str| {
        format!(
            "{AP}metadata: {{name: d, namespace: foo, annotations: {{istio.io/dry-run: '{value}'}}}}\nspec:\n  {spec}\n"
        )
    };
    let deny_all = "action: DENY\n  rules: [{}]";
    for (value, dry) in [
        ("true", true),
        ("True", true),
        ("TRUE", true),
        ("t", true),
        ("1", true),
        ("false", false),
        ("F", false),
        ("0", false),
    ] {
        let (set, errors) = parse(&with(value, deny_all));
        assert!(errors.is_empty(), "{value}: {errors:?}");
        let enforced = set.for_workload(&wl("foo", &[]), "istio-system").authz;
        assert_eq!(enforced.is_empty(), dry, "{value}");
    }
    let refused = [
        (with("yes", deny_all), "\"yes\" is not a boolean"),
        (with("", deny_all), "\"\" is not a boolean"),
        (
            with("true", "action: AUDIT\n  rules: [{}]"),
            "only supported with action ALLOW or DENY",
        ),
        (
            with("false", "action: CUSTOM\n  provider: {name: x}\n  rules: [{}]"),
            "only supported with action ALLOW or DENY",
        ),
        (
            format!("{RA}metadata: {{name: r, namespace: foo, annotations: {{istio.io/dry-run: 'true'}}}}\nspec: {{}}\n"),
            "only AuthorizationPolicy supports this annotation",
        ),
    ];
    for (yaml, message) in refused {
        let (set, errors) = parse(&yaml);
        assert_eq!(set.counts(), (0, 0), "{yaml}");
        assert_eq!(errors.len(), 1, "{yaml}");
        assert!(
            errors[0]
                .message
                .starts_with("metadata.annotations.istio.io/dry-run: "),
            "{}",
            errors[0].message
        );
        assert!(errors[0].message.contains(message), "{}", errors[0].message);
    }
    // A dry-run ALLOW does not make the workload allow-nothing: Istio puts
    // it in shadow rules only, and an RBAC filter without enforced rules
    // lets everything through (Istio's builder testdata dry-run-allow).
    let (set, _) = parse(&with(
        "true",
        "rules: [{to: [{operation: {paths: ['/x']}}]}]",
    ));
    assert!(set.for_workload(&wl("foo", &[]), "istio-system").is_empty());
}
