//! The REST API through the gateway's router (no TLS, no mesh): CSRF, token
//! verification, route policy, body handling, browser and API sessions,
//! forwarding metadata, and unreachable services.

#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use serde_json::json;
use trustmesh_gateway::api::session::TrustedProxies;

fn with_cookie(mut req: Request<Body>, cookie: &str) -> Request<Body> {
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    req
}

fn with_header(mut req: Request<Body>, name: &'static str, value: &str) -> Request<Body> {
    req.headers_mut().insert(name, value.parse().unwrap());
    req
}

fn empty(method: &str, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap()
}

// --- CSRF -------------------------------------------------------------------

#[tokio::test]
async fn cookie_request_without_csrf_header_is_refused() {
    let h = Harness::with_fake_auth().await;
    let token = h.token("user", true);
    let req = with_cookie(
        empty("POST", "/api/v1/auth/logout"),
        &format!("tm_access={token}; tm_csrf=abc"),
    );
    let reply = h.send(req).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.error_code(), "csrf_required");
    assert!(h.calls().is_empty(), "nothing was forwarded");
}

#[tokio::test]
async fn cookie_request_with_a_wrong_csrf_header_is_refused() {
    let h = Harness::with_fake_auth().await;
    let token = h.token("user", true);
    let req = with_header(
        with_cookie(
            empty("POST", "/api/v1/auth/logout"),
            &format!("tm_access={token}; tm_csrf=abc"),
        ),
        "x-csrf-token",
        "abd",
    );
    let reply = h.send(req).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (403, "csrf_required")
    );
}

#[tokio::test]
async fn cookie_without_csrf_cookie_is_refused_even_on_public_routes() {
    let h = Harness::with_fake_auth().await;
    // A stray refresh cookie alone, on login: still a cookie request.
    let req = with_cookie(
        json_request(
            "POST",
            "/api/v1/auth/login",
            &json!({"email": "a@example.com", "password": "x"}),
        ),
        "tm_refresh=r",
    );
    let reply = h.send(req).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (403, "csrf_required")
    );
}

#[tokio::test]
async fn cookie_request_with_matching_csrf_header_passes() {
    let h = Harness::with_fake_auth().await;
    let token = h.token("user", true);
    let req = with_header(
        with_cookie(
            empty("POST", "/api/v1/auth/logout"),
            &format!("theme=dark; tm_access={token}; tm_csrf=abc"),
        ),
        "x-csrf-token",
        "abc",
    );
    let reply = h.send(req).await;
    assert_eq!(
        reply.status,
        204,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // The token from the cookie is forwarded as a bearer token.
    let calls = h.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "Logout");
    assert_eq!(
        calls[0].1.get("authorization").unwrap().to_str().unwrap(),
        format!("Bearer {token}")
    );
    // Logout deletes every session cookie.
    for name in ["tm_access", "tm_refresh", "tm_csrf"] {
        let c = reply
            .set_cookie(name)
            .unwrap_or_else(|| panic!("{name} not cleared"));
        assert!(c.starts_with(&format!("{name}=;")), "{c}");
        assert!(c.contains("Max-Age=0"), "{c}");
    }
}

#[tokio::test]
async fn bearer_requests_need_no_csrf_token() {
    let h = Harness::with_fake_auth().await;
    let token = h.token("user", true);
    let req = with_header(
        empty("POST", "/api/v1/auth/logout"),
        "authorization",
        &format!("Bearer {token}"),
    );
    let reply = h.send(req).await;
    assert_eq!(reply.status, 204);
}

#[tokio::test]
async fn safe_methods_need_no_csrf_token() {
    let h = Harness::with_fake_auth().await;
    let token = h.token("user", true);
    let req = with_cookie(
        empty("GET", "/api/v1/auth/sessions"),
        &format!("tm_access={token}; tm_csrf=abc"),
    );
    let reply = h.send(req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["sessions"][0]["session_id"], "s-1");
    assert_eq!(reply.json()["sessions"][0]["current"], true);
}

// --- Tokens and the route policy ------------------------------------------------

#[tokio::test]
async fn user_routes_need_a_token() {
    let h = Harness::unreachable().await;
    let reply = h.send(empty("GET", "/api/v1/users/me")).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (401, "token_missing")
    );
    assert!(reply.header("www-authenticate").is_some());
}

