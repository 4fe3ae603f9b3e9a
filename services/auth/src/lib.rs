//! The Trustmesh auth service's domain rules, free of I/O so that each is
//! tested on its own; the gRPC service, its storage and its events build on them.
//!
//! - [`email`]: syntax check and normalisation (emails are unique case-insensitively).
//! - [`password`]: the registration policy (length, breached list, email local
//!   part) and Argon2id hashing with stored, upgradable parameters.
//! - [`totp`]: RFC 6238 enrolment (`otpauth://` URI and QR code) and verification
//!   with a ±1 step window and replay refusal.
//! - [`recovery`]: ten single-use recovery codes, stored hashed.
//! - [`lockout`]: the brute-force lockout policy as a pure function.
//! - [`hash_pool`]: the low-priority threads Argon2id runs on.
//!
//! TOTP seeds are sealed at rest with `trustmesh-keyring`; bind each sealed seed
//! to its user with the associated data (for example `b"totp:" + user_id`).

pub mod email;
pub mod hash_pool;
pub mod lockout;
pub mod password;
pub mod recovery;
pub mod service;
pub mod store;
pub mod totp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use spiffe::X509Source;
use trustmesh_events::{Outbox, Pipeline};
use trustmesh_policy::PolicyEngine;
use trustmesh_proto::trustmesh::auth::v1::auth_server::AuthServer;
use trustmesh_runtime::{
    Directory, GrpcServer, JwtSubjects, MeshClient, RunningServer, RuntimeError, SESSION_CHECK_TTL,
    Shutdown, TOKEN_AUDIENCE, TOKEN_ISSUER,
};
use trustmesh_store::{Db, StoreConfig, StoreError};
use trustmesh_telemetry::MetricsRegistry;
use trustmesh_tokens::{FnSessionChecker, KeyRing, RotationPolicy, TokenIssuer, Verifier};

/// The service's schema: the same portable SQL on SQLite and PostgreSQL.
static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long access tokens live.
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// Errors while starting the auth service.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The signing keys could not be opened.
    #[error("signing keys: {0}")]
    Tokens(#[from] trustmesh_tokens::TokenError),
    /// The key ring sealing TOTP seeds could not be opened.
    #[error("secret key ring: {0}")]
    KeyRing(#[from] trustmesh_keyring::KeyRingError),
    /// The password hasher refused its parameters.
    #[error("password hashing: {0}")]
    Hasher(String),
    /// The password hashing threads could not be started.
    #[error("password hashing threads: {0}")]
    HashThreads(std::io::Error),
}

/// How the auth service runs.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The data directory (SQLite file, signing keys, secret key ring).
    pub data_dir: PathBuf,
    /// The trust domain.
    pub trust_domain: String,
    /// mTLS gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Admin listen address.
    pub admin_addr: SocketAddr,
    /// Lifetimes and limits.
    pub settings: service::AuthSettings,
    /// Threads that hash passwords; 0 means
    /// [`hash_pool::HashPool::with_default_threads`] (one per core but one,
    /// and a spare on the last core for jobs that waited
    /// [`hash_pool::SPARE_AFTER`]).
    pub hash_threads: usize,
}

/// Rotates the signing keys when due (checked every minute); the ring keeps
/// publishing a rotated-out key until every token it signed has expired.
fn spawn_key_rotation(keys: KeyRing, shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.wait() => return,
            }
            match keys.rotate_if_due() {
                Ok(true) => tracing::info!(kid = %keys.current_kid(), "signing key rotated"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "signing key rotation failed"),
            }
        }
    });
}

/// Opens the database, keys and key ring, and starts serving.
pub async fn start(
    config: AuthConfig,
    source: X509Source,
    policy: PolicyEngine,
    shutdown: Shutdown,
) -> Result<RunningServer, AuthError> {
    let db = Db::connect(&StoreConfig::from_env("auth", &config.data_dir)).await?;
    db.migrate(&MIGRATIONS, &MIGRATIONS).await?;
    let mesh = MeshClient::new(source.clone(), &config.trust_domain);
    let directory = Directory::new(&config.data_dir);
    let metrics = MetricsRegistry::new();
    // Each write's time queued, committing and waiting for the log's sync,
    // on `/metrics`.
    let db = db.with_write_metrics(&metrics);
    let store = store::AuthStore::new(db.clone());
    let db_failed = db.failed();
    // The relay's writes go through the store's writer: on SQLite they
    // then never stall a login in the busy handler.
    let outbox = Outbox::new(db).with_writer(store.writer().clone());
    let events = Pipeline::start_with(outbox, &mesh, &directory, &metrics, &shutdown)?;
    let keys = KeyRing::open(
        &config.data_dir.join("auth").join("signing-keys"),
        RotationPolicy {
            token_ttl: ACCESS_TOKEN_TTL,
            ..RotationPolicy::default()
        },
    )?;
    let secrets = trustmesh_keyring::KeyRing::from_env_or_dir(&config.data_dir.join("auth"))?;
    password::warm_up();
    let hasher = password::Hasher::new(password::HashParams::default())
        .map_err(|e| AuthError::Hasher(e.to_string()))?;
    let hashing = match config.hash_threads {
        0 => hash_pool::HashPool::with_default_threads(),
        threads => hash_pool::HashPool::new(threads, hash_pool::HASH_NICE),
    }
    .map_err(AuthError::HashThreads)?;
    let tokens = TokenIssuer::new(keys.clone(), TOKEN_ISSUER, TOKEN_AUDIENCE, ACCESS_TOKEN_TTL);
    spawn_key_rotation(keys.clone(), shutdown.clone());

    // The auth service verifies its own tokens: keys from its ring, session
    // status from its own table.
    let session_store = store.clone();
    let idle = config.settings.session_idle.as_secs() as i64;
    let sessions = FnSessionChecker::new(move |sid: String| {
        let store = session_store.clone();
        async move {
            store
                .session(&sid)
                .await
                .map(|s| s.is_some_and(|s| s.is_active(store::unix_now(), idle)))
                .map_err(|e| trustmesh_tokens::TokenError::SessionCheck(e.to_string()))
        }
    });
    let verifier = Verifier::new(TOKEN_ISSUER, TOKEN_AUDIENCE, Arc::new(keys))
        .with_session_checker(Arc::new(sessions), SESSION_CHECK_TTL);

    let users = mesh.service_channel(&directory, "user")?;
    let service = service::AuthService::new(
        store,
        hasher,
        hashing,
        secrets,
        tokens,
        users,
        config.settings,
    );
    let routes = tonic::service::Routes::new(AuthServer::new(service));
    Ok(
        GrpcServer::new("auth", &config.trust_domain, source, policy)
            .grpc_addr(config.grpc_addr)
            .admin_addr(config.admin_addr)
            .subject_resolver(Arc::new(JwtSubjects::new(verifier)))
            .metrics(metrics)
            .deny_hook(events.deny_hook("auth"))
            .health_service("trustmesh.auth.v1.Auth")
            .stop_on_fault(db_failed)
            .start(routes, shutdown)
            .await?,
    )
}
