//! The group-commit writer on both real back-ends: concurrent units of work
//! are each kept or rolled back on their own, and a caller hears back only
//! once its writes are committed (visible to another connection); a batch
//! handler's requests are handled set-based, or one by one when that fails.

use futures::future::BoxFuture;
use trustmesh_store::group_commit::{BatchHandler, BatchOutcome, BatchWriter, LogSync, Writer};
use trustmesh_store::{Backend, Db, StoreError, sql};

mod common;

use common::{close, open, open_with};

/// Why a unit refused to keep its writes.
#[derive(Debug)]
enum UnitError {
    Refused,
    Store(StoreError),
}

impl From<StoreError> for UnitError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<sqlx::Error> for UnitError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

async fn count(db: &Db, like: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM notes WHERE id LIKE $1")
        .bind(like)
        .fetch_one(db.pool())
        .await
        .expect("count")
}

/// Inserts one note as a unit of `writer`; it must commit.
async fn insert_note(writer: &Writer, id: String, body: String, amount: i64) {
    writer
        .run(move |conn| {
            Box::pin(async move {
                sqlx::query("INSERT INTO notes (id, body, amount) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(body)
                    .bind(amount)
                    .execute(&mut *conn)
                    .await?;
                Ok::<_, UnitError>(())
            })
        })
        .await
        .expect("unit");
}

async fn units_commit_or_roll_back_alone(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(backend, dir.path()).await;
    let writer = Writer::new(&db);
    // Taken before the burst: the unit that reuses it fails on the key.
    sqlx::query("INSERT INTO notes (id, body, amount) VALUES ('taken', 'x', 0)")
        .execute(db.pool())
        .await
        .expect("seed");

    let mut tasks = Vec::new();
    for n in 0..300i64 {
        let (writer, db) = (writer.clone(), db.clone());
        tasks.push(tokio::spawn(async move {
            let id = match n {
                7 => "taken".to_owned(),
                _ => format!("n{n}"),
            };
            let result = writer
                .run(move |conn| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO notes (id, body, amount) VALUES ($1, 'b', $2)")
                            .bind(&id)
                            .bind(n)
                            .execute(&mut *conn)
                            .await?;
                        if n % 5 == 0 {
                            return Err(UnitError::Refused);
                        }
                        Ok::<_, UnitError>(id)
                    })
                })
                .await;
            if let Ok(id) = &result {
                // Durable before the answer: another connection sees it.
                let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes WHERE id = $1")
                    .bind(id)
                    .fetch_one(db.pool())
                    .await
                    .expect("read back");
                assert_eq!(seen, 1, "{id} answered before it was visible");
            }
            (n, result)
        }));
    }
    let mut kept = 0;
    for task in tasks {
        let (n, result) = task.await.expect("task");
        match (n, result) {
            (7, Err(UnitError::Store(StoreError::Query(_)))) => {}
            (7, other) => panic!("the duplicate key must fail alone: {other:?}"),
            (n, Err(UnitError::Refused)) if n % 5 == 0 => {}
            (n, Ok(id)) if n % 5 != 0 => {
                assert_eq!(id, format!("n{n}"));
                kept += 1;
            }
            (n, other) => panic!("unit {n}: {other:?}"),
        }
    }
    // 300 units, 60 refused (multiples of 5), one duplicate.
    assert_eq!(kept, 239);
    assert_eq!(count(&db, "n%").await, 239);
    let refused: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM notes WHERE amount % 5 = 0 AND id <> 'taken'")
            .fetch_one(db.pool())
            .await
            .expect("count refused");
    assert_eq!(refused, 0, "a refused unit left rows behind");
    drop(writer);
    close(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_units_commit_or_roll_back_alone() {
    units_commit_or_roll_back_alone(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_units_commit_or_roll_back_alone() {
    units_commit_or_roll_back_alone(Backend::Postgres).await;
}

/// Units that arrive together share a transaction on SQLite: fewer
/// commits than units.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_batches_concurrent_units() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(Backend::Sqlite, dir.path()).await;
    let writer = Writer::new(&db);
    let mut tasks = Vec::new();
    for n in 0..500i64 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            insert_note(&writer, format!("n{n}"), "b".to_owned(), n).await;
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(count(&db, "n%").await, 500);
    let stats = writer.stats();
    assert_eq!(stats.units, 500);
    assert!(
        stats.batches < stats.units,
        "500 concurrent units were committed one by one: {stats:?}"
    );
    drop(writer);
    close(db).await;
}

/// `PRAGMA synchronous` of `conn`: 1 is `NORMAL`, 2 is `FULL`.
fn synchronous(conn: &mut sqlx::AnyConnection) -> BoxFuture<'_, Result<i64, StoreError>> {
    Box::pin(async move {
        Ok(sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(conn)
            .await?)
    })
}

/// A SQLite writer commits without syncing the log and leaves the sync to
/// its syncer, but a caller hears back only once a sync covered its batch:
/// after each answer to a lone caller every committed batch is durable,
/// and so after concurrent callers. The writer's connection is the only
/// one that commits with `synchronous = NORMAL`: every pooled connection
/// keeps `FULL`, also after the writer dropped a connection on a failed
/// batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_answers_wait_for_the_logs_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(Backend::Sqlite, dir.path()).await;
    let writer = Writer::new(&db);
    for n in 0..20i64 {
        insert_note(&writer, format!("d{n}"), "b".to_owned(), n).await;
        let stats = writer.stats();
        assert_eq!(
            stats.durable, stats.batches,
            "a caller heard back before its batch was synced: {stats:?}"
        );
    }
    let mut tasks = Vec::new();
    for n in 0..300i64 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            insert_note(&writer, format!("c{n}"), "b".to_owned(), n).await;
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let stats = writer.stats();
    assert_eq!(stats.durable, stats.batches, "{stats:?}");
    assert!(
        stats.syncs >= 1 && stats.syncs <= stats.batches,
        "one sync per batch at most: {stats:?}"
    );
    assert_eq!(count(&db, "c%").await, 300);
    assert_eq!(writer.run(synchronous).await.expect("pragma"), 1);
    // The writer's page cache is its own, larger than SQLite's default.
    let cache_size: i64 = writer
        .run(|conn| {
            Box::pin(async move {
                Ok::<_, StoreError>(
                    sqlx::query_scalar("PRAGMA cache_size")
                        .fetch_one(conn)
                        .await?,
                )
            })
        })
        .await
        .expect("pragma");
    assert_eq!(
        cache_size,
        -i64::from(trustmesh_store::group_commit::WRITER_CACHE_KIB)
    );

    // A batch that breaks (a savepoint cannot be released once its
    // transaction is gone) makes the writer drop its connection.
    let broken = writer
        .run(|conn| {
            Box::pin(async move {
                sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
                Ok::<_, StoreError>(())
            })
        })
        .await;
    assert!(
        broken.is_err(),
        "the broken batch was answered as committed"
    );
    insert_note(&writer, "after".to_owned(), "b".to_owned(), 0).await;
    let mut pooled = Vec::new();
    for _ in 0..7 {
        let mut conn = db.pool().acquire().await.expect("a pooled connection");
        assert_eq!(synchronous(&mut conn).await.expect("pragma"), 2);
        pooled.push(conn);
    }
    drop(pooled);
    drop(writer);
    close(db).await;
}