#[tokio::test]
async fn refused_tokens_are_401_with_the_token_code() {
    let h = Harness::unreachable().await;
    for (authorization, code) in [
        ("Bearer not-a-jwt", "token_malformed"),
        ("Basic dXNlcjpwYXNz", "token_malformed"),
        (
            // alg: none
            "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIiwia2lkIjoieCJ9.eyJzdWIiOiJ1In0.",
            "token_algorithm",
        ),
    ] {
        let req = with_header(
            empty("GET", "/api/v1/users/me"),
            "authorization",
            authorization,
        );
        let reply = h.send(req).await;
        assert_eq!(reply.status, 401, "{authorization}");
        assert_eq!(reply.error_code(), code, "{authorization}");
    }
    // A token for another audience.
    let other = trustmesh_tokens::TokenIssuer::new(
        h.ring.clone(),
        ISSUER,
        "someone-else",
        std::time::Duration::from_secs(900),
    );
    let (token, _) = other.issue("u-1", "admin", "s-1", &["pwd", "otp"]).unwrap();
    let req = with_header(
        empty("GET", "/api/v1/users/me"),
        "authorization",
        &format!("Bearer {token}"),
    );
    let reply = h.send(req).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (401, "token_audience")
    );
}

#[tokio::test]
async fn admin_routes_refuse_other_roles() {
    let h = Harness::unreachable().await;
    let token = h.token("user", true);
    for req in [
        empty("GET", "/api/v1/users"),
        json_request("POST", "/api/v1/users/u-2/role", &json!({"role": "admin"})),
        json_request(
            "POST",
            "/api/v1/teams",
            &json!({"name": "t", "manager_id": "u-2"}),
        ),
        json_request(
            "POST",
            "/api/v1/teams/t-1/members",
            &json!({"user_id": "u-2"}),
        ),
    ] {
        let uri = req.uri().to_string();
        let req = with_header(req, "authorization", &format!("Bearer {token}"));
        let reply = h.send(req).await;
        assert_eq!(reply.status, 403, "{uri}");
        assert_eq!(reply.error_code(), "role_required", "{uri}");
    }
}

#[tokio::test]
async fn sessions_without_mfa_are_refused() {
    let h = Harness::unreachable().await;
    let token = h.token("admin", false);
    let req = with_header(
        empty("GET", "/api/v1/users/me"),
        "authorization",
        &format!("Bearer {token}"),
    );
    let reply = h.send(req).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (403, "mfa_required")
    );
}

#[tokio::test]
async fn allowed_calls_to_an_unreachable_service_are_503() {
    let h = Harness::unreachable().await;
    let admin = h.token("admin", true);
    let manager = h.token("manager", true);
    for (req, token) in [
        (empty("GET", "/api/v1/users/me"), &admin),
        (empty("GET", "/api/v1/users?limit=10&after=u-1"), &admin),
        (
            json_request("POST", "/api/v1/users/u-2/role", &json!({"role": "admin"})),
            &admin,
        ),
        (
            json_request(
                "POST",
                "/api/v1/teams/t-1/members",
                &json!({"user_id": "u-2"}),
            ),
            &manager,
        ),
        (
            json_request("PATCH", "/api/v1/users/me", &json!({"display_name": "Ada"})),
            &admin,
        ),
        (
            json_request(
                "POST",
                "/api/v1/auth/login",
                &json!({"email": "a@example.com", "password": "p"}),
            ),
            &admin,
        ),
        (empty("GET", "/.well-known/jwks.json"), &admin),
    ] {
        let uri = req.uri().to_string();
        let req = with_header(req, "authorization", &format!("Bearer {token}"));
        let reply = h.send(req).await;
        assert_eq!(
            reply.status,
            503,
            "{uri}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.error_code(), "service_unavailable", "{uri}");
    }
}

// --- Bodies ---------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_is_400_invalid_json() {
    let h = Harness::unreachable().await;
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/auth/register")
        .header("content-type", "application/json")
        .body(Body::from("{\"email\": \"a@example.com\", "))
        .unwrap();
    let reply = h.send(req).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (400, "invalid_json")
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));

    let reply = h.send(empty("POST", "/api/v1/auth/login")).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (400, "invalid_json")
    );
}

