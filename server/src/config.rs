//! Server configuration: the TOML file of DESIGN.md, read strictly.
//!
//! A typo in a config file must not become a silently open collection or a user with
//! no team, so every key is checked by hand and every error names the key it is about
//! (`users[1].team: missing`). Unknown keys are errors for the same reason. Plain
//! tokens are hashed at load, so only SHA-256 digests live in memory. A `[jwt]` section
//! is checked the same way, its key file read at load.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_core::protocol::validate_collection;
use sha2::{Digest, Sha256};
use toml::{Table, Value};

use crate::budget::PushLimits;
use crate::jwt::jwks::KeySet;
use crate::jwt::{DEFAULT_ROLE_CLAIM, Hs256Secret, JwtConfig, KeySource, MIN_HS256_SECRET_BYTES};
use crate::logic::{Access, AccessRules, Role, User};

/// Where records are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (one server process).
    Sqlite(PathBuf),
    /// A PostgreSQL database (any number of server processes).
    Postgres(PostgresUrl),
}

/// A PostgreSQL URL whose password never reaches a log through `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(String);

impl PostgresUrl {
    /// Checks the URL's syntax (no connection is made).
    pub fn parse(url: &str) -> Result<PostgresUrl, String> {
        crate::storage::postgres::tls::parse_url(url)?;
        Ok(PostgresUrl(url.to_owned()))
    }

    /// The URL as written, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match crate::storage::postgres::tls::parse_url(&self.0) {
            Ok((c, link)) => write!(
                f,
                "PostgresUrl(user={:?} dbname={:?} hosts={:?} ports={:?} sslmode={:?})",
                c.get_user(),
                c.get_dbname(),
                c.get_hosts(),
                c.get_ports(),
                link.mode
            ),
            Err(_) => f.write_str("PostgresUrl(<unparsable>)"),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: Database,
    pub default_access: Access,
    pub collections: BTreeMap<String, Access>,
    pub users: Vec<User>,
    /// Tombstones older than this are purged (may be zero).
    pub tombstone_retention: Duration,
    /// How often the purge runs.
    pub purge_interval: Duration,
    /// Requests per minute per user; `None` is unlimited.
    pub rate_limit_per_minute: Option<u32>,
    /// Bytes of change JSON in one pull page, past its first change.
    pub max_pull_page_bytes: usize,
    /// The secret pull cursors are sealed with (`cursor_key` or `cursor_key_file`);
    /// `None`: the one kept in the database, made by the first server to need it.
    pub cursor_secret: Option<Secret>,
    /// Stored op answers older than this are purged (may be zero).
    pub ops_retention: Duration,
    /// The work budget of one push.
    pub push_limits: PushLimits,
    /// Pushes one user may have in progress at once, per server process.
    pub max_concurrent_pushes_per_user: usize,
    /// Whether every pull page served is an audit row.
    pub audit_pulls: bool,
    /// Timeouts and the connection cap of the listener.
    pub limits: ConnLimits,
    /// Failed authentications per minute per client address before 429; `None` is off.
    pub auth_failures_per_minute: Option<u32>,
    /// Reverse proxies whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<IpAddr>,
    /// SHA-256 of the bearer token `/metrics` asks for; `None` turns `/metrics` off.
    pub metrics_token_sha256: Option<[u8; 32]>,
    /// Tokens from an identity provider, beside `users`.
    pub jwt: Option<JwtConfig>,
    /// Where files are kept and how large they and a user's share may be.
    pub attachments: AttachmentSettings,
    /// `teams`: teams a service account may write into besides those of `[[users]]`
    /// (with JWTs, teams exist only in tokens, so they are listed here).
    pub teams: BTreeSet<String>,
}

/// Attachment storage and limits (`attachments_dir`, `max_attachment_mib`,
/// `attachment_quota_mib`, `incomplete_upload_hours`, `[attachments_s3]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentSettings {
    /// The directory store's folder (relative paths from the config's directory).
    pub dir: PathBuf,
    /// Largest file, in bytes.
    pub max_bytes: u64,
    /// Bytes of files one user may have uploaded or be uploading; `None` is unlimited.
    pub quota_bytes: Option<u64>,
    /// Uploads left unfinished this long are dropped with their bytes.
    pub incomplete_after: Duration,
    /// Object storage instead of the directory, for several server processes.
    pub s3: Option<S3Settings>,
}

/// An S3-compatible bucket (path-style requests, SigV4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:9000`.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Put before every object key, e.g. `outpost/`.
    pub prefix: String,
}

/// The default of `attachment_quota_mib`.
pub const DEFAULT_ATTACHMENT_QUOTA_MIB: f64 = 1024.0;
/// The default of `incomplete_upload_hours`.
pub const DEFAULT_INCOMPLETE_UPLOAD_HOURS: f64 = 24.0;

/// How long stored op answers are kept by default, in days: longer than any device
/// waits to resend an op whose answer it lost (see the README).
pub const DEFAULT_OPS_DAYS: f64 = 180.0;

/// Pushes one user may have in progress at once by default, per process.
pub const DEFAULT_CONCURRENT_PUSHES: usize = 8;

/// Fewest bytes of a configured cursor secret: what 256 bits take as hex is 64, as
/// base64 44; 32 rules out a password-like word.
pub const MIN_SECRET_BYTES: usize = 32;

/// Secret bytes from the config, never shown by `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// The default of `max_pull_page_mib`: a page a phone receives in well under a
/// minute on a slow link, and a bounded amount of memory per pull.
pub const DEFAULT_PULL_PAGE_MIB: f64 = 4.0;

