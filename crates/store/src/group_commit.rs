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
//! No caller gets its answer before its batch is durable (see *The log's
//! sync*, below). When the batch as a whole fails (the commit, a savepoint),
//! it is rolled back and every caller of it gets
//! [`StoreError::GroupCommit`], which is transient: the caller may retry.
//! When no pooled connection comes free in time, the callers get the
//! pool's timeout itself ([`StoreError::is_busy`]).
//!
//! On PostgreSQL, which has many concurrent writers, combines their commits
//! in its own write-ahead log and locks rows rather than the database, a
//! [`Writer`] runs each unit in a transaction of its own on a pooled
//! connection.
//!
//! The units run in the writer's task, not the caller's: a caller that goes
//! away (a cancelled request) cannot leave a transaction half-done.
//!
//! # The log's sync
//!
//! With `synchronous = FULL` SQLite syncs the log inside every `COMMIT`,
//! and the writer could start its next batch only once the disk had
//! answered: on a disk whose `fsync` takes 4 ms the writer sat idle for
//! most of each batch. The writer's own connection therefore commits with
//! `synchronous = NORMAL` (the log is written, not synced), and a thread of
//! its own, the syncer, syncs the log file (`fdatasync` of `<db>-wal`)
//! while the writer runs the next batch. The callers of a batch hear back
//! only after a sync that began after their batch's commit, so still
//! nothing is acknowledged before it is durable; one sync covers every
//! batch committed before it began. What changes is what *other*
//! connections may see: a batch is visible from its commit, a few
//! milliseconds before it is durable, so a power cut (not a crash of the
//! process: the log is in the kernel's cache) can take back a write that a
//! reader saw but whose caller never heard back (the outbox relay waits
//! for [`Writer::barrier`] before it ships what it read, and so may any
//! reader that confirms a write to a client). At most [`MAX_UNSYNCED`]
//! committed batches wait for a sync before the writer waits for the
//! syncer. The syncer keeps one descriptor of the log, opened with the
//! writer's connection before its first commit, so that it hears of every
//! write-back error after that. Should a sync fail, its callers hear
//! [`StoreError::NotDurable`], the failure is logged as an error, and the
//! database's fault is set ([`Db::fault`]): every writer over it answers
//! every later write the same way, since after a failed sync the kernel may
//! have dropped the pages and a later sync that succeeds proves nothing.
//! The service stops when the fault is set ([`Db::failed`]); started again,
//! SQLite recovers the database from what the disk holds, and a caller
//! that retries with the same idempotency key finds out whether its write
//! was kept. A sync that panics counts as one that failed, and a writer
//! whose thread panics (a bug in a unit of work) sets the fault too: the
//! callers of its batch hear that the writer stopped, and the service
//! restarts instead of refusing every write from then on. The writer's
//! connection never returns to the pool (it is closed instead), so no
//! other write commits without a sync. Every other
//! connection keeps `synchronous = FULL`; a database that is not a WAL
//! file keeps it on the writer too. The writer's own checkpoints (below)
//! still sync the log and the database inline.
//!
//! # Set-based batches
//!
//! A unit of work is opaque: the writer can only run units one after the
//! other, each paying its own statements (and, on SQLite, each statement a
//! round trip to the driver's worker thread). Requests that are all of one
//! kind can do better: a [`BatchHandler`] receives every request of that
//! kind that queued up together and handles them with a fixed, small number
//! of statements for the whole batch (one multi-row `INSERT` instead of one
//! per request, say). A [`BatchWriter`] is a [`Writer`] with such a handler:
//! [`BatchWriter::submit`] queues one request; consecutive requests of a
//! batch go to [`BatchHandler::run_batch`] together, inside a savepoint of
//! the batch's transaction. If that call fails as a whole, the writer rolls
//! back to the savepoint and runs each request alone with
//! [`BatchHandler::run_one`], each in a savepoint of its own, so one bad
//! request cannot fail the others. The plain units of the same writer
//! ([`BatchWriter::writer`]) share its queue and its transactions, in
//! arrival order.
//!
//! On PostgreSQL too, submitted requests queue for one writer task and each
//! batch is one transaction (a handler there must lock what it reads, in an
//! order that cannot deadlock with other processes); plain units keep their
//! own transactions.
//!
//! A SQLite batch starts with `BEGIN IMMEDIATE`: it holds the database's
//! write lock from its first statement, so a batch that reads before it
//! writes never finds its snapshot overtaken by another connection's commit
//! (`SQLITE_BUSY_SNAPSHOT`).
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
use std::fs::File;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sqlx::AnyConnection;
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, Connection, Row};
use tokio::sync::{OnceCell, mpsc, oneshot};