#[tokio::test]
async fn missing_or_unknown_fields_are_400_invalid_request() {
    let h = Harness::unreachable().await;
    for body in [
        json!({"email": "a@example.com"}),
        json!({"email": "a@example.com", "password": 12}),
        json!({"email": "a@example.com", "password": "p", "admin": true}),
        json!(["a@example.com", "p"]),
    ] {
        let reply = h
            .send(json_request("POST", "/api/v1/auth/register", &body))
            .await;
        assert_eq!(reply.status, 400, "{body}");
        assert_eq!(reply.error_code(), "invalid_request", "{body}");
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("invalid request body")
        );
    }
    // login/mfa: exactly one of code and recovery_code.
    for body in [
        json!({"mfa_ticket": "t"}),
        json!({"mfa_ticket": "t", "code": "123456", "recovery_code": "abcd"}),
    ] {
        let reply = h
            .send(json_request("POST", "/api/v1/auth/login/mfa", &body))
            .await;
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (400, "invalid_request")
        );
    }
}

#[tokio::test]
async fn non_json_content_types_are_415() {
    let h = Harness::unreachable().await;
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/auth/login")
        .header("content-type", "text/plain")
        .body(Body::from("{\"email\":\"a\",\"password\":\"b\"}"))
        .unwrap();
    let reply = h.send(req).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (415, "unsupported_media_type")
    );
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let h = Harness::unreachable().await;
    let body = json!({"email": "a@example.com", "password": "x".repeat(70 * 1024)});
    let reply = h
        .send(json_request("POST", "/api/v1/auth/register", &body))
        .await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (413, "payload_too_large")
    );
    // Just under the limit is read (and then fails upstream).
    let body = json!({"email": "a@example.com", "password": "x".repeat(60 * 1024)});
    let reply = h
        .send(json_request("POST", "/api/v1/auth/register", &body))
        .await;
    assert_eq!(reply.status, 503);
}

#[tokio::test]
async fn bad_query_strings_are_400() {
    let h = Harness::unreachable().await;
    let token = h.token("admin", true);
    let req = with_header(
        empty("GET", "/api/v1/users?limit=lots"),
        "authorization",
        &format!("Bearer {token}"),
    );
    let reply = h.send(req).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (400, "invalid_request")
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let h = Harness::unreachable().await;
    let reply = h.send(empty("GET", "/api/v1/nothing")).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (404, "not_found")
    );
    let reply = h.send(empty("PUT", "/api/v1/auth/login")).await;
    assert_eq!(reply.status, 405);
    reply.error_code();
}

#[tokio::test]
async fn a_refused_request_keeps_its_connection_unless_its_body_is_too_large() {
    let h = Harness::unreachable().await;
    let refusals = [
        ("PUT", "/api/v1/teams", 405),
        ("POST", "/api/v1/nothing", 404),
        ("POST", "/api/v1/teams", 401),
    ];
    for (method, uri, status) in refusals {
        let reply = h.send(small_request(method, uri)).await;
        assert_eq!(reply.status, status, "{method} {uri}");
        assert_eq!(reply.header("connection"), None, "{method} {uri}");

        let large = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(vec![b' '; 100 * 1024]))
            .unwrap();
        let reply = h.send(large).await;
        assert_eq!(reply.status, status, "{method} {uri}");
        assert_eq!(reply.header("connection"), Some("close"), "{method} {uri}");

        let waiting = with_header(small_request(method, uri), "expect", "100-continue");
        let reply = h.send(waiting).await;
        assert_eq!(reply.header("connection"), Some("close"), "{method} {uri}");
    }
}

fn small_request(method: &str, uri: &str) -> Request<Body> {
    json_request(method, uri, &json!({"name": "x"}))
}

#[tokio::test]
async fn security_headers_are_on_every_answer() {
    let h = Harness::unreachable().await;
    for req in [
        empty("GET", "/healthz"),
        empty("GET", "/api/v1/users/me"),
        json_request("POST", "/api/v1/auth/login", &json!({})),
    ] {
        let reply = h.send(req).await;
        for name in [
            "strict-transport-security",
            "x-content-type-options",
            "x-frame-options",
            "referrer-policy",
            "content-security-policy",
        ] {
            assert!(reply.header(name).is_some(), "{name} missing");
        }
        assert_eq!(reply.header("cache-control"), Some("no-store"));
    }
}

