//! Database access for Trustmesh services: one pool per service, SQLite by
//! default (a file per service in the data directory) and PostgreSQL in
//! production (`DATABASE_URL`, one schema per service), with migrations.
//!
//! Both back-ends go through sqlx's `Any` driver, so a service writes its
//! queries once (`$1` placeholders work on both). Where the SQL of a migration
//! differs, a service keeps one migration folder per dialect and passes both
//! to [`Db::migrate`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), trustmesh_store::StoreError> {
//! use trustmesh_store::{Db, StoreConfig};
//! let config = StoreConfig::from_env("wallet", std::path::Path::new(".trustmesh"));
//! let db = Db::connect(&config).await?;
//! let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(db.pool()).await?;
//! assert_eq!(one, 1);
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

pub use sqlx;

mod fault;
pub mod group_commit;
pub mod read_batch;
pub mod sql;
mod stamp;

use fault::Fault;
use group_commit::{LogSync, SyncHook};

pub use group_commit::{WriteStage, WriteTiming};
pub use stamp::timestamp;

#[cfg(feature = "testing")]
pub mod testing;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The service name cannot be used as a schema or file name.
    #[error("invalid service name {0:?}: use lowercase letters, digits and '_'")]
    InvalidService(String),
    /// The database URL has a scheme this store does not speak.
    #[error("unsupported database URL scheme in {0:?}: use postgres:// or sqlite://")]
    UnsupportedUrl(String),
    /// The data directory could not be prepared for the SQLite file.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Connecting to the database failed.
    #[error("cannot open the {backend} database of {service}: {source}")]
    Connect {
        /// The service whose database it is.
        service: String,
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("migrating the database of {service} failed: {source}")]
    Migrate {
        /// The service whose database it is.
        service: String,
        /// The migrator's error.
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error(transparent)]
    Query(#[from] sqlx::Error),
    /// A batch of [`group_commit`] failed as a whole and was rolled back;
    /// retrying is safe.
    #[error("group commit failed: {0}")]
    GroupCommit(String),
    /// The database can no longer make writes durable ([`Db::fault`]: its
    /// log could not be synced after a commit, or its writer is gone):
    /// whether the write survives a power cut is unknown, and the writer
    /// acknowledges nothing any more (a failed sync is never retried: the
    /// kernel may have dropped the pages). The service does not retry it:
    /// it stops ([`Db::failed`]) and the client retries with the same
    /// idempotency key once it is back. The text is the fault's reason.
    #[error(
        "the database cannot make writes durable ({0}): the outcome of this write is unknown \
         and the writer takes no more writes until the service restarts"
    )]
    NotDurable(String),
    /// A batch of [`read_batch`] failed as a whole (the pool or the
    /// connection, not one key) or stopped before answering; nothing was
    /// changed and retrying is safe.
    #[error("a batched read failed: {0}")]
    BatchedRead(String),
    /// A running total kept by a store would leave `i64`: nothing was
    /// written.
    #[error("a running total would overflow: {0}")]
    Overflow(String),
    /// Stored rows break an invariant the store keeps (a running total
    /// that does not add up); the message names them.
    #[error("stored data is inconsistent: {0}")]
    Inconsistent(String),
    /// The database's schema is not the one this binary was built for
    /// (an offline check refuses to migrate it).
    #[error(
        "the database of {service} is not at this binary's schema: {why} \
         (start the service of this version once to migrate it, or use the trustmesh of the \
         database's version)"
    )]
    SchemaMismatch {
        /// The service whose database it is.
        service: String,
        /// What differs.
        why: String,
    },
    /// [`Db::open_existing`] found no SQLite file to open.
    #[error(
        "there is no {service} database at {path} (has the mesh run with this data directory? \
         set --data-dir, or DATABASE_URL for PostgreSQL)"
    )]
    Missing {
        /// The service whose database it is.
        service: String,
        /// Where its file would be.
        path: PathBuf,
    },
}

