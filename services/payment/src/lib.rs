//! The payment service: payments between users, within policy limits, and
//! finance rollbacks, over the wallet ledger.
//!
//! A payment is asked for through the gateway by the signed-in payer; the
//! service checks the payer's role and limits in policy
//! (`policies/payment/`) and that the receiver is a user ([`receivers`]),
//! stores the payment PENDING under a fresh UUID v7,
//! asks the wallet over mTLS to post a transfer with that id (the payment
//! workload is the only caller the wallet accepts for transfers), then
//! records COMPLETED or FAILED with its `PAYMENT` event in one transaction.
//! Finance lists every payment and rolls one back with a compensating
//! transfer (`ROLLBACK` event).
//!
//! Thin by design: the runtime gives it mTLS, the policy layer decides who
//! may call what, the handlers in [`service`] validate and map errors, and
//! [`store`] holds the transactions (SQLite or PostgreSQL), the payment
//! path's writes set-based through [`batch`] and its volume reads batched
//! through [`volume`].

pub mod batch;
pub mod receivers;
pub mod service;
pub mod store;
pub mod volume;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use spiffe::X509Source;
use trustmesh_events::{Outbox, Pipeline};
use trustmesh_policy::{PolicyEngine, SubjectResolver};
use trustmesh_proto::trustmesh::payment::v1::payment_server::PaymentServer;
use trustmesh_runtime::{
    Directory, GrpcServer, MeshChannel, MeshClient, RunningServer, RuntimeError, Shutdown,
};
use trustmesh_store::{Db, StoreConfig, StoreError};
use trustmesh_telemetry::MetricsRegistry;

pub use receivers::Receivers;
pub use service::PaymentService;
pub use store::{NewPayment, Payment, PaymentFilter, PaymentStatus, PaymentStore, Rollback};

pub use trustmesh_runtime::Hooks;

/// The service's schema: the same portable SQL on SQLite and PostgreSQL.
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The gRPC service name `grpc.health.v1` reports.
pub const HEALTH_SERVICE: &str = "trustmesh.payment.v1.Payment";

/// Errors while starting the service.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// How the payment service runs.
#[derive(Debug, Clone)]
pub struct PaymentConfig {
    /// The data directory (SQLite file, run reports of the other services).
    pub data_dir: PathBuf,
    /// The trust domain.
    pub trust_domain: String,
    /// mTLS gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Admin listen address.
    pub admin_addr: SocketAddr,
}

/// Opens the service's database (`PAYMENT_DATABASE_URL`, else
/// `DATABASE_URL`, else `<data_dir>/payment.db`) and migrates it.
pub async fn open_db(data_dir: &std::path::Path) -> Result<Db, StoreError> {
    let db = Db::connect(&StoreConfig::from_env("payment", data_dir)).await?;
    db.migrate(&MIGRATIONS, &MIGRATIONS).await?;
    Ok(db)
}

/// Opens the service's database as [`open_db`] does, but for an offline
/// check: it is neither created ([`StoreError::Missing`]) nor migrated,
/// and a schema other than this binary's is refused
/// ([`StoreError::SchemaMismatch`]).
pub async fn open_db_unchanged(data_dir: &std::path::Path) -> Result<Db, StoreError> {
    let db = Db::open_existing(&StoreConfig::from_env("payment", data_dir)).await?;
    db.require_migrated(&MIGRATIONS, &MIGRATIONS).await?;
    Ok(db)
}

/// Opens the database (migrating it), connects to the wallet through the
/// data directory's run reports, and starts serving.
pub async fn start(
    config: PaymentConfig,
    source: X509Source,
    policy: PolicyEngine,
    subjects: Arc<dyn SubjectResolver>,
    shutdown: Shutdown,
) -> Result<RunningServer, PaymentError> {
    let db = open_db(&config.data_dir).await?;
    let mesh = MeshClient::new(source.clone(), &config.trust_domain);
    let directory = Directory::new(&config.data_dir);
    let wallet = mesh.service_channel(&directory, "wallet")?;
    let receivers = Receivers::new(mesh.service_channel(&directory, "user")?);
    let metrics = MetricsRegistry::new();
    // Each write's time queued, committing and waiting for the log's sync,
    // on `/metrics`.
    let db = db.with_write_metrics(&metrics);
    let store = PaymentStore::new(db.clone());
    // The relay's writes go through the store's writer: on SQLite they then
    // never stall a payment in the busy handler.
    let outbox = Outbox::new(db).with_writer(store.writer().clone());
    let events = Pipeline::start_with(outbox, &mesh, &directory, &metrics, &shutdown)?;
    let deny_hook = events.deny_hook("payment");
    let hooks = Hooks {
        deny_hook: Some(deny_hook),
        metrics,
    };
    let service = PaymentService::new(store, wallet, policy.clone()).with_receivers(receivers);
    start_with_service(config, service, source, policy, subjects, hooks, shutdown).await
}

/// Starts serving over an open, migrated database and a channel to the
/// wallet (tests of the payment path, without a user service: receivers
/// are then not looked up). `deny_hook` sees every policy deny: the policy
/// layer's and the handlers' second decisions.
#[allow(clippy::too_many_arguments)]
pub async fn start_with_db(
    config: PaymentConfig,
    db: Db,
    wallet: MeshChannel,
    source: X509Source,
    policy: PolicyEngine,
    subjects: Arc<dyn SubjectResolver>,
    hooks: Hooks,
    shutdown: Shutdown,
) -> Result<RunningServer, PaymentError> {
    let service = PaymentService::new(PaymentStore::new(db), wallet, policy.clone());
    start_with_service(config, service, source, policy, subjects, hooks, shutdown).await
}

/// Starts serving `service`.
async fn start_with_service(
    config: PaymentConfig,
    mut service: PaymentService,
    source: X509Source,
    policy: PolicyEngine,
    subjects: Arc<dyn SubjectResolver>,
    hooks: Hooks,
    shutdown: Shutdown,
) -> Result<RunningServer, PaymentError> {
    let Hooks { deny_hook, metrics } = hooks;
    let db_failed = service.store().db().failed();
    let mut server = GrpcServer::new("payment", &config.trust_domain, source, policy)
        .stop_on_fault(db_failed)
        .grpc_addr(config.grpc_addr)
        .admin_addr(config.admin_addr)
        .subject_resolver(subjects)
        .metrics(metrics)
        .health_service(HEALTH_SERVICE);
    if let Some(hook) = deny_hook {
        service = service.with_deny_hook(hook.clone());
        server = server.deny_hook(hook);
    }
    let routes = tonic::service::Routes::new(PaymentServer::new(service));
    Ok(server.start(routes, shutdown).await?)
}
