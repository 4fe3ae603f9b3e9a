//! The auth area: registration with TOTP enrolment, the two-step login,
//! sessions (tokens in the body for API clients, cookies for browsers),
//! password change and the JWKS.

use axum::Extension;
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use trustmesh_proto::trustmesh::auth::v1::{
    ChangePasswordRequest, ConfirmRegistrationRequest, GetJwksRequest, ListSessionsRequest,
    LoginMfaRequest, LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest,
    RevokeSessionRequest, TokenReply,
};
use utoipa::ToSchema;

use super::Api;
use super::errors::{ApiError, ApiJson, ErrorBody, MaybeJson};
use super::session::{
    Caller, REFRESH_COOKIE, RequestInfo, clear_session_cookies, cookie, grpc_request,
    is_web_client, new_csrf_token, set_session_cookies,
};

/// `POST /auth/register` and `POST /auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credentials {
    /// The account's email address (compared without regard to case).
    #[schema(format = Email, example = "ada@example.com")]
    email: String,
    /// 12 to 128 characters, not a commonly breached password, not
    /// containing the email's local part.
    #[schema(format = Password, min_length = 12, max_length = 128)]
    password: String,
}

/// A registration waiting for its first TOTP code.
#[derive(Debug, Serialize, ToSchema)]
struct Registered {
    user_id: String,
    /// Names this registration in `POST /auth/register/confirm`.
    enrollment_token: String,
    /// The TOTP secret for an authenticator app (RFC 6238); shown only now.
    otpauth_uri: String,
    /// The same URI as a QR code (an SVG document).
    qr_svg: String,
}

