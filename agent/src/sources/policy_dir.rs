//! The `--policies` folder: every `*.yaml`, `*.yml` and `*.json` file in it,
//! parsed into one `PolicySet`. A file that stops parsing keeps its last good
//! version in force (a broken edit must never open a workload).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::policy::{PolicyError, PolicySet};

/// What a directory scan saw of one file, to notice changes cheaply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// A policy folder and the last good text of each of its files.
#[derive(Debug)]
pub struct PolicyDir {
    dir: PathBuf,
    stamps: BTreeMap<PathBuf, Stamp>,
    good: BTreeMap<PathBuf, String>,
}

/// The result of a (re)load.
#[derive(Debug)]
pub struct Loaded {
    pub set: PolicySet,
    /// Problems found; resources they concern are left out or kept at their
    /// last good version.
    pub errors: Vec<String>,
}

impl PolicyDir {
    pub fn new(dir: &Path) -> PolicyDir {
        PolicyDir {
            dir: dir.to_path_buf(),
            stamps: BTreeMap::new(),
            good: BTreeMap::new(),
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
    /// caller keeps what it had); a file whose new text has errors keeps its
    /// previous text if there was one.
    pub fn load(&mut self) -> anyhow::Result<Loaded> {
        let stamps = self.scan()?;
        let mut errors = Vec::new();
        let mut good = BTreeMap::new();
        for path in stamps.keys() {
            let origin = path.display().to_string();
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(err) => {
                    errors.push(format!("{origin}: cannot read: {err}"));
                    if let Some(old) = self.good.get(path) {
                        good.insert(path.clone(), old.clone());
                    }
                    continue;
                }
            };
            let (_, file_errors) = PolicySet::parse(&[(origin.clone(), text.clone())]);
            if file_errors.is_empty() {
                good.insert(path.clone(), text);
                continue;
            }
            errors.extend(file_errors.iter().map(PolicyError::to_string));
            match self.good.get(path) {
                Some(old) => {
                    errors.push(format!("{origin}: keeping its last good version"));
                    good.insert(path.clone(), old.clone());
                }
                // Never seen good: load what parses; invalid resources are
                // left out by the parser (and fail closed where it says so).
                None => {
                    good.insert(path.clone(), text);
                }
            }
        }
        let files: Vec<(String, String)> = good
            .iter()
            .map(|(path, text)| (path.display().to_string(), text.clone()))
            .collect();
        let (set, _) = PolicySet::parse(&files);
        self.stamps = stamps;
        self.good = good;
        Ok(Loaded { set, errors })
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