// --- Sessions -------------------------------------------------------------------

#[tokio::test]
async fn browser_login_sets_cookies_and_no_tokens_in_the_body() {
    let h = Harness::with_fake_auth().await;
    let req = with_header(
        json_request(
            "POST",
            "/api/v1/auth/login/mfa",
            &json!({"mfa_ticket": "ticket-1", "code": "123456"}),
        ),
        "x-trustmesh-client",
        "web",
    );
    let reply = h.send(req).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    assert!(body.get("access_token").is_none() && body.get("refresh_token").is_none());
    assert_eq!(body["user_id"], "u-1");
    assert_eq!(body["role"], "user");
    assert_eq!(body["session_id"], "s-1");
    assert_eq!(body["expires_in"], 900);
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(csrf.len(), 43);
    let text = String::from_utf8_lossy(&reply.body);
    assert!(!text.contains(FAKE_ACCESS) && !text.contains(FAKE_REFRESH));

    let access = reply.set_cookie("tm_access").unwrap();
    assert_eq!(
        access,
        format!(
            "tm_access={FAKE_ACCESS}; Path=/api; Max-Age=900; HttpOnly; Secure; SameSite=Strict"
        )
    );
    let refresh = reply.set_cookie("tm_refresh").unwrap();
    assert_eq!(
        refresh,
        format!(
            "tm_refresh={FAKE_REFRESH}; Path=/api/v1/auth; Max-Age=43200; HttpOnly; Secure; SameSite=Strict"
        )
    );
    let csrf_cookie = reply.set_cookie("tm_csrf").unwrap();
    assert_eq!(
        csrf_cookie,
        format!("tm_csrf={csrf}; Path=/; Max-Age=43200; Secure; SameSite=Strict")
    );
    assert!(!csrf_cookie.contains("HttpOnly"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn api_login_returns_tokens_and_no_cookies() {
    let h = Harness::with_fake_auth().await;
    let reply = h
        .send(json_request(
            "POST",
            "/api/v1/auth/login/mfa",
            &json!({"mfa_ticket": "ticket-1", "recovery_code": "abcd-efgh"}),
        ))
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.set_cookies().is_empty());
    assert_eq!(
        reply.json(),
        json!({
            "access_token": FAKE_ACCESS,
            "refresh_token": FAKE_REFRESH,
            "expires_in": 900,
            "session_id": "s-1",
            "user_id": "u-1",
            "role": "user",
        })
    );
}

#[tokio::test]
async fn wrong_mfa_code_is_401_with_the_service_reason() {
    let h = Harness::with_fake_auth().await;
    let reply = h
        .send(json_request(
            "POST",
            "/api/v1/auth/login/mfa",
            &json!({"mfa_ticket": "ticket-1", "code": "000000"}),
        ))
        .await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (401, "invalid_code")
    );
}

#[tokio::test]
async fn refresh_from_the_cookie_needs_csrf_and_answers_as_a_browser() {
    let h = Harness::with_fake_auth().await;
    let cookie = format!("tm_refresh={GOOD_REFRESH}; tm_csrf=c");
    let reply = h
        .send(with_cookie(empty("POST", "/api/v1/auth/refresh"), &cookie))
        .await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (403, "csrf_required")
    );

    let req = with_header(
        with_cookie(empty("POST", "/api/v1/auth/refresh"), &cookie),
        "x-csrf-token",
        "c",
    );
    let reply = h.send(req).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(reply.json().get("refresh_token").is_none());
    let new_csrf = reply.json()["csrf_token"].as_str().unwrap().to_owned();
    assert_ne!(new_csrf, "c");
    assert!(
        reply
            .set_cookie("tm_refresh")
            .unwrap()
            .starts_with(&format!("tm_refresh={FAKE_REFRESH};"))
    );
    assert!(
        reply
            .set_cookie("tm_csrf")
            .unwrap()
            .starts_with(&format!("tm_csrf={new_csrf};"))
    );
}

