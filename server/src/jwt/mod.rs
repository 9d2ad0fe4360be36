//! Tokens from an identity provider (JWT), beside the static `[[users]]` tokens.
//!
//! A deployment's nurses already live in its identity provider (Keycloak, Entra ID,
//! Auth0, Firebase); writing each into the server's TOML does not scale and cannot
//! expire or revoke anything. So the server also trusts short-lived tokens the provider
//! signed for the configured issuer and audience, and takes the user, team and device
//! session from their claims (DESIGN.md, "Tokens from an identity provider"). Every
//! refusal is the same `401 unauthorized` as a wrong static token, so an answer says
//! nothing about which check failed; the reason goes to the debug log, the token never.

pub mod jwks;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::logic::Role;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use self::jwks::{KeyCache, KeySet};

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const CLOCK_SKEW_SECS: u64 = 60;
/// Shortest `hs256_secret`: HS256 is only as strong as its secret.
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// Longest token looked at; providers' tokens are 1-2 KB.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The `[jwt]` section of the config.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// `iss` must equal this.
    pub issuer: String,
    /// `aud` must be this or contain it.
    pub audience: String,
    pub keys: KeySource,
    pub hs256_secret: Option<Hs256Secret>,
    pub user_claim: String,
    pub team_claim: String,
    /// The claim naming the device's session; `sid` unless configured.
    pub device_claim: String,
    /// The claim naming the role (`user` or `service`); [`DEFAULT_ROLE_CLAIM`] unless
    /// configured. Optional in tokens: without it a token is a user's.
    pub role_claim: String,
}

/// The claim a token's role is read from, unless `role_claim` says otherwise.
pub const DEFAULT_ROLE_CLAIM: &str = "outpost_role";

/// Where the RS256 and ES256 keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// HS256 only.
    None,
    /// Read once at start.
    File { path: PathBuf, keys: KeySet },
    /// Fetched and cached.
    Url(url::Url),
}

/// The HS256 shared secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Hs256Secret(pub Vec<u8>);

impl fmt::Debug for Hs256Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hs256Secret(<redacted>)")
    }
}

/// Who a valid token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// Empty for a service account's token without a team claim.
    pub team: String,
    pub role: Role,
    /// The device session (`sid` or the configured claim), when the token names one.
    pub device: Option<String>,
}

/// Why a token was refused: for the debug log only; clients see `unauthorized`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("malformed token or header")]
    Malformed,
    #[error("algorithm not accepted")]
    Algorithm,
    #[error("no hs256_secret configured")]
    NoSecret,
    #[error("no kid in the header")]
    NoKid,
    #[error("unknown kid {0:?}")]
    UnknownKid(String),
    #[error("the key of this kid is for another algorithm")]
    KeyAlgorithm,
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("missing or malformed claim {0:?}")]
    Claim(String),
}

impl Refused {
    fn from_kind(kind: &ErrorKind) -> Refused {
        match kind {
            ErrorKind::InvalidSignature => Refused::Signature,
            ErrorKind::ExpiredSignature => Refused::Expired,
            ErrorKind::ImmatureSignature => Refused::NotYetValid,
            ErrorKind::InvalidIssuer => Refused::Issuer,
            ErrorKind::InvalidAudience => Refused::Audience,
            ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => {
                Refused::Claim(c.clone())
            }
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::InvalidAlgorithmName => Refused::Algorithm,
            // Anything else (encoding, key format, provider) tells nothing more useful.
            _ => Refused::Malformed,
        }
    }
}

/// Whether a bearer token is a JWT (three base64url parts, the first a JSON object):
/// those are checked as JWTs, anything else against the static tokens.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if header.len() > MAX_TOKEN_BYTES {
        return false;
    }
    URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v.is_object())
}

/// Checks JWTs against the configured keys and claims.
#[derive(Debug)]
pub struct Verifier {
    issuer: String,
    audience: String,
    user_claim: String,
    team_claim: String,
    device_claim: String,
    role_claim: String,
    hs256: Option<DecodingKey>,
    keys: Arc<KeyCache>,
}

impl Verifier {
    pub fn new(config: &JwtConfig) -> Verifier {
        Verifier::reloaded(config, None)
    }

    /// A checker for `config` after a config reload: it takes over the key cache of
    /// `previous` when both fetch from the same `jwks_url` (keys already fetched stay,
    /// and the background refresh goes on with them); anything else starts afresh.
    pub fn reloaded(config: &JwtConfig, previous: Option<&Verifier>) -> Verifier {
        let kept = match (&config.keys, previous) {
            (KeySource::Url(url), Some(p)) if p.keys.url() == Some(url) => {
                Some(Arc::clone(&p.keys))
            }
            _ => None,
        };
        let keys = kept.unwrap_or_else(|| {
            Arc::new(match &config.keys {
                KeySource::None => KeyCache::fixed(KeySet::default()),
                KeySource::File { keys, .. } => KeyCache::fixed(keys.clone()),
                KeySource::Url(url) => KeyCache::remote(url.clone()),
            })
        });
        Verifier {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            user_claim: config.user_claim.clone(),
            team_claim: config.team_claim.clone(),
            device_claim: config.device_claim.clone(),
            role_claim: config.role_claim.clone(),
            hs256: config
                .hs256_secret
                .as_ref()
                .and_then(|s| DecodingKey::from_secret(&s.0).ok()),
            keys,
        }
    }

