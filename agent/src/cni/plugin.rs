//! The CNI plugin: the container runtime runs `jwtgate` under the name
//! `jwtgate-cni` (a copy in the CNI bin dir), chained after the network
//! plugin that gives pods their addresses. Plain std, no async runtime: it
//! lives for one call.
//!
//! ADD: ask the agent (`socket` in the plugin's configuration) to enrol the
//! pod's namespace, and pass the previous result on once it says the pod is
//! protected or not selected. If the agent cannot be reached or refuses, the
//! ADD fails (`failPolicy: closed`, the default): the kubelet retries later
//! instead of starting a selected pod unprotected. Namespaces in
//! `excludeNamespaces` (default `kube-system`) pass without asking, so the
//! control plane's own pods start while the agent is away. DEL tells the
//! agent (best effort); CHECK and VERSION answer as the spec says.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::protocol::{Reply, Request};

/// CNI spec versions this plugin speaks (it only passes results on).
const SUPPORTED: [&str; 6] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "1.2.0"];
/// Where the DaemonSet's agent listens.
pub const DEFAULT_SOCKET: &str = "/var/run/jwtgate/cni.sock";

/// The plugin's entry in the network configuration list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conf {
    #[serde(default = "default_version")]
    cni_version: String,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    exclude_namespaces: Option<Vec<String>>,
    /// `closed` (default) or `open`.
    #[serde(default)]
    fail_policy: Option<String>,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

fn default_version() -> String {
    "1.0.0".into()
}

/// Run as the plugin: everything comes from the environment and stdin, the
/// answer goes to stdout.
pub fn main() -> ExitCode {
    let env: HashMap<String, String> = std::env::vars().collect();
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let (out, code) = run(&env, &stdin, &mut |socket, req, timeout| {
        ask(socket, req, timeout)
    });
    if !out.is_empty() {
        let _ = writeln!(std::io::stdout(), "{out}");
    }
    ExitCode::from(code)
}

/// Talk to the agent: one request, one reply.
type Ask<'a> = dyn FnMut(&std::path::Path, &Request, Duration) -> Result<Reply, String> + 'a;

/// The whole plugin, pure but for `ask`: `(stdout, exit code)`.
fn run(env: &HashMap<String, String>, stdin: &str, ask: &mut Ask<'_>) -> (String, u8) {
    let command = env.get("CNI_COMMAND").map(String::as_str).unwrap_or("");
    if command == "VERSION" {
        return (
            json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED}).to_string(),
            0,
        );
    }
    let conf: Conf = match serde_json::from_str(stdin) {
        Ok(c) => c,
        Err(e) => {
            return error(
                "1.0.0",
                6,
                &format!("cannot read the network configuration: {e}"),
            )
        }
    };
    let args = cni_args(env.get("CNI_ARGS").map(String::as_str).unwrap_or(""));
    let (Some(namespace), Some(name)) = (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME"))
    else {
        // Not a Kubernetes pod: nothing for jwtgate to protect.
        return pass(&conf);
    };
    let excluded = conf
        .exclude_namespaces
        .clone()
        .unwrap_or_else(|| vec!["kube-system".to_string()]);
    let socket = conf
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let timeout = Duration::from_secs(conf.timeout_secs.unwrap_or(30));
    let request = Request {
        command: command.to_string(),
        pod_namespace: namespace.clone(),
        pod_name: name.clone(),
        pod_uid: args.get("K8S_POD_UID").cloned().unwrap_or_default(),
        netns: PathBuf::from(env.get("CNI_NETNS").cloned().unwrap_or_default()),
        ips: prev_ips(conf.prev_result.as_ref()),
    };
    match command {
        "ADD" if excluded.contains(namespace) => pass(&conf),
        "ADD" => match ask(&socket, &request, timeout) {
            Ok(Reply { error: None, .. }) => pass(&conf),
            Ok(Reply {
                error: Some(err), ..
            }) => refuse(&conf, &format!("jwtgate cannot protect pod {namespace}/{name}: {err}")),
            Err(err) => refuse(
                &conf,
                &format!(
                    "jwtgate agent unreachable at {} ({err}); pod {namespace}/{name} is not started unprotected",
                    socket.display()
                ),
            ),
        },
        "DEL" => {
            // The pod goes away whatever the agent says.
            let _ = ask(&socket, &request, Duration::from_secs(2));
            (String::new(), 0)
        }
        // CHECK and anything newer: nothing of ours to check.
        _ => (String::new(), 0),
    }
}

