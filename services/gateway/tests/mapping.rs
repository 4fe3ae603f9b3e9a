//! Pure mappings of the REST layer: gRPC status → HTTP answer, the client's
//! IP behind trusted proxies, cookie and CSRF helpers.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use tonic::{Code, Status};
use trustmesh_gateway::api::errors::ApiError;
use trustmesh_gateway::api::session::{
    TrustedProxies, carries_session_cookie, client_ip, cookie, csrf_token_matches, new_csrf_token,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn grpc_codes_map_to_http() {
    let table = [
        (
            Code::InvalidArgument,
            "weak_password: too common",
            422,
            "weak_password",
        ),
        (
            Code::InvalidArgument,
            "name must be 1 to 100 characters",
            422,
            "validation_failed",
        ),
        (
            Code::Unauthenticated,
            "invalid_credentials: wrong email or password",
            401,
            "invalid_credentials",
        ),
        (
            Code::Unauthenticated,
            "an access token is required",
            401,
            "unauthenticated",
        ),
        (
            Code::PermissionDenied,
            "the password is wrong",
            403,
            "forbidden",
        ),
        (Code::NotFound, "no such user", 404, "not_found"),
        (
            Code::NotFound,
            "user_not_found: no such user",
            404,
            "user_not_found",
        ),
        (
            Code::AlreadyExists,
            "email_taken: exists",
            409,
            "email_taken",
        ),
        (
            Code::AlreadyExists,
            "a team with this name exists",
            409,
            "already_exists",
        ),
        (
            Code::FailedPrecondition,
            "last_admin: an admin cannot remove the last admin",
            409,
            "last_admin",
        ),
        (
            Code::FailedPrecondition,
            "not confirmed",
            409,
            "failed_precondition",
        ),
        (
            Code::ResourceExhausted,
            "too many attempts",
            429,
            "rate_limited",
        ),
        (
            Code::ResourceExhausted,
            "ip_rate_limited: slow down",
            429,
            "ip_rate_limited",
        ),
        // account_locked without retry-after stays a 429.
        (
            Code::ResourceExhausted,
            "account_locked: locked",
            429,
            "account_locked",
        ),
        (
            Code::Unavailable,
            "tcp connect error",
            503,
            "service_unavailable",
        ),
        // Reasons services give on purpose reach the client; others not.
        (
            Code::Unavailable,
            "sessions_not_revoked: the role changed; the sessions end soon",
            503,
            "sessions_not_revoked",
        ),
        (
            Code::Unavailable,
            "wallet_unavailable: the payment is pending; retry with the same key",
            503,
            "wallet_unavailable",
        ),
        (
            Code::Unavailable,
            trustmesh_store::NOT_DURABLE_MESSAGE,
            503,
            "outcome_unknown",
        ),
        (
            Code::Unavailable,
            "storage_busy: the database is busy; retry shortly",
            503,
            "storage_busy",
        ),
        (
            Code::Unavailable,
            "dns_error: resolver at 10.0.0.53 did not answer",
            503,
            "service_unavailable",
        ),
        (
            Code::Unavailable,
            "storage_busy:",
            503,
            "service_unavailable",
        ),
        (
            Code::DeadlineExceeded,
            "storage_busy: slow",
            503,
            "service_unavailable",
        ),
        (
            Code::DeadlineExceeded,
            "deadline_exceeded: slow",
            503,
            "service_unavailable",
        ),
        (
            Code::Internal,
            "storage_failure: database is on fire",
            502,
            "upstream_error",
        ),
        (Code::Unknown, "boom", 502, "upstream_error"),
        (Code::Unimplemented, "", 502, "upstream_error"),
        (Code::DataLoss, "x", 502, "upstream_error"),
        (Code::Cancelled, "x", 502, "upstream_error"),
    ];
    for (code, message, http, api_code) in table {
        let e = ApiError::from_status(&Status::new(code, message));
        assert_eq!(e.status().as_u16(), http, "{code:?} {message:?}");
        assert_eq!(e.code(), api_code, "{code:?} {message:?}");
        assert!(!e.message().is_empty(), "{code:?} {message:?}");
    }
}

#[test]
fn the_reason_code_is_stripped_from_the_message() {
    let e = ApiError::from_status(&Status::invalid_argument(
        "password_breached: this password appears in breach lists",
    ));
    assert_eq!(e.message(), "this password appears in breach lists");
    // Internal details never reach the client.
    let e = ApiError::from_status(&Status::internal("sqlx: connection refused at 10.0.0.5"));
    assert!(!e.message().contains("10.0.0.5"));
}

#[test]
fn policy_denials_of_services_keep_their_reason() {
    let mut status = Status::permission_denied("policy denied: role_required");
    status
        .metadata_mut()
        .insert("x-trustmesh-deny-reason", "role_required".parse().unwrap());
    let e = ApiError::from_status(&status);
    assert_eq!(
        (e.status(), e.code()),
        (StatusCode::FORBIDDEN, "role_required")
    );
}

#[tokio::test]
async fn account_locked_with_retry_after_is_423() {
    let mut status = Status::resource_exhausted("account_locked: too many failed attempts");
    status
        .metadata_mut()
        .insert("retry-after", "840".parse().unwrap());
    let e = ApiError::from_status(&status);
    assert_eq!(e.status(), StatusCode::LOCKED);
    assert_eq!(e.code(), "account_locked");
    assert_eq!(e.retry_after(), Some("840"));

    let response = e.into_response();
    assert_eq!(response.status(), 423);
    assert_eq!(response.headers()["retry-after"], "840");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"error": {"code": "account_locked", "message": "too many failed attempts"}})
    );
}