use crate::{Backend, Db, Fault, StoreError};

/// The most units of work one SQLite transaction carries. A batch holds the
/// database's write lock while it runs, so this bounds what the last caller
/// of a batch waits for.
pub const MAX_BATCH: usize = 256;

/// How many units may wait for the writer before callers wait to enqueue.
const QUEUE: usize = 4 * MAX_BATCH;

/// How many committed batches may wait for the log's sync before the
/// writer waits for the syncer (see *The log's sync*).
pub const MAX_UNSYNCED: usize = 2;

/// How a writer's syncer makes the log durable: `File::sync_data` unless a
/// test puts something else in ([`Db::with_log_sync`]).
pub type LogSync = Arc<dyn Fn(&File) -> std::io::Result<()> + Send + Sync>;

/// A [`LogSync`] that shows in `Debug` output.
#[derive(Clone)]
pub(crate) struct SyncHook(pub(crate) LogSync);

impl std::fmt::Debug for SyncHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSync")
    }
}

/// A stage of a write through a [`Writer`]'s queue, as timed for
/// [`Db::with_write_timing`]. The three add up to what the caller waited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteStage {
    /// From the caller's request to the start of the batch that carries it:
    /// waiting for the writer to finish the batch before (and, on SQLite,
    /// for the syncer when [`MAX_UNSYNCED`] batches wait for a sync).
    Queue,
    /// The batch's transaction, from its `BEGIN` to the end of its `COMMIT`.
    Commit,
    /// From the commit to the sync of the log that makes it durable (SQLite
    /// WAL files; other commits are durable when they end).
    Sync,
}

impl WriteStage {
    /// The name of every stage ([`WriteStage::as_str`]), in the order a
    /// write passes them.
    pub const NAMES: [&'static str; 3] = ["queue", "commit", "sync"];

    /// The stage's name (a metric label): `queue`, `commit` or `sync`.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteStage::Queue => Self::NAMES[0],
            WriteStage::Commit => Self::NAMES[1],
            WriteStage::Sync => Self::NAMES[2],
        }
    }
}

/// The name under which a service publishes its writes' [`WriteStage`]
/// times (`/metrics`, a histogram labelled `stage`).
pub const WRITE_STAGES_METRIC: &str = "db_write_stage_seconds";
/// The help text of [`WRITE_STAGES_METRIC`].
pub const WRITE_STAGES_HELP: &str = "Time a write through the database's group-commit writer spent queued, committing, and waiting for the log's sync";

/// Receives how long one write waited in one stage, by the stage's name
/// ([`WriteStage::as_str`]; see [`Db::with_write_timing`]): the telemetry
/// crate's stage observer. It is called on the writer's and the syncer's
/// threads, once per write and stage: it must be quick (a histogram's
/// `observe`).
pub type WriteTiming = trustmesh_telemetry::latency::StageObserver;

/// A [`WriteTiming`] that shows in `Debug` output.
#[derive(Clone)]
pub(crate) struct TimingHook(pub(crate) WriteTiming);

impl std::fmt::Debug for TimingHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteTiming")
    }
}

/// The page cache of a SQLite writer's connection, in KiB (SQLite's
/// default is 2 MiB): the pages its batches touch stay in memory instead of
/// being read again through the kernel.
pub const WRITER_CACHE_KIB: u32 = 64 * 1024;

/// How often, at most, a SQLite writer checkpoints the log itself, between
/// two batches (see [`Writer`]).
pub const WRITER_CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// A unit of work's answer, type-erased for the queue: its `Result<T, E>`.
type Answer = Box<dyn AnyValue + Send>;

/// A unit of work as the writer runs it: on the open transaction's
/// connection, returning whether its writes are kept, and its answer.
type Work = Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, (bool, Answer)> + Send>;

/// A request for the writer's [`BatchHandler`], type-erased for the queue.
type Item = Box<dyn AnyValue + Send>;

/// What a queued job asks for.
enum Task {
    /// An opaque unit of work ([`Writer::run`]).
    Unit(Work),
    /// A request for the batch handler ([`BatchWriter::submit`]).
    Item(Item),
}

/// Where a job's answer goes.
type Reply = oneshot::Sender<Result<Answer, StoreError>>;

/// A queued job and where its answer goes once the batch settled.
struct Job {
    task: Task,
    reply: Reply,
    /// When the caller queued it.
    queued: Instant,
}