/// Registers an account and starts its TOTP enrolment
///
/// The account can sign in once `POST /auth/register/confirm` has one
/// valid code from the authenticator app.
#[utoipa::path(
    post,
    path = "/api/v1/auth/register",
    tag = "auth",
    request_body = Credentials,
    responses(
        (status = CREATED, description = "the account, not yet usable, and its TOTP enrolment", body = Registered),
        (status = CONFLICT, description = "`email_taken`: an account has this email", body = ErrorBody),
        (status = UNPROCESSABLE_ENTITY, description = "`weak_password`, `invalid_email`, …: which rule the email or password breaks", body = ErrorBody),
    )
)]
pub(crate) async fn register(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    let request = RegisterRequest {
        email: body.email,
        password: body.password,
    };
    let reply = api
        .call(
            api.auth()
                .register(grpc_request(request, &info, None, api.timeout())),
        )
        .await?;
    let body = Registered {
        user_id: reply.user_id,
        enrollment_token: reply.enrollment_token,
        otpauth_uri: reply.otpauth_uri,
        qr_svg: reply.qr_svg,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /auth/register/confirm`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Confirm {
    /// From the registration's answer.
    enrollment_token: String,
    /// The authenticator app's current six-digit code.
    #[schema(example = "123456")]
    code: String,
}

/// The ten single-use recovery codes of a confirmed account.
#[derive(Debug, Serialize, ToSchema)]
struct RecoveryCodes {
    /// Shown once; each opens one session in place of a TOTP code.
    recovery_codes: Vec<String>,
}

/// Confirms a registration with its first TOTP code
#[utoipa::path(
    post,
    path = "/api/v1/auth/register/confirm",
    operation_id = "confirm_registration",
    tag = "auth",
    request_body = Confirm,
    responses(
        (status = OK, description = "the account is usable; its recovery codes", body = RecoveryCodes),
        (status = UNAUTHORIZED, description = "`invalid_code` or `code_replayed`", body = ErrorBody),
        (status = NOT_FOUND, description = "`enrollment_not_found`: unknown or expired enrolment token", body = ErrorBody),
    )
)]
pub(crate) async fn confirm(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    ApiJson(body): ApiJson<Confirm>,
) -> Result<Response, ApiError> {
    let request = ConfirmRegistrationRequest {
        enrollment_token: body.enrollment_token,
        code: body.code,
    };
    let reply = api
        .call(
            api.auth()
                .confirm_registration(grpc_request(request, &info, None, api.timeout())),
        )
        .await?;
    Ok(Json(RecoveryCodes {
        recovery_codes: reply.recovery_codes,
    })
    .into_response())
}

/// The password step's answer: a ticket for the MFA step, never a session.
#[derive(Debug, Serialize, ToSchema)]
struct MfaTicket {
    mfa_ticket: String,
    /// Seconds the ticket stays valid.
    expires_in: i64,
}

/// Checks the password: the first of the two login steps
///
/// An unknown email and a wrong password get the same answer.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    request_body = Credentials,
    responses(
        (status = OK, description = "the password is right; now `POST /auth/login/mfa`", body = MfaTicket),
        (status = UNAUTHORIZED, description = "`invalid_credentials`", body = ErrorBody),
        (status = FORBIDDEN, description = "`account_not_confirmed`: the TOTP enrolment is not confirmed yet", body = ErrorBody),
        (status = LOCKED, description = "`account_locked`: too many failed attempts", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds until the lock ends"))),
        (status = TOO_MANY_REQUESTS, description = "`too_many_attempts`: too many failed logins from this address", body = ErrorBody),
    )
)]
pub(crate) async fn login(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    let request = LoginRequest {
        email: body.email,
        password: body.password,
    };
    let reply = api
        .call(
            api.auth()
                .login(grpc_request(request, &info, None, api.timeout())),
        )
        .await?;
    Ok(Json(MfaTicket {
        mfa_ticket: reply.mfa_ticket,
        expires_in: reply.expires_in_seconds,
    })
    .into_response())
}

/// `POST /auth/login/mfa`: the ticket and exactly one of `code` and
/// `recovery_code`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginMfa {
    /// From the password step.
    mfa_ticket: String,
    /// The authenticator app's current code.
    #[serde(default)]
    code: Option<String>,
    /// One of the account's unused recovery codes.
    #[serde(default)]
    recovery_code: Option<String>,
}

/// Completes the login with a TOTP or recovery code and opens a session
///
/// API clients get the tokens in the body. A browser (header
/// `x-trustmesh-client: web`) gets them in `HttpOnly` cookies and a CSRF
/// token to send back in `x-csrf-token` with every state-changing request.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login/mfa",
    tag = "auth",
    request_body = LoginMfa,
    params(("x-trustmesh-client" = Option<String>, Header, description = "`web` for a browser session in cookies")),
    responses(
        (status = OK, description = "a new session", body = SessionAnswer),
        (status = UNAUTHORIZED, description = "`invalid_code`, `code_replayed`, or a ticket that is unknown, expired or used up", body = ErrorBody),
        (status = LOCKED, description = "`account_locked`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds until the lock ends"))),
    )
)]
pub(crate) async fn login_mfa(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginMfa>,
) -> Result<Response, ApiError> {
    let non_empty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
    let (code, recovery_code) = match (non_empty(body.code), non_empty(body.recovery_code)) {
        (Some(code), None) => (code, String::new()),
        (None, Some(recovery)) => (String::new(), recovery),
        _ => {
            return Err(ApiError::invalid_request(
                "give exactly one of `code` and `recovery_code`",
            ));
        }
    };
    let request = LoginMfaRequest {
        mfa_ticket: body.mfa_ticket,
        code,
        recovery_code,
    };
    let reply = api
        .call(
            api.auth()
                .login_mfa(grpc_request(request, &info, None, api.timeout())),
        )
        .await?;
    session_response(reply, is_web_client(&headers))
}

/// `POST /auth/refresh` from an API client.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Refresh {
    /// The session's current refresh token; each is good for one use.
    refresh_token: String,
}

/// Rotates a session's tokens
///
/// The refresh token comes in the body, or for a browser in the
/// `tm_refresh` cookie (then with the CSRF header). A refresh token used a
/// second time ends its whole session.
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    operation_id = "refresh_session",
    tag = "auth",
    request_body(content = Option<Refresh>, description = "absent for a browser, whose token is in its cookie"),
    responses(
        (status = OK, description = "the session's new tokens", body = SessionAnswer),
        (status = BAD_REQUEST, description = "no refresh token in the body or the cookie", body = ErrorBody),
        (status = UNAUTHORIZED, description = "the token is unknown, used or its session ended", body = ErrorBody),
    )
)]
pub(crate) async fn refresh(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    headers: HeaderMap,
    MaybeJson(body): MaybeJson<Refresh>,
) -> Result<Response, ApiError> {
    // The guard has already required the CSRF token if cookies came along.
    let (refresh_token, web) = match body {
        Some(body) if !body.refresh_token.is_empty() => {
            (body.refresh_token, is_web_client(&headers))
        }
        _ => match cookie(&headers, REFRESH_COOKIE) {
            Some(token) => (token.to_owned(), true),
            None => {
                return Err(ApiError::invalid_request(
                    "a refresh token is required: {\"refresh_token\": \"...\"} or the tm_refresh cookie",
                ));
            }
        },
    };
    let request = RefreshRequest { refresh_token };
    let result = api
        .call(
            api.auth()
                .refresh(grpc_request(request, &info, None, api.timeout())),
        )
        .await;
    match result {
        Ok(reply) => session_response(reply, web),
        // A refused refresh token ends the browser's session.
        Err(e) if web && e.status() == StatusCode::UNAUTHORIZED => {
            let mut response = e.into_response();
            clear_session_cookies(response.headers_mut());
            Ok(response)
        }
        Err(e) => Err(e),
    }
}

/// A session as an API client gets it.
#[derive(Debug, Serialize, ToSchema)]
struct ApiSession {
    /// An EdDSA-signed JWT for `Authorization: Bearer`.
    access_token: String,
    /// For `POST /auth/refresh`, once.
    refresh_token: String,
    /// Seconds the access token stays valid.
    expires_in: i64,
    session_id: String,
    user_id: String,
    role: String,
}

/// A session as a browser gets it: the tokens are in `HttpOnly` cookies.
#[derive(Debug, Serialize, ToSchema)]
struct WebSession {
    user_id: String,
    role: String,
    session_id: String,
    /// Seconds the access token stays valid.
    expires_in: i64,
    /// Also in the `tm_csrf` cookie: send it in `x-csrf-token`.
    csrf_token: String,
}

/// A new session, in the shape the client asked for.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
enum SessionAnswer {
    /// An API client's.
    Api(ApiSession),
    /// A browser's.
    Web(WebSession),
}

/// A new session: tokens in the body for API clients; for browsers, tokens
/// in HttpOnly cookies and a fresh CSRF token (cookie and body).
fn session_response(reply: TokenReply, web: bool) -> Result<Response, ApiError> {
    if reply.access_token.is_empty() || reply.refresh_token.is_empty() {
        tracing::error!("the auth service opened a session without tokens");
        return Err(ApiError::upstream("the session could not be opened"));
    }
    if !web {
        return Ok(Json(SessionAnswer::Api(ApiSession {
            access_token: reply.access_token,
            refresh_token: reply.refresh_token,
            expires_in: reply.expires_in_seconds,
            session_id: reply.session_id,
            user_id: reply.user_id,
            role: reply.role,
        }))
        .into_response());
    }
    let csrf_token = new_csrf_token();
    let mut headers = HeaderMap::new();
    set_session_cookies(
        &mut headers,
        &reply.access_token,
        reply.expires_in_seconds,
        &reply.refresh_token,
        &csrf_token,
    )?;
    let body = SessionAnswer::Web(WebSession {
        user_id: reply.user_id,
        role: reply.role,
        session_id: reply.session_id,
        expires_in: reply.expires_in_seconds,
        csrf_token,
    });
    Ok((headers, Json(body)).into_response())
}

/// 204 that also deletes the session cookies.
fn no_content_clearing_cookies() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    clear_session_cookies(response.headers_mut());
    response
}

/// Ends the caller's session
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    responses((status = NO_CONTENT, description = "the session is over; a browser's cookies are deleted"))
)]
pub(crate) async fn logout(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let result = api
        .call(api.auth().logout(grpc_request(
            LogoutRequest {},
            &info,
            Some(&caller),
            api.timeout(),
        )))
        .await;
    match result {
        Ok(_) => {
            api.ended().insert(&caller.claims.sid);
            Ok(no_content_clearing_cookies())
        }
        // The session is already gone: the cookies are useless anyway.
        Err(e) if e.status() == StatusCode::UNAUTHORIZED => {
            let mut response = e.into_response();
            clear_session_cookies(response.headers_mut());
            Ok(response)
        }
        Err(e) => Err(e),
    }
}

/// One of the caller's sessions.
#[derive(Debug, Serialize, ToSchema)]
struct SessionView {
    session_id: String,
    created_at: String,
    last_seen_at: String,
    client_ip: String,
    user_agent: String,
    /// Whether this is the session of the request.
    current: bool,
}

/// The caller's open sessions.
#[derive(Debug, Serialize, ToSchema)]
struct Sessions {
    sessions: Vec<SessionView>,
}

/// Lists the caller's open sessions
#[utoipa::path(
    get,
    path = "/api/v1/auth/sessions",
    tag = "auth",
    responses((status = OK, description = "the open sessions", body = Sessions))
)]
pub(crate) async fn list_sessions(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let reply = api
        .call(api.auth().list_sessions(grpc_request(
            ListSessionsRequest {},
            &info,
            Some(&caller),
            api.timeout(),
        )))
        .await?;
    let sessions: Vec<SessionView> = reply
        .sessions
        .into_iter()
        .map(|s| SessionView {
            session_id: s.session_id,
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            client_ip: s.client_ip,
            user_agent: s.user_agent,
            current: s.current,
        })
        .collect();
    Ok(Json(Sessions { sessions }).into_response())
}

/// Ends one of the caller's sessions
#[utoipa::path(
    delete,
    path = "/api/v1/auth/sessions/{sid}",
    tag = "auth",
    params(("sid" = String, Path, format = Uuid, description = "the session's id")),
    responses(
        (status = NO_CONTENT, description = "the session is over"),
        (status = NOT_FOUND, description = "the caller has no such session", body = ErrorBody),
    )
)]
pub(crate) async fn revoke_session(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    sid: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(session_id) = sid?;
    let own = session_id == caller.claims.sid;
    api.call(api.auth().revoke_session(grpc_request(
        RevokeSessionRequest {
            session_id: session_id.clone(),
        },
        &info,
        Some(&caller),
        api.timeout(),
    )))
    .await?;
    api.ended().insert(&session_id);
    if own && caller.via_cookie {
        Ok(no_content_clearing_cookies())
    } else {
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

/// `POST /auth/password`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangePassword {
    #[schema(format = Password)]
    current_password: String,
    /// The same rules as at registration.
    #[schema(format = Password, min_length = 12, max_length = 128)]
    new_password: String,
}

/// Changes the caller's password and ends their other sessions
#[utoipa::path(
    post,
    path = "/api/v1/auth/password",
    tag = "auth",
    request_body = ChangePassword,
    responses(
        (status = NO_CONTENT, description = "changed; every other session is over"),
        (status = FORBIDDEN, description = "`wrong_password`: the current password is wrong", body = ErrorBody),
        (status = LOCKED, description = "`account_locked`: too many wrong passwords (they count as failed logins)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds until the lock ends"))),
        (status = UNPROCESSABLE_ENTITY, description = "the new password breaks a rule (`weak_password`, …)", body = ErrorBody),
    )
)]
pub(crate) async fn change_password(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<ChangePassword>,
) -> Result<Response, ApiError> {
    let request = ChangePasswordRequest {
        current_password: body.current_password,
        new_password: body.new_password,
    };
    api.call(api.auth().change_password(grpc_request(
        request,
        &info,
        Some(&caller),
        api.timeout(),
    )))
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The JSON Web Key Set of `GET /.well-known/jwks.json` (RFC 7517), as the
/// auth service publishes it: checked for its shape, passed on as is.
#[derive(Debug, Deserialize, ToSchema)]
struct JwkSet {
    /// Ed25519 public keys (`kty` `OKP`, `crv` `Ed25519`), each with its `kid`.
    #[schema(value_type = Vec<Object>)]
    keys: Vec<serde_json::Value>,
}

/// The public keys that verify access tokens
///
/// `GET /.well-known/jwks.json`: the auth service's JWKS as is, cacheable
/// for 5 minutes. An old key stays until its tokens have expired.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    operation_id = "get_jwks",
    tag = "auth",
    responses((status = OK, description = "the key set", body = JwkSet,
        headers(("Cache-Control" = String, description = "`public, max-age=300`"))))
)]
pub(crate) async fn jwks(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
) -> Result<Response, ApiError> {
    let reply = api
        .call(
            api.auth()
                .get_jwks(grpc_request(GetJwksRequest {}, &info, None, api.timeout())),
        )
        .await?;
    let usable =
        serde_json::from_str::<JwkSet>(&reply.jwks_json).is_ok_and(|set| !set.keys.is_empty());
    if !usable {
        tracing::error!("the auth service returned a JWKS that is not a key set with keys");
        return Err(ApiError::upstream("the key set is unavailable"));
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        reply.jwks_json,
    )
        .into_response())
}
