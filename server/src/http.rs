//! The HTTP surface: routes, authentication, body limits and the layers around them.
//!
//! Handlers read raw requests instead of using axum's extractors, so that every way a
//! request can be wrong (size, encoding, JSON, query) is answered with the protocol's
//! own error object and code, never with a framework's plain-text rejection.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use http_body_util::BodyExt;
use outpost_core::pages;
use outpost_core::protocol::{
    DEFAULT_PULL_LIMIT, ErrorCode, HealthResponse, MAX_BODY_BYTES, MAX_PULL_LIMIT,
    PROTOCOL_VERSION, PushResponse, validate_collection,
};
use sha2::{Digest, Sha256};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, NotForContentType, Predicate};

use crate::attachments::BlobStore;

use crate::admission::PushSlots;
use crate::audit::{AuditEntry, AuditFields, AuditLog, event};
use crate::budget::PushLimits;
use crate::config::{Config, Secret};
use crate::cursor::{self, CursorKey, Opened, Scope};
use crate::error::{ApiError, code_for_status, error_response};
use crate::intake::BodyParser;
use crate::jwt::jwks::KeyCache;
use crate::jwt::{self, Verifier};
use crate::logic::{self, Access, AccessRules, PushBatch, Role, User};
use crate::metrics::Metrics;
use crate::pull::change_bytes;
use crate::storage::{PageChange, PullPage, PullQuery, PushContext, Storage, StorageError, db_err};
use crate::throttle::{AuthThrottle, ClientAddr};

/// Everything a request needs.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

#[derive(Debug)]
struct StateInner {
    /// Swapped whole by a config reload; a request reads one version throughout.
    policy: RwLock<Arc<Policy>>,
    storage: Arc<dyn Storage>,
    /// The configured cursor secret, if any (fixed until a restart).
    cursor_secret: Option<Secret>,
    /// The cursor key, once known.
    cursor_key: tokio::sync::OnceCell<CursorKey>,
    /// Per user: start of the current one-minute window and requests in it.
    windows: Mutex<HashMap<String, (Instant, u32)>>,
    bodies: BodyParser,
    push_slots: PushSlots,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    auth_throttle: AuthThrottle,
    /// The bytes of attachments.
    files: Arc<dyn BlobStore>,
    upload_turns: Arc<crate::attachments::Turns>,
}

/// The part of the config a reload (SIGHUP) changes without a restart: who may sign
/// in and with which token, what each collection allows, and the request limits.
#[derive(Debug)]
pub struct Policy {
    pub users: Vec<User>,
    pub access: AccessRules,
    pub rate_limit_per_minute: Option<u32>,
    pub auth_failures_per_minute: Option<u32>,
    pub trusted_proxies: Vec<IpAddr>,
    pub metrics_token_sha256: Option<[u8; 32]>,
    pub max_pull_page_bytes: usize,
    pub push_limits: PushLimits,
    pub max_concurrent_pushes_per_user: usize,
    pub audit_pulls: bool,
    /// JWTs from an identity provider, when `[jwt]` is configured.
    pub jwt: Option<Verifier>,
    /// Largest attachment, in bytes.
    pub max_attachment_bytes: u64,
    /// Bytes of attachments one user may have; `None` is unlimited.
    pub attachment_quota_bytes: Option<u64>,
    /// Teams a service account may write into ([`Config::known_teams`]).
    pub known_teams: BTreeSet<String>,
}

impl Policy {
    pub fn from_config(config: &Config) -> Policy {
        Policy::with_jwt(config, config.jwt.as_ref().map(Verifier::new))
    }

    /// The policy of a reloaded config. Its JWT checker is built anew, but keeps the
    /// keys `previous` fetched when its `jwks_url` is unchanged, so tokens are not kept
    /// waiting for a fetch (or refused while the provider is down) after a reload.
    pub fn reloaded(config: &Config, previous: &Policy) -> Policy {
        let jwt = config
            .jwt
            .as_ref()
            .map(|j| Verifier::reloaded(j, previous.jwt.as_ref()));
        Policy::with_jwt(config, jwt)
    }