/// Inserts one note as a unit of `writer`; its outcome.
async fn try_insert(writer: &Writer, id: &str) -> Result<(), UnitError> {
    let id = id.to_owned();
    writer
        .run(move |conn| {
            Box::pin(async move {
                sqlx::query("INSERT INTO notes (id, body, amount) VALUES ($1, 'b', 0)")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                Ok::<_, UnitError>(())
            })
        })
        .await
}

/// A gate the test opens; a sync waits for it.
#[derive(Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().expect("gate");
        while !*open {
            open = self.opened.wait(open).expect("gate");
        }
    }

    fn open(&self) {
        *self.open.lock().expect("gate") = true;
        self.opened.notify_all();
    }
}

/// While the log's sync has not returned, the batch is committed (another
/// connection reads it) but its caller has not heard back; once the sync
/// returns, it has. What is synced is the database's log file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_caller_hears_back_only_after_the_sync() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(Backend::Sqlite, dir.path()).await;
    let gate = std::sync::Arc::new(Gate::default());
    let synced = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sync: LogSync = {
        let (gate, synced) = (gate.clone(), synced.clone());
        std::sync::Arc::new(move |file: &std::fs::File| {
            gate.wait();
            synced.lock().expect("synced").push(file.metadata()?.ino());
            file.sync_data()
        })
    };
    let writer = Writer::new(&db.clone().with_log_sync(sync));
    let caller = {
        let writer = writer.clone();
        tokio::spawn(async move { try_insert(&writer, "g1").await })
    };
    let visible = async {
        while count(&db, "g1").await == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), visible)
        .await
        .expect("the batch was never committed");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        !caller.is_finished(),
        "the caller heard back while its batch's sync was still running"
    );
    gate.open();
    caller.await.expect("task").expect("the insert");
    let log = dir.path().join(format!("{}.db-wal", db.service()));
    let log_inode = std::fs::metadata(&log).expect("the log").ino();
    let synced = synced.lock().expect("synced").clone();
    assert!(
        !synced.is_empty() && synced.iter().all(|ino| *ino == log_inode),
        "{synced:?}"
    );
    drop(writer);
    close(db).await;
}