    /// The key cache, for the start-up fetch and the background refresh.
    pub fn keys(&self) -> &Arc<KeyCache> {
        &self.keys
    }

    /// The identity of a valid token. Only a token naming an unknown `kid` may wait,
    /// for one bounded fetch of the keys.
    pub async fn verify(&self, token: &str) -> Result<Identity, Refused> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refused::Malformed);
        }
        // Fails for any `alg` the library does not know, `none` included.
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refused::Malformed)?;
        // The header's alg picks the key only among keys bound to that alg, and the
        // key must be bound to it: an HS256 token is never checked with a public key.
        let remote_key;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref().ok_or(Refused::NoSecret)?,
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header.kid.as_deref().ok_or(Refused::NoKid)?;
                remote_key = self
                    .keys
                    .get(kid)
                    .await
                    .ok_or_else(|| Refused::UnknownKid(kid.chars().take(64).collect()))?;
                if remote_key.alg != header.alg {
                    return Err(Refused::KeyAlgorithm);
                }
                &remote_key.key
            }
            _ => return Err(Refused::Algorithm),
        };
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation(header.alg))
                .map_err(|e| Refused::from_kind(e.kind()))?;
        identity(
            &data.claims,
            &self.issuer,
            [
                &self.user_claim,
                &self.team_claim,
                &self.device_claim,
                &self.role_claim,
            ],
        )
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = CLOCK_SKEW_SECS;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v
    }
}

