//! Server-side latency histograms, one series per route: how long a process
//! took to answer, from the request's arrival to its response's headers.
//!
//! Buckets grow by √2 from 100 µs to about 18.5 s, fine enough to read a
//! median or a 99th percentile off the histogram within a fifth of its
//! value — enough to tell which hop of a request holds its time.
//!
//! The route label must come from a bounded set (a router's matched route
//! template, a known gRPC method): a caller chooses the path it sends.

use std::sync::Arc;
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

/// A shared callback taking a stage's name and the time spent in it
/// ([`StageLatency::into_observer`]).
pub type StageObserver = Arc<dyn Fn(&str, Duration) + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

/// Latency histograms of a fixed set of stages (the stages of a database
/// write, say), labelled `stage`, with the buckets of [`RouteLatency`].
/// Every stage's histogram is resolved once, so an observation is a
/// histogram's `observe` and nothing more; cheap to clone.
#[derive(Clone, Debug)]
pub struct StageLatency {
    stages: Vec<(&'static str, Histogram)>,
}

impl StageLatency {
    /// Creates a histogram for each of `stages` and registers them in
    /// `registry` as `name`.
    pub fn register(
        registry: &MetricsRegistry,
        name: &str,
        help: &str,
        stages: &[&'static str],
    ) -> Self {
        let family: Family<StageLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(new_histogram as fn() -> Histogram);
        let stages = stages
            .iter()
            .map(|stage| {
                let labels = StageLabels {
                    stage: (*stage).to_owned(),
                };
                (*stage, family.get_or_create(&labels).clone())
            })
            .collect();
        registry.register(|r| r.register(name, help, family));
        Self { stages }
    }

    /// Records that something spent `took` in `stage`; a stage it was not
    /// registered with is ignored.
    pub fn observe(&self, stage: &str, took: Duration) {
        if let Some((_, histogram)) = self.stages.iter().find(|(name, _)| *name == stage) {
            histogram.observe(took.as_secs_f64());
        }
    }

    /// [`StageLatency::observe`] as a shared callback, for a component that
    /// reports its stages without knowing of metrics (a database writer).
    pub fn into_observer(self) -> StageObserver {
        Arc::new(move |stage, took| self.observe(stage, took))
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

    #[test]
    fn stages_are_labelled_and_unknown_ones_ignored() {
        let registry = MetricsRegistry::new();
        let stages = StageLatency::register(&registry, "write_seconds", "Stages", &["a", "b"]);
        stages.observe("a", Duration::from_millis(2));
        stages.observe("a", Duration::from_millis(4));
        stages.observe("c", Duration::from_millis(4));
        let text = registry.render();
        assert!(
            text.contains("write_seconds_count{stage=\"a\"} 2"),
            "{text}"
        );
        // Registered stages show before their first observation.
        assert!(
            text.contains("write_seconds_count{stage=\"b\"} 0"),
            "{text}"
        );
        assert!(!text.contains("stage=\"c\""), "{text}");
    }
}