/// Asserts that a write was answered "outcome unknown".
fn assert_not_durable(result: &Result<(), UnitError>) {
    assert!(
        matches!(result, Err(UnitError::Store(StoreError::NotDurable(_)))),
        "{result:?}"
    );
}

/// The reason the database's fault was set with, which `failed` (a task
/// waiting on `Db::failed`) must hear within 5 s.
async fn fault_signalled(failed: tokio::task::JoinHandle<String>) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(5), failed)
        .await
        .expect("the fault was never signalled")
        .expect("task")
}

/// A failed sync is never taken for success: its callers hear that the
/// outcome is unknown, and the writer acknowledges nothing after it (a
/// later sync that succeeds proves nothing about pages the kernel may have
/// dropped); later writes are not even run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_failed_sync_stops_every_acknowledgement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(Backend::Sqlite, dir.path()).await;
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sync: LogSync = {
        let fail = fail.clone();
        std::sync::Arc::new(move |file: &std::fs::File| {
            if fail.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("injected write-back error"));
            }
            file.sync_data()
        })
    };
    let faulty = db.clone().with_log_sync(sync);
    assert_eq!(faulty.fault(), None);
    let failed = tokio::spawn(faulty.failed());
    let writer = Writer::new(&faulty);
    let first = try_insert(&writer, "f1").await;
    assert_not_durable(&first);
    let later = try_insert(&writer, "f2").await;
    assert_not_durable(&later);
    assert_eq!(
        count(&db, "f2").await,
        0,
        "a write ran after the failed sync"
    );
    let stats = writer.stats();
    assert!(stats.sync_failed, "{stats:?}");
    assert_eq!(stats.durable, 0, "{stats:?}");
    assert!(
        writer.barrier().await.is_err(),
        "a barrier passed after the failure"
    );
    // The database's fault is set, wakes whoever waits to stop the
    // service, and holds for every writer over it, new ones included.
    let why = fault_signalled(failed).await;
    assert!(
        why.starts_with("the log could not be synced") && why.contains("injected write-back error"),
        "{why}"
    );
    assert_eq!(db.fault().as_deref(), Some(why.as_str()));
    let other = try_insert(&Writer::new(&db), "f3").await;
    assert_not_durable(&other);
    assert_eq!(
        count(&db, "f3").await,
        0,
        "another writer wrote after the fault"
    );
    drop(writer);
    close(db).await;
}

/// A sync of the log that panics is a failed sync: its caller hears that
/// the outcome is unknown (not silence, not "rolled back"), and the
/// database's fault is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_sync_that_panics_is_a_failed_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(Backend::Sqlite, dir.path()).await;
    let sync: LogSync = std::sync::Arc::new(|_: &std::fs::File| panic!("injected panic in a sync"));
    let writer = Writer::new(&db.clone().with_log_sync(sync));
    let first = try_insert(&writer, "p1").await;
    assert_not_durable(&first);
    assert!(
        db.fault().is_some_and(|why| why.contains("panicked")),
        "{:?}",
        db.fault()
    );
    drop(writer);
    close(db).await;
}

/// A writer whose thread panics (a bug in a unit of work) sets the
/// database's fault, so that the service restarts instead of answering
/// every later write "the writer has stopped"; the unit's caller hears
/// that the writer stopped, and nothing of its batch was kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_writer_that_panics_sets_the_fault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(Backend::Sqlite, dir.path()).await;
    let failed = tokio::spawn(db.failed());
    let writer = Writer::new(&db);
    let panicked = writer
        .run(|conn| {
            Box::pin(async move {
                sqlx::query("INSERT INTO notes (id, body, amount) VALUES ('lost', 'b', 0)")
                    .execute(&mut *conn)
                    .await?;
                if std::hint::black_box(true) {
                    panic!("injected panic in a unit of work");
                }
                Ok::<_, StoreError>(())
            })
        })
        .await;
    assert!(
        matches!(&panicked, Err(StoreError::GroupCommit(why)) if why.contains("stopped")),
        "{panicked:?}"
    );
    let why = fault_signalled(failed).await;
    assert!(why.contains("panicked"), "{why}");
    assert_eq!(count(&db, "lost").await, 0, "the panicked batch was kept");
    drop(writer);
    close(db).await;
}

