//! The identity provider's public keys: a JWKS read from a file or fetched from a URL.
//!
//! Each key is bound to one algorithm when it is read, so a token can only be checked
//! with the algorithm its key was published for (an RS256 key never checks an HS256
//! token). Fetching is kept off the request path as far as it can be: keys are cached,
//! a background task refreshes them, and a token naming an unknown `kid` (the provider
//! rotated its key) causes at most one fetch a minute, shared by every request that
//! waits for it and bounded by a short timeout. A token whose key is cached never waits
//! for the network, whatever state the provider's endpoint is in.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// Unknown `kid`s cause at most one fetch per this interval.
pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(60);
/// How often the background task refetches the keys (a removed key stops working then).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// Bound of one fetch, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A JWKS is a few kilobytes; anything far larger is not one.
const MAX_JWKS_BYTES: usize = 512 * 1024;

/// A public key and the one algorithm it checks.
#[derive(Debug)]
pub struct BoundKey {
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// Keys by `kid`.
#[derive(Default, Clone)]
pub struct KeySet {
    keys: HashMap<String, Arc<BoundKey>>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<(&String, Algorithm)> =
            self.keys.iter().map(|(k, b)| (k, b.alg)).collect();
        kids.sort_by(|a, b| a.0.cmp(b.0));
        f.debug_struct("KeySet").field("keys", &kids).finish()
    }
}

impl KeySet {
    /// Reads a JWKS document (`{"keys": [...]}`). Keys that cannot sign RS256 or ES256
    /// tokens (encryption keys, other algorithms, no `kid`) are skipped, as providers
    /// publish those beside their signing keys; a malformed RS256 or ES256 key is an
    /// error, as is a document with no usable key.
    pub fn parse(bytes: &[u8]) -> Result<KeySet, String> {
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let Some(list) = doc.get("keys").and_then(Value::as_array) else {
            return Err("not a JWKS: expected an object with a \"keys\" array".into());
        };
        let mut keys = HashMap::new();
        for (i, jwk) in list.iter().enumerate() {
            let Some((kid, bound)) = read_key(jwk).map_err(|e| format!("keys[{i}]: {e}"))? else {
                continue;
            };
            if keys.contains_key(&kid) {
                return Err(format!("keys[{i}]: kid {kid:?} given twice"));
            }
            keys.insert(kid, Arc::new(bound));
        }
        if keys.is_empty() {
            return Err("no RS256 or ES256 signing key with a kid".into());
        }
        Ok(KeySet { keys })
    }

    pub fn get(&self, kid: &str) -> Option<Arc<BoundKey>> {
        self.keys.get(kid).cloned()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One JWK: `Ok(None)` when it is not a signing key this server uses.
fn read_key(jwk: &Value) -> Result<Option<(String, BoundKey)>, String> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    let Some(kid) = field("kid") else {
        return Ok(None);
    };
    if field("use").is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let alg = match (field("alg"), field("kty"), field("crv")) {
        (Some("RS256"), _, _) | (None, Some("RSA"), _) => Algorithm::RS256,
        (Some("ES256"), _, _) | (None, Some("EC"), Some("P-256")) => Algorithm::ES256,
        _ => return Ok(None),
    };
    let part = |name: &str| -> Result<Vec<u8>, String> {
        let s = field(name).ok_or_else(|| format!("kid {kid:?}: missing {name}"))?;
        URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| format!("kid {kid:?}: {name} is not base64url"))
    };
    let key = match alg {
        Algorithm::RS256 => {
            if field("kty") != Some("RSA") {
                return Err(format!("kid {kid:?}: RS256 needs kty RSA"));
            }
            let n = part("n")?;
            let e = part("e")?;
            // Leading zero bytes do not count towards the size.
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < 2048 {
                return Err(format!("kid {kid:?}: RSA key under 2048 bits"));
            }
            DecodingKey::from_rsa_raw_components(&n, &e)
        }
        _ => {
            if field("kty") != Some("EC") || field("crv") != Some("P-256") {
                return Err(format!("kid {kid:?}: ES256 needs kty EC and crv P-256"));
            }
            let (x, y) = (part("x")?, part("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err(format!("kid {kid:?}: a P-256 x and y are 32 bytes each"));
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            // The uncompressed point, which is what `from_ec_components` builds too.
            DecodingKey::from_ec_der(&point)
        }
    };
    Ok(Some((kid.to_owned(), BoundKey { alg, key })))
}

/// The keys in use: fixed (a file), or fetched from the provider and cached.
pub struct KeyCache {
    current: RwLock<Arc<KeySet>>,
    remote: Option<Remote>,
}

struct Remote {
    url: url::Url,
    /// `None` when no HTTP client could be built (logged once); fetches then fail.
    client: Option<reqwest::Client>,
    /// Held while fetching, so concurrent fetches become one; it keeps when the last
    /// fetch for an unknown kid started.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Fetches finished (success or not), so a request that waited for another's fetch
    /// does not start a second one.
    finished: AtomicU64,
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCache")
            .field("keys", &self.snapshot().len())
            .field("url", &self.remote.as_ref().map(|r| r.url.as_str()))
            .finish()
    }
}

impl KeyCache {
    /// Keys that never change (from a file, or none).
    pub fn fixed(keys: KeySet) -> KeyCache {
        KeyCache {
            current: RwLock::new(Arc::new(keys)),
            remote: None,
        }
    }

