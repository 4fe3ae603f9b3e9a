//! Dialling other mesh processes: gRPC channels over mTLS that present this
//! process's SVID and accept the server only under its expected SPIFFE ID.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use spiffe::X509Source;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use crate::retry::RetryUnprocessed;
use crate::{Directory, RuntimeError, tls};

/// A gRPC channel to a mesh service: mTLS, lazily (re)connected, and
/// resending calls the server refused unprocessed during a connection
/// recycle.
pub type MeshChannel = RetryUnprocessed<Channel>;

/// A factory of mTLS channels for a process whose identity comes from the
/// Workload API.
#[derive(Clone)]
pub struct MeshClient {
    source: X509Source,
    trust_domain: String,
}

impl std::fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl MeshClient {
    /// A client presenting the SVIDs of `source`.
    pub fn new(source: X509Source, trust_domain: impl Into<String>) -> Self {
        Self {
            source,
            trust_domain: trust_domain.into(),
        }
    }

    /// A lazily connected channel to the mesh service `service`, found
    /// through `directory` at every (re)connection, that accepts the server
    /// only as `spiffe://<trust-domain>/svc/<service>`.
    pub fn service_channel(
        &self,
        directory: &Directory,
        service: &str,
    ) -> Result<MeshChannel, RuntimeError> {
        let server_id = format!("spiffe://{}/svc/{service}", self.trust_domain);
        let config = tls::client_config(&self.source, &self.trust_domain, &server_id)?;
        let directory = directory.clone();
        let service = service.to_owned();
        lazy_channel(config, &format!("{service}.mesh.invalid:0"), move || {
            directory.resolve(&service)
        })
    }

    /// A lazily connected channel to `addr` (`host:port`) that accepts the
    /// server only if it presents `server_id`. The channel reconnects on its
    /// own; each new handshake uses the current SVID.
    pub fn channel(&self, addr: &str, server_id: &str) -> Result<MeshChannel, RuntimeError> {
        let config = tls::client_config(&self.source, &self.trust_domain, server_id)?;
        connect_channel(config, addr)
    }
}

/// A lazily connected gRPC channel to `addr` (`host:port`) over TLS with
/// `config` (which carries the client identity and the server check).
pub fn connect_channel(
    config: Arc<rustls::ClientConfig>,
    addr: &str,
) -> Result<MeshChannel, RuntimeError> {
    let target = addr.to_owned();
    lazy_channel(config, addr, move || Ok(target.clone()))
}

/// A lazy channel whose connector asks `resolve` for the address each time
/// it (re)connects.
fn lazy_channel(
    config: Arc<rustls::ClientConfig>,
    authority: &str,
    resolve: impl Fn() -> Result<String, RuntimeError> + Send + Sync + Clone + 'static,
) -> Result<MeshChannel, RuntimeError> {
    let uri: Uri = format!("http://{authority}")
        .parse()
        .map_err(|e| RuntimeError::Connect {
            addr: authority.to_owned(),
            reason: format!("not a host:port address: {e}"),
        })?;
    let endpoint = Endpoint::from(uri).tcp_nodelay(true);
    let connector = TlsConnector::from(config);
    Ok(RetryUnprocessed::new(endpoint.connect_with_connector_lazy(
        service_fn(move |_: Uri| {
            let connector = connector.clone();
            let resolve = resolve.clone();
            async move {
                let target = resolve().map_err(std::io::Error::other)?;
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                // SPIFFE identifies the server by its URI SAN, which the
                // verifier checks; the TLS server name is only a placeholder.
                let name = rustls::pki_types::ServerName::try_from("mesh.invalid")
                    .map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }),
    )))
}
