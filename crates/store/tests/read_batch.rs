//! The read batcher on both real back-ends: concurrent reads are answered
//! by a few statements, each with its own answer; a lone read is a batch of
//! one; a failed batch is read again key by key, so only the bad key fails.
//!
//! The tests run on a current-thread runtime: the reads of a `join_all`
//! all queue before the first batch's task runs, so the number of batches
//! is exact.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use sqlx::{AnyPool, Row};
use trustmesh_store::read_batch::{MAX_KEYS, ReadBatcher, ReadHandler, ReadStats};
use trustmesh_store::{Backend, StoreError, sql};

mod common;

use common::{close, open};

/// The key that makes [`Double`] panic.
const PANIC: i64 = -1_000;

/// Doubles numbers in the database, all keys of a batch in one statement.
/// A negative key makes the statement fail (a table that does not exist),
/// [`PANIC`] makes the handler panic after a while; `short` answers one
/// output too few for batches of more than one key.
#[derive(Default)]
struct Double {
    short: bool,
    /// Calls of `read` so far.
    calls: Arc<AtomicUsize>,
}

impl ReadHandler for Double {
    type Key = i64;
    type Output = i64;

    fn read<'a>(
        &'a self,
        pool: &'a AnyPool,
        keys: &'a [i64],
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            assert!(!keys.is_empty() && keys.len() <= MAX_KEYS, "{}", keys.len());
            if keys.contains(&PANIC) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!("a handler bug");
            }
            let table = if keys.iter().any(|k| *k < 0) {
                "no_such_table"
            } else {
                "notes"
            };
            let statement = format!(
                "WITH k (v) AS (VALUES {}) \
                 SELECT k.v AS v, k.v * 2 AS doubled, (SELECT COUNT(*) FROM {table}) AS n FROM k",
                sql::rows(Backend::Postgres, keys.len(), 1, 1),
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(statement));
            for key in keys {
                query = query.bind(*key);
            }
            let rows = query.fetch_all(pool).await?;
            let mut by_key = HashMap::new();
            for row in &rows {
                by_key.insert(
                    row.try_get::<i64, _>("v")?,
                    row.try_get::<i64, _>("doubled")?,
                );
            }
            let mut doubled: Vec<i64> = keys.iter().map(|k| by_key[k]).collect();
            if self.short && keys.len() > 1 {
                doubled.pop();
            }
            Ok(doubled)
        })
    }
}

async fn concurrent_reads_share_statements(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(backend, dir.path()).await;
    let batcher = ReadBatcher::new(&db, Double::default(), 1);

    // A lone read is a batch of one.
    assert_eq!(batcher.read(21).await.expect("lone read"), 42);
    assert_eq!(
        batcher.stats(),
        ReadStats {
            reads: 1,
            batches: 1
        }
    );

    // 200 reads queued together: ceil(200 / 64) statements, each caller
    // its own answer.
    let answers = join_all((0..200).map(|k| batcher.read(k))).await;
    for (k, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.expect("read"), 2 * k as i64);
    }
    assert_eq!(
        batcher.stats(),
        ReadStats {
            reads: 201,
            batches: 5
        }
    );
    close(db).await;
}

async fn a_failed_batch_is_read_key_by_key(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(backend, dir.path()).await;
    let batcher = ReadBatcher::new(&db, Double::default(), 1);
    let answers = join_all([-1, 1, 2, 3].map(|k| batcher.read(k))).await;
    assert!(
        matches!(answers[0], Err(StoreError::Query(_))),
        "{:?}",
        answers[0]
    );
    for (k, answer) in answers.into_iter().enumerate().skip(1) {
        assert_eq!(answer.expect("a good key of a failed batch"), 2 * k as i64);
    }
    assert_eq!(batcher.stats().batches, 1);

    // A handler answering too few outputs: every key read alone.
    let short = ReadBatcher::new(
        &db,
        Double {
            short: true,
            ..Double::default()
        },
        1,
    );
    let answers = join_all([5, 6, 7].map(|k| short.read(k))).await;
    let answers: Vec<i64> = answers.into_iter().map(|a| a.expect("read")).collect();
    assert_eq!(answers, [10, 12, 14]);
    close(db).await;
}

#[tokio::test]
async fn sqlite_concurrent_reads_share_statements() {
    concurrent_reads_share_statements(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_concurrent_reads_share_statements() {
    concurrent_reads_share_statements(Backend::Postgres).await;
}

#[tokio::test]
async fn sqlite_a_failed_batch_is_read_key_by_key() {
    a_failed_batch_is_read_key_by_key(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_failed_batch_is_read_key_by_key() {
    a_failed_batch_is_read_key_by_key(Backend::Postgres).await;
}

/// Several batches run at once when `in_flight` allows (on a multi-thread
/// runtime), and every read is still answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_batches_run_side_by_side() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(Backend::Postgres, dir.path()).await;
    let batcher = ReadBatcher::new(&db, Double::default(), 3);
    let tasks: Vec<_> = (0..500)
        .map(|k| {
            let batcher = batcher.clone();
            tokio::spawn(async move { (k, batcher.read(k).await) })
        })
        .collect();
    for task in tasks {
        let (k, answer) = task.await.expect("task");
        assert_eq!(answer.expect("read"), 2 * k);
    }
    let stats = batcher.stats();
    assert_eq!(stats.reads, 500);
    assert!(stats.batches >= 8 && stats.batches <= 500, "{stats:?}");
    close(db).await;
}

/// A batch whose handler panics answers its own reads and the ones queued
/// behind it with an error (none waits for a later read to come), and the
/// next read runs.
#[tokio::test]
async fn a_panicking_batch_strands_no_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(Backend::Sqlite, dir.path()).await;
    let batcher = ReadBatcher::new(&db, Double::default(), 1);
    let first = tokio::spawn({
        let batcher = batcher.clone();
        async move { batcher.read(PANIC).await }
    });
    // The batch [PANIC] is running; this read queues behind it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let queued = tokio::time::timeout(Duration::from_secs(10), batcher.read(7))
        .await
        .expect("a read queued behind a panicking batch is answered");
    assert!(
        matches!(queued, Err(StoreError::BatchedRead(_))),
        "{queued:?}"
    );
    let first = first.await.expect("task");
    assert!(
        matches!(first, Err(StoreError::BatchedRead(_))),
        "{first:?}"
    );
    assert_eq!(batcher.read(8).await.expect("the next read"), 16);
    close(db).await;
}

/// When the pool fails, every read of the batch hears it at once: no key
/// is read again alone (each would wait for the pool in turn).
#[tokio::test]
async fn a_pool_failure_is_not_read_again_key_by_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(Backend::Sqlite, dir.path()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let batcher = ReadBatcher::new(
        &db,
        Double {
            calls: Arc::clone(&calls),
            ..Double::default()
        },
        1,
    );
    db.pool().close().await;
    let answers = join_all([1, 2, 3].map(|k| batcher.read(k))).await;
    for answer in &answers {
        assert!(
            matches!(answer, Err(StoreError::BatchedRead(_))),
            "{answer:?}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
