//! Server configuration: the TOML file of DESIGN.md, read strictly.
//!
//! A typo in a config file must not become a silently open collection or a user with
//! no team, so every key is checked by hand and every error names the key it is about
//! (`users[1].team: missing`). Unknown keys are errors for the same reason. Plain
//! tokens are hashed at load, so only SHA-256 digests live in memory. A `[jwt]` section
//! is checked the same way, its key file read at load.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use outpost_core::protocol::validate_collection;
use sha2::{Digest, Sha256};
use toml::{Table, Value};

use crate::jwt::jwks::KeySet;
use crate::jwt::{Hs256Secret, JwtConfig, KeySource, MIN_HS256_SECRET_BYTES};
use crate::logic::{Access, User};

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
        tokio_postgres::Config::from_str(url).map_err(|e| e.to_string())?;
        Ok(PostgresUrl(url.to_owned()))
    }

    /// The URL as written, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match tokio_postgres::Config::from_str(&self.0) {
            Ok(c) => write!(
                f,
                "PostgresUrl(user={:?} dbname={:?} hosts={:?} ports={:?})",
                c.get_user(),
                c.get_dbname(),
                c.get_hosts(),
                c.get_ports()
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
    /// Tokens from an identity provider, beside `users`.
    pub jwt: Option<JwtConfig>,
}

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
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError(format!("invalid TOML: {e}")))?;
        let known = [
            "listen",
            "database",
            "default_access",
            "tombstone_retention_days",
            "purge_interval_secs",
            "rate_limit_per_minute",
            "users",
            "collections",
            "jwt",
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

        let jwt = parse_jwt(table.get("jwt"), base_dir)?;
        let users = parse_users(table.get("users"), jwt.is_some())?;
        let collections = parse_collections(table.get("collections"))?;

        Ok(Config {
            listen,
            database,
            default_access,
            collections,
            users,
            tombstone_retention,
            purge_interval,
            rate_limit_per_minute,
            jwt,
        })
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

fn parse_access(v: &Value, path: &str) -> Result<Access, ConfigError> {
    v.as_str()
        .and_then(Access::parse)
        .ok_or_else(|| err(path, "must be \"private\", \"team\" or \"shared\""))
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
            &["name", "team", "token", "token_sha256"],
            &format!("{p}."),
        )?;
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
        let team = req_str(t, "team", &format!("{p}.team"))?;
        if team.is_empty() {
            return Err(err(&format!("{p}.team"), "empty"));
        }
        let digest = match (t.get("token"), t.get("token_sha256")) {
            (Some(_), Some(_)) => {
                return Err(err(
                    &format!("{p}.token"),
                    "give either token or token_sha256, not both",
                ));
            }
            (None, None) => return Err(err(&format!("{p}.token"), "missing")),
            (Some(_), None) => {
                let tok = req_str(t, "token", &format!("{p}.token"))?;
                if tok.is_empty() {
                    return Err(err(&format!("{p}.token"), "empty"));
                }
                let mut d = [0u8; 32];
                d.copy_from_slice(&Sha256::digest(tok.as_bytes()));
                d
            }
            (None, Some(_)) => {
                let key = format!("{p}.token_sha256");
                let hexs = req_str(t, "token_sha256", &key)?;
                let bytes = hex::decode(hexs)
                    .ok()
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| err(&key, "must be 64 hex digits"))?;
                let mut d = [0u8; 32];
                d.copy_from_slice(&bytes);
                d
            }
        };
        if !digests.insert(digest) {
            return Err(err(&format!("{p}.token"), "the same token as another user"));
        }
        users.push(User {
            name: name.to_owned(),
            team: team.to_owned(),
            token_sha256: digest,
        });
    }
    Ok(users)
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
token = "secret"

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
                BASE.replace("token = \"secret\"", "token = \"secret\"\ncolor = 1"),
                "users[0].color: unknown key",
            ),
            (BASE.replace("= 30", "= -1"), "tombstone_retention_days"),
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