/// The answers of a committed batch, waiting for the log to be synced.
struct Unsynced {
    /// The log file (`<db>-wal`), opened with the writer's connection.
    log: Arc<File>,
    answers: Vec<(Reply, Answer)>,
    /// When the batch's commit ended.
    committed: Instant,
}

/// What [`BatchHandler::run_batch`] returns: one outcome per request, or
/// the failure of the set-based attempt as a whole.
pub type BatchOutcome<T, E> = Result<Vec<Result<T, E>>, E>;

/// Handles a set of requests of one kind together (see the module
/// documentation).
pub trait BatchHandler: Send + Sync + 'static {
    /// One request.
    type Item: Send + Sync + 'static;
    /// A request's answer once its batch is committed.
    type Output: Send + 'static;
    /// Why a request was refused (or the batch failed).
    type Error: From<StoreError> + std::fmt::Display + Send + 'static;

    /// Handles `items`, in arrival order, on `conn`, which is inside the
    /// batch's transaction (in a savepoint). Returns one outcome per item, in
    /// the same order. An item answered with `Err` must leave no trace:
    /// the handler writes nothing for it. An `Err` of the whole call means
    /// the set-based attempt failed: everything it wrote is rolled back and
    /// each item runs again through [`BatchHandler::run_one`].
    fn run_batch<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        items: &'a [Self::Item],
    ) -> BoxFuture<'a, BatchOutcome<Self::Output, Self::Error>>;

    /// Handles one item alone, on `conn`, inside a savepoint of its own:
    /// an `Err` rolls back what it wrote.
    fn run_one<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        item: &'a Self::Item,
    ) -> BoxFuture<'a, Result<Self::Output, Self::Error>>;
}

/// A [`BatchHandler`] behind type erasure, as the writer task holds it.
trait ErasedHandler: Send + Sync {
    /// Runs a run of consecutive requests of one batch; `Err` when the
    /// batch's transaction is broken (a savepoint could not be opened or
    /// closed) and must be rolled back as a whole.
    fn run<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        items: Vec<Item>,
    ) -> BoxFuture<'a, Result<Vec<(bool, Answer)>, String>>;
}

/// The erasure of a handler `H`, with the writer's counters.
struct Erased<H> {
    handler: Arc<H>,
    counters: Arc<Counters>,
}

impl<H: BatchHandler> ErasedHandler for Erased<H> {
    fn run<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        items: Vec<Item>,
    ) -> BoxFuture<'a, Result<Vec<(bool, Answer)>, String>> {
        Box::pin(async move {
            let mut typed = Vec::with_capacity(items.len());
            for item in items {
                match item.downcast::<H::Item>() {
                    Ok(item) => typed.push(*item),
                    // Only `BatchWriter<H>` queues items for `H`.
                    Err(_) => return Err("mismatched request type".to_owned()),
                }
            }
            run_set(&*self.handler, conn, &typed, &self.counters).await
        })
    }
}

/// Runs `items` set-based in a savepoint, or one by one if that fails.
async fn run_set<H: BatchHandler>(
    handler: &H,
    conn: &mut AnyConnection,
    items: &[H::Item],
    counters: &Counters,
) -> Result<Vec<(bool, Answer)>, String> {
    let answer = |result: Result<H::Output, H::Error>| -> (bool, Answer) {
        (result.is_ok(), Box::new(result) as Answer)
    };
    let mut savepoint = Connection::begin(&mut *conn)
        .await
        .map_err(|e| format!("cannot open a savepoint: {e}"))?;
    match handler.run_batch(&mut savepoint, items).await {
        Ok(outcomes) if outcomes.len() == items.len() => {
            savepoint
                .commit()
                .await
                .map_err(|e| format!("cannot close a savepoint: {e}"))?;
            return Ok(outcomes.into_iter().map(answer).collect());
        }
        Ok(outcomes) => tracing::error!(
            items = items.len(),
            outcomes = outcomes.len(),
            "a batch handler answered the wrong number of requests; running them one by one"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            items = items.len(),
            "a set-based batch failed; running its requests one by one"
        ),
    }
    counters.fallbacks.fetch_add(1, Ordering::Relaxed);
    savepoint
        .rollback()
        .await
        .map_err(|e| format!("cannot roll back a savepoint: {e}"))?;
    let mut answers = Vec::with_capacity(items.len());
    for item in items {
        let mut savepoint = Connection::begin(&mut *conn)
            .await
            .map_err(|e| format!("cannot open a savepoint: {e}"))?;
        let result = handler.run_one(&mut savepoint, item).await;
        let closed = if result.is_ok() {
            savepoint.commit().await
        } else {
            savepoint.rollback().await
        };
        closed.map_err(|e| format!("cannot close a savepoint: {e}"))?;
        answers.push(answer(result));
    }
    Ok(answers)
}

