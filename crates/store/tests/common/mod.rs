//! What the store's test suites share: a fresh database on either back-end,
//! migrated with the test migrations (a `notes` table), and its removal.

use sqlx::migrate::Migrator;
use trustmesh_store::{Backend, Db, StoreConfig};

static SQLITE: Migrator = sqlx::migrate!("tests/migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("tests/migrations/postgres");

/// A fresh database; on PostgreSQL a schema of its own, which [`close`]
/// drops.
pub async fn open(backend: Backend, dir: &std::path::Path) -> Db {
    open_with(backend, dir, 8, StoreConfig::DEFAULT_ACQUIRE_TIMEOUT).await
}

/// Like [`open`], with a pool of `connections` that a query waits for at
/// most `acquire_timeout`.
pub async fn open_with(
    backend: Backend,
    dir: &std::path::Path,
    connections: u32,
    acquire_timeout: std::time::Duration,
) -> Db {
    let service = format!("gc_{}", uuid::Uuid::new_v4().simple());
    let url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(
            std::env::var("TRUSTMESH_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
        ),
    };
    let db = Db::connect(&StoreConfig {
        service,
        data_dir: dir.to_path_buf(),
        url,
        max_connections: connections,
        acquire_timeout,
    })
    .await
    .expect("connect (PostgreSQL must be running: scripts/services.sh)");
    db.migrate(&SQLITE, &POSTGRES).await.expect("migrate");
    db
}

pub async fn close(db: Db) {
    if db.backend() == Backend::Postgres {
        let drop = format!("DROP SCHEMA \"{}\" CASCADE", db.service());
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(db.pool())
            .await
            .expect("drop schema");
    }
    db.close().await;
}
