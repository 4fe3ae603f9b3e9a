//! [`TokenError`]: why a token was refused, or why signing or verification
//! could not be done.

/// Why a token was refused, or why a key or token operation failed.
///
/// [`code`](Self::code) gives a stable snake_case code for API errors and
/// audit events; [`is_rejection`](Self::is_rejection) tells a refused token
/// (answer 401) from an unavailable dependency (answer 503 or 500).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a well-formed JWT: wrong shape, bad base64 or JSON, no or invalid
    /// `kid`, a `crit` header, a wrong `typ`, a claim of the wrong type.
    #[error("malformed token")]
    Malformed,
    /// The header's `alg` is not `EdDSA` (`none`, `HS256`, `RS256`, ...).
    #[error("unsupported token algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The `kid` is not in the issuer's JWKS, even after a refetch.
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("bad token signature")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` is not this verifier's audience.
    #[error("wrong token audience")]
    WrongAudience,
    /// `iss` is not the expected issuer.
    #[error("wrong token issuer")]
    WrongIssuer,
    /// A required claim is absent.
    #[error("token lacks the claim {0:?}")]
    MissingClaim(String),
    /// The token's session has been revoked or has expired.
    #[error("session revoked")]
    Revoked,
    /// The session store could not be asked whether the session is active.
    #[error("cannot check the session: {0}")]
    SessionCheck(String),
    /// The JWKS could not be fetched or is unusable.
    #[error("JWKS unavailable: {0}")]
    Jwks(String),
    /// The key ring could not be read or written.
    #[error("signing key storage: {0}")]
    Storage(String),
    /// A token could not be signed.
    #[error("cannot sign the token: {0}")]
    Signing(String),
}

impl TokenError {
    /// A stable snake_case code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "token_malformed",
            Self::UnsupportedAlgorithm(_) => "token_algorithm",
            Self::UnknownKey(_) => "token_unknown_key",
            Self::BadSignature => "token_signature",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::WrongAudience => "token_audience",
            Self::WrongIssuer => "token_issuer",
            Self::MissingClaim(_) => "token_claims",
            Self::Revoked => "session_revoked",
            Self::SessionCheck(_) => "session_check_unavailable",
            Self::Jwks(_) => "jwks_unavailable",
            Self::Storage(_) => "key_storage",
            Self::Signing(_) => "token_signing",
        }
    }

    /// True when the token itself was refused (the caller should answer 401);
    /// false when a dependency or local operation failed (503 or 500).
    pub fn is_rejection(&self) -> bool {
        !matches!(
            self,
            Self::SessionCheck(_) | Self::Jwks(_) | Self::Storage(_) | Self::Signing(_)
        )
    }
}

/// Keeps at most `max` printable ASCII characters of an attacker-supplied
/// string (an `alg` or a `kid`) for error messages.
pub(crate) fn sanitize(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(max)
        .collect()
}
