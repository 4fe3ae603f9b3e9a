//! The end user of a call: the bearer access token in the `authorization`
//! metadata, verified by this process itself (signature against the auth
//! service's JWKS, audience, expiry, and the session still active), as the
//! architecture requires — no service trusts another's word about the user.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tonic::Status;
use trustmesh_policy::{Subject, SubjectFuture, SubjectResolver};
use trustmesh_proto::trustmesh::auth::v1::auth_client::AuthClient;
use trustmesh_proto::trustmesh::auth::v1::{CheckSessionRequest, GetJwksRequest};
use trustmesh_tokens::{
    AccessClaims, BoxFuture, JwkSet, JwksFetcher, SessionChecker, TokenError, Verifier, parse_jwks,
};

use crate::{Directory, MeshChannel, MeshClient, RuntimeError};

/// The `iss` of every access token.
pub const TOKEN_ISSUER: &str = "trustmesh-auth";
/// The `aud` of every access token.
pub const TOKEN_AUDIENCE: &str = "trustmesh";
/// How long a verifier trusts a "session active" answer: revocation reaches
/// every verifier within this time.
pub const SESSION_CHECK_TTL: Duration = Duration::from_secs(2);

/// Resolves the subject of a call from its bearer token.
#[derive(Clone)]
pub struct JwtSubjects {
    verifier: Verifier,
}

impl std::fmt::Debug for JwtSubjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSubjects").finish_non_exhaustive()
    }
}

impl JwtSubjects {
    /// Uses `verifier` as it is.
    pub fn new(verifier: Verifier) -> Self {
        Self { verifier }
    }

    /// A verifier fed by the auth service over mTLS (see [`auth_verifier`]).
    pub fn via_auth(client: &MeshClient, directory: &Directory) -> Result<Self, RuntimeError> {
        Ok(Self {
            verifier: auth_verifier(client.service_channel(directory, "auth")?),
        })
    }

    /// Verifies `token` and returns the subject it names.
    pub async fn subject_of(&self, token: &str) -> Result<Subject, TokenError> {
        Ok(subject_from_claims(&self.verifier.verify(token).await?))
    }
}

/// The policy subject of verified claims; `mfa` when the token's `amr` names
/// a second factor (`otp` or `recovery`, the auth service's values, or the
/// generic `mfa`).
pub fn subject_from_claims(claims: &AccessClaims) -> Subject {
    Subject {
        sub: claims.sub.clone(),
        role: claims.role.clone(),
        sid: claims.sid.clone(),
        mfa: claims
            .amr
            .iter()
            .any(|m| matches!(m.as_str(), "otp" | "recovery" | "mfa")),
    }
}

/// The token verifier of a mesh process: tokens of [`TOKEN_ISSUER`] for
/// [`TOKEN_AUDIENCE`], keys from the auth service's JWKS (`GetJwks`,
/// refetched on an unknown `kid`), sessions checked with the auth service
/// (`CheckSession`, answers reused for [`SESSION_CHECK_TTL`]).
pub fn auth_verifier(auth: MeshChannel) -> Verifier {
    Verifier::new(
        TOKEN_ISSUER,
        TOKEN_AUDIENCE,
        Arc::new(GrpcJwksFetcher {
            auth: AuthClient::new(auth.clone()),
        }),
    )
    .with_session_checker(
        Arc::new(GrpcSessionChecker {
            auth: AuthClient::new(auth),
        }),
        SESSION_CHECK_TTL,
    )
}

/// The auth service's JWKS over mTLS.
#[derive(Debug, Clone)]
struct GrpcJwksFetcher {
    auth: AuthClient<MeshChannel>,
}

impl JwksFetcher for GrpcJwksFetcher {
    fn fetch(&self) -> BoxFuture<'static, Result<JwkSet, TokenError>> {
        let mut auth = self.auth.clone();
        Box::pin(async move {
            let reply = auth.get_jwks(GetJwksRequest {}).await.map_err(|s| {
                TokenError::Jwks(format!("auth GetJwks: {:?}: {}", s.code(), s.message()))
            })?;
            parse_jwks(reply.into_inner().jwks_json.as_bytes())
        })
    }
}

/// Session status asked of the auth service over mTLS.
#[derive(Debug, Clone)]
struct GrpcSessionChecker {
    auth: AuthClient<MeshChannel>,
}

impl SessionChecker for GrpcSessionChecker {
    fn is_active(&self, sid: &str) -> BoxFuture<'static, Result<bool, TokenError>> {
        let mut auth = self.auth.clone();
        let session_id = sid.to_owned();
        Box::pin(async move {
            let reply = auth
                .check_session(CheckSessionRequest { session_id })
                .await
                .map_err(|s| {
                    TokenError::SessionCheck(format!(
                        "auth CheckSession: {:?}: {}",
                        s.code(),
                        s.message()
                    ))
                })?;
            Ok(reply.into_inner().active)
        })
    }
}

/// The token of an `authorization: Bearer <token>` header, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl SubjectResolver for JwtSubjects {
    fn resolve(&self, headers: &HeaderMap) -> SubjectFuture {
        let token = bearer_token(headers).map(str::to_owned);
        let this = self.clone();
        Box::pin(async move {
            let Some(token) = token else {
                return Ok(None);
            };
            match this.subject_of(&token).await {
                Ok(subject) => Ok(Some(subject)),
                Err(e) if e.is_rejection() => {
                    tracing::info!(code = e.code(), "access token refused");
                    Err(Status::unauthenticated(format!(
                        "{}: access token refused",
                        e.code()
                    )))
                }
                Err(e) => {
                    tracing::warn!(code = e.code(), error = %e, "cannot verify access tokens");
                    Err(Status::unavailable(format!(
                        "{}: cannot verify the access token now",
                        e.code()
                    )))
                }
            }
        })
    }
}
