//! Group commit: the small write transactions of one process folded into
//! one database transaction, so that one `fsync` serves many of them.
//!
//! SQLite has one writer at a time and, in WAL mode with `synchronous =
//! FULL`, makes every commit durable with an `fsync` of the log: on this
//! kind of disk a commit costs about a millisecond, while a statement costs
//! about ten microseconds. A service that posts one small transaction per
//! request is therefore bound to about a thousand requests a second, however
//! many callers wait. A [`Writer`] on SQLite runs every unit of work it is
//! given on one connection, in a task of its own: it takes whatever has
//! queued up (at most [`MAX_BATCH`] units), opens one transaction, runs each
//! unit inside its own savepoint — a unit that fails is rolled back to its
//! savepoint and leaves no trace, the others are kept — and commits once.
//! Only then does any caller get its answer: nothing is acknowledged before
//! it is durable. When the batch as a whole fails (the commit, a savepoint),
//! it is rolled back and every caller of it gets
//! [`StoreError::GroupCommit`], which is transient: the caller may retry.
//!
//! On PostgreSQL, which has many concurrent writers, combines their commits
//! in its own write-ahead log and locks rows rather than the database, a
//! [`Writer`] runs each unit in a transaction of its own on a pooled
//! connection.
//!
//! The units run in the writer's task, not the caller's: a caller that goes
//! away (a cancelled request) cannot leave a transaction half-done.
//!
//! ```no_run
//! # async fn example(db: trustmesh_store::Db) -> Result<(), trustmesh_store::StoreError> {
//! use trustmesh_store::group_commit::Writer;
//!
//! let writer = Writer::new(&db);
//! let inserted: u64 = writer
//!     .run(|conn| {
//!         Box::pin(async move {
//!             let done = sqlx::query("INSERT INTO notes (body) VALUES ($1)")
//!                 .bind("hello")
//!                 .execute(conn)
//!                 .await?;
//!             Ok::<_, trustmesh_store::StoreError>(done.rows_affected())
//!         })
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

use std::any::Any as AnyValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use sqlx::AnyConnection;
use sqlx::{Acquire, Connection};
use tokio::sync::{OnceCell, mpsc, oneshot};

use crate::{Backend, Db, StoreError};

/// The most units of work one SQLite transaction carries. A batch holds the
/// database's write lock while it runs, so this bounds what the last caller
/// of a batch waits for.
pub const MAX_BATCH: usize = 256;

/// How many units may wait for the writer before callers wait to enqueue.
const QUEUE: usize = 4 * MAX_BATCH;

/// A unit of work's answer, type-erased for the queue: its `Result<T, E>`.
type Answer = Box<dyn AnyValue + Send>;

/// A unit of work as the writer runs it: on the open transaction's
/// connection, returning whether its writes are kept, and its answer.
type Work = Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, (bool, Answer)> + Send>;

/// A queued unit of work and where its answer goes once the batch settled.
struct Job {
    work: Work,
    reply: oneshot::Sender<Result<Answer, StoreError>>,
}

/// Runs write transactions, batched on SQLite (see the module documentation).
///
/// On SQLite the writer keeps one connection of the pool for as long as a
/// clone of it lives: drop every clone before [`Db::close`], which waits for
/// every connection to come back.
#[derive(Clone, Debug)]
pub struct Writer {
    db: Db,
    /// SQLite only: the queue of the writer task, started on first use.
    queue: Option<Arc<OnceCell<mpsc::Sender<Job>>>>,
    counters: Arc<Counters>,
}

/// What a [`Writer`] has committed so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Units of work committed (kept or refused).
    pub units: u64,
    /// Transactions committed for them: fewer than `units` when batching.
    pub batches: u64,
}

#[derive(Debug, Default)]
struct Counters {
    units: AtomicU64,
    batches: AtomicU64,
}

impl Counters {
    fn committed(&self, units: usize) {
        self.units.fetch_add(units as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }
}

impl Writer {
    /// A writer over `db`: batching on SQLite, one transaction per unit on
    /// PostgreSQL. The SQLite writer task starts on the first unit of work
    /// and stops when every clone of this writer is gone.
    pub fn new(db: &Db) -> Self {
        let queue = (db.backend() == Backend::Sqlite).then(|| Arc::new(OnceCell::new()));
        Self {
            db: db.clone(),
            queue,
            counters: Arc::default(),
        }
    }