/// Pass the previous plugin's result on.
fn pass(conf: &Conf) -> (String, u8) {
    let mut result = conf.prev_result.clone().unwrap_or_else(|| json!({}));
    if let Some(obj) = result.as_object_mut() {
        obj.insert("cniVersion".into(), json!(conf.cni_version));
    }
    (result.to_string(), 0)
}

/// The ADD fails, unless the configuration says to fail open.
fn refuse(conf: &Conf, msg: &str) -> (String, u8) {
    if conf.fail_policy.as_deref() == Some("open") {
        return pass(conf);
    }
    // Code 11: "try again later" in CNI 1.1.
    error(&conf.cni_version, 11, msg)
}

fn error(version: &str, code: u32, msg: &str) -> (String, u8) {
    (
        json!({"cniVersion": version, "code": code, "msg": msg}).to_string(),
        1,
    )
}

/// `IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=n;…`
fn cni_args(s: &str) -> HashMap<String, String> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The addresses in a CNI result (`ips[].address`, CIDR notation).
fn prev_ips(prev: Option<&Value>) -> Vec<IpAddr> {
    prev.and_then(|p| p.get("ips"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect()
}

/// One JSON line to the agent, one back.
fn ask(socket: &std::path::Path, req: &Request, timeout: Duration) -> Result<Reply, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("unreadable answer {answer:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str, ns: &str) -> HashMap<String, String> {
        [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_NETNS", "/var/run/netns/cni-1".to_string()),
            (
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME=web;K8S_POD_UID=u1"),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"k8s","type":"jwtgate-cni","socket":"/s",
        "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.244.0.5/24"},{"address":"fd00::5/64"}]}}"#;

    #[test]
    fn add_asks_the_agent_and_passes_the_result_on() {
        let mut asked = Vec::new();
        let (out, code) = run(&env("ADD", "foo"), CONF, &mut |s, req, _| {
            asked.push((s.to_path_buf(), req.clone()));
            Ok(Reply::ok(true, "enrolled"))
        });
        assert_eq!(code, 0, "{out}");
        let result: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(result["ips"][0]["address"], "10.244.0.5/24");
        let (socket, req) = &asked[0];
        assert_eq!(socket, &PathBuf::from("/s"));
        assert_eq!(req.pod_namespace, "foo");
        assert_eq!(req.pod_uid, "u1");
        assert_eq!(req.netns, PathBuf::from("/var/run/netns/cni-1"));
        assert_eq!(req.ips.len(), 2);
    }

    #[test]
    fn an_unreachable_or_refusing_agent_fails_the_add_unless_fail_open() {
        let (out, code) = run(&env("ADD", "foo"), CONF, &mut |_, _, _| {
            Err("refused".into())
        });
        assert_eq!(code, 1);
        assert!(
            out.contains("not started unprotected") && out.contains("\"code\":11"),
            "{out}"
        );
        let (_, code) = run(&env("ADD", "foo"), CONF, &mut |_, _, _| {
            Ok(Reply::error("map full"))
        });
        assert_eq!(code, 1);
        let open = CONF.replace("\"socket\"", "\"failPolicy\":\"open\",\"socket\"");
        let (out, code) = run(&env("ADD", "foo"), &open, &mut |_, _, _| {
            Err("refused".into())
        });
        assert_eq!(code, 0, "{out}");
    }

    #[test]
    fn excluded_namespaces_and_other_commands_do_not_wait_for_the_agent() {
        let mut never = |_: &std::path::Path, _: &Request, _| -> Result<Reply, String> {
            panic!("asked the agent")
        };
        assert_eq!(run(&env("ADD", "kube-system"), CONF, &mut never).1, 0);
        assert_eq!(run(&env("CHECK", "foo"), CONF, &mut never).1, 0);
        let (out, code) = run(&env("VERSION", "foo"), "", &mut never);
        assert_eq!(code, 0);
        assert!(out.contains("supportedVersions"));
        // DEL tells the agent but never fails.
        let (_, code) = run(&env("DEL", "foo"), CONF, &mut |_, _, _| Err("gone".into()));
        assert_eq!(code, 0);
    }
}
