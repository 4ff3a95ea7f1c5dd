//! nginx as the JWKS endpoint, like the FAQ's `nginx-proxy` serving `/get_jwks`.
//!
//! A real nginx rather than a Rust stub so the agent's JWKS client meets a real
//! server's framing and headers. It listens on host loopback because the agent runs
//! in the host netns.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{stop_child, tail};

pub const NGINX: &str = "/usr/sbin/nginx";

/// A running nginx; stopped on drop.
pub struct JwksServer {
    dir: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
}

impl JwksServer {
    /// Serves `jwks_file` at `http://127.0.0.1:<free port>/get_jwks`, using `dir` for
    /// config, logs and temp files. Returns once `/get_jwks` answers 200.
    pub fn start(dir: &Path, jwks_file: &Path) -> Result<Self> {
        if !Path::new(NGINX).exists() {
            bail!("{NGINX} not found: install the Debian package `nginx` (apt-get install nginx), or run `cargo xtask setup`");
        }
        fs::create_dir_all(dir.join("tmp"))?;
        // nginx workers run as an unprivileged user: they must be able to reach the
        // served file, so it is copied into a world-readable directory.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        let served = dir.join("jwks.json");
        fs::copy(jwks_file, &served).with_context(|| format!("copying {}", jwks_file.display()))?;
        fs::set_permissions(&served, fs::Permissions::from_mode(0o644))?;
        let addr = free_loopback_port()?;
        let conf = dir.join("nginx.conf");
        fs::write(&conf, config(dir, addr, &served))?;
        let log = fs::File::create(dir.join("stderr.log"))?;
        let mut cmd = Command::new(NGINX);
        crate::process::detach_from_terminal(&mut cmd);
        let child = cmd
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning nginx")?;
        let mut srv = JwksServer {
            dir: dir.to_path_buf(),
            addr,
            child: Some(child),
        };
        srv.wait_ready()?;
        Ok(srv)
    }

    /// `http://127.0.0.1:<port>/get_jwks`
    pub fn jwks_uri(&self) -> String {
        format!("http://{}/get_jwks", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The last lines of nginx's error and access logs.
    pub fn logs(&self) -> String {
        format!(
            "--- nginx error.log\n{}--- nginx stderr\n{}--- nginx access.log\n{}",
            tail(&self.dir.join("error.log"), 40),
            tail(&self.dir.join("stderr.log"), 20),
            tail(&self.dir.join("access.log"), 20)
        )
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(st) = child.try_wait()? {
                    bail!("nginx exited at start ({st}):\n{}", self.logs());
                }
            }
            if let Ok(r) = crate::http::get_in(None, self.addr, "/get_jwks", None) {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx did not serve /get_jwks within 10 s:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (fast shutdown), bounded wait, then SIGKILL.
    pub fn stop(&mut self) -> Result<()> {
        match self.child.take() {
            Some(child) => stop_child(child, "nginx", Duration::from_secs(5)).map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("jwtgate-e2e: stopping nginx: {e:#}");
        }
    }
}

fn config(dir: &Path, addr: SocketAddr, served: &Path) -> String {
    let d = dir.display();
    // Every path nginx would otherwise take from its compiled-in prefix
    // (/var/lib/nginx, /var/log/nginx, /run/nginx.pid) points into `dir`, so parallel
    // runs never share files and nothing outside the temp dir is touched.
    format!(
        r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen {addr};
        location = /get_jwks {{
            default_type application/json;
            alias {served};
        }}
    }}
}}
"#,
        served = served.display()
    )
}

/// A port that was free a moment ago on 127.0.0.1 (the small race with other
/// processes is acceptable for tests).
pub fn free_loopback_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?)
}