/// The identity in checked claims. `iss` must be exactly the issuer (the library also
/// takes a list containing it); the user claim is required, and so is the team claim
/// unless the role claim says `service`. A role other than `user` or `service` is
/// refused rather than taken for a user's.
fn identity(
    claims: &Map<String, Value>,
    issuer: &str,
    [user_claim, team_claim, device_claim, role_claim]: [&str; 4],
) -> Result<Identity, Refused> {
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(Refused::Issuer);
    }
    let text = |name: &str| -> Result<Option<String>, Refused> {
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if crate::logic::valid_name(s) => Ok(Some(s.clone())),
            Some(_) => Err(Refused::Claim(name.to_owned())),
        }
    };
    let required = |name: &str| text(name)?.ok_or_else(|| Refused::Claim(name.to_owned()));
    let role = match text(role_claim)? {
        None => Role::User,
        Some(r) => Role::parse(&r).ok_or_else(|| Refused::Claim(role_claim.to_owned()))?,
    };
    let team = match role {
        Role::User => required(team_claim)?,
        Role::Service => text(team_claim)?.unwrap_or_default(),
    };
    Ok(Identity {
        user: required(user_claim)?,
        team,
        role,
        device: text(device_claim)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        Verifier::new(&verifier_config())
    }

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
    }

    fn hs256(claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    fn good() -> Value {
        json!({"iss": "https://id.example", "aud": "outpost", "exp": now() + 300,
               "sub": "amina", "team": "north", "sid": "tablet-7"})
    }

    fn with(key: &str, v: Value) -> Value {
        let mut c = good();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(key);
        } else {
            c[key] = v;
        }
        c
    }

    #[tokio::test]
    async fn a_valid_token_names_user_team_and_device() {
        let id = verifier().verify(&hs256(&good())).await.unwrap();
        assert_eq!(
            id,
            Identity {
                user: "amina".into(),
                team: "north".into(),
                role: Role::User,
                device: Some("tablet-7".into())
            }
        );
        let id = verifier()
            .verify(&hs256(&with("sid", Value::Null)))
            .await
            .unwrap();
        assert_eq!(id.device, None);
        // aud may be a list that contains ours; exp within the skew still counts.
        let id = verifier()
            .verify(&hs256(&with("aud", json!(["other", "outpost"]))))
            .await;
        assert!(id.is_ok());
        assert!(
            verifier()
                .verify(&hs256(&with("exp", json!(now() - 30))))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn the_role_claim_makes_a_service_account_which_needs_no_team() {
        let v = verifier();
        let mut claims = with("outpost_role", json!("service"));
        let id = v.verify(&hs256(&claims)).await.unwrap();
        assert_eq!((id.role, id.team.as_str()), (Role::Service, "north"));
        claims["team"] = Value::Null;
        let id = v.verify(&hs256(&claims)).await.unwrap();
        assert_eq!((id.role, id.team.as_str()), (Role::Service, ""));
        let id = v
            .verify(&hs256(&with("outpost_role", json!("user"))))
            .await
            .unwrap();
        assert_eq!(id.role, Role::User);
        // A user still needs a team; an unknown role is refused, never taken as a user.
        let mut user = with("outpost_role", json!("user"));
        user["team"] = Value::Null;
        assert_eq!(
            v.verify(&hs256(&user)).await,
            Err(Refused::Claim("team".into()))
        );
        for bad in [json!("admin"), json!(["service"]), json!("")] {
            assert_eq!(
                v.verify(&hs256(&with("outpost_role", bad))).await,
                Err(Refused::Claim("outpost_role".into()))
            );
        }
    }

    #[tokio::test]
    async fn each_failed_check_is_refused_with_its_reason() {
        let v = verifier();
        let cases = [
            (with("exp", json!(now() - 120)), Refused::Expired),
            (with("exp", Value::Null), Refused::Claim("exp".into())),
            (with("nbf", json!(now() + 120)), Refused::NotYetValid),
            (with("iss", json!("https://evil.example")), Refused::Issuer),
            (with("iss", json!(["https://id.example"])), Refused::Issuer),
            (with("aud", json!("other")), Refused::Audience),
            (with("aud", Value::Null), Refused::Claim("aud".into())),
            (with("team", Value::Null), Refused::Claim("team".into())),
            (
                with("team", json!(["north"])),
                Refused::Claim("team".into()),
            ),
            (with("sub", json!("")), Refused::Claim("sub".into())),
            (with("sub", json!("a\u{0}b")), Refused::Claim("sub".into())),
            (with("sid", json!(7)), Refused::Claim("sid".into())),
        ];
        for (claims, want) in cases {
            assert_eq!(v.verify(&hs256(&claims)).await, Err(want), "{claims}");
        }
        // A not-before within the skew is fine.
        assert!(
            v.verify(&hs256(&with("nbf", json!(now() + 30))))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn wrong_keys_and_algorithms_are_refused() {
        let v = verifier();
        let other = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &good(),
            &EncodingKey::from_secret(b"another-secret-of-32-bytes-length").unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&other).await, Err(Refused::Signature));
        // HS384 with the right secret: the secret is bound to HS256.
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &good(),
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&hs384).await, Err(Refused::Algorithm));
        let mut rs = Header::new(Algorithm::RS256);
        assert_eq!(
            v.verify(&format!("{}.e30.c2ln", b64_json(&rs))).await,
            Err(Refused::NoKid)
        );
        rs.kid = Some("k1".into());
        assert_eq!(
            v.verify(&format!("{}.e30.c2ln", b64_json(&rs))).await,
            Err(Refused::UnknownKid("k1".into()))
        );
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(good().to_string());
        assert_eq!(
            v.verify(&format!("{none}.{payload}.")).await,
            Err(Refused::Malformed)
        );
        assert!(looks_like_jwt(&format!("{none}.{payload}.")));
        let no_secret = Verifier::new(&JwtConfig {
            hs256_secret: None,
            ..verifier_config()
        });
        assert_eq!(
            no_secret.verify(&hs256(&good())).await,
            Err(Refused::NoSecret)
        );
    }

    fn verifier_config() -> JwtConfig {
        JwtConfig {
            issuer: "https://id.example".into(),
            audience: "outpost".into(),
            keys: KeySource::None,
            hs256_secret: Some(Hs256Secret(SECRET.to_vec())),
            user_claim: "sub".into(),
            team_claim: "team".into(),
            device_claim: "sid".into(),
            role_claim: DEFAULT_ROLE_CLAIM.into(),
        }
    }

    fn b64_json<T: serde::Serialize>(v: &T) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[tokio::test]
    async fn configured_claim_names_are_used() {
        let v = Verifier::new(&JwtConfig {
            user_claim: "preferred_username".into(),
            team_claim: "clinic".into(),
            device_claim: "device".into(),
            role_claim: DEFAULT_ROLE_CLAIM.into(),
            ..verifier_config()
        });
        let claims = json!({"iss": "https://id.example", "aud": "outpost",
            "exp": now() + 60, "sub": "f81d4fae", "preferred_username": "amina",
            "clinic": "north", "device": "d-1", "sid": "ignored"});
        assert_eq!(
            v.verify(&hs256(&claims)).await.unwrap(),
            Identity {
                user: "amina".into(),
                team: "north".into(),
                role: Role::User,
                device: Some("d-1".into())
            }
        );
    }

    #[test]
    fn only_jwt_shaped_tokens_are_taken_for_jwts() {
        assert!(looks_like_jwt(&hs256(&good())));
        for t in [
            "token-amina-0123456789",
            "a.b.c",
            "e30.e30",
            "e30.e30.x.y",
            "W10.e30.x", // [] is not an object
            "",
        ] {
            assert!(!looks_like_jwt(t), "{t}");
        }
    }

    #[test]
    fn the_secret_is_never_printed() {
        let shown = format!("{:?}", verifier_config());
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }
}
