//! What a node is started from: the binaries (cache or `$JWTGATE_NODE_BIN_DIR`,
//! Debian's paths for the rest) and, for the real-node test, the images and
//! the runc wrapper that `cargo xtask test` prepares.

use std::path::{Path, PathBuf};

/// The Kubernetes binaries (built by `cargo xtask node` into
/// `~/.cache/jwtgate/kube/bin`); containerd, runc, iptables and the CNI
/// plugins come from Debian packages.
#[derive(Debug, Clone)]
pub struct NodeBinaries {
    pub kube_bin: PathBuf,
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    pub runc: PathBuf,
    pub cni_bin_dir: PathBuf,
}

const KUBE_BINARIES: [&str; 7] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
];

impl NodeBinaries {
    pub fn kube(&self, name: &str) -> PathBuf {
        self.kube_bin.join(name)
    }
}

/// `$JWTGATE_NODE_BIN_DIR` (set by `cargo xtask test`) or the build cache,
/// when every binary is there; else what is missing.
pub fn binaries() -> Result<NodeBinaries, String> {
    let kube_bin = std::env::var_os("JWTGATE_NODE_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/jwtgate/kube/bin"))
        })
        .unwrap_or_default();
    binaries_in(kube_bin)
}

/// The Kubernetes binaries from `kube_bin`, the rest from Debian's paths.
pub fn binaries_in(kube_bin: PathBuf) -> Result<NodeBinaries, String> {
    let b = NodeBinaries {
        containerd: "/usr/bin/containerd".into(),
        ctr: "/usr/bin/ctr".into(),
        runc: "/usr/sbin/runc".into(),
        cni_bin_dir: "/usr/lib/cni".into(),
        kube_bin,
    };
    let mut missing: Vec<String> = KUBE_BINARIES
        .iter()
        .map(|n| b.kube(n))
        .chain([b.containerd.clone(), b.ctr.clone(), b.runc.clone()])
        .chain([
            b.cni_bin_dir.join("bridge"),
            b.cni_bin_dir.join("host-local"),
        ])
        .chain(["/usr/sbin/iptables".into()])
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(b)
    } else {
        missing.sort();
        Err(missing.join(", "))
    }
}

/// What to start a node with.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    pub bins: NodeBinaries,
    /// `jwtgate-node-runc` (containerd's runc, see [`runc_caps`]).
    pub runc_wrapper: PathBuf,
    /// `ctr import`-able archive holding [`PAUSE_IMAGE`].
    pub pause_archive: PathBuf,
    /// CNI plugins chained after the bridge (none yet; the place for a
    /// jwtgate CNI plugin).
    pub cni_chain: Vec<serde_json::Value>,
}

/// What the real-node test gets from `cargo xtask test` (xtask/src/node.rs).
#[derive(Debug, Clone)]
pub struct TestInputs {
    pub setup: NodeSetup,
    pub testpod_archive: PathBuf,
    /// `cargo xtask image`'s archive of the agent image.
    pub agent_archive: PathBuf,
}

/// The inputs, or what is missing. `runc_wrapper`: the test's own build of
/// `jwtgate-node-runc`, unless `$JWTGATE_NODE_RUNC` names one.
pub fn test_inputs(runc_wrapper: &Path) -> Result<TestInputs, String> {
    let file = |var: &str| -> Result<PathBuf, String> {
        let p = std::env::var_os(var)
            .map(PathBuf::from)
            .ok_or_else(|| format!("${var} is not set"))?;
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!("${var}: no file {}", p.display()))
        }
    };
    let bins = binaries().map_err(|m| format!("missing {m}"))?;
    let runc_wrapper = std::env::var_os("JWTGATE_NODE_RUNC")
        .map(PathBuf::from)
        .unwrap_or_else(|| runc_wrapper.to_path_buf());
    Ok(TestInputs {
        setup: NodeSetup {
            bins,
            runc_wrapper,
            pause_archive: file("JWTGATE_NODE_PAUSE_ARCHIVE")?,
            cni_chain: Vec::new(),
        },
        testpod_archive: file("JWTGATE_NODE_TESTPOD_ARCHIVE")?,
        agent_archive: file("JWTGATE_AGENT_IMAGE_ARCHIVE")?,
    })
}

/// The inputs, or a loud SKIP — a failure when `CI` is set: a real-node test
/// that did not run must never look like a pass there.
pub fn require_test_inputs(runc_wrapper: &Path) -> Option<TestInputs> {
    match test_inputs(runc_wrapper) {
        Ok(t) => Some(t),
        Err(why) => {
            let msg = format!(
                "SKIP: the real node is not set up ({why}); `cargo xtask test` builds and passes everything"
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg} (CI is set, so this is a failure)");
            }
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "\n======== {msg} ========\n");
            None
        }
    }
}
