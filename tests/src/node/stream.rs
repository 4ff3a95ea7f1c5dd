//! A long-running `kubectl` (`exec -i` of a client in a pod, `logs -f`)
//! whose output lines arrive while the test goes on, and which is told to
//! stop through its stdin: `kubectl exec` forwards no signal, but it does
//! forward stdin to the process in the container.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Node;

pub struct KubectlStream {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every line so far (for errors and for `logs -f`).
    seen: Vec<String>,
}

impl KubectlStream {
    /// Starts `kubectl <args>` with stdin and stdout as pipes (stderr
    /// joins the lines, marked).
    pub fn spawn(node: &Node, args: &[&str]) -> Result<KubectlStream> {
        let what = format!("kubectl {}", args.join(" "));
        let mut child = node
            .kubectl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().context("stdout")?;
        let err = child.stderr.take().context("stderr")?;
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx2.send(format!("stderr: {line}")).is_err() {
                    break;
                }
            }
        });
        Ok(KubectlStream {
            what,
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits for a line that `want` accepts; fails when the process ends or
    /// `timeout` passes first.
    pub fn wait_line(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{}: no such line within {timeout:?}; got {:?}",
                        self.what,
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!("{} ended ({status}) first; got {:?}", self.what, self.seen)
                }
            }
        }
    }

    /// Tells the client to stop (a line on its stdin, then EOF) and returns
    /// its last line (its report).
    pub fn stop(mut self, timeout: Duration) -> Result<String> {
        if let Some(mut stdin) = self.stdin.take() {
            // The client may have ended by itself (its own deadline).
            let _ = stdin.write_all(b"stop\n");
        }
        self.finish(timeout)?;
        self.seen
            .iter()
            .rev()
            .find(|l| !l.starts_with("stderr: "))
            .cloned()
            .with_context(|| format!("{}: no output", self.what))
    }

    /// Every line until the process ends (`logs -f` ends with its container).
    pub fn finish(&mut self, timeout: Duration) -> Result<&[String]> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{} did not end within {timeout:?}; got {:?}",
                        self.what,
                        self.seen
                    )
                }
            }
        }
        self.child.wait()?;
        Ok(&self.seen)
    }
}

impl Drop for KubectlStream {
    fn drop(&mut self) {
        // Ends the local kubectl; a client in a pod ends with the pod (its
        // stdin is closed by then, which stops it too).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
