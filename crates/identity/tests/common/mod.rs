//! Shared helpers of the integration tests: an issuer serving on a Unix
//! socket in a temporary directory, and a raw Workload API client.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use trustmesh_identity::{IdentityError, Issuer, IssuerConfig};
use trustmesh_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// The trust domain of the tests.
pub const TD: &str = "trustmesh.local";

/// An issuer serving the Workload API in a temporary data directory.
pub struct TestIssuer {
    pub dir: tempfile::TempDir,
    pub issuer: Issuer,
    pub endpoint: String,
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), IdentityError>>>,
}

impl TestIssuer {
    /// Opens an issuer with this SVID TTL and serves it (needs a runtime).
    pub fn start(ttl: Duration) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer =
            Issuer::open(IssuerConfig::new(dir.path()).with_svid_ttl(ttl)).expect("open issuer");
        let endpoint = issuer.endpoint();
        let socket = issuer.socket_path().to_owned();
        let bound = issuer.clone().bind().expect("bind");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async move {
            let _ = rx.await;
        }));
        Self {
            dir,
            issuer,
            endpoint,
            socket,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server and returns its result (the data directory stays).
    pub async fn stop(&mut self) -> Result<(), IdentityError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task
            .take()
            .unwrap()
            .await
            .expect("server task panicked")
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A SPIFFE ID of the test trust domain.
pub fn id(path: &str) -> String {
    format!("spiffe://{TD}/{path}")
}

/// This process's uid.
pub fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// This process's primary gid.
pub fn gid() -> u32 {
    nix::unistd::getgid().as_raw()
}

/// The generated tonic client over the Unix socket, without any header.
pub async fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    let socket = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect to the Workload API socket");
    SpiffeWorkloadApiClient::new(channel)
}

/// A request carrying the `workload.spiffe.io: true` header.
pub fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

/// The serial number of a DER certificate, hex.
pub fn serial_of(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    cert.raw_serial_as_string()
}

/// Checks that `leaf_der` is signed by the CA certificate `ca_der`.
pub fn assert_signed_by(leaf_der: &[u8], ca_der: &[u8]) {
    use x509_parser::prelude::FromDer as _;
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(leaf_der).unwrap();
    let (_, ca) = x509_parser::certificate::X509Certificate::from_der(ca_der).unwrap();
    leaf.verify_signature(Some(ca.public_key()))
        .expect("the leaf is signed by the bundle's CA");
    assert_eq!(leaf.issuer(), ca.subject(), "leaf issuer is the CA subject");
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
