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

use super::Api;
use super::errors::{ApiError, ApiJson, MaybeJson};
use super::session::{
    Caller, REFRESH_COOKIE, RequestInfo, clear_session_cookies, cookie, grpc_request,
    is_web_client, new_csrf_token, set_session_cookies,
};

/// `POST /auth/register` and `POST /auth/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credentials {
    email: String,
    password: String,
}

#[derive(Debug, Serialize)]
struct Registered {
    user_id: String,
    enrollment_token: String,
    otpauth_uri: String,
    qr_svg: String,
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Confirm {
    enrollment_token: String,
    code: String,
}

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
    Ok(Json(serde_json::json!({"recovery_codes": reply.recovery_codes})).into_response())
}

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
    Ok(Json(serde_json::json!({
        "mfa_ticket": reply.mfa_ticket,
        "expires_in": reply.expires_in_seconds,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginMfa {
    mfa_ticket: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    recovery_code: Option<String>,
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Refresh {
    refresh_token: String,
}

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

#[derive(Debug, Serialize)]
struct ApiSession {
    access_token: String,
    refresh_token: String,
    expires_in: i64,
    session_id: String,
    user_id: String,
    role: String,
}

#[derive(Debug, Serialize)]
struct WebSession {
    user_id: String,
    role: String,
    session_id: String,
    expires_in: i64,
    csrf_token: String,
}

/// A new session: tokens in the body for API clients; for browsers, tokens
/// in HttpOnly cookies and a fresh CSRF token (cookie and body).
fn session_response(reply: TokenReply, web: bool) -> Result<Response, ApiError> {
    if reply.access_token.is_empty() || reply.refresh_token.is_empty() {
        tracing::error!("the auth service opened a session without tokens");
        return Err(ApiError::upstream("the session could not be opened"));
    }
    if !web {
        return Ok(Json(ApiSession {
            access_token: reply.access_token,
            refresh_token: reply.refresh_token,
            expires_in: reply.expires_in_seconds,
            session_id: reply.session_id,
            user_id: reply.user_id,
            role: reply.role,
        })
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
    let body = WebSession {
        user_id: reply.user_id,
        role: reply.role,
        session_id: reply.session_id,
        expires_in: reply.expires_in_seconds,
        csrf_token,
    };
    Ok((headers, Json(body)).into_response())
}

/// 204 that also deletes the session cookies.
fn no_content_clearing_cookies() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    clear_session_cookies(response.headers_mut());
    response
}

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

#[derive(Debug, Serialize)]
struct SessionView {
    session_id: String,
    created_at: String,
    last_seen_at: String,
    client_ip: String,
    user_agent: String,
    current: bool,
}

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
    Ok(Json(serde_json::json!({ "sessions": sessions })).into_response())
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangePassword {
    current_password: String,
    new_password: String,
}

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

/// `GET /.well-known/jwks.json`: the auth service's JWKS as is, cacheable
/// for 5 minutes.
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
    if serde_json::from_str::<serde::de::IgnoredAny>(&reply.jwks_json).is_err() {
        tracing::error!("the auth service returned a JWKS that is not JSON");
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
