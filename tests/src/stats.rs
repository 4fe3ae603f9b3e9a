//! Latency statistics for the benchmarks.

use std::time::Duration;

/// The `p` quantile (0.0–1.0) of `sorted` (nearest rank); zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let last = sorted.len() - 1;
    let rank = (last as f64 * p.clamp(0.0, 1.0)).round() as usize;
    sorted[rank.min(last)]
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The cumulative buckets `(le, count)` of the series `label="value"` of
/// the Prometheus histogram `metric` in a `/metrics` text (as
/// `trustmesh_telemetry::RouteLatency` and `StageLatency` render them, one
/// label each), `+Inf` last.
pub fn histogram_buckets(text: &str, metric: &str, label: &str, value: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{metric}_bucket{{le=\"");
    let suffix = format!(",{label}=\"{value}\"}} ");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, rest) = rest.split_once('"')?;
            let count = rest.strip_prefix(&suffix)?.trim().parse().ok()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count))
        })
        .collect()
}

/// What was added to a histogram between two readings of it: `after −
/// before`, bucket by bucket (a series absent before counts from zero).
pub fn histogram_delta(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<(f64, u64)> {
    after
        .iter()
        .map(|&(le, count)| {
            let earlier = before.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
            (le, count.saturating_sub(earlier))
        })
        .collect()
}

/// The `p` quantile of cumulative `buckets`, interpolated linearly inside
/// the bucket that holds it (as Prometheus' `histogram_quantile` does);
/// zero when empty. Its error is at most the width of that bucket.
pub fn histogram_quantile(buckets: &[(f64, u64)], p: f64) -> Duration {
    let Some(&(_, total)) = buckets.last() else {
        return Duration::ZERO;
    };
    if total == 0 {
        return Duration::ZERO;
    }
    let rank = p.clamp(0.0, 1.0) * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(le, count) in buckets {
        if count as f64 >= rank {
            if le.is_infinite() {
                return Duration::from_secs_f64(lower);
            }
            let inside = (count - below) as f64;
            let fraction = if inside > 0.0 {
                (rank - below as f64) / inside
            } else {
                1.0
            };
            return Duration::from_secs_f64(lower + (le - lower) * fraction);
        }
        (lower, below) = (le, count);
    }
    Duration::from_secs_f64(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        assert!((ms(Duration::from_micros(1500)) - 1.5).abs() < 1e-9);
    }

    #[test]
    fn histogram_readings() {
        let text = "\
# TYPE t_seconds histogram
t_seconds_sum{route=\"a\"} 1.0
t_seconds_count{route=\"a\"} 100
t_seconds_bucket{le=\"0.001\",route=\"a\"} 10
t_seconds_bucket{le=\"0.002\",route=\"a\"} 90
t_seconds_bucket{le=\"0.004\",route=\"a\"} 100
t_seconds_bucket{le=\"+Inf\",route=\"a\"} 100
t_seconds_bucket{le=\"0.001\",route=\"b\"} 7
";
        let before = [(0.001, 10), (0.002, 10), (0.004, 10), (f64::INFINITY, 10)];
        let after = histogram_buckets(text, "t_seconds", "route", "a");
        assert_eq!(
            after,
            [(0.001, 10), (0.002, 90), (0.004, 100), (f64::INFINITY, 100)]
        );
        let delta = histogram_delta(&before, &after);
        assert_eq!(
            delta,
            [(0.001, 0), (0.002, 80), (0.004, 90), (f64::INFINITY, 90)]
        );
        // 45th of 90: the middle of the 1–2 ms bucket (which holds 80).
        let median = histogram_quantile(&delta, 0.5);
        assert!(
            (ms(median) - (1.0 + 45.0 / 80.0)).abs() < 1e-9,
            "{median:?}"
        );
        // 89.1st: inside the 2–4 ms bucket (81st to 90th).
        let p99 = histogram_quantile(&delta, 0.99);
        assert!((ms(p99) - (2.0 + 2.0 * 9.1 / 10.0)).abs() < 1e-9, "{p99:?}");
        assert_eq!(histogram_quantile(&[], 0.5), Duration::ZERO);
        assert!(histogram_buckets(text, "t_seconds", "route", "c").is_empty());
    }
}