    /// Keys fetched from `url`; empty until the first fetch.
    pub fn remote(url: url::Url) -> KeyCache {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            // A redirect could lead from https to a place that is not the provider.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("outpost-server/", env!("CARGO_PKG_VERSION")))
            .build();
        let client = match client {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "cannot build the HTTP client for jwt.jwks_url");
                None
            }
        };
        KeyCache {
            current: RwLock::new(Arc::new(KeySet::default())),
            remote: Some(Remote {
                url,
                client,
                fetch: tokio::sync::Mutex::new(None),
                finished: AtomicU64::new(0),
            }),
        }
    }

    /// Whether the keys come from a URL (and so want refreshing).
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The URL the keys come from, if they do.
    pub fn url(&self) -> Option<&url::Url> {
        self.remote.as_ref().map(|r| &r.url)
    }

    fn snapshot(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The key named `kid`. An unknown kid with a URL configured fetches the keys again
    /// (at most once per [`REFETCH_MIN_INTERVAL`], one fetch for all who wait); a known
    /// one never waits.
    pub async fn get(&self, kid: &str) -> Option<Arc<BoundKey>> {
        if let Some(k) = self.snapshot().get(kid) {
            return Some(k);
        }
        let remote = self.remote.as_ref()?;
        let seen = remote.finished.load(Ordering::Acquire);
        let mut last = remote.fetch.lock().await;
        if let Some(k) = self.snapshot().get(kid) {
            return Some(k);
        }
        if remote.finished.load(Ordering::Acquire) != seen {
            // A fetch finished while this request waited, without this kid.
            return None;
        }
        if last.is_some_and(|t| t.elapsed() < REFETCH_MIN_INTERVAL) {
            return None;
        }
        *last = Some(Instant::now());
        tracing::info!("jwt: unknown kid; fetching the keys again");
        self.fetch_locked(remote).await;
        self.snapshot().get(kid)
    }

    /// Fetches the keys now (at start and from the background task); a failure keeps
    /// the keys already held.
    pub async fn refresh(&self) {
        if let Some(remote) = &self.remote {
            let _guard = remote.fetch.lock().await;
            self.fetch_locked(remote).await;
        }
    }

    async fn fetch_locked(&self, remote: &Remote) {
        match fetch(remote).await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "jwt: keys fetched");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
            }
            Err(e) => tracing::warn!(error = %e, "jwt: cannot fetch the keys; keeping those held"),
        }
        remote.finished.fetch_add(1, Ordering::AcqRel);
    }
}

async fn fetch(remote: &Remote) -> Result<KeySet, String> {
    let client = remote.client.as_ref().ok_or("no HTTP client")?;
    let mut resp = client
        .get(remote.url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| with_causes(&e))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| with_causes(&e))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("more than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    KeySet::parse(&body)
}

/// An error and its causes, which say what went wrong (DNS, refused, timeout, TLS).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa_jwk(kid: &str) -> Value {
        let mut n = vec![0xc5u8; 256];
        n[255] = 0x01;
        json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
               "n": b64(&n), "e": b64(&[1, 0, 1])})
    }

    fn ec_jwk(kid: &str) -> Value {
        json!({"kty": "EC", "kid": kid, "crv": "P-256",
               "x": b64(&[7; 32]), "y": b64(&[9; 32])})
    }

    fn parse(v: Value) -> Result<KeySet, String> {
        KeySet::parse(v.to_string().as_bytes())
    }

    #[test]
    fn keys_are_bound_to_their_algorithm() {
        let set = parse(json!({"keys": [rsa_jwk("r1"), ec_jwk("e1")]})).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.get("r1").unwrap().alg, Algorithm::RS256);
        assert_eq!(set.get("e1").unwrap().alg, Algorithm::ES256);
        assert!(set.get("r2").is_none());
        // Without "alg", the key type decides.
        let mut r = rsa_jwk("r");
        r.as_object_mut().unwrap().remove("alg");
        assert_eq!(
            parse(json!({"keys": [r]})).unwrap().get("r").unwrap().alg,
            Algorithm::RS256
        );
    }

    #[test]
    fn keys_this_server_does_not_use_are_skipped() {
        let mut enc = rsa_jwk("enc");
        enc["use"] = json!("enc");
        enc["alg"] = json!("RSA-OAEP");
        let mut no_kid = rsa_jwk("x");
        no_kid.as_object_mut().unwrap().remove("kid");
        let ps = json!({"kty": "RSA", "kid": "ps", "alg": "PS256", "n": "AQAB", "e": "AQAB"});
        let oct = json!({"kty": "oct", "kid": "hs", "k": "c2VjcmV0"});
        let set = parse(json!({"keys": [enc, no_kid, ps, oct, ec_jwk("e")]})).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.get("e").is_some());
    }

    #[test]
    fn malformed_documents_and_keys_are_errors() {
        let mut short = rsa_jwk("short");
        short["n"] = json!(b64(&[0xc5; 128]));
        let mut bad_x = ec_jwk("e");
        bad_x["x"] = json!("***");
        let mut wrong_kty = ec_jwk("w");
        wrong_kty["alg"] = json!("RS256");
        let cases = [
            (json!([]), "not a JWKS"),
            (json!({"keys": []}), "no RS256 or ES256"),
            (json!({"keys": [short]}), "under 2048 bits"),
            (json!({"keys": [bad_x]}), "x is not base64url"),
            (json!({"keys": [wrong_kty]}), "RS256 needs kty RSA"),
            (json!({"keys": [ec_jwk("d"), ec_jwk("d")]}), "given twice"),
        ];
        for (doc, want) in cases {
            let e = parse(doc.clone()).unwrap_err();
            assert!(e.contains(want), "{doc}: {e}");
        }
        assert!(KeySet::parse(b"{").unwrap_err().starts_with("not JSON"));
    }

    #[tokio::test]
    async fn a_fixed_set_never_fetches() {
        let cache = KeyCache::fixed(parse(json!({"keys": [ec_jwk("e")]})).unwrap());
        assert!(cache.get("e").await.is_some());
        assert!(cache.get("nope").await.is_none());
        assert!(!cache.is_remote());
    }
}
