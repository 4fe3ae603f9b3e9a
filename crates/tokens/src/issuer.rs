//! [`TokenIssuer`]: signs access tokens with the key ring's current key.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, Header};

use crate::{AccessClaims, KeyRing, TokenError, duration_seconds, unix_seconds};

/// Signs access tokens (the auth service). Cheap to clone.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    keys: KeyRing,
    issuer: Arc<str>,
    audience: Arc<str>,
    ttl: Duration,
}

impl TokenIssuer {
    /// An issuer signing tokens for `audience` as `issuer`, valid for `ttl`.
    ///
    /// `ttl` is capped at the key ring's
    /// [`token_ttl`](crate::RotationPolicy::token_ttl), which is what key
    /// retirement is computed from: a longer-lived token would outlive its
    /// key.
    pub fn new(keys: KeyRing, issuer: &str, audience: &str, ttl: Duration) -> Self {
        let max = keys.policy().token_ttl;
        if ttl > max {
            tracing::warn!(
                requested = ?ttl,
                used = ?max,
                "access token lifetime capped at the key ring's token_ttl"
            );
        }
        Self {
            keys,
            issuer: issuer.into(),
            audience: audience.into(),
            ttl: ttl.min(max),
        }
    }

    /// Signs an access token for user `sub` with `role`, in session `sid`,
    /// authenticated with `amr`. Returns the compact JWT and its claims
    /// (`jti` is a fresh UUID v4; `iat` is now; the header's `kid` is the
    /// current key's).
    pub fn issue(
        &self,
        sub: &str,
        role: &str,
        sid: &str,
        amr: &[&str],
    ) -> Result<(String, AccessClaims), TokenError> {
        if sub.is_empty() || sid.is_empty() {
            return Err(TokenError::Signing(
                "the subject and the session ID must not be empty".to_owned(),
            ));
        }
        let (kid, key) = self.keys.signing_key()?;
        let iat = unix_seconds(SystemTime::now());
        let claims = AccessClaims {
            iss: self.issuer.to_string(),
            aud: self.audience.to_string(),
            sub: sub.to_owned(),
            role: role.to_owned(),
            sid: sid.to_owned(),
            iat,
            exp: iat.saturating_add(duration_seconds(self.ttl)),
            jti: uuid::Uuid::new_v4().to_string(),
            amr: amr.iter().map(|m| (*m).to_owned()).collect(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("JWT".to_owned());
        header.kid = Some(kid);
        let token = jsonwebtoken::encode(&header, &claims, &key)
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        Ok((token, claims))
    }

    /// The key ring (for the JWKS endpoint and rotation).
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The issuer name put in `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience put in `aud`.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The lifetime of the tokens issued.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}
