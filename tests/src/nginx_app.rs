//! nginx as the application inside a pod, for load: the echo app
//! ([`crate::app::EchoApp`], one thread per connection, every request
//! recorded) is built to be inspected, not to be fast, and would be the
//! bottleneck of any load test.
//!
//! Every path answers 200 with a fixed body (no file read, no access log),
//! keep-alive connections are never closed by nginx, and the process runs
//! inside the pod's network namespace (`ip netns exec`).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::jwks_server::NGINX;
use crate::process::{detach_from_terminal, stop_child, tail};

/// A running nginx in a pod; stopped on drop.
pub struct NginxApp {
    dir: PathBuf,
    child: Option<Child>,
}

/// How nginx serves the pod's ports.
#[derive(Debug, Clone)]
pub struct NginxAppConfig {
    pub ports: Vec<u16>,
    /// Size of the 200 response body.
    pub body_bytes: usize,
    /// `worker_processes`.
    pub workers: usize,
}

impl NginxApp {
    /// Starts nginx in the named network namespace at `netns` (a path under
    /// /var/run/netns), with its files in `dir`; returns once every port
    /// answers on the pod's loopback.
    pub fn start(netns: &Path, dir: &Path, cfg: &NginxAppConfig) -> Result<Self> {
        if !Path::new(NGINX).exists() {
            bail!("{NGINX} not found: install the Debian package `nginx` (or run `cargo xtask setup`)");
        }
        let ns_name = netns
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} is not a named namespace", netns.display()))?;
        fs::create_dir_all(dir.join("tmp"))?;
        let conf = dir.join("nginx.conf");
        fs::write(&conf, config(dir, cfg))?;
        let log = fs::File::create(dir.join("stderr.log"))?;
        let mut cmd = Command::new("ip");
        detach_from_terminal(&mut cmd);
        let child = cmd
            .args(["netns", "exec", ns_name, NGINX, "-c"])
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning nginx in the pod")?;
        let mut app = NginxApp {
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        for port in &cfg.ports {
            app.wait_ready(netns, SocketAddr::from(([127, 0, 0, 1], *port)))?;
        }
        Ok(app)
    }

    /// The process id of the nginx master.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn logs(&self) -> String {
        format!(
            "--- nginx error.log\n{}--- nginx stderr\n{}",
            tail(&self.dir.join("error.log"), 40),
            tail(&self.dir.join("stderr.log"), 20)
        )
    }

    fn wait_ready(&mut self, netns: &Path, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(st) = child.try_wait()? {
                    bail!("nginx exited at start ({st}):\n{}", self.logs());
                }
            }
            if let Ok(r) = crate::http::get_in(Some(netns), addr, "/", None) {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx did not answer on {addr} within 10 s:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (fast shutdown), bounded wait, then SIGKILL.
    pub fn stop(&mut self) -> Result<()> {
        match self.child.take() {
            Some(child) => stop_child(child, "nginx (app)", Duration::from_secs(5)).map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Drop for NginxApp {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("jwtgate-e2e: stopping nginx (app): {e:#}");
        }
    }
}

fn config(dir: &Path, cfg: &NginxAppConfig) -> String {
    let d = dir.display();
    let listens: String = cfg
        .ports
        .iter()
        .map(|p| format!("        listen {p};\n"))
        .collect();
    // A body of printable bytes; nginx's `return` takes it from the config,
    // so no request touches the disk.
    let body = "x".repeat(cfg.body_bytes);
    // Every path nginx would take from its compiled-in prefix points into
    // `dir`. keepalive_requests/keepalive_timeout: nginx would otherwise close
    // a keep-alive connection after 1000 requests, and the proxies would
    // measure their reconnects.
    format!(
        r#"daemon off;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 3600s;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
{listens}        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"#,
        workers = cfg.workers.max(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_serves_every_port_with_the_body() {
        let c = config(
            Path::new("/tmp/x"),
            &NginxAppConfig {
                ports: vec![9080, 9091],
                body_bytes: 4,
                workers: 1,
            },
        );
        assert!(c.contains("listen 9080;\n"));
        assert!(c.contains("listen 9091;\n"));
        assert!(c.contains("return 200 \"xxxx\";"));
        assert!(c.contains("keepalive_requests 1000000000;"));
    }
}