/// How long a connection may take at each step, and how many may be open: what keeps
/// slow or silent clients from holding the server's sockets and memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// From the connection's start, or the first byte of a later request, to the end
    /// of the request's headers.
    pub header_read: Duration,
    /// From the end of the headers to the end of the request body.
    pub body_read: Duration,
    /// Between an answer and the next request on a kept-alive connection.
    pub idle: Duration,
    /// How long a write may make no progress (a client that stopped reading).
    pub write: Duration,
    /// Open connections at most; past it, idle connections are closed to make room,
    /// else accepting waits.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            write: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Static tokens shorter than this are refused at start: a short token can be guessed.
pub const MIN_TOKEN_CHARS: usize = 32;

/// Failed authentications per minute per client address, unless configured.
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: u32 = 30;

/// A config that cannot be used; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(key: &str, msg: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {msg}"))
}

impl Config {
    /// Reads and checks a config file. A relative `database` path is taken relative to
    /// the config file's directory, so the server finds the same file whatever
    /// directory a service manager starts it in.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base)
    }

    /// Parses config text; relative database paths are joined to `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let table: Table = text.parse().map_err(|e| toml_error(text, &e))?;
        let known = [
            "listen",
            "database",
            "default_access",
            "tombstone_retention_days",
            "purge_interval_secs",
            "rate_limit_per_minute",
            "users",
            "collections",
            "max_pull_page_mib",
            "cursor_key",
            "cursor_key_file",
            "ops_retention_days",
            "push_budget_ms",
            "max_concurrent_pushes_per_user",
            "audit_pulls",
            "header_read_timeout_secs",
            "body_read_timeout_secs",
            "idle_timeout_secs",
            "write_timeout_secs",
            "max_connections",
            "auth_failures_per_minute",
            "trusted_proxies",
            "metrics_token",
            "metrics_token_sha256",
            "jwt",
            "attachments_dir",
            "max_attachment_mib",
            "attachment_quota_mib",
            "incomplete_upload_hours",
            "attachments_s3",
            "teams",
        ];
        check_keys(&table, &known, "")?;

        let listen_s = req_str(&table, "listen", "listen")?;
        let listen = listen_s
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| err("listen", format!("not a host:port address: {listen_s:?}")))?;

        let db = req_str(&table, "database", "database")?;
        let database = if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            // The URL's own error text never echoes a password.
            Database::Postgres(PostgresUrl::parse(db).map_err(|e| err("database", e))?)
        } else {
            if db.is_empty() {
                return Err(err("database", "empty"));
            }
            let db_path = PathBuf::from(db);
            Database::Sqlite(if db_path.is_absolute() {
                db_path
            } else {
                base_dir.join(db_path)
            })
        };

        let default_access = match table.get("default_access") {
            None => Access::Private,
            Some(v) => parse_access(v, "default_access")?,
        };

        let retention_days = opt_number(&table, "tombstone_retention_days")?.unwrap_or(30.0);
        let tombstone_retention = Duration::try_from_secs_f64(retention_days * 86_400.0)
            .map_err(|_| err("tombstone_retention_days", "out of range"))?;
        let purge_secs = opt_number(&table, "purge_interval_secs")?.unwrap_or(3600.0);
        if purge_secs <= 0.0 {
            return Err(err("purge_interval_secs", "must be positive"));
        }
        let purge_interval = Duration::try_from_secs_f64(purge_secs)
            .map_err(|_| err("purge_interval_secs", "out of range"))?;

        let rate_limit_per_minute = match table.get("rate_limit_per_minute") {
            None => None,
            Some(Value::Integer(n)) if *n > 0 && *n <= i64::from(u32::MAX) => {
                Some(u32::try_from(*n).unwrap_or(u32::MAX))
            }
            Some(_) => {
                return Err(err("rate_limit_per_minute", "must be a positive integer"));
            }
        };

        let page_mib = opt_number(&table, "max_pull_page_mib")?.unwrap_or(DEFAULT_PULL_PAGE_MIB);
        if page_mib <= 0.0 || page_mib > 1024.0 {
            return Err(err(
                "max_pull_page_mib",
                "must be more than 0 and at most 1024",
            ));
        }
        let max_pull_page_bytes = (page_mib * 1024.0 * 1024.0) as usize;

        let cursor_secret = parse_cursor_secret(&table, base_dir)?;

        let jwt = parse_jwt(table.get("jwt"), base_dir)?;
        let attachments = parse_attachments(&table, base_dir)?;
        let users = parse_users(table.get("users"), jwt.is_some())?;
        let teams = parse_teams(table.get("teams"))?;
        let collections = parse_collections(table.get("collections"))?;
        let limits = parse_limits(&table)?;
        let auth_failures_per_minute = match table.get("auth_failures_per_minute") {
            None => Some(DEFAULT_AUTH_FAILURES_PER_MINUTE),
            Some(Value::Integer(0)) => None,
            Some(Value::Integer(n)) if *n > 0 && *n <= i64::from(u32::MAX) => {
                Some(u32::try_from(*n).unwrap_or(u32::MAX))
            }
            Some(_) => {
                return Err(err(
                    "auth_failures_per_minute",
                    "must be a non-negative integer (0 turns throttling off)",
                ));
            }
        };
        let trusted_proxies = parse_proxies(table.get("trusted_proxies"))?;
        let metrics_token_sha256 =
            parse_token(&table, "metrics_token", "metrics_token_sha256", "", true)?;

        let ops_days = opt_number(&table, "ops_retention_days")?.unwrap_or(DEFAULT_OPS_DAYS);
        let ops_retention = Duration::try_from_secs_f64(ops_days * 86_400.0)
            .map_err(|_| err("ops_retention_days", "out of range"))?;
        let budget_ms = opt_number(&table, "push_budget_ms")?
            .unwrap_or(PushLimits::DEFAULT.time.as_secs_f64() * 1000.0);
        let push_limits = PushLimits {
            time: Duration::try_from_secs_f64(budget_ms / 1000.0)
                .map_err(|_| err("push_budget_ms", "out of range"))?,
            ..PushLimits::DEFAULT
        };
        let max_concurrent_pushes_per_user = match table.get("max_concurrent_pushes_per_user") {
            None => DEFAULT_CONCURRENT_PUSHES,
            Some(Value::Integer(n)) if *n > 0 => usize::try_from(*n).unwrap_or(usize::MAX),
            Some(_) => {
                return Err(err(
                    "max_concurrent_pushes_per_user",
                    "must be a positive integer",
                ));
            }
        };
        let audit_pulls = match table.get("audit_pulls") {
            None => false,
            Some(Value::Boolean(b)) => *b,
            Some(_) => return Err(err("audit_pulls", "must be true or false")),
        };

        Ok(Config {
            listen,
            database,
            default_access,
            collections,
            users,
            tombstone_retention,
            purge_interval,
            rate_limit_per_minute,
            max_pull_page_bytes,
            cursor_secret,
            ops_retention,
            push_limits,
            max_concurrent_pushes_per_user,
            audit_pulls,
            limits,
            auth_failures_per_minute,
            trusted_proxies,
            metrics_token_sha256,
            jwt,
            attachments,
            teams,
        })
    }

    /// The teams a service account may write into: `teams`, and the teams of the
    /// `[[users]]` that are not service accounts.
    pub fn known_teams(&self) -> BTreeSet<String> {
        let mut all = self.teams.clone();
        all.extend(
            self.users
                .iter()
                .filter(|u| u.role == Role::User)
                .map(|u| u.team.clone()),
        );
        all
    }

    /// The access rules as requests and storage use them.
    pub fn access_rules(&self) -> AccessRules {
        AccessRules {
            named: self
                .collections
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            default: self.default_access,
        }
    }

    /// The access rule of a collection.
    pub fn access(&self, collection: &str) -> Access {
        self.collections
            .get(collection)
            .copied()
            .unwrap_or(self.default_access)
    }
}