/// Runs write transactions, batched on SQLite (see the module documentation).
///
/// On SQLite the writer keeps one connection of the pool for as long as a
/// clone of it lives: drop every clone before [`Db::close`], which waits for
/// every connection to come back.
///
/// A SQLite writer also checkpoints the log itself, on its own connection
/// right after a commit, at most every [`WRITER_CHECKPOINT_EVERY`]. SQLite starts
/// the log over from its beginning only when a write transaction begins
/// after a checkpoint copied all of it; under a steady stream of batches a
/// checkpoint on another connection never catches up with the writer, and
/// the log grew without bound (1.5 GB in 15 s of the money benchmark, with
/// every new frame written past the end of the file). Between two of its
/// own batches the writer is the only one appending, so its checkpoint
/// copies everything and the next batch rewinds the log.
#[derive(Clone, Debug)]
pub struct Writer {
    db: Db,
    /// The queue of the writer task, started on first use: SQLite, or a
    /// writer with a batch handler (whose requests queue on PostgreSQL too).
    queue: Option<Arc<OnceCell<mpsc::Sender<Job>>>>,
    /// Whether plain units go through the queue (SQLite) or run alone.
    queue_units: bool,
    /// The batch handler of a [`BatchWriter`].
    handler: Option<Arc<dyn ErasedHandler>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for dyn ErasedHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchHandler")
    }
}

/// What a [`Writer`] has committed so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Units of work committed (kept or refused).
    pub units: u64,
    /// Transactions committed for them: fewer than `units` when batching.
    pub batches: u64,
    /// Set-based attempts of a [`BatchHandler`] that failed as a whole, so
    /// that their requests ran one by one.
    pub fallbacks: u64,
    /// Committed transactions whose callers heard back: on a SQLite WAL
    /// file only once a sync of the log covered them.
    pub durable: u64,
    /// Syncs of the log by the writer's syncer that succeeded (SQLite WAL
    /// files; one covers every batch committed before it began).
    pub syncs: u64,
    /// Whether a sync of the log failed: the database's writers
    /// acknowledge nothing any more ([`StoreError::NotDurable`],
    /// [`Db::fault`]).
    pub sync_failed: bool,
}

#[derive(Debug)]
struct Counters {
    units: AtomicU64,
    batches: AtomicU64,
    fallbacks: AtomicU64,
    durable: AtomicU64,
    syncs: AtomicU64,
    /// The database's fault: why a sync of its log failed, once one did.
    fault: Fault,
    /// Where the time of each write's stages goes, if anywhere.
    timing: Option<TimingHook>,
}

impl Counters {
    fn new(db: &Db) -> Self {
        Self {
            units: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            fault: db.fault.clone(),
            timing: db.write_timing.clone(),
        }
    }

    /// Reports that `writes` writes each spent `took` in `stage`.
    fn timed(&self, stage: WriteStage, took: Duration, writes: usize) {
        if let Some(TimingHook(timing)) = &self.timing {
            for _ in 0..writes {
                timing(stage.as_str(), took);
            }
        }
    }

    fn committed(&self, units: usize) {
        self.units.fetch_add(units as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    fn durable(&self, batches: usize) {
        self.durable.fetch_add(batches as u64, Ordering::Relaxed);
    }
}

impl Writer {
    /// A writer over `db`: batching on SQLite, one transaction per unit on
    /// PostgreSQL. The SQLite writer task starts on the first unit of work
    /// and stops when every clone of this writer is gone.
    pub fn new(db: &Db) -> Self {
        Self::with_handler(db, |_| None)
    }

    /// A writer whose batch handler (if any) `handler` makes with the
    /// writer's counters.
    fn with_handler(
        db: &Db,
        handler: impl FnOnce(Arc<Counters>) -> Option<Arc<dyn ErasedHandler>>,
    ) -> Self {
        let counters = Arc::new(Counters::new(db));
        let handler = handler(counters.clone());
        let queue_units = db.backend() == Backend::Sqlite;
        let queue = (queue_units || handler.is_some()).then(|| Arc::new(OnceCell::new()));
        Self {
            db: db.clone(),
            queue,
            queue_units,
            handler,
            counters,
        }
    }

    /// Units and transactions committed so far (by this writer and its
    /// clones).
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            units: self.counters.units.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            fallbacks: self.counters.fallbacks.load(Ordering::Relaxed),
            durable: self.counters.durable.load(Ordering::Relaxed),
            syncs: self.counters.syncs.load(Ordering::Relaxed),
            sync_failed: self.counters.fault.get().is_some(),
        }
    }

