//! Helpers for the REST API tests: the gateway's router over a fake auth
//! service (plain gRPC on loopback) or over unreachable services, access
//! tokens signed by a real key ring, and request/response helpers.

#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use http_body_util::BodyExt;
use tonic::transport::Channel;
use tonic::{Status, metadata::MetadataMap};
use tower::ServiceExt;
use trustmesh_gateway::Api;
use trustmesh_gateway::api::session::TrustedProxies;
use trustmesh_policy::PolicyEngine;
use trustmesh_proto::trustmesh::auth::v1::auth_server::{Auth, AuthServer};
use trustmesh_proto::trustmesh::auth::v1::*;
use trustmesh_runtime::RetryUnprocessed;
use trustmesh_telemetry::Readiness;
use trustmesh_tokens::{KeyRing, RotationPolicy, TokenIssuer, Verifier};

pub const ISSUER: &str = trustmesh_gateway::api::TOKEN_ISSUER;
pub const AUDIENCE: &str = trustmesh_gateway::api::TOKEN_AUDIENCE;

/// What the fake auth service saw: (method, metadata) per call.
pub type Calls = Arc<Mutex<Vec<(&'static str, MetadataMap)>>>;

pub struct Harness {
    pub app: Router,
    pub ring: KeyRing,
    pub issuer: TokenIssuer,
    pub calls: Calls,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// The gateway with the auth and user services unreachable.
    pub async fn unreachable() -> Self {
        Self::build(false, TrustedProxies::none()).await
    }

    /// The gateway with a fake auth service (the user service unreachable).
    pub async fn with_fake_auth() -> Self {
        Self::build(true, TrustedProxies::none()).await
    }

    /// The gateway with a fake auth service behind `proxies`.
    pub async fn with_fake_auth_behind(proxies: TrustedProxies) -> Self {
        Self::build(true, proxies).await
    }

    async fn build(fake: bool, proxies: TrustedProxies) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(&dir.path().join("keys"), RotationPolicy::default()).unwrap();
        let issuer = TokenIssuer::new(ring.clone(), ISSUER, AUDIENCE, Duration::from_secs(900));
        let verifier = Verifier::new(ISSUER, AUDIENCE, Arc::new(ring.clone()));
        let calls: Calls = Arc::default();
        let unreachable = unreachable_channel().await;
        let auth = if fake {
            fake_auth(FakeAuth {
                ring: ring.clone(),
                calls: calls.clone(),
            })
            .await
        } else {
            unreachable.clone()
        };
        let policy = PolicyEngine::embedded().unwrap();
        let api = Api::new(
            RetryUnprocessed::new(auth),
            RetryUnprocessed::new(unreachable),
            verifier,
            policy,
            proxies,
        )
        .with_upstream_timeout(Duration::from_secs(5));
        let app = trustmesh_gateway::app(Readiness::new(), api);
        Self {
            app,
            ring,
            issuer,
            calls,
            _dir: dir,
        }
    }

    /// An access token for `role`, with MFA (`amr: pwd, otp`) or without.
    pub fn token(&self, role: &str, mfa: bool) -> String {
        let amr: &[&str] = if mfa { &["pwd", "otp"] } else { &["pwd"] };
        self.issuer.issue("u-1", role, "s-1", amr).unwrap().0
    }

    /// Sends `req` from 198.51.100.20:5555 and returns the answer.
    pub async fn send(&self, req: Request<Body>) -> Reply {
        self.send_from(req, "198.51.100.20:5555".parse().unwrap())
            .await
    }

    pub async fn send_from(&self, mut req: Request<Body>, peer: SocketAddr) -> Reply {
        req.extensions_mut().insert(ConnectInfo(peer));
        let response = self.app.clone().oneshot(req).await.unwrap();
        Reply::read(response).await
    }

    pub fn calls(&self) -> Vec<(&'static str, MetadataMap)> {
        self.calls.lock().unwrap().clone()
    }
}

