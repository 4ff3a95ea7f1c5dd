//! `jwtgate agent` flags of the CNI plugin (Kubernetes mode).

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug, Clone, Default)]
pub struct CniArgs {
    /// Serve the CNI plugin on this unix socket: at CNI ADD a new pod's
    /// network namespace comes in, and the plugin returns once the pod is
    /// enrolled (or no policy selects it), so a selected pod is protected
    /// from its first packet.
    #[arg(long = "cni-socket", value_name = "PATH", requires = "kube")]
    pub socket: Option<PathBuf>,
    /// Install the plugin at start: copy this binary to DIR/jwtgate-cni (the
    /// host's CNI bin dir, mounted) ...
    #[arg(long = "cni-bin-dir", value_name = "DIR", requires_all = ["socket", "conf_dir"])]
    pub bin_dir: Option<PathBuf>,
    /// ... and chain it at the end of the first *.conflist of DIR (the host's
    /// CNI conf dir, mounted). The socket path written there is --cni-socket
    /// as the host sees it (the same path: mount it at the same place).
    #[arg(long = "cni-conf-dir", value_name = "DIR", requires_all = ["socket", "bin_dir"])]
    pub conf_dir: Option<PathBuf>,
    /// At exit, take the plugin out of the CNI configuration if this
    /// DaemonSet (`namespace/name`) is gone or being deleted: the agent is
    /// being uninstalled, and new pods must start without it. Restarts and
    /// upgrades keep the plugin, so no pod starts unprotected meanwhile.
    #[arg(
        long = "cni-uninstall-with",
        value_name = "NAMESPACE/NAME",
        requires = "conf_dir"
    )]
    pub uninstall_with: Option<String>,
}