    /// Waits until everything this writer committed before the call is
    /// durable (an empty unit through the queue: its answer waits for a
    /// sync that covers every batch before it). A reader that confirms a
    /// write to a client, or ships it elsewhere, calls this after reading
    /// and before answering. Free of any wait for the disk on PostgreSQL and
    /// on SQLite databases whose commits sync themselves.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        if !self.queue_units {
            return Ok(());
        }
        self.run(|_| Box::pin(async { Ok::<(), StoreError>(()) }))
            .await
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
        if !self.queue_units {
            return self.run_alone(work).await;
        }
        let work: Work = Box::new(move |conn| {
            Box::pin(async move {
                let result = work(conn).await;
                let keep = result.is_ok();
                (keep, Box::new(result) as Answer)
            })
        });
        self.enqueue(Task::Unit(work)).await
    }

    /// Queues `task` for the writer task and waits for its answer.
    async fn enqueue<T, E>(&self, task: Task) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let stopped = || StoreError::GroupCommit("the database writer has stopped".into());
        let Some(cell) = &self.queue else {
            return Err(StoreError::GroupCommit("this writer has no queue".into()).into());
        };
        let queue = cell
            .get_or_init(|| async {
                let (sender, receiver) = mpsc::channel(QUEUE);
                spawn_writer(
                    self.db.clone(),
                    receiver,
                    self.handler.clone(),
                    self.counters.clone(),
                );
                sender
            })
            .await;
        let (reply, answer) = oneshot::channel();
        queue
            .send(Job {
                task,
                reply,
                queued: Instant::now(),
            })
            .await
            .map_err(|_| stopped())?;
        let answer = answer.await.map_err(|_| stopped())??;
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
                self.counters.durable(1);
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

/// A [`Writer`] whose requests of one kind are handled set-based by `H`
/// (see the module documentation). Clones share the queue, the handler and
/// the writer task.
pub struct BatchWriter<H: BatchHandler> {
    writer: Writer,
    _handler: PhantomData<fn() -> H>,
}

impl<H: BatchHandler> Clone for BatchWriter<H> {
    fn clone(&self) -> Self {
        Self {
            writer: self.writer.clone(),
            _handler: PhantomData,
        }
    }
}

impl<H: BatchHandler> std::fmt::Debug for BatchWriter<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWriter")
            .field("writer", &self.writer)
            .finish()
    }
}

impl<H: BatchHandler> BatchWriter<H> {
    /// A writer over `db` whose submitted requests `handler` handles in
    /// sets. Its task starts on the first request or unit and stops when
    /// every clone (and every clone of [`BatchWriter::writer`]) is gone.
    pub fn new(db: &Db, handler: H) -> Self {
        let handler = Arc::new(handler);
        let writer = Writer::with_handler(db, |counters| {
            Some(Arc::new(Erased { handler, counters }) as Arc<dyn ErasedHandler>)
        });
        Self {
            writer,
            _handler: PhantomData,
        }
    }

    /// Queues `item` and returns its outcome once its batch is committed
    /// (an `Err` of the item itself is returned at once after the batch
    /// settled: it wrote nothing). When the batch as a whole fails, the
    /// error is [`StoreError::GroupCommit`]: nothing of it was written and
    /// the caller may retry.
    pub async fn submit(&self, item: H::Item) -> Result<H::Output, H::Error> {
        self.writer.enqueue(Task::Item(Box::new(item))).await
    }

    /// The plain writer sharing this one's queue and transactions: its
    /// units run in arrival order with the submitted requests (on SQLite;
    /// on PostgreSQL each in a transaction of its own).
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Requests, units and transactions committed so far.
    pub fn stats(&self) -> WriterStats {
        self.writer.stats()
    }
}

