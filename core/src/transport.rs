//! Transport: how the sync engine reaches a server speaking protocol v1.
//!
//! The engine only sees the [`Transport`] trait, so tests and simulations can put a
//! fault-injecting layer in between, and apps with unusual networking can bring their
//! own. [`HttpTransport`] is the real one: gzip up, zstd or gzip down (decoded here, so
//! the bytes the radio carried are counted and a decoded answer is bounded), timeouts
//! that grow with the bytes a request moves, and TLS through rustls with bundled roots
//! (no OpenSSL, no platform hooks).

use std::future::Future;
use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

mod file_slice;

pub use file_slice::FileSlice;

/// A file's bytes on their way to the server: shared, never copied.
pub use bytes::Bytes;

use crate::protocol::{
    AttachmentStatus, ErrorResponse, HealthResponse, MAX_BODY_BYTES, OffsetMismatch, PullResponse,
    PushRequest, PushResponse,
};

/// A boxed future, so the trait can be used as `dyn Transport`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a request did not produce an answer the engine can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No answer: connection refused or reset, DNS, TLS, a dropped response.
    #[error("network error: {0}")]
    Network(String),
    #[error("request timed out")]
    Timeout,
    /// The answer started to arrive and then stopped: the connection closed or went
    /// silent part way. The link works but drops long transfers, so a smaller request
    /// may get through at once.
    #[error("answer cut off: {0}")]
    Cut(String),
    /// `401`: the token is missing, wrong or expired.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// `410 cursor_expired`: pull again from the beginning.
    #[error("cursor expired")]
    CursorExpired,
    /// `429`, with the server's `Retry-After` in seconds when it sent one.
    #[error("rate limited")]
    RateLimited { retry_after: Option<Duration> },
    /// Any other non-2xx answer.
    #[error("HTTP {status} {code}: {message}")]
    Http {
        status: u16,
        code: String,
        message: String,
    },
    /// A 2xx answer that is not the protocol's JSON.
    #[error("bad answer from server: {0}")]
    Protocol(String),
}

impl TransportError {
    /// Worth trying again later: nothing about the request itself is wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            TransportError::Network(_)
            | TransportError::Timeout
            | TransportError::Cut(_)
            | TransportError::RateLimited { .. }
            | TransportError::Protocol(_) => true,
            TransportError::Http { status, .. } => *status >= 500 || *status == 408,
            TransportError::Unauthorized(_) | TransportError::CursorExpired => false,
        }
    }

    /// The error for a log line: the server's own words left out (a server may quote
    /// a refused request's values back), status and code kept.
    pub fn for_log(&self) -> String {
        match self {
            TransportError::Unauthorized(_) => "unauthorized".into(),
            TransportError::Http { status, code, .. } => format!("HTTP {status} {code}"),
            other => other.to_string(),
        }
    }

    /// The request failed on the link itself (nothing wrong with it or the server).
    pub fn is_link_failure(&self) -> bool {
        matches!(
            self,
            TransportError::Network(_) | TransportError::Timeout | TransportError::Cut(_)
        )
    }
}

/// One pull request. The fields past `collections` are protocol additions, which a
/// server that predates them ignores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullParams {
    pub since: Option<String>,
    pub limit: u32,
    pub collections: Vec<String>,
    /// Byte budget of the page (`max_bytes`); `None`: the server's own.
    pub max_bytes: Option<usize>,
    /// Ask for the dense form of [`crate::pages`] (`format=columns`).
    pub columns: bool,
    /// Seqs of this client's own applied ops (`own`), as inclusive ranges.
    pub own: Vec<(i64, i64)>,
    /// Ask the server not to count the changes left after the page (`remaining=0`):
    /// the client still knows from an earlier page's count.
    pub skip_remaining: bool,
}

impl PullParams {
    /// The request's query string, as every transport over HTTP sends it.
    pub fn query(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if let Some(since) = &self.since {
            q.append_pair("since", since);
        }
        q.append_pair("limit", &self.limit.to_string());
        if !self.collections.is_empty() {
            q.append_pair("collections", &self.collections.join(","));
        }
        if let Some(b) = self.max_bytes {
            q.append_pair("max_bytes", &b.max(1).to_string());
        }
        if self.columns {
            q.append_pair("format", crate::pages::COLUMNS);
        }
        if !self.own.is_empty() {
            let ranges: Vec<String> = self
                .own
                .iter()
                .map(|&(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    }
                })
                .collect();
            q.append_pair("own", &ranges.join(","));
        }
        if self.skip_remaining {
            q.append_pair("remaining", "0");
        }
        q.finish()
    }
}

