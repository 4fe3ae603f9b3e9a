//! What the process around a service plugs into it: the deny hook the
//! events pipeline records policy denies with, and the process's metrics
//! registry.

use trustmesh_policy::DenyHook;
use trustmesh_telemetry::MetricsRegistry;

/// What the process around a service plugs into it.
#[derive(Default)]
pub struct Hooks {
    /// Run on every policy deny (the events pipeline records them).
    pub deny_hook: Option<DenyHook>,
    /// The process's metrics registry (served on `/metrics`).
    pub metrics: MetricsRegistry,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("deny_hook", &self.deny_hook.is_some())
            .finish_non_exhaustive()
    }
}
