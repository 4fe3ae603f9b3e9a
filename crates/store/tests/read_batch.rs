//! The read batcher on both real back-ends: concurrent reads are answered
//! by a few statements, each with its own answer; a lone read is a batch of
//! one; a failed batch is read again key by key, so only the bad key fails.
//!
//! The tests run on a current-thread runtime: the reads of a `join_all`
//! all queue before the first batch's task runs, so the number of batches
//! is exact.

use std::collections::HashMap;

use futures::future::{BoxFuture, join_all};
use sqlx::{AnyPool, Row};
use trustmesh_store::read_batch::{MAX_KEYS, ReadBatcher, ReadHandler, ReadStats};
use trustmesh_store::{Backend, StoreError, sql};

mod common;

use common::{close, open};

/// Doubles numbers in the database, all keys of a batch in one statement.
/// A negative key makes the statement fail (a table that does not exist);
/// `short` answers one output too few for batches of more than one key.
#[derive(Default)]
struct Double {
    short: bool,
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
            assert!(!keys.is_empty() && keys.len() <= MAX_KEYS, "{}", keys.len());
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
    let short = ReadBatcher::new(&db, Double { short: true }, 1);
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