fn check_keys(table: &Table, known: &[&str], prefix: &str) -> Result<(), ConfigError> {
    for key in table.keys() {
        if !known.contains(&key.as_str()) {
            return Err(err(&format!("{prefix}{key}"), "unknown key"));
        }
    }
    Ok(())
}

fn req_str<'a>(table: &'a Table, key: &str, path: &str) -> Result<&'a str, ConfigError> {
    match table.get(key) {
        None => Err(err(path, "missing")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(err(path, "must be a string")),
    }
}

fn opt_number(table: &Table, key: &str) -> Result<Option<f64>, ConfigError> {
    let n = match table.get(key) {
        None => return Ok(None),
        Some(Value::Integer(n)) => *n as f64,
        Some(Value::Float(f)) => *f,
        Some(_) => return Err(err(key, "must be a number")),
    };
    if !n.is_finite() || n < 0.0 {
        return Err(err(key, "must be a non-negative number"));
    }
    Ok(Some(n))
}

/// `cursor_key` (the secret itself) or `cursor_key_file` (a file holding it, relative
/// to the config's directory; whitespace around it is ignored), or neither.
fn parse_cursor_secret(table: &Table, base_dir: &Path) -> Result<Option<Secret>, ConfigError> {
    let (key, bytes) = match (table.get("cursor_key"), table.get("cursor_key_file")) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(err(
                "cursor_key",
                "give either cursor_key or cursor_key_file, not both",
            ));
        }
        (Some(_), None) => (
            "cursor_key",
            req_str(table, "cursor_key", "cursor_key")?
                .as_bytes()
                .to_vec(),
        ),
        (None, Some(_)) => {
            let path = base_dir.join(req_str(table, "cursor_key_file", "cursor_key_file")?);
            let text = std::fs::read(&path).map_err(|e| {
                err(
                    "cursor_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            ("cursor_key_file", text.trim_ascii().to_vec())
        }
    };
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(err(
            key,
            format!(
                "at least {MIN_SECRET_BYTES} bytes of secret (e.g. the output of `openssl rand -hex 32`)"
            ),
        ));
    }
    Ok(Some(Secret(bytes)))
}

fn parse_access(v: &Value, path: &str) -> Result<Access, ConfigError> {
    v.as_str()
        .and_then(Access::parse)
        .ok_or_else(|| err(path, "must be \"private\", \"team\" or \"shared\""))
}

/// `teams = ["north", ...]`: names as a user's team would be.
fn parse_teams(v: Option<&Value>) -> Result<BTreeSet<String>, ConfigError> {
    let Some(v) = v else {
        return Ok(BTreeSet::new());
    };
    let Some(list) = v.as_array() else {
        return Err(err("teams", "must be an array of team names"));
    };
    let mut out = BTreeSet::new();
    for (i, t) in list.iter().enumerate() {
        match t.as_str() {
            Some(s) if crate::logic::valid_name(s) => {
                out.insert(s.to_owned());
            }
            _ => {
                return Err(err(
                    &format!("teams[{i}]"),
                    "must be a string of 1-256 characters, none a control character",
                ));
            }
        }
    }
    Ok(out)
}

