//! `jwtgate-node-runc`: runc for the test node's containerd (its `BinaryName`).
//! Drops from the spec of `create`/`run`/`exec` the capabilities this host's
//! bounding set lacks, then execs the real runc with the same arguments
//! (`$JWTGATE_RUNC`, default /usr/sbin/runc). See `jwtgate_e2e::node::runc_caps`.

use std::os::unix::process::CommandExt;
use std::process::Command;

use jwtgate_e2e::node::runc_caps;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = adjust(&args) {
        // runc's caller (the shim) shows stderr in the error it reports.
        eprintln!("jwtgate-node-runc: {e}");
        std::process::exit(1);
    }
    let runc = std::env::var("JWTGATE_RUNC").unwrap_or_else(|_| "/usr/sbin/runc".into());
    let err = Command::new(&runc).args(&args).exec();
    eprintln!("jwtgate-node-runc: exec {runc}: {err}");
    std::process::exit(127);
}

fn adjust(args: &[String]) -> Result<(), String> {
    let Some((file, at)) = runc_caps::spec_file(args) else {
        return Ok(());
    };
    let text =
        std::fs::read_to_string(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let mut spec: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", file.display()))?;
    let mut caps = &mut spec;
    for key in at {
        match caps.get_mut(*key) {
            Some(v) => caps = v,
            None => return Ok(()),
        }
    }
    let bounding = runc_caps::bounding_set().map_err(|e| e.to_string())?;
    if runc_caps::strip(caps, bounding).is_empty() {
        return Ok(());
    }
    let out = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
    std::fs::write(&file, out).map_err(|e| format!("writing {}: {e}", file.display()))
}
