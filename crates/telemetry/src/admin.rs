//! The admin HTTP endpoint of a process: Prometheus `/metrics`, liveness
//! `/healthz` and readiness `/readyz`, on a plain-HTTP loopback port.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::MetricsRegistry;

/// Errors of the admin endpoint.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The admin address could not be bound.
    #[error("cannot listen for the admin endpoint on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("admin endpoint failed: {0}")]
    Serve(std::io::Error),
}

/// Whether the process is ready to take traffic; `/readyz` answers 200 only
/// once it is set.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A readiness flag that starts as "not ready".
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the process ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: MetricsRegistry,
    readiness: Readiness,
}

/// Binds the admin endpoint on `addr` and returns the bound address together
/// with the future that serves it until `shutdown` completes.
pub async fn serve_admin(
    addr: SocketAddr,
    metrics: MetricsRegistry,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<
    (
        SocketAddr,
        impl Future<Output = Result<(), AdminError>> + Send + 'static,
    ),
    AdminError,
> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| AdminError::Bind { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_handler))
        .with_state(AdminState { metrics, readiness });
    let serve = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(AdminError::Serve)
    };
    Ok((local, serve))
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn readyz_handler(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
