//! The agent's DaemonSet in `deploy/`, read back as the `podman run` flags that
//! start a container the way the kubelet would on a node.
//!
//! The container test must run with exactly what `deploy/` declares, so this
//! translates the manifest instead of repeating it by hand: a field it cannot
//! translate is an error naming the field, never silently dropped.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize as _;
use serde_yaml::Value;

/// Folder where the manifests live, relative to the workspace.
pub const DEPLOY_DIR: &str = "deploy";
/// The agent's container in the pod template (the first one if none has this name).
const CONTAINER: &str = "agent";

/// What the DaemonSet's pod template asks of the container runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRun {
    /// The manifest it came from.
    pub source: PathBuf,
    pub namespace: String,
    pub host_network: bool,
    pub host_pid: bool,
    /// Security flags for `podman run` (capabilities, user, seccomp, ...).
    pub security: Vec<String>,
    pub mounts: Vec<Mount>,
    /// The container's `args` (the image's entrypoint is the binary).
    pub argv: Vec<String>,
    pub termination_grace_secs: u64,
}

/// One volumeMount joined with its volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub name: String,
    /// `None` for an emptyDir (a tmpfs).
    pub host_path: Option<PathBuf>,
    /// The hostPath `type` (`DirectoryOrCreate`, `Directory`, ...), if any.
    pub host_path_type: Option<String>,
    pub container_path: PathBuf,
    pub read_only: bool,
    /// Kubernetes' mountPropagation mapped to the bind propagation podman takes.
    pub propagation: &'static str,
}

impl PodRun {
    /// Value of `--flag=value` or `--flag value` in the container's argv.
    pub fn arg_value(&self, flag: &str) -> Option<&str> {
        let mut it = self.argv.iter();
        while let Some(a) = it.next() {
            if a == flag {
                return it.next().map(String::as_str);
            }
            if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                return Some(v);
            }
        }
        None
    }

    /// The manifest's `args` turned into local mode: `--kube` gives way to
    /// `--policies`/`--workloads`, `--metrics-addr` takes `metrics` (a free
    /// port, so runs never collide on the host network), the `--cni-*` flags
    /// of Kubernetes mode go; every other flag (pin root, host /proc, log
    /// format, health socket) stays as declared.
    pub fn local_mode_args(
        &self,
        policies: &str,
        workloads: &str,
        metrics: &str,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut it = self.argv.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--kube" => {
                    out.extend(["--policies", policies, "--workloads", workloads].map(String::from))
                }
                "--metrics-addr" => {
                    it.next();
                    out.extend(["--metrics-addr", metrics].map(String::from));
                }
                _ if a.starts_with("--metrics-addr=") => {
                    out.push(format!("--metrics-addr={metrics}"))
                }
                // The CNI plugin is Kubernetes mode's: its flags go.
                _ if a.starts_with("--cni-") => {
                    if !a.contains('=') {
                        it.next();
                    }
                }
                _ => out.push(a.clone()),
            }
        }
        ensure!(
            out.first().map(String::as_str) == Some("agent"),
            "the DaemonSet's args must start with `agent`: {:?}",
            self.argv
        );
        ensure!(
            out.iter().any(|a| a == "--policies"),
            "the DaemonSet's args have no --kube to replace with local mode: {:?}",
            self.argv
        );
        if !out.iter().any(|a| a.starts_with("--metrics-addr")) {
            out.extend(["--metrics-addr", metrics].map(String::from));
        }
        Ok(out)
    }

    /// `--network`, `--pid`, security flags and one `--mount` per volumeMount;
    /// `host_source` may redirect a hostPath (tests use a private bpffs).
    pub fn podman_args(&self, host_source: impl Fn(&Path) -> Option<PathBuf>) -> Vec<String> {
        let mut args = Vec::new();
        if self.host_network {
            args.push("--network=host".to_string());
        }
        if self.host_pid {
            args.push("--pid=host".to_string());
        }
        args.extend(self.security.iter().cloned());
        for m in &self.mounts {
            let dst = m.container_path.display();
            let spec = match &m.host_path {
                None => format!("type=tmpfs,destination={dst}"),
                Some(p) => {
                    let src = host_source(p).unwrap_or_else(|| p.clone());
                    format!(
                        "type=bind,source={},destination={dst},bind-propagation={}{}",
                        src.display(),
                        m.propagation,
                        if m.read_only { ",ro=true" } else { "" }
                    )
                }
            };
            args.push(format!("--mount={spec}"));
        }
        args
    }
}

