//! Test harness shared by the end-to-end suites under `tests/e2e/` and the
//! loopback benchmark: an in-process local SPIFFE issuer, the `Echo` test
//! service served through the real mesh runtime, a `trustmesh up` process
//! under a temporary data directory, and small HTTPS/TLS clients.
//!
//! End-to-end tests reuse the one `trustmesh` binary built beforehand
//! (`cargo build -p trustmesh`), found next to the test executable or at
//! `TRUSTMESH_BIN`.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tempfile::TempDir;
use trustmesh_identity::{Issuer, IssuerConfig, PeerIdentity, Registry};
use trustmesh_policy::PolicyEngine;
use trustmesh_runtime::{GrpcServer, Shutdown, SvidFiles};

pub mod hops;
pub mod rest;
pub mod stats;

/// Generated code of the test-only `trustmesh.testing.v1` package.
pub mod echo {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("trustmesh.testing.v1");
}

/// The encoded descriptor set of `tests/proto/echo.proto`.
pub const ECHO_DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/echo_descriptor_set.bin"));

/// The trust domain used throughout the tests.
pub const TRUST_DOMAIN: &str = "trustmesh.local";

/// `spiffe://trustmesh.local<path>`.
pub fn spiffe_id(path: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}{path}")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `trustmesh` binary under test: `TRUSTMESH_BIN`, or the one built in
/// the same target directory as this test executable.
pub fn trustmesh_bin() -> PathBuf {
    if let Ok(path) = std::env::var("TRUSTMESH_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/trustmesh
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("trustmesh");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p trustmesh` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The policies of the repository plus the test service's package.
pub fn test_policies() -> PolicyEngine {
    let rego = std::fs::read_to_string(repo_root().join("tests/policies/testing/testing.rego"))
        .expect("read testing.rego");
    PolicyEngine::from_dir(&repo_root().join("policies"))
        .expect("load policies/")
        .with_extra_policies(&[("tests/policies/testing/testing.rego".into(), rego)])
        .expect("add testing.rego")
}

/// A local SPIFFE issuer serving the Workload API in this process, under a
/// temporary data directory.
pub struct TestIssuer {
    /// The data directory (CA, socket).
    pub dir: TempDir,
    config: IssuerConfig,
    registry: Registry,
    shutdown: Shutdown,
}

impl TestIssuer {
    /// Starts an issuer whose SVIDs live `ttl`.
    pub async fn start(ttl: Duration) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = IssuerConfig::new(dir.path().to_path_buf());
        config.svid_ttl = ttl;
        let issuer = Issuer::open(config.clone()).expect("open issuer");
        let registry = issuer.registry();
        let shutdown = Shutdown::new();
        let wait = shutdown.clone();
        tokio::spawn(issuer.serve(async move { wait.wait().await }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !config.socket_path.exists() {
            assert!(Instant::now() < deadline, "issuer socket did not appear");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Self {
            dir,
            config,
            registry,
            shutdown,
        }
    }

    /// The Workload API address (`unix:/path`).
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.config.socket_path.display())
    }

    /// The issuer's registry (PID entries).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Mints an SVID for `id` (valid one hour) as client files in memory.
    pub fn mint(&self, id: &str) -> SvidFiles {
        let issuer = Issuer::open(self.config.clone()).expect("reopen issuer");
        let svid = issuer.mint(id, Duration::from_secs(3600)).expect("mint");
        SvidFiles::from_der(
            svid.cert_chain_der,
            svid.key_pkcs8_der,
            vec![issuer.bundle_der()],
        )
        .expect("minted SVID loads")
    }

    /// An X509Source for this process with identity `id` (registered by PID).
    pub async fn source_for_self(&self, id: &str) -> spiffe::X509Source {
        self.registry
            .register_pid(std::process::id(), id.to_owned());
        trustmesh_identity::x509_source(Some(&self.endpoint()), Some(id))
            .await
            .expect("X509Source from the test issuer")
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// The test `Echo` service implementation.
#[derive(Debug, Default, Clone)]
pub struct EchoService;

#[tonic::async_trait]
impl echo::echo_server::Echo for EchoService {
    async fn say(
        &self,
        request: tonic::Request<echo::SayRequest>,
    ) -> Result<tonic::Response<echo::SayReply>, tonic::Status> {
        let peer = request
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.spiffe_id.as_deref().map(str::to_owned))
            .unwrap_or_default();
        let request = request.into_inner();
        if request.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(request.delay_ms))).await;
        }
        Ok(tonic::Response::new(echo::SayReply {
            message: request.message,
            peer,
        }))
    }
}

/// An Echo server running on the mesh runtime (mTLS + policy + health).
pub struct EchoServer {
    /// The gRPC address.
    pub addr: SocketAddr,
    /// The admin address.
    pub admin: SocketAddr,
    /// Fires to stop the server.
    pub shutdown: Shutdown,
    running: Option<trustmesh_runtime::RunningServer>,
}

/// The SPIFFE ID the Echo server runs as.
pub fn echo_id() -> String {
    spiffe_id("/svc/echo")
}

impl EchoServer {
    /// Starts the Echo service with its identity from `issuer`'s Workload API.
    pub async fn start(issuer: &TestIssuer) -> Self {
        let source = issuer.source_for_self(&echo_id()).await;
        let shutdown = Shutdown::new();
        let routes = tonic::service::Routes::new(echo::echo_server::EchoServer::new(EchoService));
        let running = GrpcServer::new("testing", TRUST_DOMAIN, source, test_policies())
            .descriptors(ECHO_DESCRIPTORS)
            .health_service("trustmesh.testing.v1.Echo")
            .start(routes, shutdown.clone())
            .await
            .expect("start echo server");
        Self {
            addr: running.addrs.grpc,
            admin: running.addrs.admin,
            shutdown,
            running: Some(running),
        }
    }

    /// Stops the server and waits until it has.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(running) = self.running.take() {
            running.wait().await.expect("echo server stopped cleanly");
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// An Echo client over mTLS presenting `svid`, expecting the server `server_id`.
pub fn echo_client(
    svid: &SvidFiles,
    addr: SocketAddr,
    server_id: &str,
) -> echo::echo_client::EchoClient<trustmesh_runtime::MeshChannel> {
    let config = svid.client_config(server_id).expect("client config");
    let channel = trustmesh_runtime::connect_channel(config, &addr.to_string()).expect("channel");
    echo::echo_client::EchoClient::new(channel)
}

/// A rustls client that accepts any server certificate, with an optional
/// client identity: for attacks where the *server* must refuse us.
pub fn reckless_client_config(identity: Option<&SvidFiles>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)));
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(svid) => {
            let (chain, key) = svid.parts();
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert")
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A server certificate "verifier" that accepts anything (signatures are
/// still checked against the presented key): for clients in attacks, where
/// the *server* must do the refusing.
#[derive(Debug)]
pub struct AcceptAnyServer(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Opens a TLS connection with `config` and returns the server's leaf
/// certificate (DER).
pub async fn server_leaf(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> std::io::Result<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("mesh.invalid").map_err(std::io::Error::other)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    conn.peer_certificates()
        .and_then(|certs| certs.first())
        .map(|leaf| leaf.as_ref().to_vec())
        .ok_or_else(|| std::io::Error::other("no server certificate"))
}

/// An HTTPS response: status, headers, body text.
#[derive(Debug)]
pub struct HttpsResponse {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: hyper::HeaderMap,
    /// The body as text.
    pub body: String,
}

/// `GET https://<addr><path>` trusting only the CA in `ca_pem`, with
/// `localhost` as the server name (HTTP/1.1).
pub async fn https_get(
    addr: SocketAddr,
    path: &str,
    ca_pem: &Path,
) -> std::io::Result<HttpsResponse> {
    let tls = gateway_tls(addr, ca_pem).await?;
    http1_get(tls, "localhost", path).await
}

/// A TLS connection to `addr` as `localhost`, trusting only the CA in
/// `ca_pem` (no ALPN: the gateway speaks HTTP/1.1 on it).
pub async fn gateway_tls(
    addr: SocketAddr,
    ca_pem: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).map_err(std::io::Error::other)? {
        roots
            .add(cert.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// An HTTPS request to the gateway at `addr` trusting only `ca_pem`, with
/// extra `headers` and an optional JSON `body`.
pub async fn https_request(
    addr: SocketAddr,
    ca_pem: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<HttpsResponse> {
    let tls = gateway_tls(addr, ca_pem).await?;
    http1_request(tls, "localhost", method, path, headers, body).await
}

/// A `trustmesh up` process under a temporary data directory, on free ports.
pub struct Mesh {
    /// The data directory.
    pub dir: TempDir,
    /// The parsed `endpoints.json`.
    pub endpoints: serde_json::Value,
    child: Option<Child>,
}

impl Mesh {
    /// Starts `trustmesh up` with `extra` arguments and waits (up to 60 s)
    /// until `endpoints.json` names every service.
    pub fn start(extra: &[&str]) -> Mesh {
        Self::start_with_env(extra, &[])
    }

    /// Like [`Mesh::start`], with extra environment variables for every
    /// process (e.g. `DATABASE_URL`).
    pub fn start_with_env(extra: &[&str], envs: &[(&str, &str)]) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let log = std::fs::File::create(dir.path().join("up.log")).expect("log file");
        let child = Command::new(trustmesh_bin())
            .arg("up")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--gateway-addr", "127.0.0.1:0", "--port-base", "0"])
            .args(extra)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .env_remove("TRUSTMESH_POLICY_DIR")
            .env_remove("DATABASE_URL")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn trustmesh up");
        let mut mesh = Mesh {
            dir,
            endpoints: serde_json::Value::Null,
            child: Some(child),
        };
        mesh.endpoints = mesh.wait_for_endpoints(Duration::from_secs(60), |_| true);
        mesh
    }

    /// The data directory of the mesh.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Gives the account of `email` the `role` as the operator does
    /// (`trustmesh user grant-role` with this mesh's data directory); what
    /// the command printed.
    pub fn grant_role(&self, email: &str, role: &str) -> String {
        let data_dir = self.data_dir();
        let args = [
            "user",
            "grant-role",
            "--data-dir",
            data_dir.to_str().expect("a UTF-8 path"),
            "--email",
            email,
            "--role",
            role,
        ];
        let (code, out, err) = run_cli(&args, &[]);
        assert_eq!(code, 0, "{out}{err}");
        out
    }

    /// What `up` logged so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    /// Re-reads `endpoints.json` until `accept` is satisfied.
    pub fn wait_for_endpoints(
        &mut self,
        timeout: Duration,
        accept: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let path = self.data_dir().join("endpoints.json");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("trustmesh up exited early ({status}):\n{}", self.log());
            }
            if let Ok(bytes) = std::fs::read(&path)
                && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes)
                && accept(&value)
            {
                self.endpoints = value.clone();
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "endpoints.json not ready in {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The gateway's HTTPS address.
    pub fn gateway_addr(&self) -> SocketAddr {
        let url = self.endpoints["gateway"]["url"]
            .as_str()
            .expect("gateway url");
        url.trim_start_matches("https://")
            .parse()
            .expect("gateway addr")
    }

    /// The CA certificate that signs the gateway's HTTPS certificate.
    pub fn gateway_ca(&self) -> PathBuf {
        PathBuf::from(
            self.endpoints["gateway"]["ca"]
                .as_str()
                .expect("gateway ca"),
        )
    }

    /// The admin address (`/metrics`) of `service` (`gateway`, `auth`, …).
    pub fn admin_addr(&self, service: &str) -> SocketAddr {
        self.endpoints["services"][service]["admin"]
            .as_str()
            .unwrap_or_else(|| panic!("no admin address for {service} in endpoints.json"))
            .parse()
            .expect("admin addr")
    }

    /// The pid of `up` itself.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Sends SIGINT (Ctrl-C) and waits for `up` to exit; returns how long it
    /// took and whether it exited successfully.
    pub fn interrupt(&mut self) -> (Duration, bool) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        signal(child.id(), nix::sys::signal::Signal::SIGINT);
        let deadline = started + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return (started.elapsed(), status.success());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return (started.elapsed(), false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(8);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Runs the `trustmesh` binary with `args` and returns (exit code, stdout,
/// stderr).
pub fn run_cli(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(trustmesh_bin())
        .args(args)
        .env_remove("TRUSTMESH_POLICY_DIR")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run trustmesh");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `GET http://<addr><path>` (plain HTTP/1.1, for admin endpoints).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let response = http1_get(tcp, &addr.to_string(), path).await?;
    Ok((response.status, response.body))
}

/// One HTTP/1.1 `GET path` over an established connection.
async fn http1_get<IO>(io: IO, host: &str, path: &str) -> std::io::Result<HttpsResponse>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    http1_request(io, host, "GET", path, &[], None).await
}

/// One HTTP/1.1 request over an established connection.
async fn http1_request<IO>(
    io: IO,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<HttpsResponse>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    Http1Connection::over(io, host)
        .await?
        .request(method, path, headers, body)
        .await
}

/// A kept-alive HTTP/1.1 connection: requests one after the other over the
/// same (TLS) connection, as a browser or an API client would send them.
pub struct Http1Connection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    host: String,
}

impl Http1Connection {
    /// An HTTPS connection to the gateway at `addr`, trusting only the CA in
    /// `ca_pem`.
    pub async fn gateway(addr: SocketAddr, ca_pem: &Path) -> std::io::Result<Self> {
        let tls = gateway_tls(addr, ca_pem).await?;
        Self::over(tls, "localhost").await
    }

    /// HTTP/1.1 over an established connection to `host`.
    async fn over<IO>(io: IO, host: &str) -> std::io::Result<Self>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Self {
            sender,
            host: host.to_owned(),
        })
    }

    /// Sends `method path` with `headers` and an optional JSON `body`, and
    /// reads the whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> std::io::Result<HttpsResponse> {
        use http_body_util::BodyExt;
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host);
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.unwrap_or_default().to_owned(),
            )))
            .map_err(std::io::Error::other)?;
        self.sender.ready().await.map_err(std::io::Error::other)?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok(HttpsResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// The `/metrics` text of the admin endpoint at `addr` once it contains every
/// one of `needles`, waiting up to 5 s: a server counts a refused handshake
/// in its own task, which may finish just after the client saw the refusal.
/// Returns the last text read either way, for the caller's assertions.
pub async fn metrics_with(addr: SocketAddr, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = http_get(addr, "/metrics").await.expect("GET /metrics");
        if needles.iter().all(|n| text.contains(n)) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw Workload API client over the Unix socket at `socket` (no metadata
/// added: tests choose what to send).
pub async fn workload_api_client(
    socket: &Path,
) -> trustmesh_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
    tonic::transport::Channel,
> {
    let socket = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://workload.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect to the Workload API socket");
    trustmesh_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
        channel,
    )
}

/// Copies the directory tree `from` into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy target");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

/// A gRPC health client over mTLS with `svid`, for the server `server_id`.
pub fn health_client(
    svid: &SvidFiles,
    addr: SocketAddr,
    server_id: &str,
) -> tonic_health::pb::health_client::HealthClient<trustmesh_runtime::MeshChannel> {
    let config = svid.client_config(server_id).expect("client config");
    let channel = trustmesh_runtime::connect_channel(config, &addr.to_string()).expect("channel");
    tonic_health::pb::health_client::HealthClient::new(channel)
}

/// A PostgreSQL database of its own for one test (created in the local
/// server, dropped when the guard goes). Fails loudly if PostgreSQL is not
/// there: tests on PostgreSQL are never skipped.
pub struct PostgresDb {
    /// `postgres://…/<name>`.
    pub url: String,
    name: String,
}

fn psql(sql: &str) {
    let status = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-q",
            "-c",
            sql,
        ])
        .stdout(Stdio::null())
        .status()
        .expect("psql must be installed (scripts/services.sh installs it)");
    assert!(status.success(), "psql failed: {sql}");
}

impl PostgresDb {
    /// Creates a fresh, empty database.
    pub fn create() -> Self {
        let name = format!("tm_{}", uuid::Uuid::new_v4().simple());
        psql(&format!("CREATE DATABASE {name}"));
        Self {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}
