//! Two server processes behind one address, as behind a load balancer that sends each
//! request to the next process: for running a whole black-box suite against a pair.
//!
//! With [`PAIR_ENV`] set, every [`crate::TestServer`] on PostgreSQL in
//! [`crate::Mode::Process`] starts a second process on the same database and config,
//! and its address is a small HTTP proxy that alternates requests between the two. A
//! client that keeps one connection open still has its requests spread, so a push on
//! one process and the pull after it on the other is the normal case, not a rare one.
//!
//! ```sh
//! OUTPOST_TEST_PAIR=1 cargo test -p outpost-server --test protocol
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Response, StatusCode};

/// Set (to anything but empty) to run PostgreSQL test servers as pairs.
pub const PAIR_ENV: &str = "OUTPOST_TEST_PAIR";

/// Whether [`PAIR_ENV`] asks for pairs.
pub fn pairs_wanted() -> bool {
    std::env::var_os(PAIR_ENV).is_some_and(|v| !v.is_empty())
}

/// Bodies the proxy passes on: past the server's 8 MiB limit, so the server answers
/// the 413 itself.
const MAX_BODY: usize = 64 * 1024 * 1024;

#[derive(Debug)]
struct Upstreams {
    addrs: Vec<String>,
    next: AtomicUsize,
    client: reqwest::Client,
}

/// The proxy: serves on its own thread and runtime, so it answers whatever the test's
/// thread is doing; stopped when dropped.
#[derive(Debug)]
pub struct Balancer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Balancer {
    /// Alternates requests between `upstreams` (`host:port`).
    pub fn start(upstreams: Vec<String>) -> io::Result<Balancer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let client = reqwest::Client::builder()
            .no_gzip()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(io::Error::other)?;
        let state = Arc::new(Upstreams {
            addrs: upstreams,
            next: AtomicUsize::new(0),
            client,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let app = axum::Router::new().fallback(forward).with_state(state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Balancer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `host:port` clients use.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Headers that belong to one hop, not passed on.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "host" | "te"
    )
}

async fn forward(State(up): State<Arc<Upstreams>>, req: Request) -> Response<Body> {
    let i = up.next.fetch_add(1, Ordering::Relaxed);
    let target = &up.addrs[i % up.addrs.len()];
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let bad_gateway = |e: String| {
        let mut r = Response::new(Body::from(e));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r
    };
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return bad_gateway(format!("reading the request: {e}")),
    };
    let mut out = up
        .client
        .request(parts.method, format!("http://{target}{path}"));
    for (k, v) in &parts.headers {
        if !hop_by_hop(k) {
            out = out.header(k, v);
        }
    }
    let answer = match out.body(bytes).send().await {
        Ok(a) => a,
        Err(e) => return bad_gateway(format!("{target}: {e}")),
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let body = match answer.bytes().await {
        Ok(b) => b,
        Err(e) => return bad_gateway(format!("{target}: {e}")),
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    for (k, v) in &headers {
        if !hop_by_hop(k) && k != "content-length" {
            r.headers_mut().append(k, v.clone());
        }
    }
    r
}