/// Finds the DaemonSet among the YAML files directly in `deploy/` and reads it.
pub fn load(root: &Path) -> Result<PodRun> {
    let dir = root.join(DEPLOY_DIR);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for file in files {
        if let Some(run) = load_file(&file)? {
            return Ok(run);
        }
    }
    bail!(
        "no DaemonSet in {}/*.yaml: the container test runs the agent as the DaemonSet declares it",
        dir.display()
    )
}

/// The DaemonSet in `file`, if it has one.
pub fn load_file(file: &Path) -> Result<Option<PodRun>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).with_context(|| format!("parsing {}", file.display()))?;
        if str_at(&v, &["kind"]) == Some("DaemonSet") {
            return parse(&v, file)
                .map(Some)
                .with_context(|| format!("reading the DaemonSet in {}", file.display()));
        }
    }
    Ok(None)
}

/// Translates one DaemonSet document.
pub fn parse(ds: &Value, source: &Path) -> Result<PodRun> {
    let pod = at(ds, &["spec", "template", "spec"]).context("no spec.template.spec")?;
    let containers = at(pod, &["containers"])
        .and_then(Value::as_sequence)
        .context("no containers")?;
    let c = containers
        .iter()
        .find(|c| str_at(c, &["name"]) == Some(CONTAINER))
        .or_else(|| containers.first())
        .context("no containers")?;
    let name = str_at(c, &["name"]).unwrap_or(CONTAINER);
    let annotations = at(ds, &["spec", "template", "metadata", "annotations"]);
    let apparmor_annotation = annotations
        .and_then(|a| {
            a.get(format!(
                "container.apparmor.security.beta.kubernetes.io/{name}"
            ))
        })
        .and_then(Value::as_str);

    // The image's ENTRYPOINT is the binary; a `command` would replace it.
    ensure!(c.get("command").is_none(), "container {name}: `command` has no podman translation here (the image's entrypoint is used)");
    let argv = c
        .get("args")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    Ok(PodRun {
        source: source.to_path_buf(),
        namespace: str_at(ds, &["metadata", "namespace"])
            .unwrap_or("default")
            .to_string(),
        host_network: bool_at(pod, &["hostNetwork"]),
        host_pid: bool_at(pod, &["hostPID"]),
        security: security_flags(
            pod.get("securityContext"),
            c.get("securityContext"),
            apparmor_annotation,
        )?,
        mounts: mounts(pod, c)?,
        argv,
        termination_grace_secs: at(pod, &["terminationGracePeriodSeconds"])
            .and_then(Value::as_u64)
            .unwrap_or(30),
    })
}

