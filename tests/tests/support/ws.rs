//! A WebSocket application (tokio-tungstenite) inside a pod and a
//! WebSocket client in a client namespace: the upgrade request goes through
//! the agent like any request, then the connection is a byte pipe.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::{connect_in, listen_in, step};

/// An upgrade request as the application received it.
#[derive(Debug, Clone)]
pub struct SeenUpgrade {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl SeenUpgrade {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An echo WebSocket server: every text message comes back as
/// `echo: <text>`. Runs on the runtime it was started on.
pub struct WsApp {
    seen: Arc<Mutex<Vec<SeenUpgrade>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WsApp {
    /// Listens on `[::]:port` inside `netns`. Call inside a runtime.
    pub fn start(netns: &Path, port: u16) -> Result<WsApp> {
        let listener = listen_in(netns, port)?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, recorded.clone()));
            }
        });
        Ok(WsApp { seen, task })
    }

    /// Upgrade requests received so far.
    pub fn seen(&self) -> Vec<SeenUpgrade> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for WsApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// The callback's error type is tungstenite's (an HTTP response).
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, seen: Arc<Mutex<Vec<SeenUpgrade>>>) {
    let record = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(SeenUpgrade {
                path: req.uri().to_string(),
                headers,
            });
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(text) => Message::text(format!("echo: {}", text.as_str())),
            Message::Binary(bytes) => Message::Binary(bytes),
            Message::Close(_) => break,
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}

/// What an upgrade attempt ended with.
pub enum Upgrade {
    Open(Box<WebSocketStream<TcpStream>>),
    /// The handshake was answered with this status and body instead of 101.
    Refused(u16, String),
}

/// Open `ws://addr{path}` from `netns`, with `Authorization: Bearer` when a
/// token is given.
pub async fn open(
    netns: &Path,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<Upgrade> {
    let mut req = format!("ws://{addr}{path}").into_client_request()?;
    if let Some(token) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let stream = connect_in(netns, addr).await.context("connecting")?;
    match step(
        "WebSocket handshake",
        tokio_tungstenite::client_async(req, stream),
    )
    .await?
    {
        Ok((ws, resp)) => {
            if resp.status() != 101 {
                bail!("handshake answered {}", resp.status());
            }
            Ok(Upgrade::Open(Box::new(ws)))
        }
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Ok(Upgrade::Refused(resp.status().as_u16(), body))
        }
        Err(e) => Err(e).context("WebSocket handshake"),
    }
}

/// Send `text` and wait for the echo.
pub async fn round_trip(ws: &mut WebSocketStream<TcpStream>, text: &str) -> Result<String> {
    step("sending a message", ws.send(Message::text(text))).await??;
    loop {
        match step("waiting for the echo", ws.next()).await? {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => bail!("unexpected message {other:?}"),
            Some(Err(e)) => return Err(e).context("reading the echo"),
            None => bail!("the connection closed"),
        }
    }
}
