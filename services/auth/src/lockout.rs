//! The brute-force lockout policy, as a pure function of stored counts.
//!
//! The caller keeps failed attempts (per account, and per client IP across
//! accounts), counts those in the last [`LockoutPolicy::window`] (from
//! [`LockoutPolicy::window_start`]) and asks [`LockoutPolicy::evaluate`] (or
//! [`LockoutPolicy::evaluate_ip`]) whether to refuse. Once the limit is reached
//! the account (or IP) is locked for [`LockoutPolicy::lock_for`] after its last
//! failure: with the defaults, the 6th attempt after 5 failures within 15
//! minutes is refused for 15 minutes (`423` with `Retry-After`).

use std::time::{Duration, SystemTime};

/// Limits on failed attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures per account within `window` that lock it (0 disables the limit).
    pub max_failures: u32,
    /// The window in which failures are counted.
    pub window: Duration,
    /// How long the lock lasts after the last failure.
    pub lock_for: Duration,
    /// Failures per client IP within `window`, across accounts, that lock the
    /// IP (0 disables the limit).
    pub per_ip_max_failures: u32,
}

impl Default for LockoutPolicy {
    /// 5 failures per account, 20 per IP, in 15 minutes; locked for 15 minutes.
    fn default() -> Self {
        LockoutPolicy {
            max_failures: 5,
            window: Duration::from_secs(15 * 60),
            lock_for: Duration::from_secs(15 * 60),
            per_ip_max_failures: 20,
        }
    }
}

/// Whether an attempt may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Not locked.
    Open,
    /// Locked; try again after `retry_after`.
    Locked {
        /// Time left until the lock ends.
        retry_after: Duration,
    },
}

impl LockState {
    /// Whether this is [`LockState::Locked`].
    pub fn is_locked(&self) -> bool {
        matches!(self, LockState::Locked { .. })
    }

    /// The `Retry-After` header value in whole seconds, rounded up (at least 1);
    /// `None` when open.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            LockState::Open => None,
            LockState::Locked { retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Some(secs.max(1))
            }
        }
    }

    /// The stricter of two states (the longer lock): combine the account and IP
    /// evaluations with it.
    pub fn max(self, other: LockState) -> LockState {
        match (self, other) {
            (LockState::Open, other) | (other, LockState::Open) => other,
            (LockState::Locked { retry_after: a }, LockState::Locked { retry_after: b }) => {
                LockState::Locked {
                    retry_after: a.max(b),
                }
            }
        }
    }
}