    /// Units and transactions committed so far (by this writer and its
    /// clones).
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            units: self.counters.units.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
        }
    }

    /// Runs `work` in a write transaction and returns its result once that
    /// transaction is committed. An `Err` from `work` rolls back what it
    /// wrote (to its savepoint on SQLite) and is returned as is.
    pub async fn run<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let Some(cell) = &self.queue else {
            return self.run_alone(work).await;
        };
        let queue = cell
            .get_or_init(|| async {
                let (sender, receiver) = mpsc::channel(QUEUE);
                spawn_writer(self.db.clone(), receiver, self.counters.clone());
                sender
            })
            .await;
        let (reply, answer) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            Box::pin(async move {
                let result = work(conn).await;
                let keep = result.is_ok();
                (keep, Box::new(result) as Answer)
            })
        });
        queue
            .send(Job { work, reply })
            .await
            .map_err(|_| StoreError::GroupCommit("the database writer has stopped".into()))?;
        let answer = answer
            .await
            .map_err(|_| StoreError::GroupCommit("the database writer has stopped".into()))??;
        match answer.downcast::<Result<T, E>>() {
            Ok(result) => *result,
            Err(_) => Err(StoreError::GroupCommit("mismatched answer type".into()).into()),
        }
    }

    /// One transaction of its own for `work` (PostgreSQL).
    async fn run_alone<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, E>> + Send + 'static,
        E: From<StoreError>,
    {
        let mut tx = self.db.pool().begin().await.map_err(StoreError::from)?;
        match work(&mut tx).await {
            Ok(value) => {
                tx.commit().await.map_err(StoreError::from)?;
                self.counters.committed(1);
                Ok(value)
            }
            Err(e) => {
                // Roll back now rather than when the transaction is dropped,
                // so that the next writer does not wait for its locks.
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(error = %rollback, "rollback failed");
                }
                Err(e)
            }
        }
    }
}

/// Starts the writer on a thread of its own with a single-threaded
/// runtime: it waits on the database after every statement, and must not
/// queue behind the service's request handling to be woken up.
fn spawn_writer(db: Db, queue: mpsc::Receiver<Job>, counters: Arc<Counters>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let started = runtime.and_then(|runtime| {
        std::thread::Builder::new()
            .name(format!("{}-db-writer", db.service()))
            .spawn(move || runtime.block_on(write_batches(db, queue, counters)))
    });
    if let Err(e) = started {
        // The queue's receiver is gone with the closure: every caller gets
        // "the database writer has stopped".
        tracing::error!(error = %e, "cannot start the database writer thread");
    }
}

/// The SQLite writer task: batches until every sender is gone.
async fn write_batches(db: Db, mut queue: mpsc::Receiver<Job>, counters: Arc<Counters>) {
    let mut connection = None;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut conn = match connection.take() {
            Some(conn) => conn,
            None => match db.pool().acquire().await {
                Ok(conn) => conn,
                Err(e) => {
                    fail(batch, &format!("no database connection: {e}"));
                    continue;
                }
            },
        };
        let units = batch.len();
        match run_batch(&mut conn, batch).await {
            Ok(()) => {
                counters.committed(units);
                connection = Some(conn);
            }
            // Start the next batch on a fresh connection.
            Err(e) => tracing::warn!(error = %e, "a group commit failed; its callers may retry"),
        }
    }
}

/// Runs one batch in one transaction; every job of it is answered.
async fn run_batch(conn: &mut AnyConnection, batch: Vec<Job>) -> Result<(), StoreError> {
    let mut tx = match Connection::begin(&mut *conn).await {
        Ok(tx) => tx,
        Err(e) => {
            let reason = format!("cannot begin a transaction: {e}");
            fail(batch, &reason);
            return Err(StoreError::GroupCommit(reason));
        }
    };
    let mut settled = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter();
    let mut broken = None;
    for job in jobs.by_ref() {
        let mut savepoint = match Acquire::begin(&mut tx).await {
            Ok(savepoint) => savepoint,
            Err(e) => {
                broken = Some((job.reply, format!("cannot open a savepoint: {e}")));
                break;
            }
        };
        let (keep, answer) = (job.work)(&mut savepoint).await;
        let closed = if keep {
            savepoint.commit().await
        } else {
            savepoint.rollback().await
        };
        if let Err(e) = closed {
            broken = Some((job.reply, format!("cannot close a savepoint: {e}")));
            break;
        }
        settled.push((job.reply, keep, answer));
    }
    if let Some((reply, reason)) = broken {
        // Everything of this batch is rolled back (when `tx` is dropped);
        // every caller hears so.
        drop(tx);
        let _ = reply.send(Err(StoreError::GroupCommit(reason.clone())));
        for (reply, _, _) in settled {
            let _ = reply.send(Err(StoreError::GroupCommit(reason.clone())));
        }
        fail(jobs.collect(), &reason);
        return Err(StoreError::GroupCommit(reason));
    }
    match tx.commit().await {
        Ok(()) => {
            for (reply, _, answer) in settled {
                let _ = reply.send(Ok(answer));
            }
            Ok(())
        }
        Err(e) => {
            let reason = format!("the commit failed: {e}");
            for (reply, keep, answer) in settled {
                // A unit that failed wrote nothing: its own answer stands.
                let _ = reply.send(match keep {
                    true => Err(StoreError::GroupCommit(reason.clone())),
                    false => Ok(answer),
                });
            }
            Err(StoreError::GroupCommit(reason))
        }
    }
}

/// Answers every job of `batch` with `reason`.
fn fail(batch: Vec<Job>, reason: &str) {
    for job in batch {
        let _ = job
            .reply
            .send(Err(StoreError::GroupCommit(reason.to_owned())));
    }
}