/// The status message of a service whose database was too busy
/// ([`StoreError::is_busy`]), with gRPC `Unavailable`.
pub const BUSY_MESSAGE: &str = "storage_busy: the database is busy; retry shortly";

/// The status message of a service whose write may or may not have been
/// kept ([`StoreError::NotDurable`]), with gRPC `Unavailable`: the service
/// is stopping to recover its database, and a retry with the same
/// idempotency key once it is back finds out which.
pub const NOT_DURABLE_MESSAGE: &str = "outcome_unknown: the database could not make this write \
     durable and the service is restarting; retry with the same idempotency key";

impl StoreError {
    /// Whether the database was too busy to take the query: no pooled
    /// connection came free within [`StoreConfig::acquire_timeout`].
    /// Nothing was done and a later retry may succeed, so a service
    /// answers `Unavailable` (HTTP 503), not `Internal`.
    pub fn is_busy(&self) -> bool {
        matches!(self, StoreError::Query(sqlx::Error::PoolTimedOut))
    }

    /// The message a service answers with gRPC `Unavailable` (HTTP 503)
    /// for this error, when it is one the client can do something about
    /// by retrying: [`BUSY_MESSAGE`] for a busy database,
    /// [`NOT_DURABLE_MESSAGE`] for a write whose outcome is unknown.
    /// `None` for every other error (a storage failure: `Internal`).
    pub fn unavailable_message(&self) -> Option<&'static str> {
        match self {
            StoreError::NotDurable(_) => Some(NOT_DURABLE_MESSAGE),
            e if e.is_busy() => Some(BUSY_MESSAGE),
            _ => None,
        }
    }
}

/// Which database engine a pool talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Where a service's database is.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The service name: the SQLite file name and the PostgreSQL schema.
    pub service: String,
    /// The data directory holding SQLite files.
    pub data_dir: PathBuf,
    /// A PostgreSQL (or SQLite) URL; `None` means the embedded SQLite file.
    pub url: Option<String>,
    /// The maximum number of pooled connections.
    pub max_connections: u32,
    /// How long a query waits for a pooled connection before it fails
    /// with an error that [`StoreError::is_busy`] recognises.
    pub acquire_timeout: Duration,
}

impl StoreConfig {
    /// The configuration from the environment: `<SERVICE>_DATABASE_URL`,
    /// else `DATABASE_URL`, else `<data_dir>/<service>.db`.
    pub fn from_env(service: &str, data_dir: &Path) -> Self {
        let specific = format!("{}_DATABASE_URL", service.to_ascii_uppercase());
        let url = std::env::var(&specific)
            .ok()
            .or_else(|| std::env::var("DATABASE_URL").ok())
            .filter(|url| !url.is_empty());
        Self {
            service: service.to_owned(),
            data_dir: data_dir.to_path_buf(),
            url,
            max_connections: 16,
            acquire_timeout: Self::DEFAULT_ACQUIRE_TIMEOUT,
        }
    }

    /// The default wait for a pooled connection.
    pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
}

/// A service's database: a connection pool and the engine behind it.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    service: String,
    /// Set once a writer could not make a commit durable (shared by clones).
    fault: Fault,
    /// How the writers' syncers sync the log (tests).
    log_sync: Option<SyncHook>,
    /// Where the writers report how long each write waited in each stage.
    write_timing: Option<group_commit::TimingHook>,
}

impl Db {
    /// Opens the service's database without creating it: like
    /// [`Db::connect`], but a SQLite file that does not exist is
    /// [`StoreError::Missing`] and nothing is created (for the operator's
    /// checks, which read what a service wrote).
    pub async fn open_existing(config: &StoreConfig) -> Result<Db, StoreError> {
        if config.url.is_none() {
            let path = config.data_dir.join(format!("{}.db", config.service));
            if !path.is_file() {
                return Err(StoreError::Missing {
                    service: config.service.clone(),
                    path,
                });
            }
        }
        Self::connect(config).await
    }