#[tokio::test]
async fn refresh_from_the_body_answers_as_an_api_client() {
    let h = Harness::with_fake_auth().await;
    let reply = h
        .send(json_request(
            "POST",
            "/api/v1/auth/refresh",
            &json!({"refresh_token": GOOD_REFRESH}),
        ))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["refresh_token"], FAKE_REFRESH);
    assert!(reply.set_cookies().is_empty());

    // A reused token: 401 with the service's reason.
    let reply = h
        .send(json_request(
            "POST",
            "/api/v1/auth/refresh",
            &json!({"refresh_token": "old"}),
        ))
        .await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (401, "refresh_reused")
    );

    // No token at all: no body, or a body of `null` (as the OpenAPI
    // document allows).
    let reply = h.send(empty("POST", "/api/v1/auth/refresh")).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (400, "invalid_request")
    );
    let reply = h
        .send(json_request("POST", "/api/v1/auth/refresh", &json!(null)))
        .await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (400, "invalid_request")
    );
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tm_refresh")
    );
}

#[tokio::test]
async fn refused_browser_refresh_clears_the_cookies() {
    let h = Harness::with_fake_auth().await;
    let req = with_header(
        with_cookie(
            empty("POST", "/api/v1/auth/refresh"),
            "tm_refresh=stolen; tm_csrf=c",
        ),
        "x-csrf-token",
        "c",
    );
    let reply = h.send(req).await;
    assert_eq!(reply.status, 401);
    assert!(
        reply
            .set_cookie("tm_refresh")
            .unwrap()
            .contains("Max-Age=0")
    );
}

// --- Service errors and forwarding -------------------------------------------------

#[tokio::test]
async fn service_errors_map_to_http() {
    let h = Harness::with_fake_auth().await;
    let login = |email: &str| {
        json_request(
            "POST",
            "/api/v1/auth/login",
            &json!({"email": email, "password": "whatever-long"}),
        )
    };
    let reply = h.send(login("locked@example.com")).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (423, "account_locked")
    );
    assert_eq!(reply.header("retry-after"), Some("900"));

    let reply = h.send(login("busy@example.com")).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (429, "rate_limited")
    );

    let reply = h.send(login("wrong@example.com")).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (401, "invalid_credentials")
    );

    let reply = h.send(login("crash@example.com")).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (502, "upstream_error")
    );
    assert!(!String::from_utf8_lossy(&reply.body).contains("fire"));

    let reply = h.send(login("ok@example.com")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        json!({"mfa_ticket": "ticket-1", "expires_in": 300})
    );

    let register = |email: &str, password: &str| {
        json_request(
            "POST",
            "/api/v1/auth/register",
            &json!({"email": email, "password": password}),
        )
    };
    let reply = h
        .send(register("taken@example.com", "long enough password"))
        .await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (409, "email_taken")
    );
    let reply = h.send(register("new@example.com", "short")).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (422, "password_too_short")
    );
    let reply = h
        .send(register("new@example.com", "long enough password"))
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.json()["enrollment_token"], "enr-1");
    assert_eq!(reply.json()["qr_svg"], "<svg/>");

    let reply = h
        .send(json_request(
            "POST",
            "/api/v1/auth/register/confirm",
            &json!({"enrollment_token": "enr-1", "code": "123456"}),
        ))
        .await;
    assert_eq!(reply.json(), json!({"recovery_codes": ["r1", "r2"]}));
}

