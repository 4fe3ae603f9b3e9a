//! Test support (feature `testing`): a fresh, migrated database per test on
//! either back-end, and [`on_both_backends!`](crate::on_both_backends) to run
//! one test body on both.
//!
//! SQLite is a temporary file; PostgreSQL a schema of its own in the server
//! named by `TRUSTMESH_TEST_DATABASE_URL` (default the local `test`
//! database), dropped afterwards. A PostgreSQL test never skips: an
//! unreachable server fails it.

use sqlx::migrate::Migrator;

use crate::{Backend, Db, StoreConfig};

/// The PostgreSQL server of the tests.
pub fn postgres_url() -> String {
    std::env::var("TRUSTMESH_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The migrations of `migrator` before `version`: a database as the code
/// of that time left it (tests of a later migration's backfill).
pub fn migrations_before(migrator: &Migrator, version: i64) -> Migrator {
    Migrator::with_migrations(
        migrator
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect(),
    )
}

/// A test's database; removed when dropped.
pub struct TestDb {
    /// The open, migrated database.
    pub db: Db,
    /// The back-end.
    pub backend: Backend,
    /// The directory of the SQLite file (and anything else the test keeps).
    pub dir: tempfile::TempDir,
    schema: Option<String>,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("backend", &self.backend)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl TestDb {
    /// A fresh database of `service` on `backend`, migrated with
    /// `migrator`, with a pool of `connections`. Panics (failing the test)
    /// if the database is unreachable.
    pub async fn open(
        service: &str,
        backend: Backend,
        connections: u32,
        migrator: &Migrator,
    ) -> TestDb {
        Self::open_with_timeout(
            service,
            backend,
            connections,
            StoreConfig::DEFAULT_ACQUIRE_TIMEOUT,
            migrator,
        )
        .await
    }

    /// Like [`TestDb::open`], with queries waiting at most
    /// `acquire_timeout` for a pooled connection (tests of a busy pool).
    pub async fn open_with_timeout(
        service: &str,
        backend: Backend,
        connections: u32,
        acquire_timeout: std::time::Duration,
        migrator: &Migrator,
    ) -> TestDb {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (service, url, schema) = match backend {
            Backend::Sqlite => (service.to_owned(), None, None),
            Backend::Postgres => {
                let schema = format!("{service}_t_{}", uuid::Uuid::new_v4().simple());
                (schema.clone(), Some(postgres_url()), Some(schema))
            }
        };
        let config = StoreConfig {
            service,
            data_dir: dir.path().to_path_buf(),
            url,
            max_connections: connections,
            acquire_timeout,
        };
        let db = Db::connect(&config).await.unwrap_or_else(|e| {
            panic!(
                "the {} test database must be reachable (TRUSTMESH_TEST_DATABASE_URL): {e}",
                backend.name()
            )
        });
        db.migrate(migrator, migrator)
            .await
            .unwrap_or_else(|e| panic!("migrating the test database failed: {e}"));
        TestDb {
            db,
            backend,
            dir,
            schema,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        // Drop the schema from a thread of its own: Drop cannot await, and
        // the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                sqlx::any::install_default_drivers();
                if let Ok(pool) = sqlx::any::AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(&postgres_url())
                    .await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    )))
                    .execute(&pool)
                    .await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}

/// Defines `mod $name { sqlite, postgres }` running the async test body
/// `$name(backend)` on each back-end.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    super::$name($crate::Backend::Postgres).await;
                }
            }
        )*
    };
}
