//! Batched point reads: the reads of many concurrent requests answered by
//! one statement.
//!
//! A hot path that reads one small thing per request (a payer's running
//! total, say) pays one statement per request: on PostgreSQL a round trip
//! and a backend's per-statement work (bind, plan, snapshot, executor start
//! and end), which for an index seek is most of the cost; on SQLite a hop
//! to the driver's worker thread. A [`ReadBatcher`] queues the keys of
//! concurrent reads and gives whatever queued up while the previous read
//! was in flight to [`ReadHandler::read`] at once: one statement for many
//! keys. A read that finds no batch in flight is sent at once, so a lone
//! read waits for nothing and batches grow only under load, where they
//! save most.
//!
//! At most [`ReadBatcher::new`]'s `in_flight` batches run at a time (each
//! on a pooled connection, in a task of its own: a caller that goes away
//! cannot leave the others unanswered; a task that stops early answers
//! the reads it left queued with an error). If a batched read fails on a
//! statement, each of its keys is read again alone, so every caller gets
//! its own answer or its own error; if the pool or the connection failed,
//! every caller of the batch gets [`StoreError::BatchedRead`] at once.
//!
//! ```no_run
//! # async fn example(db: trustmesh_store::Db) -> Result<(), trustmesh_store::StoreError> {
//! use futures::future::BoxFuture;
//! use trustmesh_store::StoreError;
//! use trustmesh_store::read_batch::{ReadBatcher, ReadHandler};
//! use trustmesh_store::sqlx::{AnyPool, Row};
//!
//! /// Squares numbers in the database, many per statement.
//! struct Squares;
//!
//! impl ReadHandler for Squares {
//!     type Key = i64;
//!     type Output = i64;
//!
//!     fn read<'a>(
//!         &'a self,
//!         pool: &'a AnyPool,
//!         keys: &'a [i64],
//!     ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
//!         Box::pin(async move {
//!             let mut out = Vec::with_capacity(keys.len());
//!             for key in keys {
//!                 let row = trustmesh_store::sqlx::query("SELECT $1 * $1 AS square")
//!                     .bind(*key)
//!                     .fetch_one(pool)
//!                     .await?;
//!                 out.push(row.try_get("square")?);
//!             }
//!             Ok(out)
//!         })
//!     }
//! }
//!
//! let squares = ReadBatcher::new(&db, Squares, 1);
//! assert_eq!(squares.read(7).await?, 49);
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use sqlx::AnyPool;
use tokio::sync::oneshot;

use crate::{Db, StoreError};

/// The most keys one batch hands to [`ReadHandler::read`].
pub const MAX_KEYS: usize = 64;

/// Reads many keys at once (see the module documentation).
pub trait ReadHandler: Send + Sync + 'static {
    /// What one read asks for.
    type Key: Send + Sync + 'static;
    /// What one read answers.
    type Output: Send + 'static;

    /// Reads `keys` (1 to [`MAX_KEYS`], possibly with repeats) from `pool`
    /// and returns one output per key, in the same order. An `Err` fails
    /// the batch: each key is then read again alone (unless the pool or the
    /// connection failed).
    fn read<'a>(
        &'a self,
        pool: &'a AnyPool,
        keys: &'a [Self::Key],
    ) -> BoxFuture<'a, Result<Vec<Self::Output>, StoreError>>;
}

/// A queued read and where its answer goes.
struct Pending<H: ReadHandler> {
    key: H::Key,
    reply: oneshot::Sender<Result<H::Output, StoreError>>,
}

/// The queue and how many batches are running.
struct State<H: ReadHandler> {
    queue: VecDeque<Pending<H>>,
    running: usize,
}

/// What the clones of a [`ReadBatcher`] share.
struct Shared<H: ReadHandler> {
    pool: AnyPool,
    handler: H,
    in_flight: usize,
    state: Mutex<State<H>>,
    reads: AtomicU64,
    batches: AtomicU64,
}

impl<H: ReadHandler> Shared<H> {
    /// The state; a panic elsewhere while it was held left it consistent
    /// (every change is a push, a drain or a counter step).
    fn state(&self) -> MutexGuard<'_, State<H>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the next batch off the queue, or marks one runner as done
    /// when the queue is empty.
    fn next_batch(&self) -> Option<Vec<Pending<H>>> {
        let mut state = self.state();
        if state.queue.is_empty() {
            state.running -= 1;
            return None;
        }
        let take = state.queue.len().min(MAX_KEYS);
        Some(state.queue.drain(..take).collect())
    }
}

/// Reads run so far and the statements (batches) that served them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Reads answered (or failed).
    pub reads: u64,
    /// Batches read, each one call of [`ReadHandler::read`] (not counting
    /// the one-key retries of a failed batch).
    pub batches: u64,
}