/// Under a steady stream of batches the writer's own checkpoints rewind the
/// SQLite log: it stays a fraction of what was written through it (a
/// checkpoint on another connection never caught up with the writer, and
/// the log grew by everything written).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_log_rewinds_under_a_steady_stream_of_writes() {
    const CALLERS: i64 = 32;
    const UNITS: i64 = 250;
    const BODY: usize = 8 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(Backend::Sqlite, dir.path()).await;
    let writer = Writer::new(&db);
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..UNITS {
                insert_note(&writer, format!("s{caller}-{n}"), "x".repeat(BODY), n).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(count(&db, "s%").await, CALLERS * UNITS);
    let written = (CALLERS * UNITS) as u64 * BODY as u64;
    let log = dir.path().join(format!("{}.db-wal", db.service()));
    let log_size = std::fs::metadata(&log).expect("the log file").len();
    assert!(
        log_size < written / 3,
        "the log was not rewound: {log_size} bytes after {written} bytes of rows"
    );
    drop(writer);
    close(db).await;
}

/// Inserts notes set-based; a note named `poison` fails the set-based
/// attempt, and alone it is refused.
struct Notes;

impl BatchHandler for Notes {
    type Item = (String, i64);
    type Output = usize;
    type Error = NoteError;

    fn run_batch<'a>(
        &'a self,
        conn: &'a mut sqlx::AnyConnection,
        items: &'a [(String, i64)],
    ) -> BoxFuture<'a, BatchOutcome<usize, NoteError>> {
        Box::pin(async move {
            let backend = sql::backend_of(conn).expect("a known back-end");
            let insert = format!(
                "INSERT INTO notes (id, body, amount) VALUES {}",
                sql::rows(backend, items.len(), 3, 1)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
            for (id, amount) in items {
                query = query.bind(id).bind("set").bind(*amount);
            }
            query.execute(&mut *conn).await.map_err(StoreError::from)?;
            if items.iter().any(|(id, _)| id == "poison") {
                return Err(NoteError::Refused);
            }
            Ok(items.iter().map(|_| Ok(items.len())).collect())
        })
    }

    fn run_one<'a>(
        &'a self,
        conn: &'a mut sqlx::AnyConnection,
        item: &'a (String, i64),
    ) -> BoxFuture<'a, Result<usize, NoteError>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO notes (id, body, amount) VALUES ($1, 'one', $2)")
                .bind(&item.0)
                .bind(item.1)
                .execute(&mut *conn)
                .await
                .map_err(StoreError::from)?;
            if item.0 == "poison" {
                return Err(NoteError::Refused);
            }
            Ok(1)
        })
    }
}