/// A response with its body read.
pub struct Reply {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    async fn read(response: Response<Body>) -> Self {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes().to_vec();
        Self {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// `error.code` of an error answer (which must have the API's shape).
    pub fn error_code(&self) -> String {
        let json = self.json();
        let error = json["error"]
            .as_object()
            .unwrap_or_else(|| panic!("no error object: {json}"));
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{json}"
        );
        assert_eq!(error.len(), 2, "{json}");
        error["code"].as_str().unwrap().to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The `Set-Cookie` of cookie `name`.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
    }
}

/// A JSON request.
pub fn json_request(method: &str, uri: &str, body: &serde_json::Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// A channel to a loopback port nobody listens on.
pub async fn unreachable_channel() -> Channel {
    trustmesh_runtime::testing::unreachable_channel()
        .await
        .unwrap()
}

async fn fake_auth(service: FakeAuth) -> Channel {
    trustmesh_runtime::testing::serve_plain(tonic::service::Routes::new(AuthServer::new(service)))
        .await
        .unwrap()
}

/// The tokens the fake auth service hands out.
pub const FAKE_ACCESS: &str = "fake.access.token";
pub const FAKE_REFRESH: &str = "fake-refresh-token_1";
/// The refresh token the fake auth service accepts.
pub const GOOD_REFRESH: &str = "good-refresh";

/// A fake auth service: fixed answers, some chosen by the request, and a
/// record of the metadata of every call.
pub struct FakeAuth {
    ring: KeyRing,
    calls: Calls,
}

impl FakeAuth {
    fn record<T>(&self, method: &'static str, request: &tonic::Request<T>) {
        self.calls
            .lock()
            .unwrap()
            .push((method, request.metadata().clone()));
    }
}

fn token_reply() -> TokenReply {
    TokenReply {
        access_token: FAKE_ACCESS.into(),
        refresh_token: FAKE_REFRESH.into(),
        expires_in_seconds: 900,
        session_id: "s-1".into(),
        user_id: "u-1".into(),
        role: "user".into(),
    }
}

type Reply_<T> = Result<tonic::Response<T>, Status>;

#[tonic::async_trait]
impl Auth for FakeAuth {
    async fn register(&self, request: tonic::Request<RegisterRequest>) -> Reply_<RegisterReply> {
        self.record("Register", &request);
        let r = request.into_inner();
        match r.email.as_str() {
            "taken@example.com" => Err(Status::already_exists(
                "email_taken: an account with this email exists",
            )),
            _ if r.password.len() < 12 => Err(Status::invalid_argument(
                "password_too_short: the password needs at least 12 characters",
            )),
            _ => Ok(tonic::Response::new(RegisterReply {
                user_id: "u-1".into(),
                enrollment_token: "enr-1".into(),
                otpauth_uri: "otpauth://totp/Trustmesh:a@example.com?secret=ABC".into(),
                qr_svg: "<svg/>".into(),
            })),
        }
    }

    async fn confirm_registration(
        &self,
        request: tonic::Request<ConfirmRegistrationRequest>,
    ) -> Reply_<ConfirmRegistrationReply> {
        self.record("ConfirmRegistration", &request);
        Ok(tonic::Response::new(ConfirmRegistrationReply {
            recovery_codes: vec!["r1".into(), "r2".into()],
        }))
    }

    async fn login(&self, request: tonic::Request<LoginRequest>) -> Reply_<LoginReply> {
        self.record("Login", &request);
        match request.into_inner().email.as_str() {
            "locked@example.com" => {
                let mut status =
                    Status::resource_exhausted("account_locked: too many failed attempts");
                status
                    .metadata_mut()
                    .insert("retry-after", "900".parse().unwrap());
                Err(status)
            }
            "busy@example.com" => Err(Status::resource_exhausted(
                "too many attempts from this address",
            )),
            "wrong@example.com" => Err(Status::unauthenticated(
                "invalid_credentials: wrong email or password",
            )),
            "crash@example.com" => Err(Status::internal("database is on fire")),
            _ => Ok(tonic::Response::new(LoginReply {
                mfa_ticket: "ticket-1".into(),
                expires_in_seconds: 300,
            })),
        }
    }

    async fn login_mfa(&self, request: tonic::Request<LoginMfaRequest>) -> Reply_<TokenReply> {
        self.record("LoginMfa", &request);
        let r = request.into_inner();
        if r.code == "000000" {
            return Err(Status::unauthenticated("invalid_code: the code is wrong"));
        }
        Ok(tonic::Response::new(token_reply()))
    }

    async fn refresh(&self, request: tonic::Request<RefreshRequest>) -> Reply_<TokenReply> {
        self.record("Refresh", &request);
        if request.into_inner().refresh_token == GOOD_REFRESH {
            Ok(tonic::Response::new(token_reply()))
        } else {
            Err(Status::unauthenticated(
                "refresh_reused: the refresh token was already used; the session is revoked",
            ))
        }
    }

    async fn logout(&self, request: tonic::Request<LogoutRequest>) -> Reply_<LogoutReply> {
        self.record("Logout", &request);
        Ok(tonic::Response::new(LogoutReply {}))
    }

    async fn list_sessions(
        &self,
        request: tonic::Request<ListSessionsRequest>,
    ) -> Reply_<ListSessionsReply> {
        self.record("ListSessions", &request);
        Ok(tonic::Response::new(ListSessionsReply {
            sessions: vec![Session {
                session_id: "s-1".into(),
                created_at: "2026-01-01T00:00:00Z".into(),
                last_seen_at: "2026-01-01T00:01:00Z".into(),
                client_ip: "198.51.100.20".into(),
                user_agent: "test".into(),
                current: true,
            }],
        }))
    }

    async fn revoke_session(
        &self,
        request: tonic::Request<RevokeSessionRequest>,
    ) -> Reply_<RevokeSessionReply> {
        self.record("RevokeSession", &request);
        if request.into_inner().session_id == "nope" {
            return Err(Status::not_found("no such session"));
        }
        Ok(tonic::Response::new(RevokeSessionReply {}))
    }

    async fn change_password(
        &self,
        request: tonic::Request<ChangePasswordRequest>,
    ) -> Reply_<ChangePasswordReply> {
        self.record("ChangePassword", &request);
        Ok(tonic::Response::new(ChangePasswordReply {}))
    }

    async fn get_jwks(&self, request: tonic::Request<GetJwksRequest>) -> Reply_<GetJwksReply> {
        self.record("GetJwks", &request);
        Ok(tonic::Response::new(GetJwksReply {
            jwks_json: self.ring.jwks_json(),
        }))
    }

    async fn check_session(
        &self,
        _request: tonic::Request<CheckSessionRequest>,
    ) -> Reply_<CheckSessionReply> {
        Ok(tonic::Response::new(CheckSessionReply { active: true }))
    }

    async fn verify_password(
        &self,
        _request: tonic::Request<VerifyPasswordRequest>,
    ) -> Reply_<VerifyPasswordReply> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn delete_account(
        &self,
        _request: tonic::Request<DeleteAccountRequest>,
    ) -> Reply_<DeleteAccountReply> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn change_email(
        &self,
        _request: tonic::Request<ChangeEmailRequest>,
    ) -> Reply_<ChangeEmailReply> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn revoke_user_sessions(
        &self,
        _request: tonic::Request<RevokeUserSessionsRequest>,
    ) -> Reply_<RevokeUserSessionsReply> {
        Err(Status::unimplemented("not in the fake"))
    }
}