/// `[[users]]`; optional when `[jwt]` is there to let users in.
fn parse_users(v: Option<&Value>, have_jwt: bool) -> Result<Vec<User>, ConfigError> {
    let Some(v) = v else {
        if have_jwt {
            return Ok(Vec::new());
        }
        return Err(err(
            "users",
            "missing: name at least one [[users]] entry, or configure [jwt]",
        ));
    };
    let Some(list) = v.as_array() else {
        return Err(err("users", "must be an array of tables ([[users]])"));
    };
    if list.is_empty() && !have_jwt {
        return Err(err("users", "empty: name at least one user"));
    }
    let mut users = Vec::new();
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    for (i, entry) in list.iter().enumerate() {
        let p = format!("users[{i}]");
        let Some(t) = entry.as_table() else {
            return Err(err(&p, "must be a table"));
        };
        check_keys(
            t,
            &["name", "team", "token", "token_sha256", "role"],
            &format!("{p}."),
        )?;
        let role = match t.get("role") {
            None => Role::User,
            Some(_) => Role::parse(req_str(t, "role", &format!("{p}.role"))?)
                .ok_or_else(|| err(&format!("{p}.role"), "must be \"user\" or \"service\""))?,
        };
        let name = req_str(t, "name", &format!("{p}.name"))?;
        if name.is_empty() {
            return Err(err(&format!("{p}.name"), "empty"));
        }
        if !names.insert(name.to_owned()) {
            return Err(err(
                &format!("{p}.name"),
                format!("duplicate user {name:?}"),
            ));
        }
        // A service account names the team of each op it writes; a team of its own is
        // optional.
        let team = match (role, t.get("team")) {
            (Role::Service, None) => "",
            _ => req_str(t, "team", &format!("{p}.team"))?,
        };
        if team.is_empty() && role == Role::User {
            return Err(err(&format!("{p}.team"), "empty"));
        }
        let digest = parse_token(t, "token", "token_sha256", &format!("{p}."), false)?
            .ok_or_else(|| err(&format!("{p}.token"), "missing"))?;
        if !digests.insert(digest) {
            return Err(err(&format!("{p}.token"), "the same token as another user"));
        }
        users.push(User {
            name: name.to_owned(),
            team: team.to_owned(),
            token_sha256: digest,
            role,
        });
    }
    Ok(users)
}

/// A token given as `token` (plain, at least [`MIN_TOKEN_CHARS`]) or `hash_key` (hex
/// SHA-256), as its digest. `None` when neither is there and `optional`.
fn parse_token(
    t: &Table,
    key: &str,
    hash_key: &str,
    prefix: &str,
    optional: bool,
) -> Result<Option<[u8; 32]>, ConfigError> {
    let plain_key = format!("{prefix}{key}");
    let mut d = [0u8; 32];
    match (t.get(key), t.get(hash_key)) {
        (Some(_), Some(_)) => Err(err(
            &plain_key,
            format!("give either {key} or {hash_key}, not both"),
        )),
        (None, None) if optional => Ok(None),
        (None, None) => Err(err(&plain_key, "missing")),
        (Some(_), None) => {
            let tok = req_str(t, key, &plain_key)?;
            if tok.is_empty() {
                return Err(err(&plain_key, "empty"));
            }
            // Length only: the value itself must never reach an error message or log.
            let n = tok.chars().count();
            if n < MIN_TOKEN_CHARS {
                return Err(err(
                    &plain_key,
                    format!(
                        "too short ({n} characters; at least {MIN_TOKEN_CHARS}, e.g. \
                         `openssl rand -hex 24`)"
                    ),
                ));
            }
            d.copy_from_slice(&Sha256::digest(tok.as_bytes()));
            Ok(Some(d))
        }
        (None, Some(_)) => {
            let hk = format!("{prefix}{hash_key}");
            let hexs = req_str(t, hash_key, &hk)?;
            let bytes = hex::decode(hexs)
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| err(&hk, "must be 64 hex digits"))?;
            d.copy_from_slice(&bytes);
            Ok(Some(d))
        }
    }
}

/// The TOML parser's message without its quote of the offending line, which may hold
/// a token: only the line number and the reason.
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    match line {
        Some(l) => ConfigError(format!("invalid TOML at line {l}: {}", e.message())),
        None => ConfigError(format!("invalid TOML: {}", e.message())),
    }
}

/// A positive number of seconds, or `default`.
fn opt_secs(table: &Table, key: &str, default: Duration) -> Result<Duration, ConfigError> {
    match opt_number(table, key)? {
        None => Ok(default),
        Some(s) if s > 0.0 => Duration::try_from_secs_f64(s).map_err(|_| err(key, "out of range")),
        Some(_) => Err(err(key, "must be positive")),
    }
}

fn parse_limits(table: &Table) -> Result<ConnLimits, ConfigError> {
    let d = ConnLimits::default();
    let max_connections = match table.get("max_connections") {
        None => d.max_connections,
        Some(Value::Integer(n)) if *n > 0 && *n <= 1_000_000 => {
            usize::try_from(*n).unwrap_or(d.max_connections)
        }
        Some(_) => {
            return Err(err(
                "max_connections",
                "must be an integer from 1 to 1000000",
            ));
        }
    };
    Ok(ConnLimits {
        header_read: opt_secs(table, "header_read_timeout_secs", d.header_read)?,
        body_read: opt_secs(table, "body_read_timeout_secs", d.body_read)?,
        idle: opt_secs(table, "idle_timeout_secs", d.idle)?,
        write: opt_secs(table, "write_timeout_secs", d.write)?,
        max_connections,
    })
}

