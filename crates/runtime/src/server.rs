//! The mTLS gRPC server: a TLS 1.3 accept loop that feeds tonic, with the
//! peer's SPIFFE ID computed once per connection, the policy layer on every
//! call, `grpc.health.v1`, and the admin endpoint beside it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use spiffe::X509Source;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tonic_health::ServingStatus;
use trustmesh_identity::PeerIdentity;
use trustmesh_policy::{DenyHook, PolicyEngine, PolicyLayer, PolicyMetrics, SubjectResolver};
use trustmesh_telemetry::{MetricsRegistry, Readiness, RouteLatency};

use crate::latency::{HANDLING_SECONDS, HandlingTimeLayer};
use crate::{RuntimeError, Shutdown, tls};

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The addresses a running server is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerAddrs {
    /// The mTLS gRPC listener.
    pub grpc: SocketAddr,
    /// The admin HTTP listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
}

/// Everything needed to serve one service's gRPC API on the mesh.
pub struct GrpcServer {
    service: String,
    trust_domain: String,
    source: X509Source,
    policy: PolicyEngine,
    descriptors: Vec<&'static [u8]>,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    metrics: MetricsRegistry,
    readiness: Readiness,
    health_services: Vec<String>,
    subject_resolver: Option<Arc<dyn SubjectResolver>>,
    deny_hook: Option<DenyHook>,
    faults: Vec<Fault>,
}

/// A future that completes, with the reason, when the process can no longer
/// serve safely ([`GrpcServer::stop_on_fault`]).
type Fault = Pin<Box<dyn Future<Output = String> + Send>>;

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer")
            .field("service", &self.service)
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

/// A server that is bound and serving in the background.
#[derive(Debug)]
pub struct RunningServer {
    /// Where it listens.
    pub addrs: ServerAddrs,
    task: JoinHandle<Result<(), RuntimeError>>,
}

impl RunningServer {
    /// Waits until the server has stopped (after its shutdown signal fired
    /// and in-flight calls finished).
    pub async fn wait(self) -> Result<(), RuntimeError> {
        self.task
            .await
            .map_err(|e| RuntimeError::Serve(format!("server task failed: {e}")))?
    }
}

impl GrpcServer {
    /// A server for the logical service `service` (the policy package
    /// `trustmesh.<service>` decides its calls) with its identity from `source`.
    pub fn new(
        service: impl Into<String>,
        trust_domain: impl Into<String>,
        source: X509Source,
        policy: PolicyEngine,
    ) -> Self {
        Self {
            service: service.into(),
            trust_domain: trust_domain.into(),
            source,
            policy,
            descriptors: vec![trustmesh_proto::FILE_DESCRIPTOR_SET],
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: MetricsRegistry::new(),
            readiness: Readiness::new(),
            health_services: Vec::new(),
            subject_resolver: None,
            deny_hook: None,
            faults: Vec::new(),
        }
    }

    /// Stops the server when `fault` completes: a store that can no longer
    /// make writes durable (`trustmesh_store::Db::failed`), say. The
    /// reason is logged as an error, the shutdown signal fires (so the rest
    /// of the process stops too), in-flight calls finish, and
    /// [`RunningServer::wait`] returns [`RuntimeError::Fault`]: the process
    /// exits with an error, and its supervisor (`trustmesh up`, Kubernetes)
    /// starts it again.
    pub fn stop_on_fault(mut self, fault: impl Future<Output = String> + Send + 'static) -> Self {
        self.faults.push(Box::pin(fault));
        self
    }

    /// Runs `hook` on every policy deny (the events pipeline records them
    /// as `POLICY_DENY` audit events).
    pub fn deny_hook(mut self, hook: DenyHook) -> Self {
        self.deny_hook = Some(hook);
        self
    }

    /// How the end user of a call is found (usually by verifying the bearer
    /// access token); without one, `input.subject` is always null.
    pub fn subject_resolver(mut self, resolver: Arc<dyn SubjectResolver>) -> Self {
        self.subject_resolver = Some(resolver);
        self
    }

    /// The gRPC listen address (default `127.0.0.1:0`, any free port).
    pub fn grpc_addr(mut self, addr: SocketAddr) -> Self {
        self.grpc_addr = addr;
        self
    }

    /// The admin listen address (default `127.0.0.1:0`, any free port).
    pub fn admin_addr(mut self, addr: SocketAddr) -> Self {
        self.admin_addr = addr;
        self
    }

