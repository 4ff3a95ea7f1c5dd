//! Which TCP ports of a workload are steered. Like the Istio sidecar, every
//! inbound TCP port is by default: Kubernetes container ports are only
//! informational, and an app may listen on a port it never declared.
//!
//! Annotations (pods), Istio's spelling honoured so existing manifests keep
//! their meaning:
//!
//! | annotation | meaning |
//! |---|---|
//! | `jwtgate.io/includeInboundPorts`, else `jwtgate.io/ports`, else `traffic.sidecar.istio.io/includeInboundPorts` | `*` (default): every port; a list: only those; empty: none |
//! | `jwtgate.io/excludeInboundPorts`, else `traffic.sidecar.istio.io/excludeInboundPorts` | ports never steered |
//!
//! jwtgate's own spelling wins over Istio's for each of the two keys, so a
//! pod can carry Istio's value for a sidecar and a different one for jwtgate.
//! A malformed value is an error for the pod's owner (the caller turns it into
//! an Event) and the pod gets every port steered: a typo must never open a
//! port.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub const JWTGATE_INCLUDE: &str = "jwtgate.io/includeInboundPorts";
/// Older jwtgate spelling of `JWTGATE_INCLUDE` (a port list).
pub const JWTGATE_PORTS: &str = "jwtgate.io/ports";
pub const JWTGATE_EXCLUDE: &str = "jwtgate.io/excludeInboundPorts";
pub const ISTIO_INCLUDE: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const ISTIO_EXCLUDE: &str = "traffic.sidecar.istio.io/excludeInboundPorts";

/// The steered ports of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSelection {
    /// Every TCP port except these (Istio's default, `includeInboundPorts: "*"`).
    All { exclude: BTreeSet<u16> },
    /// Only these ports (an explicit list, excluded ports already removed).
    Only(BTreeSet<u16>),
}

impl Default for PortSelection {
    fn default() -> Self {
        PortSelection::all()
    }
}

impl PortSelection {
    /// Every port, none excluded: the default, and the fail-closed answer to
    /// a malformed annotation.
    pub fn all() -> Self {
        PortSelection::All {
            exclude: BTreeSet::new(),
        }
    }

    /// `include` (`None` = every port) minus `exclude`.
    pub fn new(include: Option<BTreeSet<u16>>, exclude: BTreeSet<u16>) -> Self {
        match include {
            None => PortSelection::All { exclude },
            Some(only) => PortSelection::Only(only.difference(&exclude).copied().collect()),
        }
    }

    /// Whether connections to `port` go through the verifier.
    pub fn steers(&self, port: u16) -> bool {
        match self {
            PortSelection::All { exclude } => !exclude.contains(&port),
            PortSelection::Only(only) => only.contains(&port),
        }
    }

    /// No port at all is steered (an empty include list).
    pub fn is_empty(&self) -> bool {
        matches!(self, PortSelection::Only(only) if only.is_empty())
    }
}

impl fmt::Display for PortSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |ports: &BTreeSet<u16>| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            PortSelection::All { exclude } if exclude.is_empty() => f.write_str("all"),
            PortSelection::All { exclude } => write!(f, "all except {}", list(exclude)),
            PortSelection::Only(only) => write!(f, "{}", list(only)),
        }
    }
}

/// A port annotation that does not parse: what the pod's Event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAnnotation {
    pub annotation: &'static str,
    pub value: String,
    pub problem: String,
}

impl fmt::Display for BadAnnotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "annotation {}: {:?}: {}; every port is steered until it is fixed",
            self.annotation, self.value, self.problem
        )
    }
}

/// The selection a pod's annotations ask for. On error the caller steers
/// every port (`PortSelection::all()`) and reports the error.
pub fn from_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<PortSelection, BadAnnotation> {
    let pick = |keys: &[&'static str]| {
        keys.iter()
            .find_map(|k| annotations.get(*k).map(|v| (*k, v.as_str())))
    };
    let include = match pick(&[JWTGATE_INCLUDE, JWTGATE_PORTS, ISTIO_INCLUDE]) {
        None => None,
        Some((_, v)) if v.trim() == "*" => None,
        Some((key, v)) => Some(parse_list(key, v)?),
    };
    let exclude = match pick(&[JWTGATE_EXCLUDE, ISTIO_EXCLUDE]) {
        None => BTreeSet::new(),
        Some((key, v)) => parse_list(key, v)?,
    };
    Ok(PortSelection::new(include, exclude))
}

