//! The HTTP surface: routes, authentication, body limits and the layers around them.
//!
//! Handlers read raw requests instead of using axum's extractors, so that every way a
//! request can be wrong (size, encoding, JSON, query) is answered with the protocol's
//! own error object and code, never with a framework's plain-text rejection.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use outpost_core::protocol::{
    DEFAULT_PULL_LIMIT, ErrorCode, HealthResponse, MAX_BODY_BYTES, MAX_JSON_DEPTH, MAX_PULL_LIMIT,
    PROTOCOL_VERSION, PullResponse, PushResponse, validate_collection,
};
use sha2::{Digest, Sha256};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;

use crate::config::Config;
use crate::error::{ApiError, code_for_status, error_response};
use crate::json::{JsonError, parse_strict};
use crate::jwt::jwks::KeyCache;
use crate::jwt::{self, Verifier};
use crate::logic::{self, BadPush, User, decode_cursor, encode_cursor};
use crate::storage::{AccessRules, PullPage, PullQuery, PushContext, Storage};

/// Everything a request needs.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

#[derive(Debug)]
struct StateInner {
    users: Vec<User>,
    access: AccessRules,
    storage: Arc<dyn Storage>,
    rate_limit_per_minute: Option<u32>,
    /// Per user: start of the current one-minute window and requests in it.
    windows: Mutex<HashMap<String, (Instant, u32)>>,
    /// JWTs from an identity provider, when `[jwt]` is configured.
    jwt: Option<Verifier>,
}

impl AppState {
    pub fn new(config: &Config, storage: Arc<dyn Storage>) -> AppState {
        AppState {
            inner: Arc::new(StateInner {
                users: config.users.clone(),
                access: AccessRules {
                    named: config
                        .collections
                        .iter()
                        .map(|(k, v)| (k.clone(), *v))
                        .collect(),
                    default: config.default_access,
                },
                storage,
                rate_limit_per_minute: config.rate_limit_per_minute,
                windows: Mutex::new(HashMap::new()),
                jwt: config.jwt.as_ref().map(Verifier::new),
            }),
        }
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// The identity provider's key cache when its keys come from `jwt.jwks_url`.
    pub fn remote_keys(&self) -> Option<Arc<KeyCache>> {
        self.inner
            .jwt
            .as_ref()
            .map(|v| Arc::clone(v.keys()))
            .filter(|k| k.is_remote())
    }
}

/// The whole application: routes plus error mapping, compression and panic safety.
pub fn build_app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/push", post(push))
        .route("/v1/pull", get(pull))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        // Innermost first: a panic becomes a JSON 500, then any non-JSON error from
        // any layer is rewritten, then answers are compressed, then logged.
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                error_response(ErrorCode::Internal, "internal server error")
            },
        ))
        .layer(middleware::from_fn(json_errors))
        // The fastest level keeps nearly all of gzip's saving on JSON at a fraction of
        // the CPU; a pull page or push answer is compressed on every request.
        .layer(CompressionLayer::new().quality(tower_http::CompressionLevel::Fastest))
        .layer(middleware::from_fn(log_request))
}

async fn health() -> Response {
    axum::Json(HealthResponse {
        status: "ok".into(),
        protocol: PROTOCOL_VERSION,
    })
    .into_response()
}

async fn not_found() -> Response {
    error_response(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> Response {
    error_response(
        ErrorCode::MethodNotAllowed,
        "this route does not accept that method",
    )
}

/// Rewrites error answers that are not JSON (from axum or tower layers) into the
/// protocol's error object.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let code = code_for_status(status);
    let message = status.canonical_reason().unwrap_or("error").to_lowercase();
    error_response(code, message)
}

/// One line per request: method, path, status, time. Never the query, headers or body,
/// which carry tokens, cursors and patient data.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().chars().take(100).collect::<String>();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let ms = start.elapsed().as_millis() as u64;
    if status >= 500 {
        tracing::error!(%method, %path, status, ms, "request");
    } else {
        tracing::info!(%method, %path, status, ms, "request");
    }
    resp
}

/// Who a request comes from: the token's user, and the device session a JWT names.
#[derive(Debug)]
struct Caller {
    user: User,
    device: Option<String>,
}

