//! The server's app in this process: served on a loopback port by a task
//! ([`crate::Mode::Loopback`]), or called directly through a transport with no socket
//! ([`crate::Mode::Direct`]).
//!
//! Both run the `outpost-server` library exactly as its binary does, from the same
//! config file. The direct way exists for the simulation: a request handed to the
//! router is handled to its end inside the call, so a seeded schedule of devices,
//! faults and restarts is decided by its seed alone.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::http::{Request, header};
use outpost_core::protocol::{
    AttachmentStatus, HealthResponse, PullResponse, PushRequest, PushResponse,
};
use outpost_core::transport::{
    BoxFuture, FileSlice, PullParams, decode_answer, decode_download_answer, decode_status_answer,
    decode_upload_answer,
};
use outpost_core::{Transport, TransportError, Uploaded};
use tower::ServiceExt;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn load_config(path: &Path) -> io::Result<outpost_server::Config> {
    outpost_server::Config::load(path)
        .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
}

/// The app of a [`crate::Mode::Direct`] server while it is up: its router over the
/// database the config names. Shared with every [`DirectTransport`], so a restart
/// reaches the devices that hold one.
#[derive(Debug, Clone, Default)]
pub(crate) struct App(Arc<Mutex<Option<axum::Router>>>);

impl App {
    /// Opens the database and builds the router, as the binary does at start.
    pub(crate) fn start(&self, config: &Path) -> io::Result<()> {
        let config = load_config(config)?;
        let storage = outpost_server::open_storage(&config).map_err(io::Error::other)?;
        let app = outpost_server::build_app(outpost_server::AppState::new(&config, storage));
        *lock(&self.0) = Some(app);
        Ok(())
    }

    /// Drops the router; requests fail as with a server that is down.
    pub(crate) fn stop(&self) {
        lock(&self.0).take();
    }

    pub(crate) fn is_up(&self) -> bool {
        lock(&self.0).is_some()
    }

    async fn call(
        &self,
        req: Request<Body>,
    ) -> Result<(u16, Option<String>, Vec<u8>), TransportError> {
        self.call_ranged(req)
            .await
            .map(|(status, retry, _, body)| (status, retry, body))
    }

    /// [`App::call`], with the answer's `Content-Range`.
    async fn call_ranged(
        &self,
        req: Request<Body>,
    ) -> Result<(u16, Option<String>, Option<String>, Vec<u8>), TransportError> {
        let router = lock(&self.0)
            .clone()
            .ok_or_else(|| TransportError::Network("the server is down".into()))?;
        let resp = router
            .oneshot(req)
            .await
            .map_err(|e| TransportError::Network(e.to_string()))?;
        let status = resp.status().as_u16();
        let (retry, range) = {
            let header = |h| {
                resp.headers()
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            (header(header::RETRY_AFTER), header(header::CONTENT_RANGE))
        };
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .map_err(|e| TransportError::Network(e.to_string()))?;
        Ok((status, retry, range, body.to_vec()))
    }
}

/// A device's way to a [`crate::Mode::Direct`] server: each request goes to the
/// router as HTTP would carry it, and its answer is decoded as the HTTP transport
/// decodes one.
#[derive(Debug)]
pub(crate) struct DirectTransport {
    app: App,
}

impl DirectTransport {
    pub(crate) fn new(app: &App) -> DirectTransport {
        DirectTransport { app: app.clone() }
    }

    async fn exchange<T: serde::de::DeserializeOwned>(
        &self,
        req: Request<Body>,
    ) -> Result<T, TransportError> {
        let (status, retry, body) = self.app.call(req).await?;
        decode_answer(status, retry.as_deref(), &body)
    }
}

fn request(
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<Request<Body>, TransportError> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder
        .body(body.map_or_else(Body::empty, Body::from))
        .map_err(|e| TransportError::Protocol(e.to_string()))
}

impl Transport for DirectTransport {
    fn health(&self) -> BoxFuture<'_, Result<HealthResponse, TransportError>> {
        Box::pin(async move { self.exchange(request("GET", "/health", None, None)?).await })
    }

