//! Telemetry shared by every Trustmesh process: JSON logs through `tracing`,
//! a Prometheus registry, and the admin HTTP endpoint that serves `/metrics`,
//! `/healthz` and `/readyz`.
//!
//! A process calls [`init_tracing`] once at start-up, registers its metrics in
//! a [`MetricsRegistry`] (its request latencies as [`RouteLatency`]
//! histograms), and runs [`serve_admin`] beside its main listener.

mod admin;
pub mod latency;
mod logging;

pub use admin::{AdminError, Readiness, serve_admin};
pub use latency::{RouteLatency, StageLatency};
pub use logging::init_tracing;

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::registry::Registry;

/// A Prometheus registry shared between the parts of a process that publish
/// metrics and the admin endpoint that renders them.
#[derive(Clone, Default)]
pub struct MetricsRegistry {
    inner: Arc<Mutex<Registry>>,
}

impl MetricsRegistry {
    /// Creates an empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `register` with mutable access to the registry (to add metrics).
    pub fn register<T>(&self, register: impl FnOnce(&mut Registry) -> T) -> T {
        let mut registry = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        register(&mut registry)
    }

    /// Renders every registered metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let registry = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRegistry").finish_non_exhaustive()
    }
}