/// The answer to an upload request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uploaded {
    /// Where the upload stands now.
    Status(AttachmentStatus),
    /// `409 offset_mismatch`: the server holds `received` bytes; send from there.
    OffsetMismatch { received: u64 },
}

fn no_files() -> TransportError {
    TransportError::Protocol("this transport carries no attachments".into())
}

/// A server speaking protocol v1.
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// `GET /health`: is the server reachable right now?
    fn health(&self) -> BoxFuture<'_, Result<HealthResponse, TransportError>>;
    /// `POST /v1/push`.
    fn push<'a>(
        &'a self,
        token: &'a str,
        request: &'a PushRequest,
    ) -> BoxFuture<'a, Result<PushResponse, TransportError>>;
    /// `GET /v1/pull`.
    fn pull<'a>(
        &'a self,
        token: &'a str,
        params: &'a PullParams,
    ) -> BoxFuture<'a, Result<PullResponse, TransportError>>;
    /// What this transport counts of its traffic, if it counts: the sync report's bytes.
    fn wire_stats(&self) -> Option<Arc<WireStats>> {
        None
    }

    /// `GET /v1/attachments/<sha256>/status`; `None` when the server answers 404 (no
    /// upload of it, and no record this user may read refers to it).
    fn attachment_status<'a>(
        &'a self,
        token: &'a str,
        sha256: &'a str,
    ) -> BoxFuture<'a, Result<Option<AttachmentStatus>, TransportError>> {
        let _ = (token, sha256);
        Box::pin(async { Err(no_files()) })
    }

    /// `POST /v1/attachments/<sha256>?size=&offset=` with `body`, the file's bytes from
    /// `offset` on. The caller checked the slice is there; a read that fails anyway
    /// fails the request as a broken link would.
    fn upload_attachment<'a>(
        &'a self,
        token: &'a str,
        sha256: &'a str,
        size: u64,
        offset: u64,
        body: FileSlice,
    ) -> BoxFuture<'a, Result<Uploaded, TransportError>> {
        let _ = (token, sha256, size, offset, body);
        Box::pin(async { Err(no_files()) })
    }

    /// Bytes `from..to` of a file (`GET /v1/attachments/<sha256>` with a `Range`);
    /// `None` when the server answers 404.
    fn download_attachment<'a>(
        &'a self,
        token: &'a str,
        sha256: &'a str,
        from: u64,
        to: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, TransportError>> {
        let _ = (token, sha256, from, to);
        Box::pin(async { Err(no_files()) })
    }
}

/// Counters of what went over the wire, for status and benchmarks: bodies as sent
/// (compressed), and the request and status lines and headers.
#[derive(Debug, Default)]
pub struct WireStats {
    pub requests: std::sync::atomic::AtomicU64,
    pub bytes_sent: std::sync::atomic::AtomicU64,
    pub bytes_received: std::sync::atomic::AtomicU64,
}

/// Timeouts of the HTTP transport.
///
/// A fixed timeout for a whole request is wrong on a slow link both ways: too short
/// for a large page at a few KB/s (it is cut off and fetched again, forever), and far
/// too long to notice a dead link under a small request. So a push or pull may take
/// `request` plus the time its bytes need at `min_bytes_per_s`, and it fails sooner if
/// nothing at all arrives for `stall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    pub connect: Duration,
    /// A push or pull request's allowance besides its bytes: round trips, server time.
    pub request: Duration,
    /// The slowest link served: a request may take the time its bytes need at this
    /// rate (bytes per second) on top of `request`.
    pub min_bytes_per_s: u64,
    /// No byte of the answer for this long: the link is gone.
    pub stall: Duration,
    /// The reachability probe: short, so a captive portal or dead link is noticed fast.
    pub health: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(15),
            min_bytes_per_s: 1024,
            stall: Duration::from_secs(20),
            health: Duration::from_secs(3),
        }
    }
}

impl HttpTimeouts {
    /// How long a request that moves about `bytes` (both ways, on the wire) may take.
    pub fn for_bytes(&self, bytes: usize) -> Duration {
        let rate = self.min_bytes_per_s.max(1);
        self.request + Duration::from_secs_f64(bytes as f64 / rate as f64)
    }
}