/// The attachment keys; see [`AttachmentSettings`].
fn parse_attachments(table: &Table, base_dir: &Path) -> Result<AttachmentSettings, ConfigError> {
    let dir = match table.get("attachments_dir") {
        None => base_dir.join("attachments"),
        Some(_) => {
            let d = req_str(table, "attachments_dir", "attachments_dir")?;
            if d.is_empty() {
                return Err(err("attachments_dir", "empty"));
            }
            base_dir.join(d)
        }
    };
    let mib = |key: &str, default: f64| -> Result<f64, ConfigError> {
        let n = opt_number(table, key)?.unwrap_or(default);
        if n > 1024.0 * 1024.0 {
            return Err(err(key, "at most 1048576 (1 TiB)"));
        }
        Ok(n)
    };
    let bytes = |m: f64| (m * 1024.0 * 1024.0) as u64;
    let max = mib(
        "max_attachment_mib",
        outpost_core::protocol::DEFAULT_MAX_ATTACHMENT_MIB as f64,
    )?;
    if max <= 0.0 {
        return Err(err("max_attachment_mib", "must be more than 0"));
    }
    let quota = mib("attachment_quota_mib", DEFAULT_ATTACHMENT_QUOTA_MIB)?;
    let hours =
        opt_number(table, "incomplete_upload_hours")?.unwrap_or(DEFAULT_INCOMPLETE_UPLOAD_HOURS);
    let incomplete_after = Duration::try_from_secs_f64(hours * 3600.0)
        .map_err(|_| err("incomplete_upload_hours", "out of range"))?;
    let s3 = match table.get("attachments_s3") {
        None => None,
        Some(Value::Table(t)) => Some(parse_s3(t, base_dir)?),
        Some(_) => return Err(err("attachments_s3", "must be a table")),
    };
    Ok(AttachmentSettings {
        dir,
        max_bytes: bytes(max),
        quota_bytes: (quota > 0.0).then(|| bytes(quota)),
        incomplete_after,
        s3,
    })
}

/// `[attachments_s3]`: the secret key inline or from a file beside the config.
fn parse_s3(t: &Table, base_dir: &Path) -> Result<S3Settings, ConfigError> {
    let p = "attachments_s3.";
    check_keys(
        t,
        &[
            "endpoint",
            "bucket",
            "region",
            "access_key_id",
            "secret_access_key",
            "secret_access_key_file",
            "prefix",
        ],
        p,
    )?;
    let s = |k: &str| req_str(t, k, &format!("{p}{k}")).map(str::to_owned);
    let endpoint = s("endpoint")?;
    let url = url::Url::parse(&endpoint).map_err(|e| err("attachments_s3.endpoint", e))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(err(
            "attachments_s3.endpoint",
            "must be an http(s) URL with a host",
        ));
    }
    let bucket = s("bucket")?;
    if bucket.is_empty()
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(err(
            "attachments_s3.bucket",
            "lowercase letters, digits, '-' and '.'",
        ));
    }
    let secret = match (t.get("secret_access_key"), t.get("secret_access_key_file")) {
        (Some(_), None) => s("secret_access_key")?,
        (None, Some(_)) => {
            let path = base_dir.join(s("secret_access_key_file")?);
            std::fs::read_to_string(&path)
                .map_err(|e| {
                    err(
                        "attachments_s3.secret_access_key_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .trim()
                .to_owned()
        }
        _ => {
            return Err(err(
                "attachments_s3.secret_access_key",
                "give either secret_access_key or secret_access_key_file",
            ));
        }
    };
    let prefix = match t.get("prefix") {
        None => String::new(),
        Some(_) => s("prefix")?,
    };
    Ok(S3Settings {
        endpoint: endpoint.trim_end_matches('/').to_owned(),
        bucket,
        region: match t.get("region") {
            None => "us-east-1".to_owned(),
            Some(_) => s("region")?,
        },
        access_key_id: s("access_key_id")?,
        secret_access_key: Secret(secret.into_bytes()),
        prefix,
    })
}

fn parse_proxies(v: Option<&Value>) -> Result<Vec<IpAddr>, ConfigError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let Some(list) = v.as_array() else {
        return Err(err("trusted_proxies", "must be an array of IP addresses"));
    };
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            a.as_str()
                .and_then(|s| s.parse::<IpAddr>().ok())
                .ok_or_else(|| err(&format!("trusted_proxies[{i}]"), "not an IP address"))
        })
        .collect()
}