    fn with_jwt(config: &Config, jwt: Option<Verifier>) -> Policy {
        Policy {
            users: config.users.clone(),
            access: config.access_rules(),
            rate_limit_per_minute: config.rate_limit_per_minute,
            auth_failures_per_minute: config.auth_failures_per_minute,
            trusted_proxies: config.trusted_proxies.clone(),
            metrics_token_sha256: config.metrics_token_sha256,
            max_pull_page_bytes: config.max_pull_page_bytes,
            push_limits: config.push_limits,
            max_concurrent_pushes_per_user: config.max_concurrent_pushes_per_user,
            audit_pulls: config.audit_pulls,
            jwt,
            max_attachment_bytes: config.attachments.max_bytes,
            attachment_quota_bytes: config.attachments.quota_bytes,
            known_teams: config.known_teams(),
        }
    }
}

impl AppState {
    /// The state of a config; its blob store is opened here (no request is made).
    pub fn new(config: &Config, storage: Arc<dyn Storage>) -> AppState {
        let files = crate::attachments::open_store(&config.attachments).unwrap_or_else(|e| {
            // Only an unusable endpoint URL fails here, which the config check refused.
            tracing::error!(error = %e, "attachment store unusable; using the directory");
            Arc::new(crate::attachments::DirStore::new(&config.attachments.dir))
        });
        AppState::with_files(config, storage, files)
    }

    /// [`AppState::new`] with a blob store of the caller's.
    pub fn with_files(
        config: &Config,
        storage: Arc<dyn Storage>,
        files: Arc<dyn BlobStore>,
    ) -> AppState {
        AppState {
            inner: Arc::new(StateInner {
                policy: RwLock::new(Arc::new(Policy::from_config(config))),
                storage,
                cursor_secret: config.cursor_secret.clone(),
                cursor_key: tokio::sync::OnceCell::new(),
                windows: Mutex::new(HashMap::new()),
                bodies: BodyParser::default(),
                push_slots: PushSlots::default(),
                audit: AuditLog::new(),
                metrics: Arc::new(Metrics::default()),
                auth_throttle: AuthThrottle::default(),
                files,
                upload_turns: Arc::default(),
            }),
        }
    }

    /// Where attachment bytes live.
    pub fn files(&self) -> &Arc<dyn BlobStore> {
        &self.inner.files
    }