/// The compression of a pull page is not known before it arrives; this is what a
/// page's JSON about shrinks to at least, for sizing its timeout.
const EXPECTED_COMPRESSION: usize = 4;

/// The encodings an answer may come in, best first.
const ACCEPT_ENCODING: &str = "zstd, gzip";

/// Protocol v1 over HTTP(S).
#[derive(Debug, Clone)]
pub struct HttpTransport {
    base: reqwest::Url,
    client: reqwest::Client,
    timeouts: HttpTimeouts,
    stats: Arc<WireStats>,
}

impl HttpTransport {
    /// `base_url` is the server root, e.g. `https://sync.example.org/`. Plain `http` is
    /// refused except for loopback addresses: tokens and health data cross this link.
    pub fn new(base_url: &str, timeouts: HttpTimeouts) -> Result<HttpTransport, TransportError> {
        let mut base = reqwest::Url::parse(base_url)
            .map_err(|e| TransportError::Protocol(format!("invalid server URL: {e}")))?;
        match base.scheme() {
            "https" => {}
            "http" if is_loopback(&base) => {}
            "http" => {
                return Err(TransportError::Protocol(
                    "plain http is only allowed for loopback addresses; use https".into(),
                ));
            }
            other => {
                return Err(TransportError::Protocol(format!(
                    "unsupported scheme {other}"
                )));
            }
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config()?)
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.stall)
            // Answers are decoded here (`decode_body`), to count what the radio carried.
            .no_gzip()
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| TransportError::Protocol(format!("HTTP client: {e}")))?;
        Ok(HttpTransport {
            base,
            client,
            timeouts,
            stats: Arc::new(WireStats::default()),
        })
    }

    pub fn stats(&self) -> Arc<WireStats> {
        Arc::clone(&self.stats)
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, TransportError> {
        self.base
            .join(path)
            .map_err(|e| TransportError::Protocol(e.to_string()))
    }

    fn count(&self, sent: usize, received: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.requests.fetch_add(1, Relaxed);
        self.stats.bytes_sent.fetch_add(sent as u64, Relaxed);
        self.stats
            .bytes_received
            .fetch_add(received as u64, Relaxed);
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        body: usize,
        timeout: Duration,
    ) -> Result<T, TransportError> {
        let request = request
            .header(reqwest::header::ACCEPT_ENCODING, ACCEPT_ENCODING)
            .timeout(timeout)
            .build()
            .map_err(map_reqwest)?;
        let answer = self.exchange(request, body).await?;
        let encoding = answer.header(reqwest::header::CONTENT_ENCODING);
        let body = decode_body(encoding.as_deref(), &answer.body)?;
        let retry_after = answer.header(reqwest::header::RETRY_AFTER);
        decode_answer(answer.status, retry_after.as_deref(), &body)
    }

    /// Sends `request` (`body` bytes of body) and reads the whole answer, counting
    /// both ways, heads included.
    async fn exchange(
        &self,
        request: reqwest::Request,
        body: usize,
    ) -> Result<Answer, TransportError> {
        let sent = body + request_head_bytes(&request);
        let response = self.client.execute(request).await.map_err(map_reqwest)?;
        let status = response.status().as_u16();
        let head = response_head_bytes(&response);
        let headers = response.headers().clone();
        // The answer has begun: a failure from here on cut it off part way.
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                self.count(sent, head);
                return Err(TransportError::Cut(reqwest_text(e)));
            }
        };
        self.count(sent, head + body.len());
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// The bytes of a request's line and headers, as far as this side knows them (the
/// client adds a few of its own): what a request costs the radio besides its body.
fn request_head_bytes(r: &reqwest::Request) -> usize {
    let url = r.url();
    let target = url.path().len() + url.query().map_or(0, |q| q.len() + 1);
    let line = r.method().as_str().len() + target + " HTTP/1.1\r\n".len() + 1;
    let host = "host: \r\n".len() + url.host_str().map_or(0, str::len) + 6;
    let agent = "user-agent: \r\n".len() + USER_AGENT.len();
    line + host + agent + headers_bytes(r.headers()) + 2
}

/// An answer read whole.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Answer {
    fn header(&self, name: reqwest::header::HeaderName) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// The bytes of an answer's status line and headers.
