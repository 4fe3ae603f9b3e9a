//! Prometheus metrics of the policy layer.
//!
//! - `policy_decisions_total{service,method,decision}`: every decision, with
//!   `decision` one of `allow`, `deny`, `error`;
//! - `policy_decision_duration_seconds{service}`: time spent evaluating, from
//!   1 µs up.
//!
//! The `method` label takes the gRPC method name. Since a caller chooses the
//! path it calls, the number of distinct method values per service is capped
//! ([`MAX_METHODS_PER_SERVICE`]); beyond it the label reads `_other`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How many distinct `method` label values a service may create.
pub const MAX_METHODS_PER_SERVICE: usize = 256;

/// The label value used once a service has [`MAX_METHODS_PER_SERVICE`] methods.
pub const OTHER_METHOD: &str = "_other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    service: String,
    method: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

fn new_histogram() -> Histogram {
    // 1 µs, 2 µs, 4 µs, … ≈ 0.5 s.
    Histogram::new(exponential_buckets(1e-6, 2.0, 20))
}

/// The outcome label of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionOutcome {
    /// The policy allowed the call.
    Allow,
    /// The policy denied the call.
    Deny,
    /// The policy could not be evaluated.
    Error,
}

impl DecisionOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Error => "error",
        }
    }
}

/// The policy metrics; cheap to clone (all clones update the same series).
#[derive(Clone, Debug)]
pub struct PolicyMetrics {
    decisions: Family<DecisionLabels, Counter>,
    durations: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    methods: Arc<RwLock<HashMap<String, HashSet<String>>>>,
}

impl PolicyMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        registry.register(
            "policy_decisions",
            "Authorization decisions by service, gRPC method and outcome",
            metrics.decisions.clone(),
        );
        registry.register(
            "policy_decision_duration_seconds",
            "Time spent evaluating one authorization decision",
            metrics.durations.clone(),
        );
        metrics
    }

    /// Metrics that are recorded but exported nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self {
            decisions: Family::default(),
            durations: Family::new_with_constructor(new_histogram as fn() -> Histogram),
            methods: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    /// Records one decision and how long evaluating it took.
    pub fn record(&self, service: &str, method: &str, outcome: DecisionOutcome, took: Duration) {
        let labels = DecisionLabels {
            service: service.to_owned(),
            method: self.method_label(service, method),
            decision: outcome.label(),
        };
        self.decisions.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// How many decisions were counted for these labels.
    pub fn decisions(&self, service: &str, method: &str, outcome: DecisionOutcome) -> u64 {
        let labels = DecisionLabels {
            service: service.to_owned(),
            method: method.to_owned(),
            decision: outcome.label(),
        };
        self.decisions.get(&labels).map_or(0, |c| c.get())
    }

    fn method_label(&self, service: &str, method: &str) -> String {
        {
            let seen = self.methods.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(methods) = seen.get(service) {
                if methods.contains(method) {
                    return method.to_owned();
                }
                if methods.len() >= MAX_METHODS_PER_SERVICE {
                    return OTHER_METHOD.to_owned();
                }
            }
        }
        let mut seen = self.methods.write().unwrap_or_else(PoisonError::into_inner);
        let methods = seen.entry(service.to_owned()).or_default();
        if methods.contains(method) || methods.len() < MAX_METHODS_PER_SERVICE {
            methods.insert(method.to_owned());
            method.to_owned()
        } else {
            OTHER_METHOD.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn names_and_cap() {
        let mut registry = Registry::default();
        let metrics = PolicyMetrics::register(&mut registry);
        metrics.record(
            "svc",
            "Get",
            DecisionOutcome::Allow,
            Duration::from_micros(3),
        );
        metrics.record(
            "svc",
            "Get",
            DecisionOutcome::Allow,
            Duration::from_micros(3),
        );
        metrics.record(
            "svc",
            "Put",
            DecisionOutcome::Deny,
            Duration::from_micros(3),
        );
        assert_eq!(metrics.decisions("svc", "Get", DecisionOutcome::Allow), 2);
        assert_eq!(metrics.decisions("svc", "Put", DecisionOutcome::Deny), 1);
        for i in 0..(MAX_METHODS_PER_SERVICE + 10) {
            metrics.record(
                "svc",
                &format!("M{i}"),
                DecisionOutcome::Deny,
                Duration::ZERO,
            );
        }
        assert!(metrics.decisions("svc", OTHER_METHOD, DecisionOutcome::Deny) >= 10);

        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(
                r#"policy_decisions_total{service="svc",method="Get",decision="allow"} 2"#
            )
        );
        eprintln!("{text}");
        assert!(text.contains(r#"policy_decision_duration_seconds_count{service="svc"} "#));
    }
}