/// Pod- and container-level securityContext (the container's wins) as podman
/// flags. Kubernetes' defaults match podman's where a field is absent: the
/// runtime's default seccomp profile only when asked for, root, writable root.
fn security_flags(
    pod: Option<&Value>,
    ctr: Option<&Value>,
    apparmor_annotation: Option<&str>,
) -> Result<Vec<String>> {
    const POD_FIELDS: &[&str] = &[
        "seccompProfile",
        "appArmorProfile",
        "runAsUser",
        "runAsGroup",
        "runAsNonRoot",
    ];
    const CTR_FIELDS: &[&str] = &[
        "privileged",
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "capabilities",
        "seccompProfile",
        "appArmorProfile",
        "runAsUser",
        "runAsGroup",
        "runAsNonRoot",
    ];
    for (ctx, known, level) in [(pod, POD_FIELDS, "pod"), (ctr, CTR_FIELDS, "container")] {
        if let Some(map) = ctx.and_then(Value::as_mapping) {
            for k in map.keys().filter_map(Value::as_str) {
                if !known.contains(&k) {
                    bail!("{level} securityContext.{k} has no podman translation here; add one to xtask/src/daemonset.rs");
                }
            }
        }
    }
    // The container's value, else the pod's.
    let get = |k: &str| {
        ctr.and_then(|c| c.get(k))
            .or_else(|| pod.and_then(|p| p.get(k)))
    };
    let mut flags = Vec::new();
    if get("privileged").and_then(Value::as_bool) == Some(true) {
        flags.push("--privileged".to_string());
    }
    if get("allowPrivilegeEscalation").and_then(Value::as_bool) == Some(false) {
        flags.push("--security-opt=no-new-privileges".to_string());
    }
    if get("readOnlyRootFilesystem").and_then(Value::as_bool) == Some(true) {
        // Kubernetes adds no tmpfs of its own; podman would, on /tmp, /run, /var/tmp.
        flags.extend([
            "--read-only".to_string(),
            "--read-only-tmpfs=false".to_string(),
        ]);
    }
    match (
        get("runAsUser").and_then(Value::as_u64),
        get("runAsGroup").and_then(Value::as_u64),
    ) {
        (Some(u), Some(g)) => flags.push(format!("--user={u}:{g}")),
        (Some(u), None) => flags.push(format!("--user={u}")),
        (None, Some(g)) => flags.push(format!("--user=0:{g}")),
        (None, None) => {}
    }
    if get("runAsNonRoot").and_then(Value::as_bool) == Some(true)
        && get("runAsUser").and_then(Value::as_u64).unwrap_or(0) == 0
    {
        bail!("securityContext asks for runAsNonRoot with user 0: the kubelet would refuse to start it");
    }
    if let Some(caps) = ctr.and_then(|c| c.get("capabilities")) {
        for (key, flag) in [("drop", "--cap-drop"), ("add", "--cap-add")] {
            for cap in caps
                .get(key)
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let cap = cap.as_str().context("capability names are strings")?;
                flags.push(format!("{flag}={}", cap.trim_start_matches("CAP_")));
            }
        }
    }
    match get("seccompProfile").and_then(|s| str_at(s, &["type"])) {
        // Unset: Kubernetes runs Unconfined; podman applies its default unless told.
        None | Some("Unconfined") => flags.push("--security-opt=seccomp=unconfined".to_string()),
        // podman's default profile is the runtime default.
        Some("RuntimeDefault") => {}
        Some(other) => bail!("seccompProfile type {other} has no podman translation here"),
    }
    let apparmor = get("appArmorProfile")
        .and_then(|a| str_at(a, &["type"]))
        .map(|t| t.to_ascii_lowercase())
        .or_else(|| apparmor_annotation.map(str::to_ascii_lowercase));
    if apparmor.as_deref() == Some("unconfined")
        && Path::new("/sys/kernel/security/apparmor").exists()
    {
        flags.push("--security-opt=apparmor=unconfined".to_string());
    }
    Ok(flags)
}

/// volumeMounts joined with their volumes (hostPath and emptyDir; others,
/// such as configMaps, are reported and skipped: local mode mounts its own).
fn mounts(pod: &Value, ctr: &Value) -> Result<Vec<Mount>> {
    let volumes = pod
        .get("volumes")
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for vm in ctr
        .get("volumeMounts")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let name = str_at(vm, &["name"]).context("volumeMount without a name")?;
        if vm.get("subPath").is_some() || vm.get("subPathExpr").is_some() {
            bail!("volumeMount {name}: subPath has no podman translation here");
        }
        let volume = volumes
            .iter()
            .find(|v| str_at(v, &["name"]) == Some(name))
            .with_context(|| format!("volumeMount {name} names no volume"))?;
        let (host_path, host_path_type) = if let Some(hp) = volume.get("hostPath") {
            let path = str_at(hp, &["path"])
                .with_context(|| format!("volume {name}: hostPath without path"))?;
            (
                Some(PathBuf::from(path)),
                str_at(hp, &["type"]).map(String::from),
            )
        } else if volume.get("emptyDir").is_some() {
            (None, None)
        } else {
            eprintln!(
                "container-test: volume {name} is neither hostPath nor emptyDir; not mounted"
            );
            continue;
        };
        let propagation = match str_at(vm, &["mountPropagation"]) {
            None | Some("None") => "rprivate",
            Some("HostToContainer") => "rslave",
            Some("Bidirectional") => "rshared",
            Some(other) => bail!("volumeMount {name}: unknown mountPropagation {other}"),
        };
        out.push(Mount {
            name: name.to_string(),
            host_path,
            host_path_type,
            container_path: PathBuf::from(
                str_at(vm, &["mountPath"])
                    .with_context(|| format!("volumeMount {name} without mountPath"))?,
            ),
            read_only: bool_at(vm, &["readOnly"]),
            propagation,
        });
    }
    Ok(out)
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn bool_at(v: &Value, path: &[&str]) -> bool {
    at(v, path).and_then(Value::as_bool).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the recommended DaemonSet (shared/reference/kubernetes.md §4.4).
    const DS: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: jwtgate, namespace: jwtgate-system}
