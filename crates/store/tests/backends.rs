//! The store against both real back-ends: an SQLite file and the PostgreSQL
//! server named by `TRUSTMESH_TEST_DATABASE_URL` (default: the local `test`
//! database). A missing PostgreSQL fails the test, it is never skipped.

use sqlx::migrate::Migrator;
use trustmesh_store::{Backend, Db, StoreConfig, StoreError};

static SQLITE: Migrator = sqlx::migrate!("tests/migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("tests/migrations/postgres");

fn postgres_url() -> String {
    std::env::var("TRUSTMESH_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn round_trip(db: &Db) {
    db.migrate(&SQLITE, &POSTGRES).await.expect("migrate");
    // Migrating twice is a no-op.
    db.migrate(&SQLITE, &POSTGRES).await.expect("migrate again");
    sqlx::query("INSERT INTO notes (id, body, amount) VALUES ($1, $2, $3)")
        .bind("n1")
        .bind("hello")
        .bind(i64::MAX)
        .execute(db.pool())
        .await
        .expect("insert");
    let (body, amount): (String, i64) =
        sqlx::query_as("SELECT body, amount FROM notes WHERE id = $1")
            .bind("n1")
            .fetch_one(db.pool())
            .await
            .expect("select");
    assert_eq!(body, "hello");
    assert_eq!(amount, i64::MAX);
}

/// A SQLite database `notes` in `<dir>/data`.
fn sqlite_notes(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        service: "notes".into(),
        data_dir: dir.join("data"),
        url: None,
        max_connections: 4,
        acquire_timeout: StoreConfig::DEFAULT_ACQUIRE_TIMEOUT,
    }
}

#[tokio::test]
async fn sqlite_file_in_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = sqlite_notes(dir.path());
    let db = Db::connect(&config).await.expect("connect");
    assert_eq!(db.backend(), Backend::Sqlite);
    round_trip(&db).await;
    db.close().await;
    assert!(dir.path().join("data/notes.db").exists());
}

/// The operator's checks open what a service wrote: a missing SQLite file
/// is an error that names where it was looked for, and nothing is created.
#[tokio::test]
async fn open_existing_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = sqlite_notes(dir.path());
    let err = Db::open_existing(&config).await.expect_err("no file yet");
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("data/notes.db"), "{err}");
    assert!(!dir.path().join("data").exists(), "something was created");

    Db::connect(&config).await.expect("connect").close().await;
    let db = Db::open_existing(&config)
        .await
        .expect("the file exists now");
    round_trip(&db).await;
    db.close().await;
}

#[tokio::test]
async fn postgres_schema_per_service() {
    let service = format!("store_test_{}", std::process::id());
    let config = StoreConfig {
        service: service.clone(),
        data_dir: std::env::temp_dir(),
        url: Some(postgres_url()),
        max_connections: 4,
        acquire_timeout: StoreConfig::DEFAULT_ACQUIRE_TIMEOUT,
    };
    let db = Db::connect(&config)
        .await
        .expect("PostgreSQL must be reachable (TRUSTMESH_TEST_DATABASE_URL)");
    assert_eq!(db.backend(), Backend::Postgres);
    round_trip(&db).await;
    let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(db.pool())
        .await
        .expect("schema");
    assert_eq!(schema, service);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{service}\" CASCADE"
    )))
    .execute(db.pool())
    .await
    .expect("drop");
    db.close().await;
}

#[tokio::test]
async fn rejects_bad_names_and_urls() {
    let mut config = StoreConfig::from_env("Bad-Name", std::path::Path::new("/tmp"));
    config.url = None;
    assert!(Db::connect(&config).await.is_err());
    config.service = "ok".into();
    config.url = Some("mysql://user:hunter2@localhost/db".into());
    let err = Db::connect(&config)
        .await
        .expect_err("mysql refused")
        .to_string();
    assert!(err.contains("unsupported"), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");
}

/// SQLite's automatic checkpoint is off on every pooled connection (it
/// would run inside a commit); the background checkpointer copies the log
/// into the database file instead.
#[tokio::test]
async fn sqlite_log_is_checkpointed_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        service: "notes".into(),
        data_dir: dir.path().to_path_buf(),
        url: None,
        max_connections: 2,
        acquire_timeout: StoreConfig::DEFAULT_ACQUIRE_TIMEOUT,
    };
    let db = Db::connect(&config).await.expect("connect");
    db.migrate(&SQLITE, &POSTGRES).await.expect("migrate");
    let auto: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
        .fetch_one(db.pool())
        .await
        .expect("pragma");
    assert_eq!(auto, 0, "automatic checkpoints are off");

    let file = dir.path().join("notes.db");
    let before = std::fs::metadata(&file).expect("database file").len();
    // About 2 MiB, in one transaction: into the log, not the file.
    let mut tx = db.pool().begin().await.expect("begin");
    for n in 0..512 {
        sqlx::query("INSERT INTO notes (id, body, amount) VALUES ($1, $2, $3)")
            .bind(format!("n{n}"))
            .bind("x".repeat(4096))
            .bind(n)
            .execute(&mut *tx)
            .await
            .expect("insert");
    }
    tx.commit().await.expect("commit");

    let deadline = std::time::Instant::now() + trustmesh_store::CHECKPOINT_EVERY * 10;
    loop {
        let now = std::fs::metadata(&file).expect("database file").len();
        if now >= before + 2 * 1024 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log was not checkpointed: the file grew from {before} to {now} bytes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    db.close().await;
}
