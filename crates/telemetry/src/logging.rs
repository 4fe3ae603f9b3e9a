//! Structured logging: JSON lines on standard error, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs the global `tracing` subscriber for a process named `process`.
///
/// Logs are JSON lines on standard error (one object per event, with the
/// current span's fields such as `request_id`). The filter comes from
/// `RUST_LOG`, defaulting to `info`. Calling it twice is harmless: the second
/// call leaves the first subscriber in place.
pub fn init_tracing(process: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_writer(std::io::stderr)
        .try_init()
        .is_ok();
    if installed {
        tracing::debug!(process, "tracing initialised");
    }
}