/// `[jwt]`: see DESIGN.md, "Tokens from an identity provider". A relative `jwks_file`
/// is relative to `base_dir`, like `database`.
fn parse_jwt(v: Option<&Value>, base_dir: &Path) -> Result<Option<JwtConfig>, ConfigError> {
    let Some(v) = v else {
        return Ok(None);
    };
    let Some(t) = v.as_table() else {
        return Err(err("jwt", "must be a table ([jwt])"));
    };
    check_keys(
        t,
        &[
            "issuer",
            "audience",
            "jwks_file",
            "jwks_url",
            "hs256_secret",
            "user_claim",
            "team_claim",
            "device_claim",
            "role_claim",
        ],
        "jwt.",
    )?;
    let non_empty = |key: &str, default: Option<&str>| -> Result<String, ConfigError> {
        let path = format!("jwt.{key}");
        let s = match (t.get(key), default) {
            (None, Some(d)) => d,
            _ => req_str(t, key, &path)?,
        };
        if s.is_empty() {
            return Err(err(&path, "empty"));
        }
        Ok(s.to_owned())
    };
    let issuer = non_empty("issuer", None)?;
    let audience = non_empty("audience", None)?;
    let keys = match (t.get("jwks_file"), t.get("jwks_url")) {
        (Some(_), Some(_)) => {
            return Err(err(
                "jwt.jwks_url",
                "give either jwks_file or jwks_url, not both",
            ));
        }
        (Some(_), None) => {
            let file = PathBuf::from(non_empty("jwks_file", None)?);
            let path = if file.is_absolute() {
                file
            } else {
                base_dir.join(file)
            };
            let bytes = std::fs::read(&path).map_err(|e| {
                err(
                    "jwt.jwks_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let keys = KeySet::parse(&bytes).map_err(|e| err("jwt.jwks_file", e))?;
            KeySource::File { path, keys }
        }
        (None, Some(_)) => {
            let key = "jwt.jwks_url";
            let url = url::Url::parse(req_str(t, "jwks_url", key)?)
                .map_err(|e| err(key, format!("not a URL: {e}")))?;
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            // Whoever can answer for the keys can sign in as anyone.
            match url.scheme() {
                "https" => {}
                "http" if loopback => {}
                _ => return Err(err(key, "must be https (http only on loopback)")),
            }
            KeySource::Url(url)
        }
        (None, None) => KeySource::None,
    };
    let hs256_secret = match t.get("hs256_secret") {
        None => None,
        Some(_) => {
            let s = req_str(t, "hs256_secret", "jwt.hs256_secret")?;
            if s.len() < MIN_HS256_SECRET_BYTES {
                return Err(err(
                    "jwt.hs256_secret",
                    format!("too short: at least {MIN_HS256_SECRET_BYTES} bytes"),
                ));
            }
            Some(Hs256Secret(s.as_bytes().to_vec()))
        }
    };
    if matches!(keys, KeySource::None) && hs256_secret.is_none() {
        return Err(err("jwt", "give jwks_file, jwks_url or hs256_secret"));
    }
    Ok(Some(JwtConfig {
        issuer,
        audience,
        keys,
        hs256_secret,
        user_claim: non_empty("user_claim", Some("sub"))?,
        team_claim: non_empty("team_claim", Some("team"))?,
        device_claim: non_empty("device_claim", Some("sid"))?,
        role_claim: non_empty("role_claim", Some(DEFAULT_ROLE_CLAIM))?,
    }))
}

fn parse_collections(v: Option<&Value>) -> Result<BTreeMap<String, Access>, ConfigError> {
    let mut out = BTreeMap::new();
    let Some(v) = v else {
        return Ok(out);
    };
    let Some(t) = v.as_table() else {
        return Err(err("collections", "must be a table"));
    };
    for (name, c) in t {
        let p = format!("collections.{name}");
        validate_collection(name).map_err(|e| err(&p, e))?;
        let Some(ct) = c.as_table() else {
            return Err(err(&p, "must be a table"));
        };
        check_keys(ct, &["access"], &format!("{p}."))?;
        let access = match ct.get("access") {
            None => return Err(err(&format!("{p}.access"), "missing")),
            Some(a) => parse_access(a, &format!("{p}.access"))?,
        };
        out.insert(name.clone(), access);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
listen = "127.0.0.1:0"
database = "x.db"
default_access = "team"
tombstone_retention_days = 30

[[users]]
name = "amina"
team = "north"
token = "secret-amina-0123456789-0123456789"

[[users]]
name = "ben"
team = "north"
token_sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

[collections.drafts]
access = "private"
"#;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/tmp"))
    }

    #[test]
    fn parses_the_design_example() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.users.len(), 2);
        assert_eq!(c.access("drafts"), Access::Private);
        assert_eq!(c.access("patients"), Access::Team);
        assert_eq!(c.database, Database::Sqlite(PathBuf::from("/tmp/x.db")));
        assert_eq!(c.tombstone_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.max_pull_page_bytes, 4 * 1024 * 1024);
        let half = parse(&BASE.replace("= 30", "= 30\nmax_pull_page_mib = 0.5")).unwrap();
        assert_eq!(half.max_pull_page_bytes, 512 * 1024);
        assert_eq!(c.ops_retention, Duration::from_secs(180 * 86_400));
        assert_eq!(c.push_limits, PushLimits::DEFAULT);
        assert_eq!(c.max_concurrent_pushes_per_user, 8);
        assert!(!c.audit_pulls);
    }

    #[test]
    fn hardening_keys() {
        let c = parse(&BASE.replace(
            "tombstone_retention_days = 30",
            "tombstone_retention_days = 30\nops_retention_days = 0.5\npush_budget_ms = 0\n\
             max_concurrent_pushes_per_user = 2\naudit_pulls = true",
        ))
        .unwrap();
        assert_eq!(c.ops_retention, Duration::from_secs(43_200));
        assert_eq!(c.push_limits.time, Duration::ZERO);
        assert_eq!(c.max_concurrent_pushes_per_user, 2);
        assert!(c.audit_pulls);
        for (line, key) in [
            ("ops_retention_days = -1", "ops_retention_days"),
            ("push_budget_ms = \"x\"", "push_budget_ms"),
            (
                "max_concurrent_pushes_per_user = 0",
                "max_concurrent_pushes_per_user",
            ),
            ("audit_pulls = 1", "audit_pulls"),
        ] {
            let text = BASE.replace(
                "tombstone_retention_days = 30",
                &format!("tombstone_retention_days = 30\n{line}"),
            );
            let e = parse(&text).unwrap_err().0;
            assert!(e.starts_with(key), "{e}");
        }
    }

    #[test]
    fn service_accounts_and_teams() {
        let service = "\n[[users]]\nname = \"etl\"\nrole = \"service\"\ntoken = \"etl-0123456789abcdef0123456789abcdef\"\n";
        let c = parse(&format!("teams = [\"east\"]\n{BASE}{service}")).unwrap();
        let etl = c.users.iter().find(|u| u.name == "etl").unwrap();
        assert_eq!((etl.role, etl.team.as_str()), (Role::Service, ""));
        assert!(
            c.users
                .iter()
                .filter(|u| u.name != "etl")
                .all(|u| u.role == Role::User)
        );
        // Known teams: listed ones and those of people, never a service account's.
        let with_team = service.replace("role", "team = \"ops\"\nrole");
        let c = parse(&format!("teams = [\"east\"]\n{BASE}{with_team}")).unwrap();
        assert_eq!(
            c.known_teams().into_iter().collect::<Vec<_>>(),
            ["east", "north"]
        );
        for (text, want) in [
            (
                format!("{BASE}{}", service.replace("\"service\"", "\"admin\"")),
                "users[2].role: must be",
            ),
            (
                format!("{BASE}{}", service.replace("\"service\"", "5")),
                "users[2].role: must be a string",
            ),
            (
                format!("teams = \"east\"\n{BASE}"),
                "teams: must be an array",
            ),
            (
                format!("teams = [\"\"]\n{BASE}"),
                "teams[0]: must be a string",
            ),
            (
                format!("{BASE}{}", service.replace("\"service\"", "\"user\"")),
                "users[2].team: missing",
            ),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn a_postgres_url_selects_postgres() {
        for url in ["postgres://u:pw@h:5433/db", "postgresql://u@h/db"] {
            let c = parse(&BASE.replace("x.db", url)).unwrap();
            match c.database {
                Database::Postgres(u) => assert_eq!(u.expose(), url),
                Database::Sqlite(p) => panic!("{p:?}"),
            }
        }
    }

    #[test]
    fn the_url_is_checked_and_its_password_never_printed() {
        let u = PostgresUrl::parse("postgres://amina:s3cret@db.example:5432/outpost").unwrap();
        let shown = format!("{u:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("outpost"), "{shown}");
        assert!(PostgresUrl::parse("postgres://h/db?nonsense_option=1").is_err());
    }

    #[test]
    fn the_cursor_secret_is_given_or_read_from_a_file() {
        assert_eq!(parse(BASE).unwrap().cursor_secret, None);
        let hex64 = "ab".repeat(32);
        let c = parse(&BASE.replace("= 30", &format!("= 30\ncursor_key = \"{hex64}\""))).unwrap();
        assert_eq!(c.cursor_secret.as_ref().unwrap().expose(), hex64.as_bytes());
        assert!(!format!("{c:?}").contains(&hex64));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cursor.key"), format!("  {hex64}\n")).unwrap();
        let text = BASE.replace("= 30", "= 30\ncursor_key_file = \"cursor.key\"");
        let c = Config::parse(&text, dir.path()).unwrap();
        assert_eq!(c.cursor_secret.unwrap().expose(), hex64.as_bytes());

        let cases = [
            ("cursor_key = \"short\"", "cursor_key: at least 32"),
            (
                "cursor_key_file = \"missing.key\"",
                "cursor_key_file: cannot read",
            ),
            (
                "cursor_key = \"0123456789abcdef0123456789abcdef\"\ncursor_key_file = \"x\"",
                "cursor_key: give either",
            ),
        ];
        for (extra, want) in cases {
            let e = Config::parse(&BASE.replace("= 30", &format!("= 30\n{extra}")), dir.path())
                .unwrap_err()
                .0;
            assert!(e.starts_with(want), "{e} !~ {want}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                BASE.replace("team = \"north\"\ntoken_sha256", "token_sha256"),
                "users[1].team: missing",
            ),
            (BASE.replace("listen", "lisen"), "lisen: unknown key"),
            (
                BASE.replace("\"private\"", "\"open\""),
                "collections.drafts.access",
            ),
            (BASE.replace("2cf2", "zz"), "users[1].token_sha256"),
            (
                BASE.replace(
                    "token = \"secret-amina-0123456789-0123456789\"",
                    "token = \"secret-amina-0123456789-0123456789\"\ncolor = 1",
                ),
                "users[0].color: unknown key",
            ),
            (BASE.replace("= 30", "= -1"), "tombstone_retention_days"),
            (
                BASE.replace("= 30", "= 30\nmax_pull_page_mib = 0"),
                "max_pull_page_mib",
            ),
            (
                BASE.replace("x.db", "postgres://u@h/db?no_such_option=1"),
                "database:",
            ),
            (
                BASE.replace("[collections.drafts]", "[collections.Drafts]"),
                "collections.Drafts",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err().0;
            assert!(e.starts_with(want), "{e} !~ {want}");
        }
    }

    #[test]
    fn a_short_token_is_refused_without_echoing_it() {
        let text = BASE.replace("secret-amina-0123456789-0123456789", "s3cret-but-short");
        let e = parse(&text).unwrap_err().0;
        assert!(
            e.starts_with("users[0].token: too short (16 characters"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
        let text = BASE.replace("default_access", "metrics_token = \"x\"\ndefault_access");
        let e = parse(&text).unwrap_err().0;
        assert!(e.starts_with("metrics_token: too short"), "{e}");
    }

    #[test]
    fn a_toml_error_names_the_line_but_never_quotes_it() {
        let text = BASE.replace(
            "token = \"secret-amina-0123456789-0123456789\"",
            "token = \"secret-amina-0123456789-0123456789",
        );
        let e = parse(&text).unwrap_err().0;
        assert!(e.starts_with("invalid TOML at line 10"), "{e}");
        assert!(!e.contains("secret-amina"), "{e}");
    }

    #[test]
    fn limits_have_safe_defaults_and_can_be_set() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.limits, ConnLimits::default());
        assert_eq!(
            c.auth_failures_per_minute,
            Some(DEFAULT_AUTH_FAILURES_PER_MINUTE)
        );
        assert!(c.trusted_proxies.is_empty());
        assert!(c.metrics_token_sha256.is_none());
        let extra = "header_read_timeout_secs = 2.5\nbody_read_timeout_secs = 5\n\
                     idle_timeout_secs = 7\nwrite_timeout_secs = 3\nmax_connections = 64\n\
                     auth_failures_per_minute = 0\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]\n\
                     metrics_token = \"metrics-0123456789-0123456789-0123\"\n";
        let c = parse(&BASE.replace("default_access", &format!("{extra}default_access"))).unwrap();
        assert_eq!(c.limits.header_read, Duration::from_millis(2500));
        assert_eq!(c.limits.body_read, Duration::from_secs(5));
        assert_eq!(c.limits.idle, Duration::from_secs(7));
        assert_eq!(c.limits.write, Duration::from_secs(3));
        assert_eq!(c.limits.max_connections, 64);
        assert_eq!(c.auth_failures_per_minute, None);
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(c.metrics_token_sha256.is_some());
        for (line, want) in [
            (
                "header_read_timeout_secs = 0",
                "header_read_timeout_secs: must be positive",
            ),
            ("max_connections = 0", "max_connections:"),
            (
                "trusted_proxies = [\"proxy\"]",
                "trusted_proxies[0]: not an IP",
            ),
            ("auth_failures_per_minute = -1", "auth_failures_per_minute:"),
        ] {
            let e = parse(&BASE.replace("default_access", &format!("{line}\ndefault_access")))
                .unwrap_err()
                .0;
            assert!(e.starts_with(want), "{e} !~ {want}");
        }
    }

    const JWT: &str = r#"
[jwt]
issuer = "https://id.example.org/realms/health"
audience = "outpost"
jwks_url = "https://id.example.org/realms/health/protocol/openid-connect/certs"
hs256_secret = "0123456789abcdef0123456789abcdef"
"#;

    /// `BASE` without its users, with `[jwt]` lines.
    fn jwt_only(jwt: &str) -> String {
        let head = BASE.split("[[users]]").next().unwrap();
        format!("{head}{jwt}")
    }

    #[test]
    fn jwt_section_with_defaults_and_no_users() {
        let c = parse(&jwt_only(JWT)).unwrap();
        assert!(c.users.is_empty());
        let j = c.jwt.unwrap();
        assert_eq!(j.issuer, "https://id.example.org/realms/health");
        assert_eq!(j.audience, "outpost");
        assert_eq!(
            (
                j.user_claim.as_str(),
                j.team_claim.as_str(),
                j.device_claim.as_str()
            ),
            ("sub", "team", "sid")
        );
        assert!(matches!(j.keys, KeySource::Url(ref u) if u.path().ends_with("/certs")));
        assert!(j.hs256_secret.is_some());
        // Beside users, too.
        let both = parse(&format!("{BASE}{JWT}")).unwrap();
        assert_eq!(both.users.len(), 2);
        assert!(both.jwt.is_some());
        // Without [jwt], users stay required.
        assert!(
            parse(&jwt_only(""))
                .unwrap_err()
                .0
                .starts_with("users: missing")
        );
    }

    #[test]
    fn a_jwks_file_is_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = r#"{"keys":[{"kty":"EC","kid":"e1","crv":"P-256",
            "x":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc",
            "y":"CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk"}]}"#;
        std::fs::write(dir.path().join("keys.json"), jwks).unwrap();
        let text = jwt_only("[jwt]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"keys.json\"\n");
        let c = Config::parse(&text, dir.path()).unwrap();
        match c.jwt.unwrap().keys {
            KeySource::File { path, keys } => {
                assert_eq!(path, dir.path().join("keys.json"));
                assert!(keys.get("e1").is_some());
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(dir.path().join("keys.json"), "{}").unwrap();
        let e = Config::parse(&text, dir.path()).unwrap_err().0;
        assert!(e.starts_with("jwt.jwks_file: not a JWKS"), "{e}");
    }

    #[test]
    fn jwt_errors_name_the_key() {
        let cases = [
            (JWT.replace("issuer", "isuer"), "jwt.isuer: unknown key"),
            (
                JWT.replace("audience = \"outpost\"", ""),
                "jwt.audience: missing",
            ),
            (JWT.replace("\"outpost\"", "\"\""), "jwt.audience: empty"),
            (
                JWT.replace("0123456789abcdef0123456789abcdef", "short-secret"),
                "jwt.hs256_secret: too short",
            ),
            (
                JWT.replace("https://id", "http://id"),
                "jwt.jwks_url: must be https",
            ),
            (
                JWT.replace(
                    "\"https://id.example.org/realms/health/protocol",
                    "\"not a url",
                ),
                "jwt.jwks_url: not a URL",
            ),
            (
                format!("{JWT}jwks_file = \"k.json\"\n"),
                "jwt.jwks_url: give either",
            ),
            (
                "[jwt]\nissuer = \"i\"\naudience = \"a\"\n".to_owned(),
                "jwt: give jwks_file, jwks_url or hs256_secret",
            ),
            (
                "[jwt]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"/nonexistent/k.json\"\n"
                    .to_owned(),
                "jwt.jwks_file: cannot read",
            ),
            (
                format!("{JWT}team_claim = 5\n"),
                "jwt.team_claim: must be a string",
            ),
            ("jwt = 1\n".to_owned(), "jwt: must be a table"),
        ];
        for (jwt, want) in cases {
            let text = if jwt.starts_with("jwt =") {
                format!("{jwt}{BASE}")
            } else {
                jwt_only(&jwt)
            };
            let e = parse(&text).unwrap_err().0;
            assert!(e.starts_with(want), "{e} !~ {want}");
        }
        // http is fine on loopback, where nobody else can answer.
        let local = JWT.replace("https://id.example.org", "http://127.0.0.1:9000");
        assert!(parse(&jwt_only(&local)).is_ok());
    }
}
