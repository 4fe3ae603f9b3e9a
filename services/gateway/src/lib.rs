//! The REST edge of the mesh: HTTPS for browsers and API clients at
//! `https://127.0.0.1:8443` (TLS from a local CA kept in the data directory),
//! in front of the services it reaches over mTLS gRPC.
//!
//! It answers the operational routes (`/healthz`, `/readyz`), the REST API of
//! the auth and user services under `/api/v1` ([`api`]: cookies or bearer
//! tokens, CSRF, the route policy, forwarding over mTLS gRPC) and, like every
//! mesh process, serves `grpc.health.v1` over mTLS with its own SVID.
//!
//! `TRUSTMESH_TRUSTED_PROXIES` (comma-separated CIDRs) names the proxies
//! whose `X-Forwarded-For` the gateway believes.

pub mod api;
mod http;
pub mod local_ca;

use std::net::SocketAddr;
use std::path::PathBuf;

use spiffe::X509Source;
use trustmesh_events::Pipeline;
use trustmesh_policy::PolicyEngine;
use trustmesh_runtime::{Directory, GrpcServer, MeshClient, RuntimeError, Shutdown};
use trustmesh_store::{Db, StoreConfig, StoreError};
use trustmesh_telemetry::{MetricsRegistry, RouteLatency};

/// The gateway's schema (its outbox): portable SQL.
static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub use api::Api;
pub use http::{app, router, timed};

/// The gateway's metric of the time it takes to answer an HTTPS request.
pub const HTTP_HANDLING_SECONDS: &str = "http_server_handling_seconds";

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The mesh runtime failed (identity, TLS, listeners).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The local HTTPS certificate authority could not be prepared.
    #[error(transparent)]
    LocalCa(#[from] local_ca::LocalCaError),
    /// The configuration is unusable (e.g. `TRUSTMESH_TRUSTED_PROXIES`).
    #[error("{0}")]
    Config(String),
    /// The outbox database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTPS listener could not be bound.
    #[error("cannot listen for HTTPS on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// How the gateway runs.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The data directory (holds the local HTTPS CA under `gateway/`).
    pub data_dir: PathBuf,
    /// The SPIFFE trust domain of the mesh.
    pub trust_domain: String,
    /// Where to serve HTTPS.
    pub https_addr: SocketAddr,
    /// Where to serve mTLS gRPC (health).
    pub grpc_addr: SocketAddr,
    /// Where to serve the admin endpoint.
    pub admin_addr: SocketAddr,
}

/// The addresses the gateway is bound to.
#[derive(Debug, Clone, Copy)]
pub struct GatewayAddrs {
    /// HTTPS for clients.
    pub https: SocketAddr,
    /// mTLS gRPC.
    pub grpc: SocketAddr,
    /// Admin HTTP.
    pub admin: SocketAddr,
}

/// A gateway bound to its addresses and serving in the background.
#[derive(Debug)]
pub struct RunningGateway {
    /// Where it listens.
    pub addrs: GatewayAddrs,
    grpc: trustmesh_runtime::RunningServer,
    https: tokio::task::JoinHandle<()>,
}

impl RunningGateway {
    /// Waits until both listeners have stopped after the shutdown signal.
    pub async fn wait(self) -> Result<(), GatewayError> {
        let grpc = self.grpc.wait().await;
        let _ = self.https.await;
        grpc.map_err(GatewayError::from)
    }
}

/// Starts the gateway: binds HTTPS, mTLS gRPC and admin, and serves until
/// `shutdown` fires.
pub async fn start(
    config: GatewayConfig,
    source: X509Source,
    policy: PolicyEngine,
    shutdown: Shutdown,
) -> Result<RunningGateway, GatewayError> {
    let proxies = api::session::TrustedProxies::from_env().map_err(GatewayError::Config)?;
    let ca = local_ca::LocalCa::ensure(&config.data_dir.join("gateway"))?;
    let tls = ca.server_config()?;

    // The services behind the REST API, over mTLS, found through the run
    // reports of the data directory (or TRUSTMESH_<NAME>_ADDR).
    let mesh = MeshClient::new(source.clone(), &config.trust_domain);
    let directory = Directory::new(&config.data_dir);
    let auth = mesh.service_channel(&directory, "auth")?;
    let user = mesh.service_channel(&directory, "user")?;
    let audit = mesh.service_channel(&directory, "audit")?;
    let wallet = mesh.service_channel(&directory, "wallet")?;
    let payment = mesh.service_channel(&directory, "payment")?;
    let verifier = trustmesh_runtime::auth_verifier(auth.clone());

    // Route denies are audit events: the gateway's outbox and its relay.
    let db = Db::connect(&StoreConfig::from_env("gateway", &config.data_dir)).await?;
    db.migrate(&MIGRATIONS, &MIGRATIONS).await?;
    let metrics = MetricsRegistry::new();
    let events = Pipeline::start(&db, &mesh, &directory, &metrics, &shutdown)?;
    let deny_hook = events.deny_hook("gateway");
    let rest = Api::new(auth, user, verifier, policy.clone(), proxies)
        .with_audit(audit)
        .with_wallet(wallet)
        .with_payment(payment)
        .with_deny_hook(deny_hook.clone());

    let server = GrpcServer::new("gateway", &config.trust_domain, source, policy)
        .grpc_addr(config.grpc_addr)
        .admin_addr(config.admin_addr)
        .metrics(metrics.clone())
        .deny_hook(deny_hook);
    let readiness = server.readiness();
    let latency = RouteLatency::register(
        &metrics,
        HTTP_HANDLING_SECONDS,
        "Time from an HTTPS request's arrival to its response's headers, by route",
    );
    let timed_app = http::timed(app(readiness, rest), latency);
    let grpc = server
        .start(tonic::service::Routes::default(), shutdown.clone())
        .await?;
    let (https, https_task) =
        http::serve_https(config.https_addr, tls, timed_app, shutdown).await?;
    tracing::info!(%https, ca = %ca.ca_path().display(), "gateway HTTPS ready");
    Ok(RunningGateway {
        addrs: GatewayAddrs {
            https,
            grpc: grpc.addrs.grpc,
            admin: grpc.addrs.admin,
        },
        grpc,
        https: https_task,
    })
}
