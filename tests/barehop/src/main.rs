//! `jwtgate-barehop`: the floor that `cargo xtask loadtest` measures jwtgate
//! against (issue 12: "a bare forwarding hop built from the same hyper
//! version with no policy").
//!
//! It does for every request what jwtgate's proxy does for an allowed
//! HTTP/1.1 request, and nothing else: hyper parses each request of a
//! keep-alive connection, the request goes out on that connection's own
//! upstream connection — opened inside the pod's network namespace from the
//! passthrough source 127.0.0.6, as the agent's `proxy/upstream.rs` does —
//! and the response streams back unchanged. No token, policy, timeout,
//! connection cap, metric or log line per request. Whatever jwtgate costs
//! beyond this hop is its own work.
//!
//! The load test starts it inside the pod's network namespace (`ip netns
//! exec`), listening on a port of its own: clients connect to it directly,
//! no steering is involved.
//!
//! ```text
//! jwtgate-barehop --listen 0.0.0.0:9092 --upstream 10.248.7.1:9080 [--source 127.0.0.6] [--threads N]
//! ```
//!
//! `--threads 0` (the default) runs tokio's current-thread runtime, the
//! "minimal hyper 1.x proxy" of issue 12's table; `--threads N` a
//! multi-thread runtime with N workers, like the agent's.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Mutex;

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    source: IpAddr,
    threads: usize,
}

const USAGE: &str =
    "usage: jwtgate-barehop --listen ADDR --upstream ADDR [--source IP] [--threads N]";

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
        let (mut listen, mut upstream) = (None, None);
        let mut source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));
        let mut threads = 0;
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}\n{USAGE}");
            match flag.as_str() {
                "--listen" => listen = Some(value.parse().map_err(|e| bad(&e))?),
                "--upstream" => upstream = Some(value.parse().map_err(|e| bad(&e))?),
                "--source" => source = value.parse().map_err(|e| bad(&e))?,
                "--threads" => threads = value.parse().map_err(|e| bad(&e))?,
                _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
            }
        }
        Ok(Args {
            listen: listen.ok_or(USAGE)?,
            upstream: upstream.ok_or(USAGE)?,
            source,
            threads,
        })
    }
}

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = if args.threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_io()
            .build()
    };
    let result = runtime.and_then(|rt| rt.block_on(serve(Arc::new(args))));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jwtgate-barehop: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Arc<Args>) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "jwtgate-barehop: listening on {}, forwarding to {} from {}",
        args.listen, args.upstream, args.source
    );
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // As the agent: small requests and responses, no Nagle delay.
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, args.clone()));
            }
            // EMFILE and the like: the load test never gets here; keep going.
            Err(e) => eprintln!("jwtgate-barehop: accept: {e}"),
        }
    }
}

/// One downstream connection. Its upstream connection is opened at the
/// first request and reused while it stays open, in a slot behind an async
/// lock — the agent's `ConnContext::upstream` has the same shape, so the
/// floor pays what jwtgate pays for it.
async fn connection(stream: TcpStream, args: Arc<Args>) {
    let slot: Arc<Mutex<Option<client::SendRequest<Incoming>>>> = Arc::new(Mutex::new(None));
    let service = service_fn(move |req| {
        let (slot, args) = (slot.clone(), args.clone());
        async move { Ok::<_, Infallible>(forward(&slot, &args, req).await) }
    });
    // An error here is the client going away mid-request: nothing to do.
    let _ = server::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Send one request upstream and return the application's response, or a
/// bare 502 when the application cannot be reached.
async fn forward(
    slot: &Mutex<Option<client::SendRequest<Incoming>>>,
    args: &Args,
    req: Request<Incoming>,
) -> Response<HopBody> {
    let mut slot = slot.lock().await;
    let reusable = match slot.as_mut() {
        Some(sender) => sender.ready().await.is_ok(),
        None => false,
    };
    if !reusable {
        match connect(args).await {
            Ok(sender) => *slot = Some(sender),
            Err(e) => return bad_gateway(&e),
        }
    }
    let sender = slot.as_mut().expect("connected above");
    match sender.send_request(req).await {
        Ok(resp) => resp.map(HopBody::Upstream),
        Err(e) => bad_gateway(&e),
    }
}

/// A TCP connection to the application from the passthrough source, and
/// hyper's HTTP/1 client handshake on it.
async fn connect(
    args: &Args,
) -> Result<client::SendRequest<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let socket = match args.upstream {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(args.source, 0))?;
    socket.set_nodelay(true)?;
    let stream = socket.connect(args.upstream).await?;
    let (sender, conn) = client::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The application closed the connection; the next request reconnects.
        let _ = conn.await;
    });
    Ok(sender)
}

/// The answer when the application cannot be reached: a bare 502.
fn bad_gateway(e: &dyn std::fmt::Display) -> Response<HopBody> {
    eprintln!("jwtgate-barehop: upstream: {e}");
    let mut resp = Response::new(HopBody::Empty);
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

/// The response body: the application's, streamed, or the empty body of
/// this hop's own 502.
enum HopBody {
    Upstream(Incoming),
    Empty,
}

impl Body for HopBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            HopBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            HopBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            HopBody::Upstream(b) => b.is_end_stream(),
            HopBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            HopBody::Upstream(b) => b.size_hint(),
            HopBody::Empty => SizeHint::with_exact(0),
        }
    }
}