fn response_head_bytes(r: &reqwest::Response) -> usize {
    "HTTP/1.1 200 OK\r\n".len() + headers_bytes(r.headers()) + 2
}

fn headers_bytes(h: &reqwest::header::HeaderMap) -> usize {
    h.iter()
        .map(|(k, v)| k.as_str().len() + 2 + v.len() + 2)
        .sum()
}

/// What the device tells servers it is.
const USER_AGENT: &str = concat!("outpost/", env!("CARGO_PKG_VERSION"));

/// An answer's body as sent, decoded by its `Content-Encoding`; more than
/// [`MAX_BODY_BYTES`] decoded is refused, as the server refuses such a request.
pub fn decode_body(encoding: Option<&str>, body: &[u8]) -> Result<Vec<u8>, TransportError> {
    let bounded = |mut r: Box<dyn Read + '_>| {
        let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(MAX_BODY_BYTES));
        let limit = u64::try_from(MAX_BODY_BYTES).unwrap_or(u64::MAX) + 1;
        (&mut r)
            .take(limit)
            .read_to_end(&mut out)
            .map_err(|e| TransportError::Protocol(format!("undecodable answer: {e}")))?;
        if out.len() > MAX_BODY_BYTES {
            return Err(TransportError::Protocol(format!(
                "the answer is over {MAX_BODY_BYTES} bytes decoded"
            )));
        }
        Ok(out)
    };
    match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "identity") => Ok(body.to_vec()),
        Some("gzip" | "x-gzip") => bounded(Box::new(flate2::read::GzDecoder::new(body))),
        Some("zstd") => {
            let d = zstd::stream::read::Decoder::new(body)
                .map_err(|e| TransportError::Protocol(format!("undecodable answer: {e}")))?;
            bounded(Box::new(d))
        }
        Some(other) => Err(TransportError::Protocol(format!(
            "answer in an encoding not asked for: {other}"
        ))),
    }
}

/// Turns an HTTP answer of protocol v1 into a result: the JSON of a 2xx, or the
/// error the status and error body mean. Shared by every transport over HTTP.
pub fn decode_answer<T: serde::de::DeserializeOwned>(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<T, TransportError> {
    if (200..300).contains(&status) {
        return serde_json::from_slice(body).map_err(|e| undecodable(&e));
    }
    let (code, message) = match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(e) => (e.error.code, e.error.message),
        Err(_) => (
            String::new(),
            String::from_utf8_lossy(body).chars().take(200).collect(),
        ),
    };
    Err(match status {
        401 => TransportError::Unauthorized(message),
        410 => TransportError::CursorExpired,
        429 => TransportError::RateLimited {
            retry_after: retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        },
        s => TransportError::Http {
            status: s,
            code,
            message,
        },
    })
}

/// A request that got no answer at all.
fn map_reqwest(e: reqwest::Error) -> TransportError {
    if e.is_timeout() {
        TransportError::Timeout
    } else {
        TransportError::Network(reqwest_text(e))
    }
}

/// What went wrong, with its causes (reqwest's own text has none) but without the URL
/// it names: a pull's query carries the cursor, and this text reaches reports and logs.
fn reqwest_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A 2xx answer that is not the protocol's JSON. serde_json's text quotes the value it
/// could not use, which may be record data; where it broke is enough.
fn undecodable(e: &serde_json::Error) -> TransportError {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "unreadable",
        Category::Syntax => "not JSON",
        Category::Data => "JSON of the wrong shape",
        Category::Eof => "cut-off JSON",
    };
    TransportError::Protocol(format!(
        "undecodable answer: {what} at line {} column {}",
        e.line(),
        e.column()
    ))
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// TLS with ring and the Mozilla roots, named explicitly: a process that also links
/// aws-lc (the server's tests) has no single default provider.
fn tls_config() -> Result<rustls::ClientConfig, TransportError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Protocol(format!("TLS: {e}")))?;
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Gzips a request body: field links are slow and JSON compresses about 5:1. The
/// default level: a phone compresses a push once, and the uplink is the slowest part.
fn gzip(body: &[u8]) -> Result<Vec<u8>, TransportError> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body)
        .map_err(|e| TransportError::Protocol(e.to_string()))?;
    enc.finish()
        .map_err(|e| TransportError::Protocol(e.to_string()))
}

