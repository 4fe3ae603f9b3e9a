//! The HTTPS side: the axum router and a TLS accept loop that serves it with
//! HTTP/1.1 and HTTP/2.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower::Layer;
use trustmesh_runtime::Shutdown;
use trustmesh_telemetry::latency::OTHER_ROUTE;
use trustmesh_telemetry::{Readiness, RouteLatency};

use crate::GatewayError;
use crate::api::Api;
use crate::api::errors::{ApiError, after_reading_body};

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's operational routes (`/healthz`, `/readyz`) alone.
/// `readiness` drives `/readyz`.
pub fn router(readiness: Readiness) -> Router {
    build(readiness, None)
}

/// `router` with the time to answer each request (to its response's
/// headers) recorded in `latency`, labelled `"<METHOD> <route template>"`
/// (`POST /api/v1/auth/login/mfa`, `GET /api/v1/payments/{id}`); a request that matched
/// no route, or with a method outside the standard ones, is
/// [`OTHER_ROUTE`].
pub fn timed(router: Router, latency: RouteLatency) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        latency,
        record_latency,
    ))
}

async fn record_latency(
    State(latency): State<RouteLatency>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = Instant::now();
    let route = match (
        request.extensions().get::<MatchedPath>(),
        standard_method(request.method()),
    ) {
        (Some(path), Some(method)) => format!("{method} {}", path.as_str()),
        _ => OTHER_ROUTE.to_owned(),
    };
    let response = next.run(request).await;
    latency.observe(&route, started.elapsed());
    response
}

/// The name of `method` if it is one of HTTP's standard methods (a client
/// may send any token as a method).
fn standard_method(method: &Method) -> Option<&str> {
    const STANDARD: [Method; 7] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
    ];
    STANDARD.contains(method).then(|| method.as_str())
}

/// The whole gateway: the operational routes and the REST API of [`Api`].
pub fn app(readiness: Readiness, api: Api) -> Router {
    build(readiness, Some(api))
}

fn build(readiness: Readiness, api: Option<Api>) -> Router {
    let mut router = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .with_state(readiness);
    if let Some(api) = api {
        router = router.merge(crate::api::routes(api));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(security_headers))
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    if readiness.is_ready() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the gateway is starting",
        )
    }
}

async fn not_found(request: Request) -> Response {
    let response = error(StatusCode::NOT_FOUND, "not_found", "no such route");
    refused(response, request).await
}

async fn method_not_allowed(request: Request) -> Response {
    let response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept this method",
    );
    refused(response, request).await
}

/// `response` once the refused `request`'s body is read ([`after_reading_body`]).
async fn refused(response: Response, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    after_reading_body(response, &parts.headers, parts.version, body).await
}

/// An error response in the mesh's JSON shape `{"error": {"code", "message"}}`.
fn error(status: StatusCode, code: &'static str, message: &str) -> Response {
    ApiError::new(status, code, message).into_response()
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=63072000; includeSubDomains",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    // A route may declare itself cacheable (the JWKS); nothing else is.
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Binds `addr` and serves `app` over TLS until `shutdown` fires.
pub(crate) async fn serve_https(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: Shutdown,
) -> Result<(SocketAddr, JoinHandle<()>), GatewayError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| GatewayError::Bind { addr, source })?;
    let acceptor = TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.wait() => break,
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "HTTPS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                // With a timer, hyper enforces the header-read timeout: a
                // client that never finishes its request headers is dropped.
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Some(Duration::from_secs(30)))
                    .keep_alive_timeout(Duration::from_secs(10));
                // Handlers read the TCP peer (the client, or a proxy) here.
                let app = Extension(ConnectInfo(remote)).layer(app);
                let conn = builder.serve_connection_with_upgrades(
                    TokioIo::new(tls),
                    TowerToHyperService::new(app),
                );
                tokio::pin!(conn);
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%remote, error = %e, "HTTPS connection ended with an error");
                        }
                    }
                    () = shutdown.wait() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(3), conn).await;
                    }
                }
            });
        }
        // Let in-flight requests finish (bounded by the per-connection grace).
        while connections.join_next().await.is_some() {}
    });
    Ok((local, task))
}
