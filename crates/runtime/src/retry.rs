//! Transparent retry of calls the server never processed.
//!
//! Servers recycle connections (HTTP/2 GOAWAY at `max_connection_age`, so
//! that rotated SVIDs are used); a call the client sent while the GOAWAY was
//! in flight is refused by the server *without being processed*. Such calls
//! are safe to send again on a fresh connection, exactly what gRPC's
//! "transparent retry" does. So is a call whose connection could not be set
//! up (the TCP connection refused, or the TLS handshake failed): it was never
//! sent. A peer whose X.509-SVIDs are being pushed by the Workload API can
//! fail a handshake for a moment (seen in the agent-deposit test, where a
//! new `unix:uid` entry changes every root process's identities at once), so
//! such a retry waits a little first. Nothing else is retried: a call that
//! may have reached a handler fails as it is.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tower::{Service, ServiceExt};

/// How many times a refused call is sent again.
const RETRIES: usize = 2;

/// How long a call whose connection could not be set up waits before it is
/// sent again, times the attempt.
const RECONNECT_AFTER: Duration = Duration::from_millis(50);

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

/// How a call provably went unprocessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unprocessed {
    /// The server refused it, or it was never dispatched on an open
    /// connection: send it again at once.
    Refused,
    /// The connection that was to carry it could not be set up: send it
    /// again after [`RECONNECT_AFTER`].
    NoConnection,
}

/// Whether `error` proves the server did not process the call: the
/// connection that was to carry it could not be set up, the request was
/// never sent (the connection closed while it waited to be dispatched), or
/// its stream was refused (`REFUSED_STREAM`) or cut by the server's GOAWAY
/// (only streams above the GOAWAY's last stream id are, and those were never
/// processed).
fn unprocessed(error: &(dyn std::error::Error + 'static)) -> Option<Unprocessed> {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<tonic::ConnectError>() {
            return Some(Unprocessed::NoConnection);
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return Some(Unprocessed::Refused);
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            let refused = h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
            return refused.then_some(Unprocessed::Refused);
        }
        current = e.source();
    }
    None
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
                let error = match inner.ready().await {
                    Ok(service) => match service.call(request).await {
                        Err(e) => e,
                        done => return done,
                    },
                    Err(e) => e,
                };
                let Some(how) = unprocessed(&error).filter(|_| attempt < RETRIES) else {
                    return Err(error);
                };
                attempt += 1;
                tracing::debug!(attempt, ?how, error = %error, "call not processed; sending it again");
                if how == Unprocessed::NoConnection {
                    tokio::time::sleep(RECONNECT_AFTER * attempt as u32).await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_connections_and_refused_streams_are_unprocessed() {
        let handshake = std::io::Error::new(std::io::ErrorKind::InvalidData, "handshake failed");
        let connect = tonic::ConnectError(Box::new(handshake));
        assert_eq!(unprocessed(&connect), Some(Unprocessed::NoConnection));
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert_eq!(unprocessed(&refused), Some(Unprocessed::Refused));
        let reset = h2::Error::from(h2::Reason::INTERNAL_ERROR);
        assert_eq!(unprocessed(&reset), None);
        let other = std::io::Error::other("the handler failed");
        assert_eq!(unprocessed(&other), None);
    }
}