/// Bodies smaller than this are sent as they are: gzip would not pay for itself.
const GZIP_MIN_BYTES: usize = 1024;

impl Transport for HttpTransport {
    fn health(&self) -> BoxFuture<'_, Result<HealthResponse, TransportError>> {
        Box::pin(async move {
            let req = self.client.get(self.url("health")?);
            self.send(req, 0, self.timeouts.health).await
        })
    }

    fn push<'a>(
        &'a self,
        token: &'a str,
        request: &'a PushRequest,
    ) -> BoxFuture<'a, Result<PushResponse, TransportError>> {
        Box::pin(async move {
            let json =
                serde_json::to_vec(request).map_err(|e| TransportError::Protocol(e.to_string()))?;
            let mut req = self
                .client
                .post(self.url("v1/push")?)
                .bearer_auth(token)
                .header(reqwest::header::CONTENT_TYPE, "application/json");
            let body = if json.len() >= GZIP_MIN_BYTES {
                req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
                gzip(&json)?
            } else {
                json
            };
            let sent = body.len();
            // The answer: about a tenth of an op per op once compressed.
            let timeout = self.timeouts.for_bytes(sent + request.ops.len() * 40);
            self.send(req.body(body), sent, timeout).await
        })
    }

    fn pull<'a>(
        &'a self,
        token: &'a str,
        params: &'a PullParams,
    ) -> BoxFuture<'a, Result<PullResponse, TransportError>> {
        Box::pin(async move {
            let mut url = self.url("v1/pull")?;
            url.set_query(Some(&params.query()));
            let req = self.client.get(url).bearer_auth(token);
            // Without a budget of its own the page is the server's: 4 MiB by default.
            let page = params.max_bytes.unwrap_or(4 << 20);
            let timeout = self.timeouts.for_bytes(page / EXPECTED_COMPRESSION);
            self.send(req, 0, timeout).await
        })
    }

    fn wire_stats(&self) -> Option<Arc<WireStats>> {
        Some(self.stats())
    }
    fn attachment_status<'a>(
        &'a self,
        token: &'a str,
        sha256: &'a str,
    ) -> BoxFuture<'a, Result<Option<AttachmentStatus>, TransportError>> {
        Box::pin(self.status_of(token, sha256))
    }

    fn upload_attachment<'a>(
        &'a self,
        token: &'a str,
        sha256: &'a str,
        size: u64,
        offset: u64,
        body: FileSlice,
    ) -> BoxFuture<'a, Result<Uploaded, TransportError>> {
        Box::pin(self.upload_of(token, sha256, size, offset, body))
    }

    fn download_attachment<'a>(
        &'a self,
        token: &'a str,
        sha256: &'a str,
        from: u64,
        to: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, TransportError>> {
        Box::pin(self.download_of(token, sha256, from, to))
    }
}

impl HttpTransport {
    fn attachment_url(&self, sha256: &str, status: bool) -> Result<reqwest::Url, TransportError> {
        if !crate::protocol::is_sha256(sha256) {
            return Err(TransportError::Protocol(format!(
                "not a SHA-256: {sha256:?}"
            )));
        }
        let tail = if status { "/status" } else { "" };
        self.url(&format!("v1/attachments/{sha256}{tail}"))
    }

    /// A file request: `sent` body bytes up, about `expected` down; its timeout grows
    /// with both, as a page's does.
    async fn raw(
        &self,
        request: reqwest::RequestBuilder,
        sent: usize,
        expected: usize,
    ) -> Result<(u16, Option<String>, Option<String>, Vec<u8>), TransportError> {
        let request = request
            .timeout(self.timeouts.for_bytes(sent + expected))
            .build()
            .map_err(map_reqwest)?;
        let answer = self.exchange(request, sent).await?;
        Ok((
            answer.status,
            answer.header(reqwest::header::RETRY_AFTER),
            answer.header(reqwest::header::CONTENT_RANGE),
            answer.body.to_vec(),
        ))
    }
}

impl HttpTransport {
    async fn status_of(
        &self,
        token: &str,
        sha256: &str,
    ) -> Result<Option<AttachmentStatus>, TransportError> {
        let req = self
            .client
            .get(self.attachment_url(sha256, true)?)
            .bearer_auth(token);
        let (status, retry, _, body) = self.raw(req, 0, 0).await?;
        decode_status_answer(status, retry.as_deref(), &body)
    }