    /// Opens (creating if needed) the service's database: the SQLite file in
    /// WAL mode, or the PostgreSQL schema named after the service, which
    /// every pooled connection uses as its `search_path`.
    pub async fn connect(config: &StoreConfig) -> Result<Db, StoreError> {
        install_default_drivers();
        let service = config.service.clone();
        if service.is_empty()
            || !service
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(StoreError::InvalidService(service));
        }
        let (url, backend) = match &config.url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                (url.clone(), Backend::Postgres)
            }
            Some(url) if url.starts_with("sqlite:") => (url.clone(), Backend::Sqlite),
            Some(url) => return Err(StoreError::UnsupportedUrl(redact(url))),
            None => {
                std::fs::create_dir_all(&config.data_dir).map_err(|source| {
                    StoreError::DataDir {
                        path: config.data_dir.clone(),
                        source,
                    }
                })?;
                let file = config.data_dir.join(format!("{service}.db"));
                (
                    format!("sqlite://{}?mode=rwc", file.display()),
                    Backend::Sqlite,
                )
            }
        };
        let connect_error = |source| StoreError::Connect {
            service: service.clone(),
            backend: backend.name(),
            source,
        };
        let options = AnyPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout);
        let pool = match backend {
            Backend::Sqlite => {
                let pool = options
                    // A file on this machine: a connection does not go stale,
                    // and the ping would cost a round trip to sqlx's worker
                    // thread on every query.
                    .test_before_acquire(false)
                    // Every commit syncs the log; the group-commit writer's
                    // own connection leaves that to its syncer and never
                    // comes back to the pool (`group_commit`, *The log's
                    // sync*).
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; \
                                 PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; \
                                 PRAGMA wal_autocheckpoint = 0;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await
                    .map_err(connect_error)?;
                spawn_checkpointer(pool.clone(), service.clone());
                pool
            }
            Backend::Postgres => {
                let create = format!("CREATE SCHEMA IF NOT EXISTS \"{service}\"");
                let bootstrap = AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .map_err(connect_error)?;
                bootstrap
                    .execute(sqlx::AssertSqlSafe(create))
                    .await
                    .map_err(connect_error)?;
                bootstrap.close().await;
                let search_path = format!("SET search_path TO \"{service}\"");
                options
                    .after_connect(move |conn, _| {
                        let search_path = search_path.clone();
                        Box::pin(async move {
                            conn.execute(sqlx::AssertSqlSafe(search_path)).await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await
                    .map_err(connect_error)?
            }
        };
        tracing::info!(service, backend = backend.name(), "database open");
        Ok(Db {
            pool,
            backend,
            service,
            fault: Fault::default(),
            log_sync: None,
            write_timing: None,
        })
    }

    /// Applies the migrations of this database's dialect.
    pub async fn migrate(&self, sqlite: &Migrator, postgres: &Migrator) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|source| StoreError::Migrate {
                service: self.service.clone(),
                source,
            })
    }

    /// Checks, without changing anything, that exactly the migrations of
    /// this database's dialect have been applied: what an offline check
    /// runs instead of [`Db::migrate`], so that it never moves the schema
    /// under the replicas that use it.
    pub async fn require_migrated(
        &self,
        sqlite: &Migrator,
        postgres: &Migrator,
    ) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        };
        let mismatch = |why: String| StoreError::SchemaMismatch {
            service: self.service.clone(),
            why,
        };
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|_| mismatch("it was never migrated".to_owned()))?;
        let known: Vec<i64> = migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| m.version)
            .collect();
        let missing: Vec<i64> = known
            .iter()
            .copied()
            .filter(|v| !applied.contains(v))
            .collect();
        let unknown: Vec<i64> = applied
            .iter()
            .copied()
            .filter(|v| !known.contains(v))
            .collect();
        if !missing.is_empty() {
            return Err(mismatch(format!("migrations {missing:?} are not applied")));
        }
        if !unknown.is_empty() {
            return Err(mismatch(format!(
                "migrations {unknown:?} are newer than this binary"
            )));
        }
        Ok(())
    }

    /// The connection pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The engine behind the pool.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The service whose database this is (its PostgreSQL schema).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Why this database takes no more writes, once a group-commit writer
    /// over it could not make a commit durable (a failed sync of the log:
    /// [`StoreError::NotDurable`]) or is gone (its thread panicked or could
    /// not start); `None` while all is well. The fault is never cleared:
    /// the process must restart.
    pub fn fault(&self) -> Option<String> {
        self.fault.get()
    }

    /// Completes, with the reason, once [`Db::fault`] is set. A service
    /// stops then, so that its supervisor (`trustmesh up`, Kubernetes)
    /// starts it again and SQLite recovers the database from what is on
    /// disk: PostgreSQL's answer to a failed `fsync` too. Never completes
    /// on a database that stays healthy.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let fault = self.fault.clone();
        async move { fault.wait().await }
    }

    /// This database with its writers' syncers syncing the log with `sync`
    /// instead of `File::sync_data` (tests: a sync that blocks or fails).
    #[doc(hidden)]
    pub fn with_log_sync(mut self, sync: LogSync) -> Self {
        self.log_sync = Some(SyncHook(sync));
        self
    }

    /// This database with its group-commit writers reporting to `timing`
    /// how long each write they take waited in each [`WriteStage`] (a
    /// service publishes them as histograms on `/metrics`). Writers made
    /// over this `Db` (or its clones made after this call) report; set it
    /// before making the service's store.
    pub fn with_write_timing(mut self, timing: WriteTiming) -> Self {
        self.write_timing = Some(group_commit::TimingHook(timing));
        self
    }

    /// [`Db::with_write_timing`] into histograms registered in `metrics`
    /// as [`group_commit::WRITE_STAGES_METRIC`], labelled by stage (what a
    /// service publishes on `/metrics`).
    pub fn with_write_metrics(self, metrics: &trustmesh_telemetry::MetricsRegistry) -> Self {
        let stages = trustmesh_telemetry::StageLatency::register(
            metrics,
            group_commit::WRITE_STAGES_METRIC,
            group_commit::WRITE_STAGES_HELP,
            &WriteStage::NAMES,
        );
        self.with_write_timing(stages.into_observer())
    }
}

