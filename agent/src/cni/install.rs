//! Putting the plugin into the node's CNI configuration, as istio-cni's
//! installer does: the binary into the CNI bin dir (a copy of this very
//! executable, named `jwtgate-cni`), and an entry at the end of the chain of
//! the network configuration list the runtime uses (the first `*.conflist`
//! in the conf dir, by name). Both writes replace files atomically (write,
//! then rename), and both are idempotent. `uninstall` takes the entry out
//! again (the binary may stay: without an entry nothing runs it).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::PLUGIN_NAME;

/// Install the binary and the entry; returns the configuration file edited.
pub fn install(bin_dir: &Path, conf_dir: &Path, socket: &Path) -> Result<PathBuf> {
    let exe = std::fs::read("/proc/self/exe").context("reading this executable")?;
    write_atomically(&bin_dir.join(PLUGIN_NAME), &exe, 0o755)?;
    let conflist = network_conflist(conf_dir)?;
    let mut doc = read_json(&conflist)?;
    if add_entry(&mut doc, socket)? {
        write_atomically(&conflist, pretty(&doc).as_bytes(), 0o644)?;
    }
    Ok(conflist)
}

/// Take the entry out of the network configuration; true if it was there.
pub fn uninstall(conf_dir: &Path) -> Result<bool> {
    let conflist = network_conflist(conf_dir)?;
    let mut doc = read_json(&conflist)?;
    let removed = remove_entry(&mut doc);
    if removed {
        write_atomically(&conflist, pretty(&doc).as_bytes(), 0o644)?;
    }
    Ok(removed)
}

/// The first `.conflist` of the conf dir by name: the one the runtime loads.
fn network_conflist(conf_dir: &Path) -> Result<PathBuf> {
    let mut lists: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .with_context(|| format!("reading the CNI conf dir {}", conf_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
        .collect();
    lists.sort();
    match lists.into_iter().next() {
        Some(list) => Ok(list),
        None => bail!(
            "no *.conflist in {}: the network plugin's configuration list is needed to chain jwtgate after it",
            conf_dir.display()
        ),
    }
}

/// Append jwtgate's entry unless it is there with these settings already.
fn add_entry(doc: &mut Value, socket: &Path) -> Result<bool> {
    let plugins = doc
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .context("the network configuration list has no `plugins` array")?;
    let entry = json!({
        "type": PLUGIN_NAME,
        "socket": socket.to_string_lossy(),
        "failPolicy": "closed",
        "excludeNamespaces": ["kube-system"],
    });
    if plugins.contains(&entry) {
        return Ok(false);
    }
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_NAME));
    plugins.push(entry);
    Ok(true)
}

fn remove_entry(doc: &mut Value) -> bool {
    let Some(plugins) = doc.get_mut("plugins").and_then(Value::as_array_mut) else {
        return false;
    };
    let before = plugins.len();
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_NAME));
    plugins.len() != before
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn pretty(doc: &Value) -> String {
    serde_json::to_string_pretty(doc).unwrap_or_else(|_| doc.to_string()) + "\n"
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let name = path.file_name().context("no file name")?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.jwtgate-tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: &str = r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[
        {"type":"bridge","bridge":"cni0","ipam":{"type":"host-local"}},{"type":"portmap"}]}"#;

    #[test]
    fn chains_once_at_the_end_and_comes_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let conf = dir.path().join("net.d");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(conf.join("10-bridge.conflist"), BRIDGE).unwrap();
        std::fs::write(conf.join("99-other.conflist"), BRIDGE).unwrap();
        let socket = Path::new("/var/run/jwtgate/cni.sock");

        let edited = install(&bin, &conf, socket).unwrap();
        assert_eq!(edited, conf.join("10-bridge.conflist"));
        assert!(bin.join(PLUGIN_NAME).is_file());
        let doc = read_json(&edited).unwrap();
        let types: Vec<&str> = doc["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "portmap", PLUGIN_NAME]);
        assert_eq!(doc["plugins"][2]["socket"], "/var/run/jwtgate/cni.sock");
        // Idempotent; the other list is left alone.
        install(&bin, &conf, socket).unwrap();
        assert_eq!(read_json(&edited).unwrap(), doc);
        assert!(!std::fs::read_to_string(conf.join("99-other.conflist"))
            .unwrap()
            .contains(PLUGIN_NAME));

        assert!(uninstall(&conf).unwrap());
        assert!(!uninstall(&conf).unwrap());
        assert_eq!(
            read_json(&edited).unwrap()["plugins"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn no_configuration_list_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = install(dir.path(), dir.path(), Path::new("/s")).unwrap_err();
        assert!(format!("{err:#}").contains("no *.conflist"), "{err:#}");
    }
}
