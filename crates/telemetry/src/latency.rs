//! Server-side latency histograms, one series per route: how long a process
//! took to answer, from the request's arrival to its response's headers.
//!
//! Buckets grow by √2 from 100 µs to about 18.5 s, fine enough to read a
//! median or a 99th percentile off the histogram within a fifth of its
//! value — enough to tell which hop of a request holds its time.
//!
//! The route label must come from a bounded set (a router's matched route
//! template, a known gRPC method): a caller chooses the path it sends.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::MetricsRegistry;

/// The label of a request that matched no known route.
pub const OTHER_ROUTE: &str = "_other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

fn new_histogram() -> Histogram {
    // 100 µs · √2^k for k < 36: up to about 18.5 s.
    Histogram::new(exponential_buckets(1e-4, std::f64::consts::SQRT_2, 36))
}

/// A family of latency histograms by route; cheap to clone (every clone
/// records into the same series).
#[derive(Clone, Debug)]
pub struct RouteLatency {
    histograms: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl RouteLatency {
    /// Creates the family and registers it in `registry` as `name`
    /// (Prometheus adds the `_bucket`, `_sum` and `_count` suffixes).
    pub fn register(registry: &MetricsRegistry, name: &str, help: &str) -> Self {
        let latency = Self {
            histograms: Family::new_with_constructor(new_histogram as fn() -> Histogram),
        };
        registry.register(|r| r.register(name, help, latency.histograms.clone()));
        latency
    }

    /// Records that a request of `route` took `took`.
    pub fn observe(&self, route: &str, took: Duration) {
        self.histogram(route).observe(took.as_secs_f64());
    }

    /// The histogram of `route` (created if new), to keep and observe into
    /// without looking the route up again: a hot path resolves its routes
    /// once.
    pub fn histogram(&self, route: &str) -> Histogram {
        self.histograms
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(le, cumulative count)` of every bucket of `route` in `text`.
    fn buckets(text: &str, route: &str) -> Vec<(f64, u64)> {
        let suffix = format!(",route=\"{route}\"}} ");
        text.lines()
            .filter_map(|line| line.strip_prefix("rpc_seconds_bucket{le=\""))
            .filter_map(|rest| {
                let (le, rest) = rest.split_once('"')?;
                let count = rest.strip_prefix(&suffix)?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn renders_buckets_by_route() {
        let registry = MetricsRegistry::new();
        let latency = RouteLatency::register(&registry, "rpc_seconds", "Time to answer");
        latency.observe("/a.B/C", Duration::from_micros(150));
        latency.observe("/a.B/C", Duration::from_millis(3));
        latency.observe(OTHER_ROUTE, Duration::from_secs(60));
        let text = registry.render();
        assert!(text.contains("# TYPE rpc_seconds histogram"), "{text}");
        assert!(
            text.contains("rpc_seconds_count{route=\"/a.B/C\"} 2"),
            "{text}"
        );

        let route = buckets(&text, "/a.B/C");
        assert_eq!(route.len(), 37, "36 bounds and +Inf: {text}");
        assert!((route[0].0 - 1e-4).abs() < 1e-12, "{route:?}");
        assert!(route[35].0 > 18.0 && route[35].0 < 19.0, "{route:?}");
        for (le, count) in route {
            let expected = u64::from(le >= 150e-6) + u64::from(le >= 3e-3);
            assert_eq!(count, expected, "bucket le={le}");
        }
        let other = buckets(&text, OTHER_ROUTE);
        assert_eq!(other.last(), Some(&(f64::INFINITY, 1)), "{other:?}");
        assert_eq!(other[35].1, 0, "60 s is above every bound");
    }
}
