//! The REST API's error shape and where errors come from.
//!
//! Every error is `{"error": {"code": "<snake_case>", "message": "<text>"}}`
//! ([`ApiError`]). A client's mistake is always a 4xx: a body that is not
//! JSON (`invalid_json`), misses a field or has one of the wrong type
//! (`invalid_request`), is too large (`payload_too_large`, 413) or is not
//! declared as JSON (`unsupported_media_type`, 415). A gRPC status from a
//! service maps to HTTP with [`ApiError::from_status`]:
//!
//! | gRPC | HTTP | `error.code` (when the status message gives none) |
//! | --- | --- | --- |
//! | `INVALID_ARGUMENT` | 422 | `validation_failed` |
//! | `UNAUTHENTICATED` | 401 | `unauthenticated` |
//! | `PERMISSION_DENIED` | 403 | the policy's deny reason, else `forbidden` |
//! | `NOT_FOUND` | 404 | `not_found` |
//! | `ALREADY_EXISTS` | 409 | `already_exists` |
//! | `FAILED_PRECONDITION` | 409 | `failed_precondition` |
//! | `RESOURCE_EXHAUSTED` | 429 (423 for `account_locked` with `retry-after`) | `rate_limited` |
//! | `UNAVAILABLE`, `DEADLINE_EXCEEDED` | 503 | `service_unavailable`, but for the reasons services give on purpose ([`UNAVAILABLE_REASONS`]) |
//! | anything else | 502 | always `upstream_error` (logged) |
//!
//! A service's status message is `"<reason_code>: <human message>"` or plain
//! text; the reason code becomes `error.code` when it is one snake_case word.

use std::borrow::Cow;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Code;
use utoipa::ToSchema;

/// The gRPC metadata carrying a policy's deny reason (set by the services'
/// policy layer).
const DENY_REASON: &str = "x-trustmesh-deny-reason";

/// The reasons of an `UNAVAILABLE` status that services give on purpose,
/// whose code and message reach the client: what to do next differs for
/// each (retry shortly; retry with the same idempotency key; the role
/// changed and its sessions end soon; the service restarts and a retry with
/// the same key tells whether the write was kept). Any other `UNAVAILABLE`
/// (a transport error, say) is a generic 503 whose message says nothing of
/// the inside.
pub const UNAVAILABLE_REASONS: [&str; 4] = [
    "storage_busy",
    "wallet_unavailable",
    "sessions_not_revoked",
    "outcome_unknown",
];

/// How long the rest of a refused request's body may take to arrive before
/// the connection is closed instead ([`after_reading_body`]).
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Longest service message passed on to the client.
const MAX_MESSAGE: usize = 500;

/// The body of every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The `error` of an [`ErrorBody`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code a client can act on (`weak_password`,
    /// `token_expired`, `limit_exceeded`, …).
    #[schema(example = "invalid_request")]
    pub code: String,
    /// A human explanation; it may change between versions.
    pub message: String,
}

/// An error answer of the REST API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
    retry_after: Option<String>,
}

