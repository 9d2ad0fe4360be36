//! The demo's identity provider: it signs short-lived JWTs, as a deployment's Keycloak
//! or Auth0 would, so the demo runs the server the way a real deployment does.
//!
//! The server's config gets a `[jwt]` section with an HS256 secret made for this run;
//! each device's token provider signs a five-minute token for its user, naming the
//! device as the session (`sid`) the server's audit records. When the server answers
//! 401, the engine asks again with `refresh = true` and gets a fresh one.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use outpost_core::TokenProvider;
use rand::Rng;
use serde_json::json;

/// Issuer and audience the demo's server checks.
const ISSUER: &str = "outpost-demo";
const AUDIENCE: &str = "outpost";
/// How long a token lives: short, as a provider's access tokens are.
const LIFETIME: Duration = Duration::from_secs(300);

/// The secret of one run; never written anywhere but the run's server config.
#[derive(Clone)]
pub struct DemoIssuer {
    secret: String,
}

impl std::fmt::Debug for DemoIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DemoIssuer(<secret>)")
    }
}

impl DemoIssuer {
    /// A fresh random secret, from the system's generator rather than the demo's seed:
    /// a replay repeats the story, not the secret.
    pub fn new() -> DemoIssuer {
        let mut rng = rand::rng();
        let secret = (0..48)
            .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
            .collect();
        DemoIssuer { secret }
    }

    /// The server config's `[jwt]` section.
    pub fn config_section(&self) -> String {
        format!(
            "\n[jwt]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\nhs256_secret = \"{}\"\n",
            self.secret
        )
    }

    /// The token provider of `device`, signed in as `user` of `team`.
    pub fn provider(&self, user: &str, team: &str, device: &str) -> DeviceTokens {
        DeviceTokens {
            key: EncodingKey::from_secret(self.secret.as_bytes()).ok(),
            user: user.to_owned(),
            team: team.to_owned(),
            device: device.to_owned(),
        }
    }
}

/// Signs a fresh short-lived token whenever the engine asks.
pub struct DeviceTokens {
    key: Option<EncodingKey>,
    user: String,
    team: String,
    device: String,
}

impl TokenProvider for DeviceTokens {
    fn token(&self, _refresh: bool) -> Result<String, String> {
        let key = self.key.as_ref().ok_or("no signing key")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + LIFETIME.as_secs(),
            "sub": self.user, "team": self.team, "sid": self.device,
        });
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_user_team_device_and_expire_in_five_minutes() {
        let issuer = DemoIssuer::new();
        let t = issuer
            .provider("amina", "field-team", "amina-tablet")
            .token(false)
            .unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[AUDIENCE]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(issuer.secret.as_bytes()).unwrap(),
            &v,
        )
        .unwrap();
        let c = data.claims;
        assert_eq!(
            (c["sub"].as_str(), c["team"].as_str(), c["sid"].as_str()),
            (Some("amina"), Some("field-team"), Some("amina-tablet"))
        );
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 300);
        assert_ne!(DemoIssuer::new().secret, issuer.secret);
        assert!(!format!("{issuer:?}").contains(&issuer.secret));
    }
}