#[test]
fn rate_limits_pass_retry_after_on() {
    let mut status = Status::resource_exhausted("slow down");
    status
        .metadata_mut()
        .insert("retry-after", "30".parse().unwrap());
    let e = ApiError::from_status(&status);
    assert_eq!((e.status().as_u16(), e.retry_after()), (429, Some("30")));
    // A retry-after that is not a number of seconds is dropped.
    let mut status = Status::resource_exhausted("account_locked: x");
    status
        .metadata_mut()
        .insert("retry-after", "soon".parse().unwrap());
    let e = ApiError::from_status(&status);
    assert_eq!((e.status().as_u16(), e.retry_after()), (429, None));
}

#[test]
fn unauthorized_answers_name_the_scheme() {
    let response = ApiError::from_status(&Status::unauthenticated("x")).into_response();
    assert!(response.headers().contains_key("www-authenticate"));
}

fn xff(values: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for v in values {
        headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
    }
    headers
}

#[test]
fn client_ip_is_the_peer_without_trusted_proxies() {
    let none = TrustedProxies::none();
    let headers = xff(&["203.0.113.9"]);
    assert_eq!(client_ip(ip("10.0.0.2"), &headers, &none), ip("10.0.0.2"));
    // An untrusted peer's X-Forwarded-For is ignored.
    let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
    assert_eq!(
        client_ip(ip("192.0.2.1"), &headers, &proxies),
        ip("192.0.2.1")
    );
}

#[test]
fn client_ip_behind_trusted_proxies_is_the_last_untrusted_hop() {
    let proxies = TrustedProxies::parse(" 10.0.0.0/8, 192.168.1.1 ,fd00::/8").unwrap();
    // client, spoofed hop, real client as seen by the first proxy, a second proxy.
    let headers = xff(&["1.1.1.1, 203.0.113.9", "10.1.2.3"]);
    assert_eq!(
        client_ip(ip("10.0.0.2"), &headers, &proxies),
        ip("203.0.113.9")
    );
    assert_eq!(
        client_ip(ip("192.168.1.1"), &xff(&["198.51.100.7"]), &proxies),
        ip("198.51.100.7")
    );
    // IPv6 proxy, hop with a port, IPv4-mapped peer.
    assert_eq!(
        client_ip(ip("fd00::1"), &xff(&["[2001:db8::5]:443"]), &proxies),
        ip("2001:db8::5")
    );
    assert_eq!(
        client_ip(
            ip("::ffff:10.0.0.2"),
            &xff(&["198.51.100.7:5000"]),
            &proxies
        ),
        ip("198.51.100.7")
    );
    // No header: the proxy itself.
    assert_eq!(
        client_ip(ip("10.0.0.2"), &HeaderMap::new(), &proxies),
        ip("10.0.0.2")
    );
    // Every hop trusted: the leftmost.
    assert_eq!(
        client_ip(ip("10.0.0.2"), &xff(&["10.9.9.9, 10.0.0.7"]), &proxies),
        ip("10.9.9.9")
    );
    // Garbage stops the walk at the last good address.
    assert_eq!(
        client_ip(ip("10.0.0.2"), &xff(&["203.0.113.9, garbage"]), &proxies),
        ip("10.0.0.2")
    );
}

#[test]
fn trusted_proxies_refuse_garbage() {
    assert!(TrustedProxies::parse("10.0.0.0/8,not-an-ip").is_err());
    assert!(TrustedProxies::parse("10.0.0.0/40").is_err());
    assert!(TrustedProxies::parse("::/129").is_err());
    assert_eq!(
        TrustedProxies::parse(" , ").unwrap(),
        TrustedProxies::none()
    );
}

fn cookies(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("cookie", HeaderValue::from_str(value).unwrap());
    headers
}

#[test]
fn cookie_parsing() {
    let headers = cookies("a=1; tm_access=tok.en.x ; tm_csrf=\"c1\"");
    assert_eq!(cookie(&headers, "tm_access"), Some("tok.en.x"));
    assert_eq!(cookie(&headers, "tm_csrf"), Some("c1"));
    assert_eq!(cookie(&headers, "tm_refresh"), None);
    assert!(carries_session_cookie(&headers));
    assert!(!carries_session_cookie(&cookies(
        "theme=dark; xtm_access=1"
    )));
}

#[test]
fn csrf_double_submit() {
    let mut headers = cookies("tm_access=a; tm_csrf=secret");
    assert!(!csrf_token_matches(&headers));
    headers.insert("x-csrf-token", HeaderValue::from_static("secre"));
    assert!(!csrf_token_matches(&headers));
    headers.insert("x-csrf-token", HeaderValue::from_static("secret"));
    assert!(csrf_token_matches(&headers));
    // Two headers, or two different cookies (one planted), fail.
    headers.append("x-csrf-token", HeaderValue::from_static("secret"));
    assert!(!csrf_token_matches(&headers));
    let mut headers = cookies("tm_csrf=evil; tm_csrf=secret");
    headers.insert("x-csrf-token", HeaderValue::from_static("evil"));
    assert!(!csrf_token_matches(&headers));
    // An empty cookie never matches an empty header.
    let mut headers = cookies("tm_csrf=");
    headers.insert("x-csrf-token", HeaderValue::from_static(""));
    assert!(!csrf_token_matches(&headers));
}

#[test]
fn csrf_tokens_are_256_random_bits() {
    let a = new_csrf_token();
    let b = new_csrf_token();
    assert_ne!(a, b);
    assert_eq!(a.len(), 43); // 32 bytes, base64url without padding
    assert!(
        a.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
}