/// Finds the user of a bearer token: a JWT when `[jwt]` is configured and the token is
/// one, else a static token. Every refusal reads the same.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let unauthorized = |m: &str| ApiError::new(ErrorCode::Unauthorized, m);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer token"))?;
    let value = value
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| unauthorized("malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized("the Authorization scheme must be Bearer"));
    }
    let token = token.trim();
    let caller = match &state.inner.jwt {
        Some(verifier) if jwt::looks_like_jwt(token) => {
            let id = verifier.verify(token).await.map_err(|reason| {
                tracing::debug!(%reason, "jwt refused");
                unauthorized(WRONG_TOKEN)
            })?;
            Caller {
                user: User {
                    name: id.user,
                    team: id.team,
                    token_sha256: Sha256::digest(token.as_bytes()).into(),
                },
                device: id.device,
            }
        }
        _ => Caller {
            user: static_user(state, token).ok_or_else(|| unauthorized(WRONG_TOKEN))?,
            device: None,
        },
    };
    rate_limit(state, &caller.user)?;
    Ok(caller)
}

/// What any refused token is told, JWT or static.
const WRONG_TOKEN: &str = "unknown or wrong token";

/// The `[[users]]` entry of a static token. Every user's digest is compared, in
/// constant time, so timing says nothing about which token is close.
fn static_user(state: &AppState, token: &str) -> Option<User> {
    let digest = Sha256::digest(token.as_bytes());
    let mut found = None;
    for u in &state.inner.users {
        let diff = u
            .token_sha256
            .iter()
            .zip(digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            found = Some(u);
        }
    }
    found.cloned()
}

fn rate_limit(state: &AppState, user: &User) -> Result<(), ApiError> {
    let Some(limit) = state.inner.rate_limit_per_minute else {
        return Ok(());
    };
    let window = Duration::from_secs(60);
    let now = Instant::now();
    let mut map = state
        .inner
        .windows
        .lock()
        .map_err(|_| ApiError::internal())?;
    let entry = map.entry(user.name.clone()).or_insert((now, 0));
    if now.duration_since(entry.0) >= window {
        *entry = (now, 0);
    }
    if entry.1 >= limit {
        let left = window.saturating_sub(now.duration_since(entry.0));
        let mut e = ApiError::new(ErrorCode::RateLimited, "too many requests; retry later");
        e.retry_after = Some(left.as_secs().max(1));
        return Err(e);
    }
    entry.1 += 1;
    Ok(())
}

/// How much of an oversized body is read and dropped before answering 413.
const DRAIN_LIMIT: usize = 4 * MAX_BODY_BYTES;

/// Reads a request body of at most [`MAX_BODY_BYTES`], before and after gzip decoding.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<(Vec<u8>, bool), ApiError> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > DRAIN_LIMIT as u64
    {
        return Err(ApiError::too_large());
    }
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().map(|s| s.trim().to_ascii_lowercase()))
    {
        None => false,
        Some(Ok(e)) if e == "identity" || e.is_empty() => false,
        Some(Ok(e)) if e == "gzip" || e == "x-gzip" => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "unsupported Content-Encoding; send gzip or nothing",
            ));
        }
    };
    let mut body = body;
    let mut bytes = Vec::new();
    let mut too_large = false;
    let mut seen: usize = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::bad_request("could not read the request body"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen > MAX_BODY_BYTES {
            too_large = true;
            bytes = Vec::new();
        }
        if too_large {
            // Keep reading (and dropping) a while, so the client gets to read our 413
            // instead of a reset connection; past that, give up on the connection.
            if seen > DRAIN_LIMIT {
                break;
            }
            continue;
        }
        bytes.extend_from_slice(&data);
    }
    if too_large {
        return Err(ApiError::too_large());
    }
    Ok((bytes, gzip))
}

/// Inflates with a bound, so a small gzip bomb cannot take memory: reading stops one
/// byte past the limit.
fn gunzip(raw: &[u8]) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw)
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| ApiError::bad_request("the body is not valid gzip"))?;
    if out.len() > MAX_BODY_BYTES {
        return Err(ApiError::too_large());
    }
    Ok(out)
}