    async fn upload_of(
        &self,
        token: &str,
        sha256: &str,
        size: u64,
        offset: u64,
        slice: FileSlice,
    ) -> Result<Uploaded, TransportError> {
        let sent = usize::try_from(slice.len()).unwrap_or(usize::MAX);
        let body = slice
            .body()
            .map_err(|e| TransportError::Network(format!("cannot read the file: {e}")))?;
        let mut url = self.attachment_url(sha256, false)?;
        url.query_pairs_mut()
            .append_pair("size", &size.to_string())
            .append_pair("offset", &offset.to_string());
        let req = self
            .client
            .post(url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap(body));
        let (status, retry, _, body) = self.raw(req, sent, 0).await?;
        decode_upload_answer(status, retry.as_deref(), &body)
    }

    async fn download_of(
        &self,
        token: &str,
        sha256: &str,
        from: u64,
        to: u64,
    ) -> Result<Option<Vec<u8>>, TransportError> {
        if to <= from {
            return Ok(Some(Vec::new()));
        }
        let req = self
            .client
            .get(self.attachment_url(sha256, false)?)
            .bearer_auth(token)
            .header(reqwest::header::RANGE, format!("bytes={from}-{}", to - 1));
        let span = usize::try_from(to - from).unwrap_or(usize::MAX);
        let (status, retry, range, body) = self.raw(req, 0, span).await?;
        decode_download_answer(status, retry.as_deref(), range.as_deref(), body, from, to)
    }
}

