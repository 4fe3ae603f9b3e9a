//! How long this server takes to answer each gRPC call: a tower layer that
//! records `grpc_server_handling_seconds{route}`, from the call's arrival
//! (before its policy decision) to its response's headers, by method.
//!
//! The `route` label is the method's path (`/trustmesh.auth.v1.Auth/Login`)
//! for the methods the server's descriptors name, and
//! [`OTHER_ROUTE`](trustmesh_telemetry::latency::OTHER_ROUTE) for any other
//! path a caller sends (health checks, unknown methods), so callers cannot
//! grow the series without bound.

use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tower::{Layer, Service};
use trustmesh_telemetry::RouteLatency;
use trustmesh_telemetry::latency::OTHER_ROUTE;

/// The metric's name.
pub const HANDLING_SECONDS: &str = "grpc_server_handling_seconds";

/// A [`tower::Layer`] timing every call of a tonic server.
#[derive(Clone, Debug)]
pub struct HandlingTimeLayer {
    latency: RouteLatency,
    known: Arc<HashSet<String>>,
}

impl HandlingTimeLayer {
    /// Times the calls into `latency`, labelled by method for the paths in
    /// `known`.
    pub fn new<'a>(latency: RouteLatency, known: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            latency,
            known: Arc::new(known.into_iter().map(str::to_owned).collect()),
        }
    }
}

impl<S> Layer<S> for HandlingTimeLayer {
    type Service = HandlingTime<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HandlingTime {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`HandlingTimeLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct HandlingTime<S> {
    inner: S,
    layer: HandlingTimeLayer,
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
        let path = request.uri().path();
        let route = if self.layer.known.contains(path) {
            path.to_owned()
        } else {
            OTHER_ROUTE.to_owned()
        };
        let answer = self.inner.call(request);
        let latency = self.layer.latency.clone();
        Box::pin(async move {
            let response = answer.await;
            latency.observe(&route, started.elapsed());
            response
        })
    }
}