/// Starts the writer on a thread of its own with a single-threaded
/// runtime: it waits on the database after every statement, and must not
/// queue behind the service's request handling to be woken up.
fn spawn_writer(
    db: Db,
    queue: mpsc::Receiver<Job>,
    handler: Option<Arc<dyn ErasedHandler>>,
    counters: Arc<Counters>,
) {
    let log_sync = db
        .log_sync
        .clone()
        .unwrap_or_else(|| SyncHook(Arc::new(File::sync_data)));
    let syncer = (db.backend() == Backend::Sqlite)
        .then(|| spawn_syncer(db.service(), counters.clone(), log_sync.clone()))
        .and_then(|started| {
            started
                .inspect_err(|e| {
                    tracing::error!(error = %e, "cannot start the log's syncer; the writer syncs in its commits");
                })
                .ok()
        });
    let fault = counters.fault.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let started = runtime.and_then(|runtime| {
        let fault = fault.clone();
        std::thread::Builder::new()
            .name(format!("{}-db-writer", db.service()))
            .spawn(move || {
                let syncer = syncer.map(|sender| (sender, log_sync));
                let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    runtime.block_on(write_batches(db, queue, handler, counters, syncer))
                }));
                if ran.is_err() {
                    // The callers of the batch it ran, and every later one,
                    // hear "the database writer has stopped"; the service
                    // stops on the fault instead of refusing every write.
                    writer_lost(&fault, "the database writer panicked");
                }
            })
    });
    if let Err(e) = started {
        // The queue's receiver is gone with the closure: every caller gets
        // "the database writer has stopped".
        writer_lost(
            &fault,
            &format!("cannot start the database writer thread: {e}"),
        );
    }
}

/// Sets the database's fault for a writer that is gone: without it the
/// service would refuse every write until someone restarted it.
fn writer_lost(fault: &Fault, why: &str) {
    let why = fault.set(why.to_owned());
    tracing::error!(reason = %why, "the database takes no more writes until the service restarts");
}

/// Starts the syncer of a SQLite writer (see *The log's sync* in the
/// module documentation): it takes the answers of every batch committed
/// since its last sync, syncs the log once, and only then answers them.
/// It stops when the writer is gone, after answering what it holds.
fn spawn_syncer(
    service: &str,
    counters: Arc<Counters>,
    log_sync: SyncHook,
) -> std::io::Result<std::sync::mpsc::SyncSender<Unsynced>> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Unsynced>(MAX_UNSYNCED);
    std::thread::Builder::new()
        .name(format!("{service}-db-sync"))
        .spawn(move || {
            while let Ok(first) = receiver.recv() {
                // Every batch taken here committed before the sync begins.
                let mut waiting = vec![first];
                waiting.extend(receiver.try_iter());
                sync_and_answer(waiting, &log_sync, &counters);
            }
        })?;
    Ok(sender)
}

/// Syncs the logs of `waiting` (one, in practice) and answers their
/// callers: success once synced, [`StoreError::NotDurable`] if this or any
/// earlier sync failed.
fn sync_and_answer(waiting: Vec<Unsynced>, log_sync: &SyncHook, counters: &Counters) {
    let synced = match counters.fault.get() {
        Some(why) => Err(why),
        None => sync_logs(&waiting, log_sync).map_err(|e| {
            let why = format!("the log could not be synced: {e}");
            tracing::error!(
                error = %e,
                "the database log could not be synced: committed writes may not be durable; \
                 the database takes no more writes until the service restarts"
            );
            counters.fault.set(why)
        }),
    };
    match synced {
        Ok(()) => {
            counters.syncs.fetch_add(1, Ordering::Relaxed);
            counters.durable(waiting.len());
            let synced = Instant::now();
            for unsynced in waiting {
                counters.timed(
                    WriteStage::Sync,
                    synced.duration_since(unsynced.committed),
                    unsynced.answers.len(),
                );
                for (reply, answer) in unsynced.answers {
                    let _ = reply.send(Ok(answer));
                }
            }
        }
        Err(why) => {
            for (reply, _) in waiting.into_iter().flat_map(|u| u.answers) {
                let _ = reply.send(Err(StoreError::NotDurable(why.clone())));
            }
        }
    }
}

/// Syncs each distinct log file of `waiting` with `log_sync`. A sync that
/// panics is a sync that failed: its callers must still hear back.
fn sync_logs(waiting: &[Unsynced], log_sync: &SyncHook) -> std::io::Result<()> {
    let mut synced: Vec<&Arc<File>> = Vec::with_capacity(1);
    for unsynced in waiting {
        if !synced.iter().any(|log| Arc::ptr_eq(log, &unsynced.log)) {
            std::panic::catch_unwind(AssertUnwindSafe(|| (log_sync.0)(&unsynced.log)))
                .unwrap_or_else(|_| Err(std::io::Error::other("the log's sync panicked")))?;
            synced.push(&unsynced.log);
        }
    }
    Ok(())
}

