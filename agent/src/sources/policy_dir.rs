//! The `--policies` folder: every `*.yaml`, `*.yml` and `*.json` file in it,
//! read into policy documents and put in force through `policy::InForce`,
//! exactly as the Kubernetes source does with API objects: the last good
//! version of a changed policy stays in force, per resource (a resource that
//! becomes invalid keeps its previous version), and a file that stops
//! parsing (or cannot be read) keeps all of its previous resources. A broken
//! edit must never open a workload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::policy::{read_files, InForce, PolicyError, PolicySet};

/// What a directory scan saw of one file, to notice changes cheaply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// A policy folder and the policies last put in force from it.
#[derive(Debug)]
pub struct PolicyDir {
    dir: PathBuf,
    stamps: BTreeMap<PathBuf, Stamp>,
    in_force: InForce,
}

/// The result of a (re)load.
#[derive(Debug)]
pub struct Loaded {
    pub set: PolicySet,
    /// Problems found (each names file, resource and field), then one line
    /// per resource or file kept at its last good version.
    pub errors: Vec<String>,
    /// The files of this load that could not be used at all (not valid
    /// YAML, unreadable): `jwtgate check` refuses to decide without them.
    pub unusable_files: Vec<PolicyError>,
}

impl PolicyDir {
    pub fn new(dir: &Path) -> PolicyDir {
        PolicyDir {
            dir: dir.to_path_buf(),
            stamps: BTreeMap::new(),
            in_force: InForce::default(),
        }
    }

    /// True when a file was added, removed or changed since the last `load`.
    pub fn changed(&self) -> bool {
        match self.scan() {
            Ok(stamps) => stamps != self.stamps,
            Err(_) => true,
        }
    }

    /// Read the folder. A missing or unreadable folder is an error (the
    /// caller keeps what it had). Invalid resources are left out, or kept at
    /// the version of the previous `load` when there was a good one.
    pub fn load(&mut self) -> anyhow::Result<Loaded> {
        let stamps = self.scan()?;
        let mut files = Vec::new();
        let mut unreadable = Vec::new();
        for path in stamps.keys() {
            let origin = path.display().to_string();
            match std::fs::read_to_string(path) {
                Ok(text) => files.push((origin, text)),
                Err(err) => unreadable.push(PolicyError {
                    origin,
                    resource: "file".into(),
                    message: format!("cannot read: {err}"),
                    whole_file: true,
                }),
            }
        }
        let (docs, mut problems) = read_files(&files);
        problems.extend(unreadable);
        let update = self.in_force.update(&docs, problems);
        let mut errors: Vec<String> = update.errors.iter().map(PolicyError::to_string).collect();
        errors.extend(update.kept.iter().map(ToString::to_string));
        self.stamps = stamps;
        let unusable_files = update
            .errors
            .iter()
            .filter(|p| p.whole_file)
            .cloned()
            .collect();
        Ok(Loaded {
            set: update.set,
            errors,
            unusable_files,
        })
    }

