//! Argon2id off the async threads: a few dedicated threads (by default one
//! per core but one, and a spare on the last core) that run at the lowest
//! CPU priority (`SCHED_IDLE` on Linux, and nice 19).
//!
//! A password hash takes about 17 ms of one core by design, and a burst of
//! logins keeps every hashing thread busy. At the normal priority the
//! hashes hold the cores against everything else the machine does (the MFA
//! step, token refreshes, the gateway, the other services): each wake-up of
//! that work, and a request makes dozens, could wait for a hash's time
//! slice, and the non-hashing part of a login took several times its
//! unloaded latency. In `SCHED_IDLE` (Linux; elsewhere at [`HASH_NICE`],
//! about 1.5 % of the weight of a normal thread) the scheduler runs that
//! work ahead of the hashes, a waking thread preempts a hash at once, and
//! the hashes still get every cycle nobody else wants: their throughput on
//! an otherwise idle machine is unchanged. The flip side: on a machine kept
//! busy by other work, logins slow down before anything else does (a
//! `SCHED_IDLE` thread keeps about 0.3 % of a normal thread's weight, so
//! give the auth service cores, or a CPU quota, of its own).
//!
//! The pool's threads take jobs from one first-come-first-served queue, so
//! a burst queues for the hasher instead of taking every core. By default
//! it keeps one core free of hashes while the queue is short
//! ([`HashPool::with_default_threads`]): with a hash on every core, a
//! waking request thread still waited, now and then, for milliseconds (on
//! a 2-core machine `perf sched` showed the waits of the auth service's
//! threads spent beside running hashes, the MFA step's p99 at 20
//! concurrent logins 6–13 ms); with one core free of hashes it was
//! 4.5–5.3 ms. A core free of hashes is also half the hash throughput on 2
//! cores, and on a slower machine 50 concurrent logins then waited more
//! than the 1.5 s the login may take; so that core has a *spare* thread,
//! which takes a job only once it has waited [`SPARE_AFTER`]: a burst that
//! the other threads cannot serve in time gets every core, a lighter load
//! leaves one free (README → Performance → Login). A job whose caller has
//! gone away (a cancelled request) is skipped.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The nice value of the hashing threads (19, the lowest priority).
pub const HASH_NICE: i32 = 19;

/// How long a job waits before a spare thread takes it.
pub const SPARE_AFTER: Duration = Duration::from_millis(300);

/// Errors of [`HashPool::run`].
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The job panicked, or the pool's threads are gone.
    #[error("the hashing job did not complete")]
    Lost,
}

type Job = Box<dyn FnOnce() + Send>;

/// The jobs waiting, each with the time it was queued.
#[derive(Default)]
struct Waiting {
    jobs: VecDeque<(Instant, Job)>,
    /// Every handle of the pool is gone: the threads finish the queue and end.
    closed: bool,
}

/// The queue the threads share.
#[derive(Default)]
struct Queue {
    waiting: Mutex<Waiting>,
    /// Signalled when a job is queued or the pool closes.
    changed: Condvar,
}

impl Queue {
    fn close(&self) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.closed = true;
        }
        self.changed.notify_all();
    }

    /// The next job for a thread that takes one once it has waited
    /// `after` (zero for a regular thread); `None` when the pool is closed
    /// and nothing is left.
    fn next(&self, after: Duration) -> Option<Job> {
        let mut waiting = self.waiting.lock().ok()?;
        loop {
            let wait = match waiting.jobs.front() {
                Some((queued, _)) => after.checked_sub(queued.elapsed()),
                None if waiting.closed => return None,
                None => Some(Duration::MAX),
            };
            waiting = match wait {
                None | Some(Duration::ZERO) => return waiting.jobs.pop_front().map(|(_, job)| job),
                Some(Duration::MAX) => self.changed.wait(waiting).ok()?,
                Some(wait) => self.changed.wait_timeout(waiting, wait).ok()?.0,
            };
        }
    }
}