spec:
  template:
    spec:
      hostNetwork: true
      hostPID: true
      terminationGracePeriodSeconds: 30
      securityContext:
        appArmorProfile: {type: Unconfined}
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: agent
        image: jwtgate:0.1.0
        args: [agent, --kube, --pin-root=/sys/fs/bpf/jwtgate, --metrics-addr, "127.0.0.1:9880", --log-format, json]
        securityContext:
          privileged: false
          allowPrivilegeEscalation: true
          readOnlyRootFilesystem: true
          runAsUser: 0
          runAsNonRoot: false
          capabilities:
            drop: ["ALL"]
            add: ["BPF", "NET_ADMIN", "SYS_ADMIN"]
        volumeMounts:
        - {name: bpffs, mountPath: /sys/fs/bpf, mountPropagation: HostToContainer}
        - {name: host-proc, mountPath: /host/proc, readOnly: true}
        - {name: tmp, mountPath: /tmp}
      volumes:
      - {name: bpffs, hostPath: {path: /sys/fs/bpf, type: DirectoryOrCreate}}
      - {name: host-proc, hostPath: {path: /proc, type: Directory}}
      - {name: tmp, emptyDir: {}}
"#;

    fn parsed(text: &str) -> Result<PodRun> {
        parse(&serde_yaml::from_str(text)?, Path::new("ds.yaml"))
    }

    #[test]
    fn translates_the_recommended_daemonset() {
        let run = parsed(DS).unwrap();
        assert_eq!(run.arg_value("--pin-root"), Some("/sys/fs/bpf/jwtgate"));
        assert_eq!(run.namespace, "jwtgate-system");
        let args = run.podman_args(|p| {
            (p == Path::new("/sys/fs/bpf")).then(|| PathBuf::from("/tmp/x/bpffs"))
        });
        assert_eq!(
            args,
            [
                "--network=host",
                "--pid=host",
                "--read-only",
                "--read-only-tmpfs=false",
                "--user=0",
                "--cap-drop=ALL",
                "--cap-add=BPF",
                "--cap-add=NET_ADMIN",
                "--cap-add=SYS_ADMIN",
                "--mount=type=bind,source=/tmp/x/bpffs,destination=/sys/fs/bpf,bind-propagation=rslave",
                "--mount=type=bind,source=/proc,destination=/host/proc,bind-propagation=rprivate,ro=true",
                "--mount=type=tmpfs,destination=/tmp",
            ]
        );
    }

    #[test]
    fn kube_mode_args_become_local_mode() {
        let run = parsed(DS).unwrap();
        assert_eq!(
            run.local_mode_args("/p", "/w.yaml", "127.0.0.1:1234")
                .unwrap(),
            [
                "agent",
                "--policies",
                "/p",
                "--workloads",
                "/w.yaml",
                "--pin-root=/sys/fs/bpf/jwtgate",
                "--metrics-addr",
                "127.0.0.1:1234",
                "--log-format",
                "json"
            ]
        );
    }

    #[test]
    fn unknown_security_fields_are_errors_not_dropped() {
        let text = DS.replace("runAsNonRoot: false", "procMount: Unmasked");
        let err = parsed(&text).unwrap_err().to_string();
        assert!(err.contains("securityContext.procMount"), "{err}");
    }

    #[test]
    fn missing_seccomp_profile_means_unconfined() {
        let text = DS.replace("seccompProfile: {type: RuntimeDefault}", "");
        let run = parsed(&text).unwrap();
        assert!(run
            .security
            .contains(&"--security-opt=seccomp=unconfined".to_string()));
    }
}