impl ApiError {
    /// An error with `status`, a snake_case `code` and a human `message`.
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 `invalid_request` with `message`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 503 `service_unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            message,
        )
    }

    /// 502 `upstream_error` (the service answered something unusable).
    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
    }

    /// 500 `internal` (a fault of the gateway itself).
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the gateway could not handle the request",
        )
    }

    /// Adds a `Retry-After` header (seconds) to the answer.
    pub fn with_retry_after(mut self, seconds: impl Into<String>) -> Self {
        self.retry_after = Some(seconds.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable snake_case code (`error.code`).
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The human message (`error.message`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `Retry-After` value, if any.
    pub fn retry_after(&self) -> Option<&str> {
        self.retry_after.as_deref()
    }

    /// Maps a service's gRPC status to the REST answer (table in the module
    /// documentation).
    pub fn from_status(status: &tonic::Status) -> Self {
        let (reason, text) = split_reason(status.message());
        let deny_reason = status
            .metadata()
            .get(DENY_REASON)
            .and_then(|v| v.to_str().ok())
            .filter(|r| is_reason_code(r));
        let retry_after = status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned);
        let client_error = |http: StatusCode, generic: &'static str, default: &str| {
            let code: Cow<'static, str> =
                reason.map_or(Cow::Borrowed(generic), |r| r.to_owned().into());
            let message = if text.is_empty() { default } else { text };
            Self::new(http, code, truncate(message))
        };
        match status.code() {
            Code::InvalidArgument => client_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "the request is not valid",
            ),
            Code::Unauthenticated => client_error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "authentication failed",
            ),
            Code::PermissionDenied => {
                let mut e = client_error(StatusCode::FORBIDDEN, "forbidden", "not allowed");
                if let Some(deny) = deny_reason {
                    e.code = deny.to_owned().into();
                }
                e
            }
            Code::NotFound => client_error(StatusCode::NOT_FOUND, "not_found", "not found"),
            Code::AlreadyExists => {
                client_error(StatusCode::CONFLICT, "already_exists", "it already exists")
            }
            Code::FailedPrecondition => client_error(
                StatusCode::CONFLICT,
                "failed_precondition",
                "the request conflicts with the current state",
            ),
            Code::ResourceExhausted => {
                let locked = reason == Some("account_locked") && retry_after.is_some();
                let mut e = if locked {
                    client_error(
                        StatusCode::LOCKED,
                        "account_locked",
                        "the account is locked; try again later",
                    )
                } else {
                    client_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        "too many requests; try again later",
                    )
                };
                e.retry_after = retry_after;
                e
            }
            Code::Unavailable | Code::DeadlineExceeded => {
                tracing::warn!(code = ?status.code(), message = status.message(), "upstream service unavailable");
                match reason {
                    Some(reason)
                        if status.code() == Code::Unavailable
                            && !text.is_empty()
                            && UNAVAILABLE_REASONS.contains(&reason) =>
                    {
                        Self::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            reason.to_owned(),
                            truncate(text),
                        )
                    }
                    _ => Self::unavailable(
                        "a service behind the gateway is unavailable; try again shortly",
                    ),
                }
            }
            other => {
                let mut causes = Vec::new();
                let mut source = std::error::Error::source(&status);
                while let Some(cause) = source {
                    causes.push(cause.to_string());
                    source = cause.source();
                }
                tracing::error!(code = ?other, message = status.message(), causes = ?causes, "upstream service failed");
                Self::upstream("a service behind the gateway failed")
            }
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(&status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(value) = self
            .retry_after
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"trustmesh\""),
            );
        }
        response
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::invalid_request(format!("bad path parameter: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::invalid_request(format!("bad query string: {}", rejection.body_text()))
    }
}

/// `response`, to a request refused before its body was read, once that
/// body has been read to its end and dropped (at most
/// [`BODY_LIMIT`](super::BODY_LIMIT), for at most [`DRAIN_TIME`]).
///
/// Unread, the body would end the exchange badly for clients that keep
/// their connections: HTTP/1.1 closes the connection after the answer
/// without saying so, and a client's next request on it fails; HTTP/2
/// resets the stream while the client is still sending, which some clients
/// (curl 7.88) report as a failure instead of the answer. A body that is
/// larger or slower, or one the client sends only when asked to
/// (`Expect: 100-continue`), is not read: an HTTP/1.1 answer then says
/// `Connection: close`.
pub async fn after_reading_body(
    mut response: Response,
    headers: &HeaderMap,
    version: Version,
    body: Body,
) -> Response {
    let waits_to_send = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let read = !waits_to_send
        && matches!(
            tokio::time::timeout(DRAIN_TIME, axum::body::to_bytes(body, super::BODY_LIMIT)).await,
            Ok(Ok(_))
        );
    if !read && version <= Version::HTTP_11 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// `"<reason_code>: <message>"` → (`Some(reason_code)`, message); plain text
/// → (`None`, text).
fn split_reason(message: &str) -> (Option<&str>, &str) {
    match message.split_once(':') {
        Some((head, tail)) if is_reason_code(head) => (Some(head), tail.trim()),
        _ => (None, message.trim()),
    }
}

/// One snake_case word: `[a-z][a-z0-9]*(_[a-z0-9]+)*`, at most 64 bytes.
fn is_reason_code(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'_'
        && !s.contains("__")
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

fn truncate(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message.to_owned(),
    }
}

/// A JSON request body, refused in the API's error shape: 415
/// `unsupported_media_type` when the declared content type is not JSON
/// (a missing `Content-Type` is accepted), 413 `payload_too_large` beyond the
/// body limit, 400 `invalid_json` when it does not parse, 400
/// `invalid_request` when a field is missing, unknown or of the wrong type.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

/// Like [`ApiJson`], but an empty body, or `null`, is `None`.
#[derive(Debug, Clone)]
pub struct MaybeJson<T>(pub Option<T>);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

impl<T, S> FromRequest<S> for MaybeJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        let text = bytes.trim_ascii();
        if text.is_empty() || text == b"null" {
            return Ok(MaybeJson(None));
        }
        parse_json(&bytes).map(|v| MaybeJson(Some(v)))
    }
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    if let Some(content_type) = req.headers().get(header::CONTENT_TYPE)
        && !is_json_content_type(content_type)
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must be JSON (Content-Type: application/json)",
        ));
    }
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body exceeds {} KiB", super::BODY_LIMIT / 1024),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "the request body could not be read",
            )
        }
    })
}

fn is_json_content_type(value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a JSON object body into `T`, telling a syntax error
/// (`invalid_json`) from a body of the wrong shape (`invalid_request`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body is empty; a JSON object is expected",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid_request(
            "invalid request body: a JSON object is expected",
        ));
    }
    T::deserialize(value)
        .map_err(|e| ApiError::invalid_request(format!("invalid request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes() {
        assert!(is_reason_code("weak_password"));
        assert!(is_reason_code("locked"));
        assert!(is_reason_code("token_v2"));
        assert!(!is_reason_code("Weak_password"));
        assert!(!is_reason_code("policy denied"));
        assert!(!is_reason_code("_x"));
        assert!(!is_reason_code("x_"));
        assert!(!is_reason_code("a__b"));
        assert!(!is_reason_code(""));
        assert!(!is_reason_code("1abc"));
    }

    #[test]
    fn split() {
        assert_eq!(
            split_reason("weak_password: too short"),
            (Some("weak_password"), "too short")
        );
        assert_eq!(split_reason("no profile"), (None, "no profile"));
        assert_eq!(
            split_reason("policy denied: role_required"),
            (None, "policy denied: role_required")
        );
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(2000);
        assert!(truncate(&long).chars().count() <= MAX_MESSAGE + 1);
    }
}
