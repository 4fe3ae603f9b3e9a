//! The user service: profiles, roles and teams.
//!
//! Thin by design: the runtime gives it mTLS, the policy layer decides who
//! may call what (`policies/user/`), the handlers in [`service`] apply the
//! domain rules, and [`store`] keeps the rows (SQLite or PostgreSQL). A
//! role change ends the user's sessions at the auth service; the
//! [`revoker`] asks again for those auth did not confirm.

pub mod revoker;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use spiffe::X509Source;
use trustmesh_events::Pipeline;
use trustmesh_policy::{PolicyEngine, SubjectResolver};
use trustmesh_proto::trustmesh::user::v1::user_server::UserServer;
use trustmesh_runtime::{Directory, GrpcServer, MeshClient, RunningServer, RuntimeError, Shutdown};
use trustmesh_store::{Db, StoreConfig, StoreError};
use trustmesh_telemetry::MetricsRegistry;

/// The service's schema: the same portable SQL on SQLite and PostgreSQL.
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Errors while starting the service.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// How the user service runs.
#[derive(Debug, Clone)]
pub struct UserConfig {
    /// The data directory (SQLite file, run reports of the other services).
    pub data_dir: PathBuf,
    /// The trust domain.
    pub trust_domain: String,
    /// mTLS gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Admin listen address.
    pub admin_addr: SocketAddr,
}

/// Opens the database (migrating it) and starts serving.
pub async fn start(
    config: UserConfig,
    source: X509Source,
    policy: PolicyEngine,
    subjects: Arc<dyn SubjectResolver>,
    shutdown: Shutdown,
) -> Result<RunningServer, UserError> {
    let db = Db::connect(&StoreConfig::from_env("user", &config.data_dir)).await?;
    db.migrate(&MIGRATIONS, &MIGRATIONS).await?;
    let db_failed = db.failed();
    let mesh = MeshClient::new(source.clone(), &config.trust_domain);
    let directory = Directory::new(&config.data_dir);
    let metrics = MetricsRegistry::new();
    let events = Pipeline::start(&db, &mesh, &directory, &metrics, &shutdown)?;
    let auth = mesh.service_channel(&directory, "auth")?;
    let store = store::UserStore::new(db);
    tokio::spawn(revoker::Revoker::new(store.clone(), auth.clone()).run(shutdown.clone()));
    let service = service::UserService::new(store, auth);
    let routes = tonic::service::Routes::new(UserServer::new(service));
    Ok(
        GrpcServer::new("user", &config.trust_domain, source, policy)
            .grpc_addr(config.grpc_addr)
            .admin_addr(config.admin_addr)
            .subject_resolver(subjects)
            .metrics(metrics)
            .deny_hook(events.deny_hook("user"))
            .health_service("trustmesh.user.v1.User")
            .stop_on_fault(db_failed)
            .start(routes, shutdown)
            .await?,
    )
}