/// The writer task: batches until every sender is gone.
async fn write_batches(
    db: Db,
    mut queue: mpsc::Receiver<Job>,
    handler: Option<Arc<dyn ErasedHandler>>,
    counters: Arc<Counters>,
    syncer: Option<(std::sync::mpsc::SyncSender<Unsynced>, SyncHook)>,
) {
    let mut connection = None;
    let sqlite = db.backend() == Backend::Sqlite;
    let mut checkpointed = Instant::now();
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Some(why) = counters.fault.get() {
            // After a failed sync nothing is acknowledged any more.
            answer_all(batch, || StoreError::NotDurable(why.clone()));
            continue;
        }
        let started = Instant::now();
        if counters.timing.is_some() {
            for job in &batch {
                counters.timed(WriteStage::Queue, started.duration_since(job.queued), 1);
            }
        }
        let (mut conn, log) = match connection.take() {
            Some(open) => open,
            None => match writer_connection(&db, syncer.is_some()).await {
                Ok(open) => open,
                Err(sqlx::Error::PoolTimedOut) => {
                    // No connection came free in time: the database is
                    // busy, not broken, and the callers hear it as such.
                    answer_all(batch, || StoreError::Query(sqlx::Error::PoolTimedOut));
                    continue;
                }
                Err(e) => {
                    fail(batch, &format!("no database connection: {e}"));
                    continue;
                }
            },
        };
        match run_batch(&mut conn, sqlite, handler.as_deref(), &counters, batch).await {
            Ok(answers) => {
                let committed = Instant::now();
                counters.timed(
                    WriteStage::Commit,
                    committed.duration_since(started),
                    answers.len(),
                );
                match (&log, &syncer) {
                    (Some(log), Some((syncer, log_sync))) => {
                        let unsynced = Unsynced {
                            log: log.clone(),
                            answers,
                            committed,
                        };
                        // Waits while MAX_UNSYNCED batches wait for a sync.
                        if let Err(unsent) = syncer.send(unsynced) {
                            // The syncer is gone: sync here.
                            sync_and_answer(vec![unsent.0], log_sync, &counters);
                        }
                    }
                    // The commit itself was durable.
                    _ => {
                        counters.durable(1);
                        for (reply, answer) in answers {
                            let _ = reply.send(Ok(answer));
                        }
                    }
                }
                if sqlite && checkpointed.elapsed() >= WRITER_CHECKPOINT_EVERY {
                    checkpoint(&mut conn).await;
                    checkpointed = Instant::now();
                }
                connection = Some((conn, log));
            }
            // Start the next batch on a fresh connection.
            Err(e) => tracing::warn!(error = %e, "a group commit failed; its callers may retry"),
        }
    }
}

/// The connection a writer task keeps, and the log file its syncer syncs
/// when the commits leave that to it (`pipelined`, a SQLite WAL file).
///
/// On SQLite its statement and savepoint journals stay in memory
/// (`temp_store = MEMORY`): a batch's multi-row statements and savepoints
/// would otherwise first copy every page they touch to a temporary file (a
/// third of the wallet's CPU in the money benchmark), and its page cache is
/// [`WRITER_CACHE_KIB`] (the pages it touches were read again through the
/// kernel with SQLite's default of 2 MiB). With a log to sync it
/// commits with `synchronous = NORMAL` and is closed rather than returned
/// to the pool. The log is opened before the first commit on it, so that
/// its descriptor hears of every write-back error from then on; SQLite
/// neither deletes nor replaces the file while this connection is open.
/// (Closing this descriptor drops none of SQLite's locks, which are on the
/// database file and `-shm`; do not do the same with those.)
async fn writer_connection(
    db: &Db,
    pipelined: bool,
) -> Result<(PoolConnection<sqlx::Any>, Option<Arc<File>>), sqlx::Error> {
    let mut conn = db.pool().acquire().await?;
    if db.backend() != Backend::Sqlite {
        return Ok((conn, None));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PRAGMA temp_store = MEMORY; PRAGMA cache_size = -{WRITER_CACHE_KIB}"
    )))
    .execute(&mut *conn)
    .await?;
    if !pipelined {
        return Ok((conn, None));
    }
    // Whatever happens next, this connection does not go back to the pool
    // with the writer's settings.
    conn.close_on_drop();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await?;
    let mut file = String::new();
    for row in sqlx::query("PRAGMA database_list")
        .fetch_all(&mut *conn)
        .await?
    {
        if row.try_get::<String, _>("name")? == "main" {
            file = row.try_get("file")?;
        }
    }
    if !mode.eq_ignore_ascii_case("wal") || file.is_empty() {
        return Ok((conn, None));
    }
    let log = match File::open(format!("{file}-wal")) {
        Ok(log) => Arc::new(log),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the database log; the writer's commits sync it themselves");
            return Ok((conn, None));
        }
    };
    sqlx::raw_sql("PRAGMA synchronous = NORMAL")
        .execute(&mut *conn)
        .await?;
    Ok((conn, Some(log)))
}

