//! How long this server takes to answer each gRPC call: a tower layer that
//! records `grpc_server_handling_seconds{route}`, from the call's arrival
//! (before its policy decision) to its response's headers, by method.
//!
//! The `route` label is the method's path (`/trustmesh.auth.v1.Auth/Login`)
//! for the methods the server's descriptors name, and
//! [`OTHER_ROUTE`](trustmesh_telemetry::latency::OTHER_ROUTE) for any other
//! path a caller sends (health checks, unknown methods), so callers cannot
//! grow the series without bound.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use prometheus_client::metrics::histogram::Histogram;
use tower::{Layer, Service};
use trustmesh_telemetry::RouteLatency;
use trustmesh_telemetry::latency::OTHER_ROUTE;

/// The metric's name.
pub const HANDLING_SECONDS: &str = "grpc_server_handling_seconds";

/// A [`tower::Layer`] timing every call of a tonic server.
#[derive(Clone, Debug)]
pub struct HandlingTimeLayer {
    routes: Arc<Routes>,
}

/// Each method's histogram, resolved at its first call (a series appears
/// once its method is called; later calls cost no label allocation and no
/// lookup in the metric family).
#[derive(Debug)]
struct Routes {
    latency: RouteLatency,
    known: HashMap<String, OnceLock<Histogram>>,
    other: OnceLock<Histogram>,
}

impl Routes {
    fn histogram(&self, path: &str) -> Histogram {
        match self.known.get_key_value(path) {
            Some((path, cell)) => cell.get_or_init(|| self.latency.histogram(path)),
            None => self
                .other
                .get_or_init(|| self.latency.histogram(OTHER_ROUTE)),
        }
        .clone()
    }
}

impl HandlingTimeLayer {
    /// Times the calls into `latency`, labelled by method for the paths in
    /// `known`.
    pub fn new<'a>(latency: RouteLatency, known: impl IntoIterator<Item = &'a str>) -> Self {
        let known = known
            .into_iter()
            .map(|path| (path.to_owned(), OnceLock::new()))
            .collect();
        Self {
            routes: Arc::new(Routes {
                latency,
                known,
                other: OnceLock::new(),
            }),
        }
    }
}

impl<S> Layer<S> for HandlingTimeLayer {
    type Service = HandlingTime<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HandlingTime {
            inner,
            routes: self.routes.clone(),
        }
    }
}

/// The service [`HandlingTimeLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct HandlingTime<S> {
    inner: S,
    routes: Arc<Routes>,
}

impl<S, B> Service<http::Request<B>> for HandlingTime<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let histogram = self.routes.histogram(request.uri().path());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await;
            histogram.observe(started.elapsed().as_secs_f64());
            response
        })
    }
}
