//! The claims of a Trustmesh access token.

use serde::{Deserialize, Serialize};

/// The claims of an access token, as signed by the auth service and returned
/// by [`Verifier::verify`](crate::Verifier::verify).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: the auth service's issuer name.
    pub iss: String,
    /// Audience: who the token is for (one value).
    pub aud: String,
    /// Subject: the user ID.
    pub sub: String,
    /// The user's role (`user`, `manager`, `admin`, `finance`, `audit`).
    pub role: String,
    /// Session ID; revoking the session revokes the token.
    pub sid: String,
    /// Issued at (seconds since the Unix epoch).
    pub iat: i64,
    /// Expires at (seconds since the Unix epoch).
    pub exp: i64,
    /// Token ID (a UUID v4).
    pub jti: String,
    /// Authentication methods used at login (RFC 8176 values such as `pwd`, `otp`).
    pub amr: Vec<String>,
}

impl AccessClaims {
    /// The names of the claims every access token must carry.
    pub const REQUIRED: [&'static str; 9] = [
        "iss", "aud", "sub", "role", "sid", "iat", "exp", "jti", "amr",
    ];
}