async fn push(State(state): State<AppState>, req: Request) -> Response {
    match push_inner(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn push_inner(state: AppState, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let caller = authenticate(&state, &parts.headers).await?;
    let (raw, gzip) = read_body(&parts.headers, body).await?;
    // Decoding and parsing up to 8 MiB is CPU work: keep it off the async threads.
    let batch = tokio::task::spawn_blocking(move || {
        let bytes = if gzip { gunzip(&raw)? } else { raw };
        let value = parse_strict(&bytes, MAX_JSON_DEPTH).map_err(|e| match e {
            JsonError::Utf8 | JsonError::TooDeep(_) | JsonError::Malformed(_) => {
                ApiError::bad_request(e.to_string())
            }
        })?;
        logic::read_push(value).map_err(|BadPush(m)| ApiError::bad_request(m))
    })
    .await
    .map_err(|_| ApiError::internal())??;
    let ctx = PushContext {
        user: caller.user,
        client_id: batch.client_id,
        access: state.inner.access.clone(),
        device: caller.device,
    };
    let n = batch.items.len();
    let results = state
        .inner
        .storage
        .push(&ctx, batch.items, logic::now_ms())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "push failed");
            ApiError::internal()
        })?;
    tracing::debug!(user = %ctx.user.name, ops = n, "push applied");
    Ok(axum::Json(PushResponse { results }).into_response())
}

async fn pull(State(state): State<AppState>, req: Request) -> Response {
    match pull_inner(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

struct PullParams {
    since: Option<logic::Cursor>,
    limit: u32,
    collections: Option<Vec<String>>,
}

fn parse_pull_query(query: Option<&str>) -> Result<PullParams, ApiError> {
    let mut since = None;
    let mut limit = None;
    let mut collections = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot_taken = || ApiError::bad_request(format!("{k} given twice"));
        match k.as_ref() {
            "since" => {
                if since.is_some() {
                    return Err(slot_taken());
                }
                since =
                    Some(decode_cursor(&v).ok_or_else(|| ApiError::bad_request("garbled cursor"))?);
            }
            "limit" => {
                if limit.is_some() {
                    return Err(slot_taken());
                }
                let bad = || ApiError::bad_request("limit must be a positive integer");
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let trimmed = v.trim_start_matches('0');
                if trimmed.is_empty() {
                    return Err(bad());
                }
                // Any positive integer is fine; large ones are clamped.
                let n = trimmed
                    .parse::<u64>()
                    .unwrap_or(u64::MAX)
                    .min(u64::from(MAX_PULL_LIMIT));
                limit = Some(u32::try_from(n).unwrap_or(MAX_PULL_LIMIT));
            }
            "collections" => {
                if collections.is_some() {
                    return Err(slot_taken());
                }
                let mut list: Vec<String> = Vec::new();
                for c in v.split(',') {
                    validate_collection(c).map_err(|e| ApiError::bad_request(e.to_string()))?;
                    if !list.iter().any(|x| x == c) {
                        list.push(c.to_owned());
                    }
                }
                collections = Some(list);
            }
            // Unknown parameters are ignored, as HTTP caches and proxies may add some.
            _ => {}
        }
    }
    Ok(PullParams {
        since,
        limit: limit.unwrap_or(DEFAULT_PULL_LIMIT),
        collections,
    })
}

async fn pull_inner(state: AppState, req: Request) -> Result<Response, ApiError> {
    let caller = authenticate(&state, req.headers()).await?;
    let params = parse_pull_query(req.uri().query())?;
    let query = PullQuery {
        user: caller.user,
        access: state.inner.access.clone(),
        since: params.since,
        limit: params.limit,
        collections: params.collections,
    };
    let page = state.inner.storage.pull(&query).await.map_err(|e| {
        tracing::error!(error = %e, "pull failed");
        ApiError::internal()
    })?;
    match page {
        PullPage::Expired => Err(ApiError::new(
            ErrorCode::CursorExpired,
            "tombstones newer than this cursor were purged; pull again from the beginning",
        )),
        PullPage::Page {
            changes,
            cursor,
            has_more,
        } => Ok(axum::Json(PullResponse {
            changes,
            cursor: encode_cursor(cursor),
            has_more,
        })
        .into_response()),
    }
}