    fn scan(&self) -> anyhow::Result<BTreeMap<PathBuf, Stamp>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|err| {
            anyhow::anyhow!("cannot read policy folder {}: {err}", self.dir.display())
        })?;
        let mut stamps = BTreeMap::new();
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let is_policy = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            );
            // Editors' and kubectl's hidden temporary files are not policies.
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if !is_policy || hidden {
                continue;
            }
            let meta = std::fs::metadata(&path)?;
            if meta.is_file() {
                stamps.insert(
                    path,
                    Stamp {
                        modified: meta.modified().ok(),
                        len: meta.len(),
                    },
                );
            }
        }
        Ok(stamps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{evaluate, Decision, JwksLookup, PathNormalization, Request};
    use crate::jwt::JwkSet;
    use crate::policy::WorkloadRef;
    use std::sync::Arc;

    struct NoKeys;
    impl JwksLookup for NoKeys {
        fn jwks(&self, _: &str) -> Option<Arc<JwkSet>> {
            None
        }
    }

    const DENY_ADMIN: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: foo}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: ['/admin*']}}]}]\n";
    const DENY_SECRET: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-secret, namespace: foo}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: ['/secret*']}}]}]\n";

    fn status(set: &PolicySet, path: &str) -> u16 {
        let w = WorkloadRef {
            namespace: "foo".into(),
            labels: Default::default(),
        };
        let r = Request {
            method: "GET",
            path,
            host: "h",
            headers: vec![],
            source_ip: "10.0.0.1".parse().unwrap(),
            destination_ip: "10.0.0.2".parse().unwrap(),
            destination_port: 80,
        };
        let d: Decision = evaluate(
            &set.for_workload(&w, "istio-system"),
            &r,
            &NoKeys,
            0,
            PathNormalization::default(),
            None,
        );
        d.status
    }

    /// Write, make sure the stamp changes (mtime granularity), reload.
    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        let len_before = std::fs::metadata(&path).map(|m| m.len()).ok();
        std::fs::write(&path, text).unwrap();
        if len_before == Some(text.len() as u64) {
            let t = SystemTime::now() + std::time::Duration::from_secs(2);
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(t).unwrap();
        }
    }

    #[test]
    fn last_good_version_per_resource_and_per_file() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "a.yaml", &format!("{DENY_ADMIN}---\n{DENY_SECRET}"));
        let mut dir = PolicyDir::new(d);
        let loaded = dir.load().unwrap();
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(
            (
                status(&loaded.set, "/admin"),
                status(&loaded.set, "/secret")
            ),
            (403, 403)
        );

        // One resource becomes invalid (bad CIDR): it keeps its last good
        // version, its neighbour takes the new one.
        let broken = DENY_ADMIN.replace(
            "to: [{operation: {paths: ['/admin*']}}]",
            "from: [{source: {ipBlocks: ['10.0.0.0/33']}}]",
        );
        let secret2 = DENY_SECRET.replace("/secret*", "/private*");
        write(d, "a.yaml", &format!("{broken}---\n{secret2}"));
        assert!(dir.changed());
        let loaded = dir.load().unwrap();
        let text = loaded.errors.join("\n");
        assert!(text.contains("a.yaml: AuthorizationPolicy foo/deny-admin: spec.rules[0].from[0].source.ipBlocks[0]"), "{text}");
        assert!(
            text.contains("foo/deny-admin: keeping its last good version"),
            "{text}"
        );
        assert_eq!(status(&loaded.set, "/admin"), 403);
        assert_eq!(status(&loaded.set, "/secret"), 200);
        assert_eq!(status(&loaded.set, "/private"), 403);

        // Still broken on the next reload: still kept.
        write(d, "b.yaml", DENY_SECRET);
        let loaded = dir.load().unwrap();
        assert_eq!(status(&loaded.set, "/admin"), 403, "{:?}", loaded.errors);

        // The whole file stops parsing: all its previous resources stay.
        write(d, "a.yaml", "apiVersion: [\n");
        let loaded = dir.load().unwrap();
        let text = loaded.errors.join("\n");
        assert!(text.contains("a.yaml: document 1: invalid YAML"), "{text}");
        assert!(
            text.contains("a.yaml: keeping its last good version (2 resources)"),
            "{text}"
        );
        assert_eq!(status(&loaded.set, "/admin"), 403);
        assert_eq!(status(&loaded.set, "/private"), 403);

        // Fixed: the new version applies; a removed resource is gone.
        write(
            d,
            "a.yaml",
            DENY_SECRET.replace("deny-secret", "deny-other").as_str(),
        );
        let loaded = dir.load().unwrap();
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(status(&loaded.set, "/admin"), 200);
        assert_eq!(status(&loaded.set, "/private"), 200);
        assert_eq!(status(&loaded.set, "/secret"), 403);

        // A file deleted: its resources go with it.
        std::fs::remove_file(d.join("b.yaml")).unwrap();
        std::fs::remove_file(d.join("a.yaml")).unwrap();
        let loaded = dir.load().unwrap();
        assert_eq!(status(&loaded.set, "/secret"), 200);
    }

    #[test]
    fn never_valid_resources_stay_out_and_others_load() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let unknown_action = DENY_ADMIN.replace("action: DENY", "action: MAYBE");
        write(d, "a.yaml", &format!("{unknown_action}---\n{DENY_SECRET}"));
        let mut dir = PolicyDir::new(d);
        let loaded = dir.load().unwrap();
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        assert!(loaded.errors[0].contains("foo/deny-admin: spec.action: unknown action \"MAYBE\""));
        assert_eq!(status(&loaded.set, "/admin"), 200);
        assert_eq!(status(&loaded.set, "/secret"), 403);
        // A first load of a file broken half-way uses the documents before
        // the syntax error (nothing older is known).
        write(d, "a.yaml", &format!("{DENY_SECRET}---\nkind: [\n"));
        let mut dir = PolicyDir::new(d);
        let loaded = dir.load().unwrap();
        assert_eq!(status(&loaded.set, "/secret"), 403, "{:?}", loaded.errors);
        assert!(!dir.changed());
    }
}