impl LockoutPolicy {
    /// The start of the counting window at `now` (failures at or after it count).
    pub fn window_start(&self, now: SystemTime) -> SystemTime {
        now.checked_sub(self.window)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The account's state, from its failures within the window and the time of
    /// its last failure.
    pub fn evaluate(
        &self,
        failures_in_window: u32,
        now: SystemTime,
        last_failure_at: Option<SystemTime>,
    ) -> LockState {
        self.evaluate_with(self.max_failures, failures_in_window, now, last_failure_at)
    }

    /// The client IP's state, from its failures (on any account) within the
    /// window and the time of its last one.
    pub fn evaluate_ip(
        &self,
        failures_in_window: u32,
        now: SystemTime,
        last_failure_at: Option<SystemTime>,
    ) -> LockState {
        self.evaluate_with(
            self.per_ip_max_failures,
            failures_in_window,
            now,
            last_failure_at,
        )
    }

    fn evaluate_with(
        &self,
        limit: u32,
        failures: u32,
        now: SystemTime,
        last_failure_at: Option<SystemTime>,
    ) -> LockState {
        if limit == 0 || failures < limit {
            return LockState::Open;
        }
        let Some(last) = last_failure_at else {
            return LockState::Open;
        };
        // A last failure "in the future" (clock step back) locks for at most `lock_for`.
        let since_last = now.duration_since(last).unwrap_or(Duration::ZERO);
        match self.lock_for.checked_sub(since_last) {
            Some(left) if !left.is_zero() => LockState::Locked { retry_after: left },
            _ => LockState::Open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600 + secs)
    }

    const MIN: u64 = 60;

    #[test]
    fn defaults() {
        let p = LockoutPolicy::default();
        assert_eq!(p.max_failures, 5);
        assert_eq!(p.window, Duration::from_secs(900));
        assert_eq!(p.lock_for, Duration::from_secs(900));
        assert_eq!(p.per_ip_max_failures, 20);
        assert_eq!(p.window_start(at(1000)), at(100));
    }

    #[test]
    fn open_below_the_limit() {
        let p = LockoutPolicy::default();
        assert_eq!(p.evaluate(0, at(0), None), LockState::Open);
        for failures in 1..5 {
            assert_eq!(
                p.evaluate(failures, at(10), Some(at(9))),
                LockState::Open,
                "{failures}"
            );
        }
    }

    #[test]
    fn fifth_failure_locks_for_fifteen_minutes_after_it() {
        let p = LockoutPolicy::default();
        let last = at(10 * MIN);
        // Right after the 5th failure: the 6th attempt is refused for 15 minutes.
        let state = p.evaluate(5, last, Some(last));
        assert_eq!(
            state,
            LockState::Locked {
                retry_after: Duration::from_secs(15 * MIN)
            }
        );
        assert_eq!(state.retry_after_secs(), Some(900));
        // 4 min 30 s later.
        let state = p.evaluate(5, at(14 * MIN + 30), Some(last));
        assert_eq!(
            state,
            LockState::Locked {
                retry_after: Duration::from_secs(10 * MIN + 30)
            }
        );
        // More failures keep it locked.
        assert!(p.evaluate(9, at(20 * MIN), Some(last)).is_locked());
        // Exactly 15 minutes after the last failure: open again.
        assert_eq!(p.evaluate(5, at(25 * MIN), Some(last)), LockState::Open);
        assert_eq!(p.evaluate(5, at(40 * MIN), Some(last)), LockState::Open);
    }

    #[test]
    fn retry_after_rounds_up() {
        let p = LockoutPolicy::default();
        let last = at(0);
        let now = last + Duration::from_millis(899_500);
        let state = p.evaluate(5, now, Some(last));
        assert_eq!(
            state,
            LockState::Locked {
                retry_after: Duration::from_millis(500)
            }
        );
        assert_eq!(state.retry_after_secs(), Some(1));
        assert_eq!(LockState::Open.retry_after_secs(), None);
    }

    #[test]
    fn clock_going_backwards_locks_no_longer_than_lock_for() {
        let p = LockoutPolicy::default();
        let state = p.evaluate(5, at(0), Some(at(5 * MIN)));
        assert_eq!(
            state,
            LockState::Locked {
                retry_after: p.lock_for
            }
        );
    }

    #[test]
    fn per_ip_limit_is_separate() {
        let p = LockoutPolicy::default();
        let now = at(100);
        assert_eq!(p.evaluate_ip(19, now, Some(now)), LockState::Open);
        assert!(p.evaluate_ip(20, now, Some(now)).is_locked());
        // 20 failures on one account lock the account too.
        assert!(p.evaluate(20, now, Some(now)).is_locked());
    }

    #[test]
    fn combining_account_and_ip_keeps_the_longer_lock() {
        let short = LockState::Locked {
            retry_after: Duration::from_secs(10),
        };
        let long = LockState::Locked {
            retry_after: Duration::from_secs(600),
        };
        assert_eq!(LockState::Open.max(LockState::Open), LockState::Open);
        assert_eq!(LockState::Open.max(short), short);
        assert_eq!(short.max(LockState::Open), short);
        assert_eq!(short.max(long), long);
        assert_eq!(long.max(short), long);
    }

    #[test]
    fn configurable_and_zero_disables() {
        let p = LockoutPolicy {
            max_failures: 3,
            window: Duration::from_secs(60),
            lock_for: Duration::from_secs(120),
            per_ip_max_failures: 0,
        };
        assert!(p.evaluate(3, at(0), Some(at(0))).is_locked());
        assert_eq!(p.evaluate(3, at(121), Some(at(0))), LockState::Open);
        assert_eq!(p.evaluate_ip(1000, at(0), Some(at(0))), LockState::Open);
    }
}