    fn push<'a>(
        &'a self,
        token: &'a str,
        req: &'a PushRequest,
    ) -> BoxFuture<'a, Result<PushResponse, TransportError>> {
        Box::pin(async move {
            let body =
                serde_json::to_vec(req).map_err(|e| TransportError::Protocol(e.to_string()))?;
            self.exchange(request("POST", "/v1/push", Some(token), Some(body))?)
                .await
        })
    }

    fn pull<'a>(
        &'a self,
        token: &'a str,
        p: &'a PullParams,
    ) -> BoxFuture<'a, Result<PullResponse, TransportError>> {
        // The query the HTTP transport sends.
        let uri = format!("/v1/pull?{}", p.query());
        Box::pin(async move {
            self.exchange(request("GET", &uri, Some(token), None)?)
                .await
        })
    }

    fn attachment_status<'a>(
        &'a self,
        token: &'a str,
        sha256: &'a str,
    ) -> BoxFuture<'a, Result<Option<AttachmentStatus>, TransportError>> {
        Box::pin(async move {
            let uri = format!("/v1/attachments/{sha256}/status");
            let (status, retry, body) = self
                .app
                .call(request("GET", &uri, Some(token), None)?)
                .await?;
            decode_status_answer(status, retry.as_deref(), &body)
        })
    }

    fn upload_attachment<'a>(
        &'a self,
        token: &'a str,
        sha256: &'a str,
        size: u64,
        offset: u64,
        body: FileSlice,
    ) -> BoxFuture<'a, Result<Uploaded, TransportError>> {
        Box::pin(async move {
            let uri = format!("/v1/attachments/{sha256}?size={size}&offset={offset}");
            let bytes = body
                .read_all()
                .map_err(|e| TransportError::Network(format!("cannot read the file: {e}")))?;
            let req = request("POST", &uri, Some(token), Some(bytes))?;
            let (status, retry, body) = self.app.call(req).await?;
            decode_upload_answer(status, retry.as_deref(), &body)
        })
    }

    fn download_attachment<'a>(
        &'a self,
        token: &'a str,
        sha256: &'a str,
        from: u64,
        to: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, TransportError>> {
        Box::pin(async move {
            let uri = format!("/v1/attachments/{sha256}");
            let mut req = request("GET", &uri, Some(token), None)?;
            let range = format!("bytes={from}-{}", to.saturating_sub(1));
            if let Ok(v) = range.parse() {
                req.headers_mut().insert(header::RANGE, v);
            }
            let (status, retry, cr, body) = self.app.call_ranged(req).await?;
            decode_download_answer(status, retry.as_deref(), cr.as_deref(), body, from, to)
        })
    }
}

/// A task that ends with its owner.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One run of a [`crate::Mode::Loopback`] server: the task serving the app, and the
/// listening socket, kept here so that a restart serves on the same port with no
/// moment where it is free. Dropping it aborts the task, requests in flight included.
#[derive(Debug)]
pub(crate) struct Loopback {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    task: AbortOnDrop,
}

impl Loopback {
    /// Serves the app of `config` on a task of the current tokio runtime: on the
    /// socket of `port_of` (which stops) if given, else on the config's `listen`.
    pub(crate) fn start(config: &Path, port_of: Option<Loopback>) -> io::Result<Loopback> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            io::Error::other("a Mode::Loopback server starts inside a tokio runtime")
        })?;
        let config = load_config(config)?;
        let listener = match port_of {
            Some(Loopback { listener, task, .. }) => {
                drop(task);
                listener
            }
            None => std::net::TcpListener::bind(config.listen)?,
        };
        let addr = listener.local_addr()?;
        let serving = listener.try_clone()?;
        serving.set_nonblocking(true)?;
        let _runtime = rt.enter();
        let serving = tokio::net::TcpListener::from_std(serving)?;
        let server =
            outpost_server::Server::on_listener(config, serving).map_err(io::Error::other)?;
        let task = rt.spawn(async move {
            if let Err(e) = server.run(std::future::pending()).await {
                eprintln!("the loopback server stopped: {e}");
            }
        });
        Ok(Loopback {
            listener,
            addr,
            task: AbortOnDrop(task),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn is_running(&self) -> bool {
        !self.task.0.is_finished()
    }
}