    /// The uploads being received in this process.
    pub fn upload_turns(&self) -> &Arc<crate::attachments::Turns> {
        &self.inner.upload_turns
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// The key pull cursors are sealed with: from the configured secret, or else from
    /// the one in the database, which the first server to need it makes.
    pub async fn cursor_key(&self) -> Result<&CursorKey, StorageError> {
        self.inner
            .cursor_key
            .get_or_try_init(|| {
                cursor_key_of(
                    self.inner.cursor_secret.as_ref(),
                    self.inner.storage.as_ref(),
                )
            })
            .await
    }

    /// The queue of audit rows about requests that write nothing; whoever serves the
    /// app runs its writer.
    pub fn audit_log(&self) -> &AuditLog {
        &self.inner.audit
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.inner.policy.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts a reloaded config's policy in force for every request that starts after.
    pub fn set_policy(&self, policy: Policy) {
        *self.inner.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn auth_throttle(&self) -> &AuthThrottle {
        &self.inner.auth_throttle
    }

    /// The identity provider's key cache in force, when its keys come from
    /// `jwt.jwks_url`: for the start-up fetch and the background refresh.
    pub fn remote_keys(&self) -> Option<Arc<KeyCache>> {
        self.policy()
            .jwt
            .as_ref()
            .map(|v| Arc::clone(v.keys()))
            .filter(|k| k.is_remote())
    }
}

/// The key cursors are sealed with: from the configured secret, or else from the one
/// in the database, which the first server (or `export`) to need it makes.
pub(crate) async fn cursor_key_of(
    configured: Option<&Secret>,
    storage: &dyn Storage,
) -> Result<CursorKey, StorageError> {
    let secret = match configured {
        Some(s) => s.expose().to_vec(),
        None => {
            let fresh = CursorKey::fresh_secret().map_err(db_err)?;
            storage.shared_secret(CURSOR_SECRET, fresh).await?
        }
    };
    CursorKey::from_secret(&secret).map_err(db_err)
}

/// The client's IP address (after trusted proxies, see [`crate::throttle`]); empty
/// when the app is called without a connection.
pub(crate) fn peer(req: &axum::http::Extensions) -> String {
    req.get::<ClientAddr>()
        .map(|c| c.0.to_string())
        .unwrap_or_default()
}

/// An audit row about this request, at the current time.
fn request_row(event: &str, peer: &str, kind: &str) -> AuditFields {
    AuditFields {
        at: outpost_core::protocol::rfc3339_millis(logic::now_ms()),
        event: event.to_owned(),
        client_addr: peer.to_owned(),
        kind: kind.to_owned(),
        ..AuditFields::default()
    }
}

/// [`authenticate`], with every failed authentication recorded in the audit (the
/// reason, never the token).
pub(crate) async fn authenticated(
    state: &AppState,
    policy: &Policy,
    headers: &HeaderMap,
    peer: &str,
    route: &str,
) -> Result<Caller, ApiError> {
    authenticate(state, policy, headers).await.inspect_err(|e| {
        if e.code == ErrorCode::Unauthorized {
            let mut fields = request_row(event::AUTH_FAILED, peer, route);
            fields.code = e.message.clone();
            state.inner.audit.record(AuditEntry {
                fields,
                prior: None,
            });
        }
    })
}

/// Name of the cursor secret in the database.
const CURSOR_SECRET: &str = "cursor_key";

/// The zstd level of answers to clients that accept zstd. Measured on 3,000 patient
/// records in dense pages of 1,000 (server/README.md, "Pull pages"): against the
/// fastest gzip (114 KB, 2.3 ms), gzip's default level saves 24 KB for 14 ms more, zstd
/// level 3 saves 20 KB for no more time, and level 6 saves 27 KB for 4 ms more: a
/// quarter of gzip's CPU per byte saved. Past 6 each kilobyte costs more than gzip's.
const ZSTD_LEVEL: i32 = 6;

/// The whole application: routes plus error mapping, compression and panic safety.
pub fn build_app(state: AppState) -> Router {
    let outer = state.clone();
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(crate::metrics::serve_metrics))
        .route("/v1/push", post(push))
        .route("/v1/pull", get(pull))
        .route("/v1/admin/changes", get(admin_changes))
        .route("/v1/admin/{*rest}", any(admin_unknown))
        .route(
            "/v1/attachments/{sha256}",
            get(crate::attachments::get).post(crate::attachments::upload),
        )
        .route(
            "/v1/attachments/{sha256}/status",
            get(crate::attachments::status),
        )
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
        .layer(middleware::from_fn(no_store))
        // A client that accepts zstd gets it; the gzip layer outside then leaves the
        // answer alone (it never compresses an encoded body). See `ZSTD_LEVEL`.
        .layer(
            CompressionLayer::new()
                .no_gzip()
                .no_br()
                .no_deflate()
                .quality(tower_http::CompressionLevel::Precise(ZSTD_LEVEL))
                .compress_when(json_only()),
        )
        // The fastest gzip keeps most of gzip's saving on JSON at a fraction of the
        // CPU of its default level; a pull page or push answer is compressed on every
        // request.
        .layer(
            CompressionLayer::new()
                .no_zstd()
                .no_br()
                .no_deflate()
                .quality(tower_http::CompressionLevel::Fastest)
                .compress_when(json_only()),
        )
        .layer(middleware::from_fn(log_request))
        .layer(middleware::from_fn_with_state(
            outer.clone(),
            crate::throttle::guard,
        ))
        .layer(middleware::from_fn_with_state(
            outer,
            crate::metrics::account,
        ))
}

/// File bytes go as they are: photos do not compress, and a ranged answer must be the
/// very bytes its Content-Range names.
fn json_only() -> impl tower_http::compression::Predicate {
    DefaultPredicate::new().and(NotForContentType::const_new("application/octet-stream"))
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

/// `Cache-Control: no-store` on every answer of a `/v1/` route: they carry records
/// (patient data), which no browser, proxy or HTTP cache on a shared device may keep.
async fn no_store(req: Request, next: Next) -> Response {
    let protected = req.uri().path().starts_with("/v1/");
    let mut resp = next.run(req).await;
    if protected {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
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
pub(crate) struct Caller {
    pub user: User,
    pub device: Option<String>,
}

/// Finds the user of a bearer token: a JWT when `[jwt]` is configured and the token is
/// one, else a static token. Every refusal reads the same.
async fn authenticate(
    state: &AppState,
    policy: &Policy,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
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
    let caller = match &policy.jwt {
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
                    role: id.role,
                },
                device: id.device,
            }
        }
        _ => Caller {
            user: static_user(policy, token).ok_or_else(|| unauthorized(WRONG_TOKEN))?,
            device: None,
        },
    };
    rate_limit(state, policy, &caller.user)?;
    Ok(caller)
}

/// What any refused token is told, JWT or static.
const WRONG_TOKEN: &str = "unknown or wrong token";

/// The `[[users]]` entry of a static token. Every user's digest is compared, in
/// constant time, so timing says nothing about which token is close.
fn static_user(policy: &Policy, token: &str) -> Option<User> {
    let digest = Sha256::digest(token.as_bytes());
    let mut found = None;
    for u in &policy.users {
        if same_digest(&u.token_sha256, &digest) {
            found = Some(u);
        }
    }
    found.cloned()
}

/// Compares two digests in constant time.
pub(crate) fn same_digest(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn rate_limit(state: &AppState, policy: &Policy, user: &User) -> Result<(), ApiError> {
    let Some(limit) = policy.rate_limit_per_minute else {
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

async fn push(State(state): State<AppState>, req: Request) -> Response {
    match push_inner(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn push_inner(state: AppState, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let client_addr = peer(&parts.extensions);
    let policy = state.policy();
    let caller = authenticated(&state, &policy, &parts.headers, &client_addr, "push").await?;
    let Some(_slot) = state
        .inner
        .push_slots
        .try_take(&caller.user.name, policy.max_concurrent_pushes_per_user)
    else {
        let mut e = ApiError::new(
            ErrorCode::RateLimited,
            "too many pushes of this user in progress; retry later",
        );
        e.retry_after = Some(1);
        return Err(e);
    };
    let (raw, gzip) = read_body(&parts.headers, body).await?;
    let batch = state.inner.bodies.push_batch(raw, gzip).await?;
    check_routing(&policy, &caller.user, &batch)?;
    let ctx = PushContext {
        user: caller.user,
        client_id: batch.client_id,
        access: policy.access.clone(),
        client_addr,
        limits: policy.push_limits,
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
    state.metrics().push_results(&results);
    tracing::debug!(user = %ctx.user.name, ops = n, "push applied");
    Ok(axum::Json(PushResponse { results }).into_response())
}

/// The whole-push checks of ops' `team` and `owner`, before anything is applied: only a
/// service account may send them (403 otherwise), and a service account must name a
/// known team in every op, and an owner in every op of a `private` collection (400
/// otherwise). A misrouted op would land where no device reads it, so the push is
/// refused whole, with nothing stored, rather than op by op.
fn check_routing(policy: &Policy, user: &User, batch: &PushBatch) -> Result<(), ApiError> {
    if user.role != Role::Service {
        if batch.routed {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "only service accounts may name an op's team or owner",
            ));
        }
        return Ok(());
    }
    if let Some(message) = &batch.bad_target {
        return Err(ApiError::bad_request(message.clone()));
    }
    for (i, item) in batch.items.iter().enumerate() {
        let Some(target) = item.target() else {
            return Err(ApiError::bad_request(format!(
                "ops[{i}]: missing team: a service account names the team of every op"
            )));
        };
        if !policy.known_teams.contains(&target.team) {
            return Err(ApiError::bad_request(format!(
                "ops[{i}]: unknown team {:?}",
                target.team.chars().take(64).collect::<String>()
            )));
        }
        let private = item
            .collection()
            .is_some_and(|c| policy.access.of(c) == Access::Private);
        if private && target.owner.is_none() {
            return Err(ApiError::bad_request(format!(
                "ops[{i}]: missing owner: records of a private collection belong to a user"
            )));
        }
    }
    Ok(())
}

async fn pull(State(state): State<AppState>, req: Request) -> Response {
    match pull_inner(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

struct PullParams {
    /// The cursor's text; read once the user and collections are known.
    since: Option<String>,
    limit: u32,
    collections: Option<Vec<String>>,
    /// The client's byte budget for the page, if it gave one.
    max_bytes: Option<usize>,
    /// The dense form was asked for (`format=columns`).
    columns: bool,
    /// The client's own applied seqs, as inclusive ranges.
    own: Vec<(i64, i64)>,
    /// The client sent one of the additions above (`max_bytes`, `format`, `own`), so it
    /// knows them and reads `remaining`; a v1 client gets exactly the v1 page, whose
    /// schema admits no other member, and costs no count.
    knows_additions: bool,
    /// `remaining=0`: the client knows what remains from an earlier page's count.
    skip_remaining: bool,
}

/// Most ranges an `own` list may hold.
const MAX_OWN_RANGES: usize = 64;

/// A positive integer, any size (large ones saturate); `None` otherwise.
fn positive(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let trimmed = v.trim_start_matches('0');
    if trimmed.is_empty() {
        return None;
    }
    Some(trimmed.parse::<u64>().unwrap_or(u64::MAX))
}

/// `1051-1250,1300`: seqs and inclusive ranges of them, each a positive integer.
fn parse_own(list: &str) -> Result<Vec<(i64, i64)>, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "own must be up to {MAX_OWN_RANGES} seqs or ranges like 1051-1250, comma-separated"
        ))
    };
    let seq = |s: &str| {
        positive(s)
            .and_then(|n| i64::try_from(n).ok())
            .ok_or_else(bad)
    };
    let mut out = Vec::new();
    for (i, item) in list.split(',').enumerate() {
        if i == MAX_OWN_RANGES {
            return Err(bad());
        }
        let (lo, hi) = match item.split_once('-') {
            Some((lo, hi)) => (seq(lo)?, seq(hi)?),
            None => (seq(item)?, seq(item)?),
        };
        if lo > hi {
            return Err(bad());
        }
        out.push((lo, hi));
    }
    Ok(out)
}

/// The parameters of a pull, or with `feed` of `/v1/admin/changes`, which ignores
/// `own`, `format` and `remaining` (whatever their values: the feed has no such
/// forms).
fn parse_pull_query(query: Option<&str>, feed: bool) -> Result<PullParams, ApiError> {
    let mut since = None;
    let mut limit = None;
    let mut collections = None;
    let mut max_bytes = None;
    let mut format = None;
    let mut own = None;
    let mut skip_remaining = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot_taken = || ApiError::bad_request(format!("{k} given twice"));
        match k.as_ref() {
            "own" | "format" | "remaining" if feed => {}
            "max_bytes" => {
                if max_bytes.is_some() {
                    return Err(slot_taken());
                }
                let n = positive(&v)
                    .ok_or_else(|| ApiError::bad_request("max_bytes must be a positive integer"))?;
                max_bytes = Some(usize::try_from(n).unwrap_or(usize::MAX));
            }
            "format" => {
                if format.is_some() {
                    return Err(slot_taken());
                }
                format = Some(v.into_owned());
            }
            "own" => {
                if own.is_some() {
                    return Err(slot_taken());
                }
                own = Some(parse_own(&v)?);
            }
            "remaining" => {
                if skip_remaining.is_some() {
                    return Err(slot_taken());
                }
                if v != "0" {
                    return Err(ApiError::bad_request(
                        "remaining may only be 0 (leave the count out)",
                    ));
                }
                skip_remaining = Some(true);
            }
            "since" => {
                if since.is_some() {
                    return Err(slot_taken());
                }
                since = Some(v.into_owned());
            }
            "limit" => {
                if limit.is_some() {
                    return Err(slot_taken());
                }
                // Any positive integer is fine; large ones are clamped.
                let n = positive(&v)
                    .ok_or_else(|| ApiError::bad_request("limit must be a positive integer"))?
                    .min(u64::from(MAX_PULL_LIMIT));
                limit = Some(u32::try_from(n).unwrap_or(MAX_PULL_LIMIT));
            }
            "collections" => {
                if collections.is_some() {
                    return Err(slot_taken());
                }
                collections = Some(parse_collections(&v)?);
            }
            // Unknown parameters are ignored, as HTTP caches and proxies may add some.
            _ => {}
        }
    }
    // The feed's form is fixed: no count of what remains, whatever was asked.
    let knows_additions = !feed && (max_bytes.is_some() || format.is_some() || own.is_some());
    Ok(PullParams {
        since,
        limit: limit.unwrap_or(DEFAULT_PULL_LIMIT),
        collections,
        max_bytes,
        // A form this server does not know gets v1, which every client reads: the
        // answer's own `format` member (absent in v1) says which form it is.
        columns: format.as_deref() == Some(pages::COLUMNS),
        own: own.unwrap_or_default(),
        knows_additions,
        skip_remaining: skip_remaining.unwrap_or(false),
    })
}

/// Most names a `collections` list may hold, repeats included.
const MAX_PULL_COLLECTIONS: usize = 1000;

/// A `collections` list as a sorted set. Stops at the first name past the cap, so a
/// long list costs no more than a short one.
fn parse_collections(list: &str) -> Result<Vec<String>, ApiError> {
    let mut set = BTreeSet::new();
    for (i, c) in list.split(',').enumerate() {
        if i == MAX_PULL_COLLECTIONS {
            return Err(ApiError::bad_request(format!(
                "more than {MAX_PULL_COLLECTIONS} collections"
            )));
        }
        validate_collection(c).map_err(|e| ApiError::bad_request(e.to_string()))?;
        set.insert(c);
    }
    Ok(set.into_iter().map(str::to_owned).collect())
}

async fn pull_inner(state: AppState, req: Request) -> Result<Response, ApiError> {
    let client_addr = peer(req.extensions());
    let policy = state.policy();
    let caller = authenticated(&state, &policy, req.headers(), &client_addr, "pull").await?;
    let params = parse_pull_query(req.uri().query(), false)?;
    serve_page(&state, &policy, caller, params, false, &client_addr, "pull").await
}

async fn admin_changes(State(state): State<AppState>, req: Request) -> Response {
    match admin_changes_inner(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/admin/changes`: the pull of every team's and owner's records, each change
/// with its `team` and `owner`, for a service account. Same parameters, pages, byte
/// budget and cursor rules as `/v1/pull`; its cursors are the feed's own.
async fn admin_changes_inner(state: AppState, req: Request) -> Result<Response, ApiError> {
    let client_addr = peer(req.extensions());
    let policy = state.policy();
    let route = "admin_changes";
    let caller = admin_caller(&state, &policy, req.headers(), &client_addr, route).await?;
    // Every change comes back (no `own`), in the v1 form that has room for team and
    // owner, with no count of what remains: those parameters are not read.
    let params = parse_pull_query(req.uri().query(), true)?;
    serve_page(&state, &policy, caller, params, true, &client_addr, route).await
}

/// The caller of a route under `/v1/admin/`, which only service accounts may use. The
/// token is checked first, so that a missing or wrong one is 401 as everywhere.
async fn admin_caller(
    state: &AppState,
    policy: &Policy,
    headers: &HeaderMap,
    client_addr: &str,
    route: &str,
) -> Result<Caller, ApiError> {
    let caller = authenticated(state, policy, headers, client_addr, route).await?;
    if caller.user.role != Role::Service {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this route is for service accounts",
        ));
    }
    Ok(caller)
}

/// Any other path under `/v1/admin/`, with any method: 401 without a valid token, 403
/// for a token that is not a service account's (so every admin path answers a device
/// alike, whether it exists or not), and 404 for a service account.
async fn admin_unknown(State(state): State<AppState>, req: Request) -> Response {
    let client_addr = peer(req.extensions());
    let policy = state.policy();
    match admin_caller(&state, &policy, req.headers(), &client_addr, "admin").await {
        Ok(_) => not_found().await,
        Err(e) => e.into_response(),
    }
}

/// Reads one page for `caller` with `params` (of every team's records when
/// `all_teams`) and answers it: the cursor opened and sealed for the caller's scope or
/// the feed's, the audit row of `audit_pulls`, the answer in the form asked for.
async fn serve_page(
    state: &AppState,
    policy: &Policy,
    caller: Caller,
    params: PullParams,
    all_teams: bool,
    client_addr: &str,
    route: &str,
) -> Result<Response, ApiError> {
    let collections = params.collections.as_deref();
    let scope = if all_teams {
        Scope::all_teams(collections)
    } else {
        Scope::new(&caller.user.name, &caller.user.team, collections)
    };
    let key = state.cursor_key().await.map_err(|e| {
        tracing::error!(error = %e, "no cursor key");
        ApiError::internal()
    })?;
    let since = open_since(key, params.since.as_deref(), &scope)?;
    let query = PullQuery {
        user: caller.user,
        access: policy.access.clone(),
        since,
        limit: params.limit,
        collections: params.collections,
        max_bytes: params.max_bytes.map_or(policy.max_pull_page_bytes, |m| {
            m.min(policy.max_pull_page_bytes)
        }),
        own: params.own,
        count_remaining: params.knows_additions && !params.skip_remaining,
        all_teams,
    };
    let page = state.inner.storage.pull(&query).await.map_err(|e| {
        tracing::error!(error = %e, "pull failed");
        ApiError::internal()
    })?;
    match page {
        PullPage::Expired => Err(expired()),
        PullPage::Page {
            changes,
            cursor,
            has_more,
            remaining,
        } => {
            let cursor = cursor::seal(key, cursor, &scope).map_err(|e| {
                tracing::error!(error = %e, "cannot seal a cursor");
                ApiError::internal()
            })?;
            state.metrics().pulled(changes.len());
            if policy.audit_pulls {
                let mut fields = request_row(event::PULL, client_addr, route);
                fields.user = query.user.name.clone();
                fields.device = caller.device;
                fields.detail = serde_json::json!({
                    "changes": changes.len(),
                    "collections": query.collections,
                })
                .to_string();
                state.inner.audit.record(AuditEntry {
                    fields,
                    prior: None,
                });
            }
            let end = PageEnd {
                cursor,
                has_more,
                remaining: query.count_remaining.then_some(remaining.changes),
                remaining_capped: remaining.capped,
            };
            if params.columns {
                columns_answer(&changes, end)
            } else {
                pull_answer(&changes, end)
            }
        }
    }
}

/// The position a client's cursor text stands for under `scope`: `None` without one
/// (from the beginning); 410 for a stale cursor, 400 for a garbled one.
fn open_since(
    key: &CursorKey,
    text: Option<&str>,
    scope: &Scope,
) -> Result<Option<logic::Cursor>, ApiError> {
    match text.map(|t| cursor::open(key, t, scope)) {
        None => Ok(None),
        Some(Opened::Valid(c)) => Ok(Some(c)),
        Some(Opened::Stale(why)) => Err(ApiError::new(ErrorCode::CursorExpired, why)),
        Some(Opened::Garbled) => Err(ApiError::bad_request("garbled cursor")),
    }
}

/// The answer to a cursor older than purged tombstones.
fn expired() -> ApiError {
    ApiError::new(
        ErrorCode::CursorExpired,
        "tombstones newer than this cursor were purged; pull again from the beginning",
    )
}

/// The members every pull answer ends with, in either form.
#[derive(serde::Serialize)]
struct PageEnd {
    cursor: String,
    has_more: bool,
    /// Changes readable past this page (0 on the last), for a client that knows the
    /// additions.
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<u64>,
    /// Present (and true) when `remaining` is a floor.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    remaining_capped: bool,
}

/// A serialized answer body as JSON.
fn json_body(body: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The page in the dense form of `outpost_core::pages`.
fn columns_answer(changes: &[PageChange], end: PageEnd) -> Result<Response, ApiError> {
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        #[serde(flatten)]
        columns: pages::Columns<&'a serde_json::value::RawValue>,
        #[serde(flatten)]
        end: PageEnd,
    }
    let encodable: Vec<pages::Encodable<'_>> = changes
        .iter()
        .map(|c| pages::Encodable {
            collection: &c.collection,
            record_id: &c.record_id,
            version: c.version,
            hlc: &c.hlc,
            data: c.data.as_deref(),
        })
        .collect();
    let columns = pages::encode(&encodable).map_err(|e| {
        tracing::error!(error = %e, "cannot encode a pull page");
        ApiError::internal()
    })?;
    let body = serde_json::to_vec(&Answer { columns, end }).map_err(|_| ApiError::internal())?;
    Ok(json_body(body))
}

/// The page as the protocol's pull answer, serialized once into a buffer sized for it.
fn pull_answer(changes: &[PageChange], end: PageEnd) -> Result<Response, ApiError> {
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        changes: &'a [PageChange],
        #[serde(flatten)]
        end: PageEnd,
    }
    // Each change's bound, and room for the members around them: no regrowth.
    let size = changes
        .iter()
        .map(|c| {
            change_bytes(
                c.collection.len(),
                c.record_id.len(),
                c.hlc.len(),
                c.data.as_ref().map(|d| d.get().len()),
            )
        })
        .sum::<usize>()
        + 128
        + end.cursor.len();
    let mut body = Vec::with_capacity(size);
    serde_json::to_writer(&mut body, &Answer { changes, end }).map_err(|_| ApiError::internal())?;
    Ok(json_body(body))
}
