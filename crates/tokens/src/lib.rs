//! Trustmesh access tokens.
//!
//! Access tokens are JWTs signed with Ed25519 (`alg: EdDSA`), carrying the
//! claims `iss, aud, sub, role, sid, iat, exp, jti, amr` ([`AccessClaims`]).
//!
//! * The auth service keeps its signing keys in a [`KeyRing`] (a directory
//!   holding `signing-keys.json`, mode 0600). Keys rotate with overlap
//!   ([`RotationPolicy`]): the next key is published in the JWKS before it
//!   signs anything, and a retired key stays published until every token it
//!   signed has expired. [`KeyRing::jwks_json`] is the body of
//!   `/.well-known/jwks.json`.
//! * [`TokenIssuer`] signs access tokens with the ring's current key.
//! * [`Verifier`] (used by the gateway and every service) accepts only
//!   `EdDSA` tokens whose `kid` is in the issuer's JWKS, which it caches and
//!   refetches (rate-limited, one fetch shared by concurrent callers) when it
//!   meets an unknown `kid`. It checks the signature, `exp`, `nbf`, `iat`,
//!   `aud`, `iss` and the required claims, then, with a [`SessionChecker`],
//!   that the session is still active (cached per session for a few seconds,
//!   so a revocation reaches every verifier within that time).
//!
//! Every refusal is a [`TokenError`] with a stable [`code`](TokenError::code).
//! Tokens are never logged.

mod claims;
mod error;
mod issuer;
mod keyring;
mod verifier;

use std::future::Future;
use std::pin::Pin;

pub use claims::AccessClaims;
pub use error::TokenError;
pub use issuer::TokenIssuer;
pub use keyring::{KEY_FILE_NAME, KeyRing, RETIRE_LEEWAY, RotationPolicy};
pub use verifier::{
    FnJwksFetcher, FnSessionChecker, JwksFetcher, MAX_LEEWAY, SessionChecker, Verifier, parse_jwks,
};

/// Re-exported so callers can name the JWKS types without depending on
/// `jsonwebtoken` themselves.
pub use jsonwebtoken::jwk::{Jwk, JwkSet};

/// A boxed, `Send` future (the same shape as `futures::future::BoxFuture`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The `alg` of every Trustmesh access token.
pub const ALGORITHM: &str = "EdDSA";

/// Seconds since the Unix epoch of `t` (negative before 1970).
pub(crate) fn unix_seconds(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// Whole seconds of `d`, saturating at `i64::MAX`.
pub(crate) fn duration_seconds(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}