/// Queues point reads and reads them in batches through `H` (see the
/// module documentation). Clones share the queue.
pub struct ReadBatcher<H: ReadHandler> {
    shared: Arc<Shared<H>>,
}

impl<H: ReadHandler> Clone for ReadBatcher<H> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<H: ReadHandler> std::fmt::Debug for ReadBatcher<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBatcher")
            .field("in_flight", &self.shared.in_flight)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<H: ReadHandler> ReadBatcher<H> {
    /// A batcher reading from `db`'s pool through `handler`, with at most
    /// `in_flight` batches running at a time (at least one).
    pub fn new(db: &Db, handler: H, in_flight: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool: db.pool().clone(),
                handler,
                in_flight: in_flight.max(1),
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    running: 0,
                }),
                reads: AtomicU64::new(0),
                batches: AtomicU64::new(0),
            }),
        }
    }

    /// Reads `key`, in a batch with the reads queued beside it. Must be
    /// called inside a Tokio runtime (a batch runs in a task of its own).
    pub async fn read(&self, key: H::Key) -> Result<H::Output, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.shared.state();
            state.queue.push_back(Pending { key, reply });
            let start = state.running < self.shared.in_flight;
            if start {
                state.running += 1;
            }
            start
        };
        if start {
            let runner = Runner {
                shared: Arc::clone(&self.shared),
                finished: false,
            };
            tokio::spawn(runner.run());
        }
        answer
            .await
            .map_err(|_| StoreError::BatchedRead("the batch stopped before answering".to_owned()))?
    }

    /// Reads and batches so far.
    pub fn stats(&self) -> ReadStats {
        ReadStats {
            reads: self.shared.reads.load(Ordering::Relaxed),
            batches: self.shared.batches.load(Ordering::Relaxed),
        }
    }
}

/// One running batch loop: reads batches until the queue is empty. If its
/// task stops early (a handler panic, the runtime shutting down), the slot
/// is given back and, when it was the last runner, the reads still queued
/// are answered with an error.
struct Runner<H: ReadHandler> {
    shared: Arc<Shared<H>>,
    /// Whether `next_batch` already gave the slot back.
    finished: bool,
}

impl<H: ReadHandler> Runner<H> {
    async fn run(mut self) {
        while let Some(batch) = self.shared.next_batch() {
            self.answer(batch).await;
        }
        self.finished = true;
    }

    /// Reads one batch and answers its callers.
    async fn answer(&self, batch: Vec<Pending<H>>) {
        let shared = &*self.shared;
        let (keys, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.key, p.reply)).unzip();
        shared.batches.fetch_add(1, Ordering::Relaxed);
        shared.reads.fetch_add(keys.len() as u64, Ordering::Relaxed);
        match shared.handler.read(&shared.pool, &keys).await {
            Ok(outputs) if outputs.len() == keys.len() => {
                for (reply, output) in replies.into_iter().zip(outputs) {
                    // A caller that went away needs no answer.
                    let _ = reply.send(Ok(output));
                }
            }
            Err(e) if !worth_reading_alone(&e) => {
                // The pool or the connection failed, not one key: reading
                // each key again would make every caller wait for it in
                // turn.
                let why = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::BatchedRead(why.clone())));
                }
            }
            failed => {
                if let Err(e) = &failed {
                    tracing::debug!(error = %e, keys = keys.len(), "batched read failed; reading each key alone");
                }
                for (key, reply) in keys.iter().zip(replies) {
                    let one = shared
                        .handler
                        .read(&shared.pool, std::slice::from_ref(key))
                        .await
                        .and_then(|mut outputs| {
                            outputs.pop().filter(|_| outputs.is_empty()).ok_or_else(|| {
                                StoreError::Inconsistent(
                                    "a batched read answered a number of outputs other than \
                                     its keys"
                                        .to_owned(),
                                )
                            })
                        });
                    let _ = reply.send(one);
                }
            }
        }
    }
}

impl<H: ReadHandler> Drop for Runner<H> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The task stopped early (its handler panicked, or the runtime is
        // shutting down): give the slot back and, if no other runner will
        // take the queue, answer its reads with an error (their senders
        // dropped) rather than leave them waiting for the next read.
        let stranded: Vec<Pending<H>> = {
            let mut state = self.shared.state();
            state.running -= 1;
            if state.running == 0 {
                state.queue.drain(..).collect()
            } else {
                Vec::new()
            }
        };
        drop(stranded);
    }
}

/// Whether a failed batch is worth reading again key by key: a statement's
/// error may come from one key; a pool or connection error would only make
/// each key wait for it again.
fn worth_reading_alone(e: &StoreError) -> bool {
    !matches!(
        e,
        StoreError::Query(
            sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed
        )
    )
}