/// The answer to `GET …/status`: `None` for 404.
pub fn decode_status_answer(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<Option<AttachmentStatus>, TransportError> {
    if status == 404 {
        return Ok(None);
    }
    decode_answer(status, retry_after, body).map(Some)
}

/// The answer to an upload request, `409 offset_mismatch` included.
pub fn decode_upload_answer(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<Uploaded, TransportError> {
    if status == 409
        && let Ok(m) = serde_json::from_slice::<OffsetMismatch>(body)
    {
        return Ok(Uploaded::OffsetMismatch {
            received: m.received,
        });
    }
    decode_answer(status, retry_after, body).map(Uploaded::Status)
}

/// The answer to a ranged download of bytes `from..to`: `None` for 404. A whole-file
/// answer (a server that ignored the range) is cut to the range.
pub fn decode_download_answer(
    status: u16,
    retry_after: Option<&str>,
    content_range: Option<&str>,
    body: Vec<u8>,
    from: u64,
    to: u64,
) -> Result<Option<Vec<u8>>, TransportError> {
    let len = usize::try_from(to.saturating_sub(from)).unwrap_or(usize::MAX);
    match status {
        404 => Ok(None),
        200 => Ok(body
            .get(usize::try_from(from).unwrap_or(usize::MAX)..)
            .map(|b| b[..b.len().min(len)].to_vec())),
        206 if content_range.is_some_and(|r| r.starts_with(&format!("bytes {from}-"))) => {
            Ok(Some(body))
        }
        206 => Err(TransportError::Protocol(format!(
            "asked for bytes from {from}, got {content_range:?}"
        ))),
        _ => decode_answer::<serde_json::Value>(status, retry_after, &body).map(|_| None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        let t = HttpTimeouts::default();
        assert!(HttpTransport::new("http://127.0.0.1:8787", t).is_ok());
        assert!(HttpTransport::new("http://localhost:1/", t).is_ok());
        assert!(HttpTransport::new("http://[::1]:1/", t).is_ok());
        assert!(HttpTransport::new("https://sync.example.org/outpost", t).is_ok());
        assert!(HttpTransport::new("http://sync.example.org/", t).is_err());
        assert!(HttpTransport::new("ftp://127.0.0.1/", t).is_err());
        assert!(HttpTransport::new("not a url", t).is_err());
    }

    #[test]
    fn an_undecodable_answer_does_not_quote_its_values() {
        let e =
            decode_answer::<PushResponse>(200, None, br#"{"results":"secret-value"}"#).unwrap_err();
        let text = e.to_string();
        assert!(
            text.ends_with("undecodable answer: JSON of the wrong shape at line 1 column 25"),
            "{text}"
        );
        assert!(!text.contains("secret-value"), "{text}");
    }

    #[test]
    fn base_path_is_kept() {
        let t = HttpTransport::new("https://h.example/sync", HttpTimeouts::default()).unwrap();
        assert_eq!(
            t.url("v1/push").unwrap().as_str(),
            "https://h.example/sync/v1/push"
        );
    }

    #[test]
    fn timeouts_grow_with_the_bytes_in_flight() {
        let t = HttpTimeouts::default();
        assert_eq!(t.for_bytes(0), t.request);
        assert_eq!(t.for_bytes(60 * 1024), t.request + Duration::from_secs(60));
    }

    #[test]
    fn the_additions_go_in_the_query_only_when_asked_for() {
        let mut p = PullParams {
            since: Some("c2.ab".into()),
            limit: 10,
            collections: vec!["a".into(), "b".into()],
            ..PullParams::default()
        };
        assert_eq!(p.query(), "since=c2.ab&limit=10&collections=a%2Cb");
        p.max_bytes = Some(0);
        p.columns = true;
        p.own = vec![(3, 3), (5, 9)];
        p.skip_remaining = true;
        assert_eq!(
            p.query(),
            "since=c2.ab&limit=10&collections=a%2Cb&max_bytes=1&format=columns&own=3%2C5-9\
             &remaining=0"
        );
    }

    #[test]
    fn answers_are_decoded_by_their_encoding_and_bounded() {
        let json = br#"{"status":"ok","protocol":1}"#;
        let gz = gzip(json).unwrap();
        let zs = zstd::bulk::compress(json, 3).unwrap();
        for (enc, body) in [
            (None, &json[..]),
            (Some("gzip"), &gz),
            (Some(" ZSTD "), &zs),
        ] {
            assert_eq!(decode_body(enc, body).unwrap(), json, "{enc:?}");
        }
        assert!(matches!(
            decode_body(Some("br"), json),
            Err(TransportError::Protocol(_))
        ));
        assert!(decode_body(Some("zstd"), b"not zstd").is_err());
        // A bomb: a little zstd that would decode past the body limit.
        let zeros = vec![0u8; MAX_BODY_BYTES + 1];
        let bomb = zstd::bulk::compress(&zeros, 3).unwrap();
        assert!(bomb.len() < 4096);
        let e = decode_body(Some("zstd"), &bomb).unwrap_err();
        assert!(e.to_string().contains("over"), "{e}");
    }

    #[test]
    fn transient_errors() {
        assert!(TransportError::Timeout.is_transient());
        assert!(TransportError::Cut(String::new()).is_transient());
        assert!(TransportError::Cut(String::new()).is_link_failure());
        assert!(TransportError::RateLimited { retry_after: None }.is_transient());
        let e = |status| TransportError::Http {
            status,
            code: String::new(),
            message: String::new(),
        };
        assert!(e(503).is_transient());
        assert!(!e(400).is_transient());
        assert!(!e(403).is_transient());
        assert!(!TransportError::Unauthorized(String::new()).is_transient());
    }

    #[test]
    fn answers_decode_to_protocol_errors() {
        let body = br#"{"error":{"code":"rate_limited","message":"slow down"}}"#;
        let r: Result<HealthResponse, _> = decode_answer(429, Some(" 7 "), body);
        assert_eq!(
            r,
            Err(TransportError::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            })
        );
        let r: Result<HealthResponse, _> = decode_answer(410, None, b"{}");
        assert_eq!(r, Err(TransportError::CursorExpired));
        let r: Result<HealthResponse, _> = decode_answer(401, None, b"");
        assert!(matches!(r, Err(TransportError::Unauthorized(_))));
        let body = br#"{"error":{"code":"invalid_request","message":"bad"}}"#;
        let r: Result<HealthResponse, _> = decode_answer(400, None, body);
        assert_eq!(
            r,
            Err(TransportError::Http {
                status: 400,
                code: "invalid_request".into(),
                message: "bad".into()
            })
        );
        let r: Result<HealthResponse, _> = decode_answer(502, None, b"<html>bad gateway</html>");
        assert!(matches!(r, Err(TransportError::Http { status: 502, .. })));
        assert!(r.unwrap_err().is_transient());
        let r: Result<HealthResponse, _> = decode_answer(200, None, b"not json");
        assert!(matches!(r, Err(TransportError::Protocol(_))));
        let ok: HealthResponse =
            decode_answer(200, None, br#"{"status":"ok","protocol":1}"#).unwrap();
        assert_eq!(ok.protocol, 1);
    }
}