    /// Adds an encoded `FileDescriptorSet` so the policy layer can decode
    /// the requests of services defined outside `proto/` (tests).
    pub fn descriptors(mut self, fds: &'static [u8]) -> Self {
        self.descriptors.push(fds);
        self
    }

    /// Uses `metrics` as the process's registry (so other parts of the
    /// process publish in the same `/metrics`).
    pub fn metrics(mut self, metrics: MetricsRegistry) -> Self {
        self.metrics = metrics;
        self
    }

    /// Names a gRPC service (`package.Service`) that `grpc.health.v1` reports
    /// as SERVING, besides the overall `""`.
    pub fn health_service(mut self, name: impl Into<String>) -> Self {
        self.health_services.push(name.into());
        self
    }

    /// The readiness flag behind `/readyz` (set once serving starts).
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Binds both listeners and serves `routes` until `shutdown` fires; then
    /// stops accepting, lets in-flight calls finish, and returns.
    pub async fn start(
        self,
        routes: Routes,
        shutdown: Shutdown,
    ) -> Result<RunningServer, RuntimeError> {
        let server_tls = tls::server_config(&self.source, &self.trust_domain)?;
        let listener =
            TcpListener::bind(self.grpc_addr)
                .await
                .map_err(|source| RuntimeError::Bind {
                    addr: self.grpc_addr,
                    source,
                })?;
        let grpc = listener.local_addr().map_err(|source| RuntimeError::Bind {
            addr: self.grpc_addr,
            source,
        })?;

        let policy_metrics = self.metrics.register(PolicyMetrics::register);
        let handshakes = self.metrics.register(|registry| {
            let family = Family::<Vec<(String, String)>, Counter>::default();
            registry.register(
                "tls_handshakes",
                "Inbound mTLS handshakes by outcome",
                family.clone(),
            );
            family
        });
        let mut layer = PolicyLayer::new(self.policy.clone(), &self.service, policy_metrics)
            .with_descriptors(&self.descriptors)?;
        if let Some(resolver) = self.subject_resolver.clone() {
            layer = layer.with_subject_resolver(resolver);
        }
        if let Some(hook) = self.deny_hook.clone() {
            layer = layer.with_deny_hook(hook);
        }
        let timing = HandlingTimeLayer::new(
            RouteLatency::register(
                &self.metrics,
                HANDLING_SECONDS,
                "Time from a gRPC call's arrival (before its policy decision) to its response, by method",
            ),
            layer.method_paths(),
        );

        let shutdown_admin = shutdown.clone();
        let (admin, admin_serve) = trustmesh_telemetry::serve_admin(
            self.admin_addr,
            self.metrics.clone(),
            self.readiness.clone(),
            async move { shutdown_admin.wait().await },
        )
        .await?;

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        for name in &self.health_services {
            health_reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }

        let incoming = accept_loop(
            listener,
            TlsAcceptor::from(server_tls),
            shutdown.clone(),
            handshakes,
        );
        let routes = routes.add_service(health_service);
        let connection_age = max_connection_age(&self.source);
        let fault = watch_faults(self.faults, &self.service, &shutdown);
        let readiness = self.readiness.clone();
        let service = self.service.clone();
        let shutdown_grpc = shutdown.clone();
        let source = self.source.clone();
        let task = tokio::spawn(async move {
            let admin_task = tokio::spawn(admin_serve);
            readiness.set(true);
            tracing::info!(service, %grpc, %admin, "serving");
            let served = tonic::transport::Server::builder()
                // No `max_connection_age_grace`: in tonic 0.14 setting it
                // replaces the graceful GOAWAY with a forced close.
                .max_connection_age(connection_age)
                .layer(timing)
                .layer(layer)
                .serve_with_incoming_shutdown(routes.prepare(), incoming, async move {
                    shutdown_grpc.wait().await;
                })
                .await;
            readiness.set(false);
            health_reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
            let admin_result = admin_task.await;
            source.shutdown().await;
            tracing::info!(service, "stopped");
            if let Some(why) = fault.get() {
                return Err(RuntimeError::Fault(why.clone()));
            }
            served.map_err(|e| RuntimeError::Serve(e.to_string()))?;
            match admin_result {
                Ok(result) => result.map_err(RuntimeError::from),
                Err(e) => Err(RuntimeError::Serve(format!("admin task failed: {e}"))),
            }
        });
        Ok(RunningServer {
            addrs: ServerAddrs { grpc, admin },
            task,
        })
    }
}

