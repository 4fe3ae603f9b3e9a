//! The audit service: the tamper-evident log of every sensitive action in
//! the mesh.
//!
//! Events arrive from the services' outbox relays — over RabbitMQ (the
//! `trustmesh.audit` queue, when `AMQP_URL` is set; [`ingest`]) or straight
//! through `Append` over mTLS — and are stored once each (idempotent on the
//! event id) as leaves of an RFC 6962 Merkle tree with a hash chain
//! ([`log`], math in `crates/merkle`). A checkpoint (size and root) is
//! signed with Ed25519 every few seconds; `trustmesh audit verify`
//! recomputes everything. Retention removes events older than 90 days
//! (configurable) and keeps a signed anchor so the rest still verifies.
//! Daily JSON-lines files under `<data-dir>/audit/log/` are a second copy
//! ([`export`]). People with the `audit` or `admin` role read the log
//! through the gateway, and every read is itself recorded.

pub mod alerts;
pub mod export;
pub mod ingest;
pub mod keys;
pub mod log;
pub mod query;
pub mod record;
pub mod service;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use spiffe::X509Source;
use trustmesh_events::Event;
use trustmesh_policy::{Decision, DenyHook, PolicyEngine, PolicyInput, SubjectResolver};
use trustmesh_proto::trustmesh::audit::v1::audit_server::AuditServer;
use trustmesh_runtime::{GrpcServer, RunningServer, RuntimeError, Shutdown};
use trustmesh_store::{Db, StoreConfig, StoreError};

use crate::export::Exporter;
use crate::log::{Appended, AuditLog, LogError};

/// The service's schema: the same portable SQL on SQLite and PostgreSQL.
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Errors while starting the service.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The checkpoint key could not be loaded or created.
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    /// The daily files directory could not be created.
    #[error("cannot create {path}: {source}")]
    ExportDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The alerts cannot be configured.
    #[error(transparent)]
    Alerts(#[from] alerts::AlertError),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// How the audit service runs.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The data directory (SQLite file, checkpoint key, daily files).
    pub data_dir: PathBuf,
    /// The trust domain (the log's origin is `<trust-domain>/audit`).
    pub trust_domain: String,
    /// mTLS gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Admin listen address.
    pub admin_addr: SocketAddr,
    /// RabbitMQ URL to consume from, if any.
    pub amqp_url: Option<String>,
    /// How long events are kept.
    pub retention: Duration,
    /// How often a checkpoint is signed (when the log grew).
    pub checkpoint_every: Duration,
    /// Suspicious-login rules and alert mail.
    pub alerts: alerts::AlertConfig,
}

impl AuditConfig {
    /// The log's origin, the name its checkpoints carry.
    pub fn origin(&self) -> String {
        format!("{}/audit", self.trust_domain)
    }
}

/// Where events enter the log: every path (Append, RabbitMQ, the service's
/// own reads and denies) goes through here.
#[derive(Debug, Clone)]
pub struct Ingest {
    log: Arc<AuditLog>,
}

impl Ingest {
    /// Appends `events`. The append runs in its own task, so a caller that
    /// goes away (a cancelled call) cannot interrupt a commit half-way.
    pub async fn ingest(&self, events: Vec<Event>) -> Result<Appended, LogError> {
        let log = self.log.clone();
        tokio::spawn(async move { log.append(&events).await })
            .await
            .map_err(|e| LogError::Damaged(format!("append task failed: {e}")))?
    }

    /// A deny hook appending the audit service's own policy denies.
    pub fn deny_hook(&self) -> DenyHook {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(10_000);
        let ingest = self.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 256).await > 0 {
                if let Err(e) = ingest.ingest(std::mem::take(&mut batch)).await {
                    tracing::error!(error = %e, "cannot record policy denies");
                }
            }
        });
        Arc::new(move |input: &PolicyInput, decision: &Decision| {
            let event = trustmesh_events::deny_event("audit", input, decision);
            if tx.try_send(event).is_err() {
                tracing::error!("policy deny not recorded: the deny queue is full");
            }
        })
    }
}

/// The directory of the daily files.
pub fn export_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit").join("log")
}

/// Opens the audit database (migrating it).
pub async fn open_db(data_dir: &Path) -> Result<Db, StoreError> {
    let db = Db::connect(&StoreConfig::from_env("audit", data_dir)).await?;
    db.migrate(&MIGRATIONS, &MIGRATIONS).await?;
    Ok(db)
}

/// Opens the log and starts serving, consuming RabbitMQ when configured,
/// signing checkpoints and applying retention daily.
pub async fn start(
    config: AuditConfig,
    source: X509Source,
    policy: PolicyEngine,
    subjects: Arc<dyn SubjectResolver>,
    shutdown: Shutdown,
) -> Result<RunningServer, AuditError> {
    let db = open_db(&config.data_dir).await?;
    let key = keys::load_or_create(&config.data_dir)?;
    let dir = export_dir(&config.data_dir);
    let exporter = Exporter::new(&dir).map_err(|source| AuditError::ExportDir {
        path: dir.clone(),
        source,
    })?;
    let log = Arc::new(AuditLog::open(db, &config.origin(), key, Some(Arc::new(exporter))).await?);
    let ingest = Ingest { log: log.clone() };
    if let Some(url) = config.amqp_url.clone().filter(|u| !u.is_empty()) {
        ingest::spawn_consumer(url, ingest.clone(), shutdown.clone());
    }
    log::spawn_checkpointer(log.clone(), config.checkpoint_every, shutdown.clone());
    alerts::spawn(
        log.clone(),
        ingest.clone(),
        config.alerts.clone(),
        shutdown.clone(),
    )?;
    spawn_retention(log.clone(), config.retention, shutdown.clone());
    let service = service::AuditService::new(log, ingest.clone());
    let routes = tonic::service::Routes::new(AuditServer::new(service));
    Ok(
        GrpcServer::new("audit", &config.trust_domain, source, policy)
            .grpc_addr(config.grpc_addr)
            .admin_addr(config.admin_addr)
            .subject_resolver(subjects)
            .deny_hook(ingest.deny_hook())
            .health_service("trustmesh.audit.v1.Audit")
            .start(routes, shutdown)
            .await?,
    )
}

/// Applies retention at start and then every day.
fn spawn_retention(log: Arc<AuditLog>, keep: Duration, shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(24 * 3600));
        loop {
            tokio::select! {
                () = shutdown.wait() => break,
                _ = tick.tick() => {}
            }
            let cutoff = time::OffsetDateTime::now_utc()
                - time::Duration::try_from(keep).unwrap_or(time::Duration::days(90));
            if let Err(e) = log.apply_retention(cutoff).await {
                tracing::error!(error = %e, "audit retention failed");
            }
        }
    });
}
