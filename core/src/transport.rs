//! Transport: how the sync engine reaches a server speaking protocol v1.
//!
//! The engine only sees the [`Transport`] trait, so tests and simulations can put a
//! fault-injecting layer in between, and apps with unusual networking can bring their
//! own. [`HttpTransport`] is the real one: HTTP with gzip both ways, a timeout on every
//! request, and TLS through rustls with bundled roots (no OpenSSL, no platform hooks).

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A file's bytes on their way to the server: shared, never copied.
pub use bytes::Bytes;

use crate::protocol::{
    AttachmentStatus, ErrorResponse, HealthResponse, OffsetMismatch, PullResponse, PushRequest,
    PushResponse,
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
            | TransportError::RateLimited { .. }
            | TransportError::Protocol(_) => true,
            TransportError::Http { status, .. } => *status >= 500 || *status == 408,
            TransportError::Unauthorized(_) | TransportError::CursorExpired => false,
        }
    }
}

/// One pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullParams {
    pub since: Option<String>,
    pub limit: u32,
    pub collections: Vec<String>,
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

    /// `POST /v1/attachments/<sha256>?size=&offset=` with `bytes`, the file's bytes from
    /// `offset` on.
    fn upload_attachment<'a>(
        &'a self,
        token: &'a str,
        sha256: &'a str,
        size: u64,
        offset: u64,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<Uploaded, TransportError>> {
        let _ = (token, sha256, size, offset, bytes);
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

/// Counters of what went over the wire, for status and benchmarks.
#[derive(Debug, Default)]
pub struct WireStats {
    pub requests: std::sync::atomic::AtomicU64,
    pub bytes_sent: std::sync::atomic::AtomicU64,
    pub bytes_received: std::sync::atomic::AtomicU64,
}

/// Timeouts of the HTTP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    pub connect: Duration,
    /// Whole push or pull request, answer included.
    pub request: Duration,
    /// The reachability probe: short, so a captive portal or dead link is noticed fast.
    pub health: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(30),
            health: Duration::from_secs(3),
        }
    }
}

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
            .tls_backend_preconfigured(tls_config())
            .connect_timeout(timeouts.connect)
            .gzip(true)
            .user_agent(concat!("outpost/", env!("CARGO_PKG_VERSION")))
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
        sent: usize,
        timeout: Duration,
    ) -> Result<T, TransportError> {
        let response = request.timeout(timeout).send().await.map_err(map_reqwest)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Compressed size is what the radio paid for; reqwest hides it, so estimate
        // with the content length when the server sent one.
        let wire_len = response.content_length().map(|n| n as usize);
        let body = response.bytes().await.map_err(map_reqwest)?;
        self.count(sent, wire_len.unwrap_or(body.len()));
        decode_answer(status, retry_after.as_deref(), &body)
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
        return serde_json::from_slice(body)
            .map_err(|e| TransportError::Protocol(format!("undecodable answer: {e}")));
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

fn map_reqwest(e: reqwest::Error) -> TransportError {
    if e.is_timeout() {
        TransportError::Timeout
    } else {
        TransportError::Network(e.to_string())
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        // The bundled provider always supports the default versions; fall back anyway.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    }
}

/// Gzips a request body: field links are slow and JSON compresses about 5:1.
fn gzip(body: &[u8]) -> Result<Vec<u8>, TransportError> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
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
            self.send(req.body(body), sent, self.timeouts.request).await
        })
    }

    fn pull<'a>(
        &'a self,
        token: &'a str,
        params: &'a PullParams,
    ) -> BoxFuture<'a, Result<PullResponse, TransportError>> {
        Box::pin(async move {
            let mut url = self.url("v1/pull")?;
            {
                let mut q = url.query_pairs_mut();
                if let Some(since) = &params.since {
                    q.append_pair("since", since);
                }
                q.append_pair("limit", &params.limit.to_string());
                if !params.collections.is_empty() {
                    q.append_pair("collections", &params.collections.join(","));
                }
            }
            let req = self.client.get(url).bearer_auth(token);
            self.send(req, 0, self.timeouts.request).await
        })
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
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<Uploaded, TransportError>> {
        Box::pin(self.upload_of(token, sha256, size, offset, bytes))
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

    async fn raw(
        &self,
        request: reqwest::RequestBuilder,
        sent: usize,
    ) -> Result<(u16, Option<String>, Option<String>, Vec<u8>), TransportError> {
        let response = request
            .timeout(self.timeouts.request)
            .send()
            .await
            .map_err(map_reqwest)?;
        let status = response.status().as_u16();
        let header = |h: reqwest::header::HeaderName| {
            response
                .headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header(reqwest::header::RETRY_AFTER);
        let range = header(reqwest::header::CONTENT_RANGE);
        let body = response.bytes().await.map_err(map_reqwest)?;
        self.count(sent, body.len());
        Ok((status, retry_after, range, body.to_vec()))
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
        let (status, retry, _, body) = self.raw(req, 0).await?;
        decode_status_answer(status, retry.as_deref(), &body)
    }

    async fn upload_of(
        &self,
        token: &str,
        sha256: &str,
        size: u64,
        offset: u64,
        bytes: Bytes,
    ) -> Result<Uploaded, TransportError> {
        let sent = bytes.len();
        let mut url = self.attachment_url(sha256, false)?;
        url.query_pairs_mut()
            .append_pair("size", &size.to_string())
            .append_pair("offset", &offset.to_string());
        let req = self
            .client
            .post(url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes);
        let (status, retry, _, body) = self.raw(req, sent).await?;
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
        let (status, retry, range, body) = self.raw(req, 0).await?;
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
    fn base_path_is_kept() {
        let t = HttpTransport::new("https://h.example/sync", HttpTimeouts::default()).unwrap();
        assert_eq!(
            t.url("v1/push").unwrap().as_str(),
            "https://h.example/sync/v1/push"
        );
    }

    #[test]
    fn transient_errors() {
        assert!(TransportError::Timeout.is_transient());
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
