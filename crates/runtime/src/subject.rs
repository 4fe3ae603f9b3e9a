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
use trustmesh_tokens::{FnJwksFetcher, FnSessionChecker, TokenError, Verifier, parse_jwks};

use crate::{Directory, MeshClient, RuntimeError};

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

    /// A verifier fed by the auth service over mTLS: its JWKS (`GetJwks`,
    /// refetched on an unknown `kid`) and session status (`CheckSession`,
    /// cached for [`SESSION_CHECK_TTL`]).
    pub fn via_auth(client: &MeshClient, directory: &Directory) -> Result<Self, RuntimeError> {
        let auth = AuthClient::new(client.service_channel(directory, "auth")?);
        let jwks_client = auth.clone();
        let jwks = FnJwksFetcher::new(move || {
            let mut auth = jwks_client.clone();
            async move {
                let reply = auth
                    .get_jwks(GetJwksRequest {})
                    .await
                    .map_err(|e| TokenError::Jwks(e.message().to_owned()))?;
                parse_jwks(reply.into_inner().jwks_json.as_bytes())
            }
        });
        let sessions = FnSessionChecker::new(move |sid: String| {
            let mut auth = auth.clone();
            async move {
                let reply = auth
                    .check_session(CheckSessionRequest { session_id: sid })
                    .await
                    .map_err(|e| TokenError::SessionCheck(e.message().to_owned()))?;
                Ok(reply.into_inner().active)
            }
        });
        let verifier = Verifier::new(TOKEN_ISSUER, TOKEN_AUDIENCE, Arc::new(jwks))
            .with_session_checker(Arc::new(sessions), SESSION_CHECK_TTL);
        Ok(Self { verifier })
    }

    /// Verifies `token` and returns the subject it names.
    pub async fn subject_of(&self, token: &str) -> Result<Subject, TokenError> {
        let claims = self.verifier.verify(token).await?;
        let mfa = claims.amr.iter().any(|m| m == "otp" || m == "recovery");
        Ok(Subject {
            sub: claims.sub,
            role: claims.role,
            sid: claims.sid,
            mfa,
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