/// Closes the queue when the last [`HashPool`] handle goes.
struct Handle(Arc<Queue>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Dedicated low-priority threads for CPU-heavy jobs (password hashing).
#[derive(Clone)]
pub struct HashPool {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for HashPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashPool").finish_non_exhaustive()
    }
}

impl HashPool {
    /// Starts `threads` threads (at least one) at nice `nice`, no spare.
    /// When the priority cannot be lowered (outside Linux, for example) the
    /// threads run at the normal priority and a warning says so.
    pub fn new(threads: usize, nice: i32) -> std::io::Result<Self> {
        Self::with_spare(threads, 0, SPARE_AFTER, nice)
    }

    /// Starts `threads` threads (at least one) and `spare` threads that take
    /// a job only once it has waited `spare_after`, all at nice `nice`.
    pub fn with_spare(
        threads: usize,
        spare: usize,
        spare_after: Duration,
        nice: i32,
    ) -> std::io::Result<Self> {
        let queue = Arc::new(Queue::default());
        let handle = Arc::new(Handle(queue.clone()));
        let regular = (0..threads.max(1)).map(|n| (format!("argon2id-{n}"), Duration::ZERO));
        let spares = (0..spare).map(|n| (format!("argon2id-spare-{n}"), spare_after));
        for (name, after) in regular.chain(spares) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || worker(&queue, after, nice))?;
        }
        Ok(Self { handle })
    }

    /// [`HashPool::default_threads`] threads and a spare on each core left
    /// (taking jobs after [`SPARE_AFTER`]), at [`HASH_NICE`].
    pub fn with_default_threads() -> std::io::Result<Self> {
        let threads = Self::default_threads();
        let spare = cores().saturating_sub(threads);
        Self::with_spare(threads, spare, SPARE_AFTER, HASH_NICE)
    }

    /// One thread per core but one, and at least one: the core left over
    /// serves requests without waiting behind a hash, unless hashes queue
    /// for longer than [`SPARE_AFTER`].
    pub fn default_threads() -> usize {
        cores().saturating_sub(1).max(1)
    }

    /// Runs `job` on a pool thread, after the jobs queued before it.
    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if reply.is_closed() {
                return;
            }
            let _ = reply.send(job());
        });
        let queue = &self.handle.0;
        queue
            .waiting
            .lock()
            .map_err(|_| PoolError::Lost)?
            .jobs
            .push_back((Instant::now(), job));
        // Every thread: a spare woken alone could leave a young job waiting.
        queue.changed.notify_all();
        answer.await.map_err(|_| PoolError::Lost)
    }
}

/// The machine's cores (1 when unknown).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn worker(queue: &Queue, after: Duration, nice: i32) {
    if let Err(e) = idle_policy() {
        tracing::warn!(error = ?e, "cannot put a hashing thread in SCHED_IDLE; it runs at its nice value");
    }
    // After the policy (which sets a nice value of its own). On Linux the
    // nice value belongs to the thread: `None` is this one.
    if let Err(e) = rustix::process::setpriority_process(None, nice) {
        tracing::warn!(error = %e, nice, "cannot lower the priority of a hashing thread");
    }
    while let Some(job) = queue.next(after) {
        // A panicking job drops its reply (its caller gets `Lost`); the
        // thread goes on with the next one.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
    }
}

/// Moves the calling thread to Linux's `SCHED_IDLE` policy: it runs only
/// when no other thread wants the core, and a waking thread of the normal
/// policy preempts it at once (at nice 19 a waking thread may still wait
/// for the end of the hash's slice). No privilege is needed to lower one's
/// own policy.
#[cfg(target_os = "linux")]
fn idle_policy() -> Result<(), thread_priority::Error> {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    )
}