/// How often the SQLite log is copied back into the database file.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Checkpoints the SQLite database of `pool` every [`CHECKPOINT_EVERY`]
/// until the pool is closed.
///
/// SQLite's own automatic checkpoint runs inside the commit that finds the
/// log over a thousand pages: that commit, and every write queued behind
/// it, waits while pages are copied and the database file is `fsync`ed,
/// several milliseconds. So every connection turns it off
/// (`wal_autocheckpoint = 0`) and this task runs a `PASSIVE` checkpoint on a
/// connection of its own instead: it takes no write lock, so writers go on
/// appending to the log meanwhile, and SQLite starts the log over from its
/// beginning once a checkpoint has copied all of it. Under a steady stream
/// of writes this task never catches up with the writer; the group-commit
/// writer therefore also checkpoints between its own batches
/// ([`group_commit::WRITER_CHECKPOINT_EVERY`]), which rewinds the log.
fn spawn_checkpointer(pool: AnyPool, service: String) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(CHECKPOINT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if pool.is_closed() {
                return;
            }
            if let Err(e) = pool.execute("PRAGMA wal_checkpoint(PASSIVE)").await {
                if pool.is_closed() {
                    return;
                }
                tracing::warn!(%service, error = %e, "WAL checkpoint failed; retrying");
            }
        }
    });
}

/// The URL with any password replaced, for error messages and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("mysql://u:secret@h/db"), "mysql://u:***@h/db");
        assert_eq!(redact("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(redact("mysql://h/db"), "mysql://h/db");
    }
}
