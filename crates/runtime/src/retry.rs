//! Transparent retry of calls the server never processed.
//!
//! Servers recycle connections (HTTP/2 GOAWAY at `max_connection_age`, so
//! that rotated SVIDs are used); a call the client sent while the GOAWAY was
//! in flight is refused by the server *without being processed*. Such calls
//! are safe to send again on a fresh connection, exactly what gRPC's
//! "transparent retry" does. Nothing else is retried: a call that may have
//! reached a handler fails as it is.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tower::{Service, ServiceExt};

/// How many times a refused call is sent again.
const RETRIES: usize = 2;

/// A channel that resends calls refused unprocessed (see the module docs).
#[derive(Clone, Debug)]
pub struct RetryUnprocessed<S> {
    inner: S,
}

impl<S> RetryUnprocessed<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

/// Whether `error` proves the server did not process the call: the request
/// was never sent (the connection closed while it waited to be dispatched),
/// or its stream was refused (`REFUSED_STREAM`) or cut by the server's GOAWAY
/// (only streams above the GOAWAY's last stream id are, and those were never
/// processed).
fn unprocessed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        current = e.source();
    }
    false
}

impl<S, ResBody> Service<http::Request<Body>> for RetryUnprocessed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::error::Error + Send + Sync + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // Mesh calls are unary: the request is one small message, kept
            // so it can be sent again. A body that cannot be read is passed
            // on empty and fails at the server as it would have.
            let bytes: Bytes = body
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .unwrap_or_default();
            let mut attempt = 0;
            loop {
                let request =
                    http::Request::from_parts(parts.clone(), Body::new(Full::new(bytes.clone())));
                match inner.ready().await?.call(request).await {
                    Err(e) if attempt < RETRIES && unprocessed(&e) => {
                        attempt += 1;
                        tracing::debug!(attempt, error = %e, "call refused unprocessed; sending it again");
                    }
                    result => return result,
                }
            }
        })
    }
}