/// Copies the SQLite log into the database file (`PASSIVE`: it waits for no
/// reader; a reader still on an old snapshot only delays the rewind to a
/// later checkpoint). A failure is logged: the next one tries again.
async fn checkpoint(conn: &mut AnyConnection) {
    if let Err(e) = sqlx::raw_sql("PRAGMA wal_checkpoint(PASSIVE)")
        .execute(&mut *conn)
        .await
    {
        tracing::warn!(error = %e, "WAL checkpoint by the writer failed; retrying later");
    }
}

/// Runs one batch in one transaction (`BEGIN IMMEDIATE` when `immediate`).
/// Once it is committed, returns the answers for the caller to send when
/// the batch is durable; otherwise every job of it is answered with the
/// failure.
async fn run_batch(
    conn: &mut AnyConnection,
    immediate: bool,
    handler: Option<&dyn ErasedHandler>,
    counters: &Counters,
    batch: Vec<Job>,
) -> Result<Vec<(Reply, Answer)>, StoreError> {
    let units = batch.len();
    let begun = if immediate {
        Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await
    } else {
        Connection::begin(&mut *conn).await
    };
    let mut tx = match begun {
        Ok(tx) => tx,
        Err(e) => {
            let reason = format!("cannot begin a transaction: {e}");
            fail(batch, &reason);
            return Err(StoreError::GroupCommit(reason));
        }
    };
    let mut settled = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter().peekable();
    let mut broken = None;
    while let Some(job) = jobs.next() {
        match job.task {
            Task::Unit(work) => {
                let mut savepoint = match Acquire::begin(&mut tx).await {
                    Ok(savepoint) => savepoint,
                    Err(e) => {
                        broken = Some((vec![job.reply], format!("cannot open a savepoint: {e}")));
                        break;
                    }
                };
                let (keep, answer) = work(&mut savepoint).await;
                let closed = if keep {
                    savepoint.commit().await
                } else {
                    savepoint.rollback().await
                };
                if let Err(e) = closed {
                    broken = Some((vec![job.reply], format!("cannot close a savepoint: {e}")));
                    break;
                }
                settled.push((job.reply, keep, answer));
            }
            Task::Item(item) => {
                // This request and every request right after it.
                let mut replies = vec![job.reply];
                let mut items = vec![item];
                while let Some(next) = jobs.next_if(|next| matches!(next.task, Task::Item(_))) {
                    if let Task::Item(item) = next.task {
                        items.push(item);
                        replies.push(next.reply);
                    }
                }
                let answers = match handler {
                    Some(handler) => handler.run(&mut tx, items).await,
                    None => Err("this writer has no batch handler".to_owned()),
                };
                match answers {
                    Ok(answers) if answers.len() == replies.len() => {
                        for (reply, (keep, answer)) in replies.into_iter().zip(answers) {
                            settled.push((reply, keep, answer));
                        }
                    }
                    Ok(_) => {
                        broken = Some((replies, "a batch lost some of its answers".to_owned()));
                        break;
                    }
                    Err(reason) => {
                        broken = Some((replies, reason));
                        break;
                    }
                }
            }
        }
    }
    if let Some((replies, reason)) = broken {
        // Everything of this batch is rolled back (when `tx` is dropped);
        // every caller hears so.
        drop(tx);
        for reply in replies {
            let _ = reply.send(Err(StoreError::GroupCommit(reason.clone())));
        }
        for (reply, _, _) in settled {
            let _ = reply.send(Err(StoreError::GroupCommit(reason.clone())));
        }
        fail(jobs.collect(), &reason);
        return Err(StoreError::GroupCommit(reason));
    }
    match tx.commit().await {
        Ok(()) => {
            // Counted before anyone hears back: a caller that reads the
            // stats after its answer sees its own batch.
            counters.committed(units);
            Ok(settled
                .into_iter()
                .map(|(reply, _, answer)| (reply, answer))
                .collect())
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

/// Answers every job of `batch` with a failed group commit for `reason`.
fn fail(batch: Vec<Job>, reason: &str) {
    answer_all(batch, || StoreError::GroupCommit(reason.to_owned()));
}

/// Answers every job of `batch` with the error `error` makes.
fn answer_all(batch: Vec<Job>, error: impl Fn() -> StoreError) {
    for job in batch {
        let _ = job.reply.send(Err(error()));
    }
}
