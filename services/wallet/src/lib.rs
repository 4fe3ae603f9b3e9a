//! The wallet service: a double-entry ledger of user wallets.
//!
//! Every movement of money is a transfer between two accounts — a user's
//! wallet (per user and currency, never negative) or an agent's clearing
//! account (per agent and currency, negative by what the agent brought in) —
//! recorded with its two entries, both cached balances and its audit event in
//! one database transaction. Per currency the balances sum to zero
//! ([`check_invariants`], `trustmesh wallet check`).
//!
//! Thin by design: the runtime gives it mTLS, the policy layer decides who
//! may call what (`policies/wallet/`), the handlers in [`service`] validate
//! and map errors, [`ledger`] holds the domain rules and [`store`] the
//! transactions (SQLite or PostgreSQL).

pub mod batch;
pub mod ledger;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use spiffe::X509Source;
use trustmesh_events::{Outbox, Pipeline};
use trustmesh_policy::{PolicyEngine, SubjectResolver};
use trustmesh_proto::trustmesh::wallet::v1::wallet_server::WalletServer;
use trustmesh_runtime::{Directory, GrpcServer, MeshClient, RunningServer, RuntimeError, Shutdown};
use trustmesh_store::{Db, StoreConfig, StoreError};
use trustmesh_telemetry::MetricsRegistry;

pub use ledger::{LedgerError, NewDeposit, NewTransfer, Posted, TransferKind, TransferRecord};
pub use service::WalletService;
pub use store::{InvariantReport, Violation, WalletStore, check_invariants};

pub use trustmesh_runtime::Hooks;

/// The service's schema: the same portable SQL on SQLite and PostgreSQL.
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The gRPC service name `grpc.health.v1` reports.
pub const HEALTH_SERVICE: &str = "trustmesh.wallet.v1.Wallet";

/// Errors while starting the service.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// How the wallet service runs.
#[derive(Debug, Clone)]
pub struct WalletConfig {
    /// The data directory (SQLite file).
    pub data_dir: PathBuf,
    /// The trust domain.
    pub trust_domain: String,
    /// mTLS gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Admin listen address.
    pub admin_addr: SocketAddr,
}

/// Opens the service's database (`WALLET_DATABASE_URL`, else
/// `DATABASE_URL`, else `<data_dir>/wallet.db`) and migrates it.
pub async fn open_db(data_dir: &std::path::Path) -> Result<Db, StoreError> {
    let db = Db::connect(&StoreConfig::from_env("wallet", data_dir)).await?;
    db.migrate(&MIGRATIONS, &MIGRATIONS).await?;
    Ok(db)
}

/// Opens the service's database as [`open_db`] does, but for an offline
/// check: it is neither created ([`StoreError::Missing`]) nor migrated,
/// and a schema other than this binary's is refused
/// ([`StoreError::SchemaMismatch`]).
pub async fn open_db_unchanged(data_dir: &std::path::Path) -> Result<Db, StoreError> {
    let db = Db::open_existing(&StoreConfig::from_env("wallet", data_dir)).await?;
    db.require_migrated(&MIGRATIONS, &MIGRATIONS).await?;
    Ok(db)
}

/// Opens the database (migrating it) and starts serving.
pub async fn start(
    config: WalletConfig,
    source: X509Source,
    policy: PolicyEngine,
    subjects: Arc<dyn SubjectResolver>,
    shutdown: Shutdown,
) -> Result<RunningServer, WalletError> {
    let db = open_db(&config.data_dir).await?;
    let mesh = MeshClient::new(source.clone(), &config.trust_domain);
    let metrics = MetricsRegistry::new();
    // Each write's time queued, committing and waiting for the log's sync,
    // on `/metrics`.
    let db = db.with_write_metrics(&metrics);
    let store = WalletStore::new(db.clone());
    // The relay's writes go through the store's writer: on SQLite they then
    // never stall a posting in the busy handler.
    let events = Pipeline::start_with(
        Outbox::new(db).with_writer(store.writer().clone()),
        &mesh,
        &Directory::new(&config.data_dir),
        &metrics,
        &shutdown,
    )?;
    let deny_hook = events.deny_hook("wallet");
    let hooks = Hooks {
        deny_hook: Some(deny_hook),
        metrics,
    };
    start_with_store(config, store, source, policy, subjects, hooks, shutdown).await
}

/// Starts serving over an open, migrated database (tests, or a process
/// that opened it itself). `deny_hook` sees every policy deny: the policy
/// layer's and the handler's second `Deposit` decision (the agent's daily
/// limit).
pub async fn start_with_db(
    config: WalletConfig,
    db: Db,
    source: X509Source,
    policy: PolicyEngine,
    subjects: Arc<dyn SubjectResolver>,
    hooks: Hooks,
    shutdown: Shutdown,
) -> Result<RunningServer, WalletError> {
    let store = WalletStore::new(db);
    start_with_store(config, store, source, policy, subjects, hooks, shutdown).await
}

/// Starts serving over `store`.
async fn start_with_store(
    config: WalletConfig,
    store: WalletStore,
    source: X509Source,
    policy: PolicyEngine,
    subjects: Arc<dyn SubjectResolver>,
    hooks: Hooks,
    shutdown: Shutdown,
) -> Result<RunningServer, WalletError> {
    let Hooks { deny_hook, metrics } = hooks;
    let db_failed = store.db().failed();
    let mut service = WalletService::new(store, policy.clone());
    let mut server = GrpcServer::new("wallet", &config.trust_domain, source, policy)
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
    let routes = tonic::service::Routes::new(WalletServer::new(service));
    Ok(server.start(routes, shutdown).await?)
}