/// Elsewhere the nice value is all there is.
#[cfg(not(target_os = "linux"))]
fn idle_policy() -> Result<(), thread_priority::Error> {
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn leaves_a_core_free_of_hashes() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = HashPool::default_threads();
        assert_eq!(threads, cores.saturating_sub(1).max(1), "{cores} cores");
    }

    /// A job that holds its thread until released, and says which it is.
    async fn hold(pool: &HashPool) -> (std::sync::mpsc::Sender<()>, String) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.run(move || {
                let _ = started.send(std::thread::current().name().map(str::to_owned));
                let _ = held.recv();
            })
            .await
        });
        (release, running.await.unwrap().unwrap())
    }

    #[tokio::test]
    async fn a_spare_thread_leaves_young_jobs_alone() {
        let pool = HashPool::with_spare(1, 1, Duration::from_secs(30), HASH_NICE).unwrap();
        let (release, holder) = hold(&pool).await;
        assert_eq!(holder, "argon2id-0");
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiting = {
            let (pool, ran) = (pool.clone(), ran.clone());
            tokio::spawn(async move {
                pool.run(move || ran.store(true, std::sync::atomic::Ordering::SeqCst))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !ran.load(std::sync::atomic::Ordering::SeqCst),
            "the spare took it"
        );
        release.send(()).unwrap();
        waiting.await.unwrap().unwrap();
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_spare_thread_takes_a_job_that_waited() {
        let pool = HashPool::with_spare(1, 1, Duration::from_millis(100), HASH_NICE).unwrap();
        let (release, holder) = hold(&pool).await;
        // Whichever thread holds the first job, the other serves the next
        // while it is held: with one regular thread, that takes the spare.
        let queued = Instant::now();
        let other = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(other, holder);
        if other.starts_with("argon2id-spare") {
            assert!(
                queued.elapsed() >= Duration::from_millis(100),
                "{:?}",
                queued.elapsed()
            );
        }
        release.send(()).unwrap();
    }

    #[test]
    fn the_threads_end_with_the_last_handle() {
        let pool = HashPool::with_spare(1, 1, Duration::from_millis(10), HASH_NICE).unwrap();
        let queue = Arc::downgrade(&pool.handle.0);
        drop(pool);
        let deadline = Instant::now() + Duration::from_secs(10);
        while queue.strong_count() > 0 {
            assert!(Instant::now() < deadline, "the threads are still up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[tokio::test]
    async fn runs_jobs_at_low_priority_and_survives_a_panic() {
        let pool = HashPool::new(2, HASH_NICE).unwrap();
        let nice = pool
            .run(|| rustix::process::getpriority_process(None).unwrap())
            .await
            .unwrap();
        assert_eq!(nice, HASH_NICE);
        #[cfg(target_os = "linux")]
        {
            use thread_priority::unix::{
                NormalThreadSchedulePolicy, ThreadSchedulePolicy, thread_schedule_policy,
            };
            let policy = pool
                .run(|| thread_schedule_policy().unwrap())
                .await
                .unwrap();
            assert_eq!(
                policy,
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
            );
        }
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("argon2id-"));
        let lost = pool.run(|| -> u32 { panic!("boom") }).await;
        assert!(matches!(lost, Err(PoolError::Lost)));
        let results = futures_join(&pool, (0..8).map(|i| move || i * 2).collect::<Vec<_>>()).await;
        assert_eq!(results, (0..8).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn the_callers_thread_keeps_its_priority() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let pool = HashPool::new(1, HASH_NICE).unwrap();
        pool.run(|| ()).await.unwrap();
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), before);
        #[cfg(target_os = "linux")]
        assert_eq!(
            thread_priority::unix::thread_schedule_policy().unwrap(),
            thread_priority::unix::ThreadSchedulePolicy::Normal(
                thread_priority::unix::NormalThreadSchedulePolicy::Other
            )
        );
    }

    async fn futures_join(
        pool: &HashPool,
        jobs: Vec<impl FnOnce() -> i32 + Send + 'static>,
    ) -> Vec<i32> {
        let mut handles = Vec::new();
        for job in jobs {
            let pool = pool.clone();
            handles.push(tokio::spawn(async move { pool.run(job).await.unwrap() }));
        }
        let mut out = Vec::new();
        for handle in handles {
            out.push(handle.await.unwrap());
        }
        out
    }
}
