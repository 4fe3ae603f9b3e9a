//! The REST API under `/api/v1` (and `/.well-known/jwks.json`): JSON in and
//! out, errors as `{"error": {"code", "message"}}` ([`errors`]).
//!
//! Each route runs behind [`session::guard`] (CSRF double submit, the
//! caller's access token verified here, the route authorized by the
//! gateway's Rego package), then calls the auth or user service over mTLS
//! gRPC with the end user's token and the client's facts as metadata; the
//! services verify the token and authorize the call again.
//!
//! | route | service call |
//! | --- | --- |
//! | `POST /api/v1/auth/register` | `Auth/Register` → 201 |
//! | `POST /api/v1/auth/register/confirm` | `Auth/ConfirmRegistration` |
//! | `POST /api/v1/auth/login` | `Auth/Login` |
//! | `POST /api/v1/auth/login/mfa` | `Auth/LoginMfa` (cookies for `x-trustmesh-client: web`) |
//! | `POST /api/v1/auth/refresh` | `Auth/Refresh` (body token, or the `tm_refresh` cookie) |
//! | `POST /api/v1/auth/logout` | `Auth/Logout` → 204, clears the cookies |
//! | `GET /api/v1/auth/sessions` | `Auth/ListSessions` |
//! | `DELETE /api/v1/auth/sessions/{sid}` | `Auth/RevokeSession` → 204 |
//! | `POST /api/v1/auth/password` | `Auth/ChangePassword` → 204 |
//! | `GET /.well-known/jwks.json` | `Auth/GetJwks` (cacheable 5 min) |
//! | `GET /api/v1/users/me` | `User/GetMe` |
//! | `PATCH /api/v1/users/me` | `User/UpdateMe` |
//! | `DELETE /api/v1/users/me` | `User/DeleteMe` → 204, clears the cookies |
//! | `GET /api/v1/users?limit&after` | `User/ListUsers` (admin) |
//! | `POST /api/v1/users/{id}/role` | `User/SetRole` (admin) |
//! | `POST /api/v1/teams` | `User/CreateTeam` (admin) → 201 |
//! | `POST /api/v1/teams/{id}/members` | `User/AddTeamMember` (admin, the team's manager) |
//! | `GET /api/v1/audit/events?user&action&status&ip&since&until&limit&page` | `Audit/ListEvents` (audit, admin) |
//! | `GET /api/v1/audit/decisions?…` | `Audit/ListDecisions` (audit, admin) |
//! | `GET /api/v1/audit/verify` | `Audit/Verify` (audit, admin) |
//! | `GET /api/v1/wallet?user` | `Wallet/GetBalance` (the owner; finance and audit may name `user`) |
//! | `GET /api/v1/wallet/transactions?user&limit&page` | `Wallet/ListTransactions` (likewise) |
//! | `POST /api/v1/payments` (header `Idempotency-Key`) | `Payment/CreatePayment` → 201 (200 on a replay) |
//! | `GET /api/v1/payments/{id}` | `Payment/GetPayment` (payer, receiver, finance, audit) |
//! | `GET /api/v1/finance/transactions?user&since&until&min_amount&max_amount&status&limit&page` | `Payment/ListTransactions` (finance) |
//! | `POST /api/v1/finance/transactions/{id}/rollback` | `Payment/Rollback` (finance) |
//! | `GET /api/v1/openapi.json` | none: this API's OpenAPI 3.1 description ([`openapi`]) |
//!
//! The router is made from the handlers' OpenAPI annotations
//! ([`utoipa_axum`]), so every route served is described and every route
//! described is served.
//!
//! Every route the policy refuses is a `POLICY_DENY` event (the deny hook
//! set with [`Api::with_deny_hook`]).

mod audit;
mod auth;
pub mod errors;
pub mod openapi;
pub mod payments;
pub mod session;
mod users;
mod wallet;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use trustmesh_policy::{DenyHook, PolicyEngine};
use trustmesh_proto::trustmesh::audit::v1::audit_client::AuditClient;
use trustmesh_proto::trustmesh::auth::v1::auth_client::AuthClient;
use trustmesh_proto::trustmesh::payment::v1::payment_client::PaymentClient;
use trustmesh_proto::trustmesh::user::v1::user_client::UserClient;
use trustmesh_proto::trustmesh::wallet::v1::wallet_client::WalletClient;
use trustmesh_runtime::MeshChannel;
use trustmesh_tokens::Verifier;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::errors::ApiError;
use self::session::{RecentlyEnded, TrustedProxies};

/// The `iss` of the access tokens the gateway accepts (the mesh's).
pub const TOKEN_ISSUER: &str = trustmesh_runtime::TOKEN_ISSUER;
/// The `aud` of the access tokens the gateway accepts (the mesh's).
pub const TOKEN_AUDIENCE: &str = trustmesh_runtime::TOKEN_AUDIENCE;
/// The largest request body accepted (64 KiB); larger is 413.
pub const BODY_LIMIT: usize = 64 * 1024;
/// How long the gateway waits for a service's answer (Argon2id included).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(15);