/// Why a note was refused.
#[derive(Debug, thiserror::Error)]
enum NoteError {
    #[error("refused")]
    Refused,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Submitted requests are handled set-based, in batches; a batch whose
/// set-based attempt fails is rolled back and run one by one, so only the
/// bad request is refused. Plain units share the queue.
async fn batch_handler_falls_back_one_by_one(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(backend, dir.path()).await;
    let writer = BatchWriter::new(&db, Notes);
    let mut tasks = Vec::new();
    for n in 0..300i64 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            let id = if n == 150 {
                "poison".to_owned()
            } else {
                format!("n{n}")
            };
            (n, writer.submit((id, n)).await)
        }));
    }
    let unit = writer
        .writer()
        .run(|conn| {
            Box::pin(async move {
                sqlx::query("INSERT INTO notes (id, body, amount) VALUES ('unit', 'u', 0)")
                    .execute(&mut *conn)
                    .await?;
                Ok::<_, UnitError>(())
            })
        })
        .await;
    assert!(unit.is_ok(), "{unit:?}");
    let mut batched = 0;
    for task in tasks {
        match task.await.expect("task") {
            (150, Err(NoteError::Refused)) => {}
            (n, Ok(size)) if n != 150 => batched += usize::from(size > 1),
            (n, other) => panic!("request {n}: {other:?}"),
        }
    }
    assert_eq!(count(&db, "n%").await, 299);
    assert_eq!(
        count(&db, "poison").await,
        0,
        "a refused request left a row"
    );
    assert_eq!(count(&db, "unit").await, 1);
    let stats = writer.stats();
    assert_eq!(stats.units, 301);
    assert!(stats.batches < stats.units, "{stats:?}");
    assert!(
        stats.fallbacks >= 1,
        "the poisoned batch did not fall back: {stats:?}"
    );
    assert!(batched > 0, "no request was handled set-based");
    drop(writer);
    close(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_batch_handler_falls_back_one_by_one() {
    batch_handler_falls_back_one_by_one(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_batch_handler_falls_back_one_by_one() {
    batch_handler_falls_back_one_by_one(Backend::Postgres).await;
}

/// A unit of work that reads one row.
fn select_one(conn: &mut sqlx::AnyConnection) -> BoxFuture<'_, Result<i64, StoreError>> {
    Box::pin(async move { Ok(sqlx::query_scalar("SELECT 1").fetch_one(conn).await?) })
}

/// A pool with no connection to spare is busy, not broken: a query and a
/// writer's unit that waited out the acquire timeout fail with an error
/// that says so ([`StoreError::is_busy`], which the services answer with
/// `Unavailable`), and the writer works again once a connection is free.
async fn a_busy_pool_is_reported_as_busy(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_with(
        backend,
        dir.path(),
        1,
        std::time::Duration::from_millis(200),
    )
    .await;
    let writer = Writer::new(&db);
    let mut held = db.pool().acquire().await.expect("the only connection");

    let err = sqlx::query("SELECT 1")
        .execute(db.pool())
        .await
        .map_err(StoreError::from)
        .expect_err("no connection to spare");
    assert!(err.is_busy(), "not busy: {err}");
    let err = writer
        .run(select_one)
        .await
        .expect_err("no connection to spare");
    assert!(err.is_busy(), "not busy: {err}");
    // Other failures are not busy.
    let err = sqlx::query("SELECT * FROM no_such_table")
        .execute(&mut *held)
        .await
        .map_err(StoreError::from)
        .expect_err("no such table");
    assert!(!err.is_busy(), "busy: {err}");

    drop(held);
    assert_eq!(writer.run(select_one).await.expect("a free connection"), 1);
    drop(writer);
    close(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_busy_pool_is_reported_as_busy() {
    a_busy_pool_is_reported_as_busy(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_busy_pool_is_reported_as_busy() {
    a_busy_pool_is_reported_as_busy(Backend::Postgres).await;
}

/// The stages a [`Db::with_write_timing`] hook heard, by name.
type Heard = std::sync::Arc<std::sync::Mutex<Vec<(String, std::time::Duration)>>>;

/// Every write through the queue reports each of its stages once: queued,
/// committing, and on SQLite the wait for the log's sync (here a sync that
/// takes 50 ms, so that its stage shows it). A PostgreSQL commit is durable
/// when it ends: no sync stage.
async fn writes_report_their_stages(backend: Backend) {
    use std::time::Duration;
    use trustmesh_store::WriteStage;
    let dir = tempfile::tempdir().expect("tempdir");
    let heard = Heard::default();
    let timing: trustmesh_store::WriteTiming = {
        let heard = heard.clone();
        std::sync::Arc::new(move |stage: &str, took| {
            heard.lock().expect("heard").push((stage.to_owned(), took));
        })
    };
    let slow_sync: LogSync = std::sync::Arc::new(|file: &std::fs::File| {
        std::thread::sleep(Duration::from_millis(50));
        file.sync_data()
    });
    let db = open(backend, dir.path()).await;
    let timed = db
        .clone()
        .with_log_sync(slow_sync)
        .with_write_timing(timing);
    let writer = BatchWriter::new(&timed, Notes);
    let mut tasks = Vec::new();
    for n in 0..40i64 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            writer.submit((format!("t{n}"), n)).await
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("the write");
    }
    assert_eq!(count(&db, "t%").await, 40);
    let heard = heard.lock().expect("heard").clone();
    let of = |stage: WriteStage| -> Vec<Duration> {
        heard
            .iter()
            .filter(|(name, _)| name == stage.as_str())
            .map(|(_, took)| *took)
            .collect()
    };
    assert_eq!(of(WriteStage::Queue).len(), 40, "{heard:?}");
    assert_eq!(of(WriteStage::Commit).len(), 40, "{heard:?}");
    let syncs = of(WriteStage::Sync);
    match backend {
        Backend::Sqlite => {
            assert_eq!(syncs.len(), 40, "{heard:?}");
            assert!(
                syncs.iter().all(|took| *took >= Duration::from_millis(50)),
                "a sync stage shorter than the sync: {syncs:?}"
            );
        }
        Backend::Postgres => assert!(syncs.is_empty(), "{heard:?}"),
    }
    drop(writer);
    drop(timed);
    close(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_writes_report_their_stages() {
    writes_report_their_stages(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_writes_report_their_stages() {
    writes_report_their_stages(Backend::Postgres).await;
}