/// How long a connection is served before the server asks the client (with
/// an HTTP/2 GOAWAY; in-flight calls finish) to reconnect: a quarter of this
/// process's SVID lifetime. Clients rotate at half-life, so a connection is
/// opened with a certificate at most half-way through its life and renewed,
/// with the client's rotated SVID, with a quarter of that life to spare
/// before the certificate could expire (when the stream would cut it). The
/// issuer gives every workload the same lifetime.
fn max_connection_age(source: &X509Source) -> Duration {
    let remaining = source
        .svid()
        .ok()
        .and_then(|svid| {
            svid.cert_chain()
                .first()
                .and_then(|leaf| trustmesh_identity::peer::not_after_from_der(leaf.as_ref()))
        })
        .and_then(|not_after| not_after.duration_since(std::time::SystemTime::now()).ok())
        .unwrap_or(Duration::from_secs(3600));
    (remaining / 4).clamp(Duration::from_millis(500), Duration::from_secs(3600))
}

/// Fires `shutdown` when the first of `faults` completes, after logging its
/// reason; returns where that reason is kept for [`RunningServer::wait`].
fn watch_faults(faults: Vec<Fault>, service: &str, shutdown: &Shutdown) -> Arc<OnceLock<String>> {
    let reason = Arc::new(OnceLock::new());
    if faults.is_empty() {
        return reason;
    }
    let (kept, shutdown, service) = (reason.clone(), shutdown.clone(), service.to_owned());
    tokio::spawn(async move {
        tokio::select! {
            (why, _, _) = futures::future::select_all(faults) => {
                tracing::error!(
                    service,
                    reason = %why,
                    "stopping: this process can no longer serve safely; its supervisor restarts it"
                );
                kept.get_or_init(|| why);
                shutdown.trigger();
            }
            () = shutdown.wait() => {}
        }
    });
    reason
}

/// Accepts TCP connections and runs each TLS handshake in its own task (so a
/// slow or hostile client cannot stall the others); completed mTLS
/// connections go to tonic through the returned stream.
fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: Shutdown,
    handshakes: Family<Vec<(String, String)>, Counter>,
) -> ReceiverStream<Result<MtlsStream, std::io::Error>> {
    let (tx, rx) = mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.wait() => break,
            };
            let (tcp, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let handshakes = handshakes.clone();
            tokio::spawn(async move {
                let outcome =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => match MtlsStream::new(tls, remote) {
                            Some(stream) => {
                                let _ = tx.send(Ok(stream)).await;
                                "ok"
                            }
                            None => "not_tls13_or_expired",
                        },
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake refused");
                            "refused"
                        }
                        Err(_) => "timeout",
                    };
                handshakes
                    .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
                    .inc();
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A server-side mTLS connection with its peer identity, computed once.
///
/// The client's certificate is verified only at the handshake, so the stream
/// itself ends the connection when that certificate expires: an SVID that is
/// no longer valid is not served, not even on a connection it opened.
pub(crate) struct MtlsStream {
    inner: TlsStream<TcpStream>,
    peer: PeerIdentity,
    expiry: Pin<Box<tokio::time::Sleep>>,
}

impl MtlsStream {
    /// Wraps an established connection; `None` unless it negotiated TLS 1.3
    /// with a client certificate that is still valid.
    fn new(inner: TlsStream<TcpStream>, remote: SocketAddr) -> Option<Self> {
        let (_, conn) = inner.get_ref();
        if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return None;
        }
        let leaf = conn.peer_certificates().and_then(|certs| certs.first())?;
        let spiffe_id =
            trustmesh_identity::peer::spiffe_id_from_der(leaf.as_ref()).map(Arc::<str>::from);
        let valid_for = trustmesh_identity::peer::not_after_from_der(leaf.as_ref())?
            .duration_since(std::time::SystemTime::now())
            .ok()?;
        Some(Self {
            inner,
            peer: PeerIdentity {
                spiffe_id,
                remote_addr: Some(remote),
            },
            expiry: Box::pin(tokio::time::sleep(valid_for)),
        })
    }

    /// An error once the peer's certificate has expired.
    fn check_expiry(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        match self.expiry.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::warn!(
                    peer = self.peer.spiffe_id.as_deref().unwrap_or("-"),
                    "closing a connection: the peer's SVID has expired"
                );
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the peer's SVID has expired",
                ))
            }
            Poll::Pending => Ok(()),
        }
    }
}

impl Connected for MtlsStream {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for MtlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check_expiry(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MtlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check_expiry(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