/// What the REST routes need: clients of the services, the token verifier,
/// the policy and the trusted proxies. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    auth: AuthClient<MeshChannel>,
    user: UserClient<MeshChannel>,
    audit: Option<AuditClient<MeshChannel>>,
    wallet: Option<WalletClient<MeshChannel>>,
    payment: Option<PaymentClient<MeshChannel>>,
    deny_hook: Option<DenyHook>,
    verifier: Verifier,
    policy: PolicyEngine,
    proxies: TrustedProxies,
    timeout: Duration,
    ended: Arc<RecentlyEnded>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("verifier", &self.inner.verifier)
            .field("proxies", &self.inner.proxies)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// The API over channels to the auth and user services (normally
    /// [`trustmesh_runtime::MeshClient::service_channel`]s), verifying access
    /// tokens with `verifier` (normally [`trustmesh_runtime::auth_verifier`]) and
    /// authorizing routes with `policy`.
    pub fn new(
        auth: MeshChannel,
        user: MeshChannel,
        verifier: Verifier,
        policy: PolicyEngine,
        proxies: TrustedProxies,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                auth: AuthClient::new(auth),
                user: UserClient::new(user),
                audit: None,
                wallet: None,
                payment: None,
                deny_hook: None,
                verifier,
                policy,
                proxies,
                timeout: UPSTREAM_TIMEOUT,
                ended: Arc::default(),
            }),
        }
    }

    /// The same API with another upstream time limit (tests).
    pub fn with_upstream_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.inner).timeout = timeout;
        self
    }

    /// The same API with the audit routes served through `audit`.
    pub fn with_audit(mut self, audit: MeshChannel) -> Self {
        Arc::make_mut(&mut self.inner).audit = Some(AuditClient::new(audit));
        self
    }

    /// The same API with the wallet routes served through `wallet`.
    pub fn with_wallet(mut self, wallet: MeshChannel) -> Self {
        Arc::make_mut(&mut self.inner).wallet = Some(WalletClient::new(wallet));
        self
    }

    /// The same API with the payment and finance routes served through
    /// `payment`.
    pub fn with_payment(mut self, payment: MeshChannel) -> Self {
        Arc::make_mut(&mut self.inner).payment = Some(PaymentClient::new(payment));
        self
    }

    /// The same API running `hook` on every route the policy denies.
    pub fn with_deny_hook(mut self, hook: DenyHook) -> Self {
        Arc::make_mut(&mut self.inner).deny_hook = Some(hook);
        self
    }

    pub(crate) fn deny_hook(&self) -> Option<&DenyHook> {
        self.inner.deny_hook.as_ref()
    }

    /// The audit service, or 503 when this gateway has none.
    pub(crate) fn audit(&self) -> Result<AuditClient<MeshChannel>, ApiError> {
        self.inner
            .audit
            .clone()
            .ok_or_else(|| ApiError::unavailable("the audit service is not configured"))
    }

    /// The wallet service, or 503 when this gateway has none.
    pub(crate) fn wallet(&self) -> Result<WalletClient<MeshChannel>, ApiError> {
        self.inner
            .wallet
            .clone()
            .ok_or_else(|| ApiError::unavailable("the wallet service is not configured"))
    }

    /// The payment service, or 503 when this gateway has none.
    pub(crate) fn payment(&self) -> Result<PaymentClient<MeshChannel>, ApiError> {
        self.inner
            .payment
            .clone()
            .ok_or_else(|| ApiError::unavailable("the payment service is not configured"))
    }

    pub(crate) fn auth(&self) -> AuthClient<MeshChannel> {
        self.inner.auth.clone()
    }

    pub(crate) fn user(&self) -> UserClient<MeshChannel> {
        self.inner.user.clone()
    }

    pub(crate) fn verifier(&self) -> &Verifier {
        &self.inner.verifier
    }

    pub(crate) fn policy(&self) -> &PolicyEngine {
        &self.inner.policy
    }

    pub(crate) fn proxies(&self) -> &TrustedProxies {
        &self.inner.proxies
    }

    /// Sessions this gateway has just ended.
    pub(crate) fn ended(&self) -> &RecentlyEnded {
        &self.inner.ended
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Awaits a service call within the upstream time limit and maps its
    /// status to the REST answer.
    pub(crate) async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.inner.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(ApiError::from_status(&status)),
            Err(_) => {
                tracing::warn!("upstream call timed out");
                Err(ApiError::unavailable(
                    "a service behind the gateway did not answer in time",
                ))
            }
        }
    }
}

/// The REST routes with their guard and body limit.
pub fn routes(api: Api) -> Router {
    let (router, _) = described_routes().split_for_parts();
    router
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            session::guard,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(api)
}

/// Every route with its OpenAPI description: the one list that both the
/// router of [`routes`] and the document of [`openapi::document`] come from.
fn described_routes() -> OpenApiRouter<Api> {
    OpenApiRouter::with_openapi(<openapi::ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(auth::register))
        .routes(routes!(auth::confirm))
        .routes(routes!(auth::login))
        .routes(routes!(auth::login_mfa))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::list_sessions))
        .routes(routes!(auth::revoke_session))
        .routes(routes!(auth::change_password))
        .routes(routes!(auth::jwks))
        .routes(routes!(users::get_me, users::update_me, users::delete_me))
        .routes(routes!(users::list_users))
        .routes(routes!(users::set_role))
        .routes(routes!(users::create_team))
        .routes(routes!(users::add_team_member))
        .routes(routes!(audit::list_events))
        .routes(routes!(audit::list_decisions))
        .routes(routes!(audit::verify))
        .routes(routes!(wallet::balance))
        .routes(routes!(wallet::transactions))
        .routes(routes!(payments::create))
        .routes(routes!(payments::get))
        .routes(routes!(payments::list))
        .routes(routes!(payments::rollback))
        .routes(routes!(openapi::serve))
}
