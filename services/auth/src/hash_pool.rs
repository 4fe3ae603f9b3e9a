//! Argon2id off the async threads: a few dedicated threads, one per core
//! but one, that run at the lowest CPU priority (`SCHED_IDLE` on Linux, and
//! nice 19).
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
//! The pool has as many threads as it may run hashes at once, and jobs wait
//! in one first-come-first-served queue, so a burst queues for the hasher
//! instead of taking every core. By default it leaves one core without a
//! hash ([`HashPool::default_threads`]): with a hash on every core, a
//! waking request thread still waited, now and then, for milliseconds (on
//! a 2-core machine `perf sched` showed the waits of the auth service's
//! threads spent beside running hashes, the MFA step's p99 at 20 concurrent
//! logins 6–13 ms); with one core free of hashes it was 4.5–5.3 ms, for
//! half the hash throughput on 2 cores (README → Performance → Login). A
//! job whose caller has gone away (a cancelled request) is skipped.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, mpsc};

/// The nice value of the hashing threads (19, the lowest priority).
pub const HASH_NICE: i32 = 19;

/// Errors of [`HashPool::run`].
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The job panicked, or the pool's threads are gone.
    #[error("the hashing job did not complete")]
    Lost,
}

type Job = Box<dyn FnOnce() + Send>;

/// Dedicated low-priority threads for CPU-heavy jobs (password hashing).
#[derive(Debug, Clone)]
pub struct HashPool {
    queue: mpsc::Sender<Job>,
}

impl HashPool {
    /// Starts `threads` threads (at least one) at nice `nice`. When the
    /// priority cannot be lowered (outside Linux, for example) the threads
    /// run at the normal priority and a warning says so.
    pub fn new(threads: usize, nice: i32) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        for n in 0..threads.max(1) {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("argon2id-{n}"))
                .spawn(move || worker(&jobs, nice))?;
        }
        Ok(Self { queue })
    }

    /// [`HashPool::default_threads`] threads at [`HASH_NICE`].
    pub fn with_default_threads() -> std::io::Result<Self> {
        Self::new(Self::default_threads(), HASH_NICE)
    }

    /// One thread per core but one, and at least one: the core left over
    /// serves requests without waiting behind a hash.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
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
        self.queue.send(job).map_err(|_| PoolError::Lost)?;
        answer.await.map_err(|_| PoolError::Lost)
    }
}

fn worker(jobs: &Mutex<mpsc::Receiver<Job>>, nice: i32) {
    if let Err(e) = idle_policy() {
        tracing::warn!(error = ?e, "cannot put a hashing thread in SCHED_IDLE; it runs at its nice value");
    }
    // After the policy (which sets a nice value of its own). On Linux the
    // nice value belongs to the thread: `None` is this one.
    if let Err(e) = rustix::process::setpriority_process(None, nice) {
        tracing::warn!(error = %e, nice, "cannot lower the priority of a hashing thread");
    }
    loop {
        let job = match jobs.lock() {
            Ok(jobs) => jobs.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            // Every sender is gone: the service has stopped.
            return;
        };
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