#[tokio::test]
async fn client_facts_are_forwarded_as_metadata() {
    let h = Harness::with_fake_auth_behind(TrustedProxies::parse("10.0.0.0/8").unwrap()).await;
    let req = with_header(
        with_header(
            with_header(
                json_request(
                    "POST",
                    "/api/v1/auth/login",
                    &json!({"email": "ok@example.com", "password": "p"}),
                ),
                "x-forwarded-for",
                "6.6.6.6, 203.0.113.50",
            ),
            "user-agent",
            "Mozilla/5.0 (test)",
        ),
        "x-request-id",
        "req-123",
    );
    let reply = h.send_from(req, "10.0.0.9:40000".parse().unwrap()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-request-id"), Some("req-123"));
    let calls = h.calls();
    let md = &calls[0].1;
    assert_eq!(md.get("x-client-ip").unwrap(), "203.0.113.50");
    assert_eq!(md.get("x-client-user-agent").unwrap(), "Mozilla/5.0 (test)");
    assert_eq!(md.get("x-request-id").unwrap(), "req-123");
    assert!(md.get("authorization").is_none(), "no user on login");

    // From an untrusted peer, X-Forwarded-For is ignored; a bad request id is replaced.
    let req = with_header(
        with_header(
            json_request(
                "POST",
                "/api/v1/auth/login",
                &json!({"email": "ok@example.com", "password": "p"}),
            ),
            "x-forwarded-for",
            "203.0.113.50",
        ),
        "x-request-id",
        "bad id with spaces",
    );
    let reply = h.send(req).await;
    let id = reply.header("x-request-id").unwrap().to_owned();
    assert_ne!(id, "bad id with spaces");
    let calls = h.calls();
    assert_eq!(calls[1].1.get("x-client-ip").unwrap(), "198.51.100.20");
    assert_eq!(
        calls[1].1.get("x-request-id").unwrap().to_str().unwrap(),
        id
    );
}

#[tokio::test]
async fn revoking_the_current_browser_session_clears_the_cookies() {
    let h = Harness::with_fake_auth().await;
    let token = h.token("user", true);
    let req = with_header(
        with_cookie(
            empty("DELETE", "/api/v1/auth/sessions/s-1"),
            &format!("tm_access={token}; tm_csrf=c"),
        ),
        "x-csrf-token",
        "c",
    );
    let reply = h.send(req).await;
    assert_eq!(reply.status, 204);
    assert!(reply.set_cookie("tm_access").unwrap().contains("Max-Age=0"));

    // That session is over; another one asks about an unknown session.
    let (other, _) = h
        .issuer
        .issue("u-1", "user", "s-2", &["pwd", "otp"])
        .unwrap();
    let req = with_header(
        empty("DELETE", "/api/v1/auth/sessions/nope"),
        "authorization",
        &format!("Bearer {other}"),
    );
    let reply = h.send(req).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (404, "not_found")
    );
}

#[tokio::test]
async fn password_change_is_forwarded_with_the_token() {
    let h = Harness::with_fake_auth().await;
    let token = h.token("user", true);
    let req = with_header(
        json_request(
            "POST",
            "/api/v1/auth/password",
            &json!({"current_password": "old password 1", "new_password": "new password 22"}),
        ),
        "authorization",
        &format!("Bearer {token}"),
    );
    let reply = h.send(req).await;
    assert_eq!(reply.status, 204);
    let calls = h.calls();
    assert_eq!(calls[0].0, "ChangePassword");
    assert_eq!(
        calls[0].1.get("authorization").unwrap().to_str().unwrap(),
        format!("Bearer {token}")
    );
}

#[tokio::test]
async fn jwks_is_served_as_is_and_cacheable() {
    let h = Harness::with_fake_auth().await;
    let reply = h.send(empty("GET", "/.well-known/jwks.json")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("cache-control"), Some("public, max-age=300"));
    assert_eq!(
        String::from_utf8(reply.body.clone()).unwrap(),
        h.ring.jwks_json()
    );
    assert!(reply.header("x-content-type-options").is_some());
}

#[tokio::test]
async fn recovery_code_sessions_count_as_mfa() {
    let h = Harness::unreachable().await;
    let (token, _) = h
        .issuer
        .issue("u-1", "user", "s-1", &["pwd", "recovery"])
        .unwrap();
    let req = with_header(
        empty("GET", "/api/v1/users/me"),
        "authorization",
        &format!("Bearer {token}"),
    );
    let reply = h.send(req).await;
    // Past the policy, to the (unreachable) user service.
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (503, "service_unavailable")
    );
}

#[tokio::test]
async fn a_session_ended_here_is_refused_at_once() {
    let h = Harness::with_fake_auth().await;
    let token = h.token("user", true);
    let bearer = format!("Bearer {token}");
    let reply = h
        .send(with_header(
            empty("GET", "/api/v1/auth/sessions"),
            "authorization",
            &bearer,
        ))
        .await;
    assert_eq!(reply.status, 200);
    let reply = h
        .send(with_header(
            empty("POST", "/api/v1/auth/logout"),
            "authorization",
            &bearer,
        ))
        .await;
    assert_eq!(reply.status, 204);
    // The verifier's session cache would still say "active"; the gateway knows better.
    let reply = h
        .send(with_header(
            empty("GET", "/api/v1/auth/sessions"),
            "authorization",
            &bearer,
        ))
        .await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (401, "session_revoked")
    );
}