/// `"8000, 9080"` → {8000, 9080}; empty → {}.
fn parse_list(annotation: &'static str, value: &str) -> Result<BTreeSet<u16>, BadAnnotation> {
    let mut ports = BTreeSet::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<u16>() {
            Ok(p) if p != 0 => {
                ports.insert(p);
            }
            _ => {
                return Err(BadAnnotation {
                    annotation,
                    value: value.to_string(),
                    problem: format!("{item:?} is not a port (1-65535)"),
                })
            }
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn set(ports: &[u16]) -> BTreeSet<u16> {
        ports.iter().copied().collect()
    }

    #[test]
    fn every_port_by_default() {
        let sel = from_annotations(&ann(&[])).unwrap();
        assert_eq!(sel, PortSelection::all());
        assert!(sel.steers(1) && sel.steers(65535) && sel.steers(9080));
        assert_eq!(sel.to_string(), "all");
    }

    #[test]
    fn istio_spelling_is_honoured() {
        let sel = from_annotations(&ann(&[(ISTIO_EXCLUDE, "22, 3306")])).unwrap();
        assert_eq!(
            sel,
            PortSelection::All {
                exclude: set(&[22, 3306])
            }
        );
        assert!(!sel.steers(22) && sel.steers(8080));
        let sel = from_annotations(&ann(&[
            (ISTIO_INCLUDE, "8080,9090"),
            (ISTIO_EXCLUDE, "9090"),
        ]))
        .unwrap();
        assert_eq!(sel, PortSelection::Only(set(&[8080])));
        let sel = from_annotations(&ann(&[(ISTIO_INCLUDE, " * ")])).unwrap();
        assert_eq!(sel, PortSelection::all());
        // Istio: an empty include list disables inbound capture.
        let sel = from_annotations(&ann(&[(ISTIO_INCLUDE, "")])).unwrap();
        assert!(sel.is_empty());
    }

    #[test]
    fn jwtgate_spelling_wins_per_key() {
        let sel = from_annotations(&ann(&[
            (ISTIO_INCLUDE, ""),
            (JWTGATE_INCLUDE, "*"),
            (ISTIO_EXCLUDE, "80"),
        ]))
        .unwrap();
        assert_eq!(
            sel,
            PortSelection::All {
                exclude: set(&[80])
            }
        );
        let sel = from_annotations(&ann(&[(ISTIO_EXCLUDE, "80"), (JWTGATE_EXCLUDE, "")])).unwrap();
        assert_eq!(sel, PortSelection::all());
        // The older `jwtgate.io/ports` is an include list, below the new key.
        let sel = from_annotations(&ann(&[(JWTGATE_PORTS, "7000, 7001")])).unwrap();
        assert_eq!(sel, PortSelection::Only(set(&[7000, 7001])));
        let sel =
            from_annotations(&ann(&[(JWTGATE_PORTS, "7000"), (JWTGATE_INCLUDE, "*")])).unwrap();
        assert_eq!(sel, PortSelection::all());
    }

    #[test]
    fn malformed_values_are_errors_naming_the_annotation() {
        for (key, value) in [
            (ISTIO_EXCLUDE, "22,ssh"),
            (ISTIO_INCLUDE, "0"),
            (JWTGATE_INCLUDE, "70000"),
            (JWTGATE_EXCLUDE, "*"),
            (JWTGATE_PORTS, "http"),
        ] {
            let err = from_annotations(&ann(&[(key, value)])).unwrap_err();
            assert_eq!(err.annotation, key);
            assert!(err.to_string().contains("every port is steered"), "{err}");
        }
    }
}
