//! rustls configurations backed by a live `X509Source`: the process presents
//! its current SVID, requires one from the peer, and accepts only peers of the
//! local trust domain. Material rotates under the configs without a restart.

use std::sync::Arc;

use spiffe::X509Source;
use spiffe_rustls::{LocalOnly, TrustDomain, authorizer};

use crate::RuntimeError;

fn trust_domain(name: &str) -> Result<TrustDomain, RuntimeError> {
    TrustDomain::new(name).map_err(|e| RuntimeError::Tls(format!("trust domain {name:?}: {e}")))
}

/// The server side: a client certificate is required and must be an SVID of
/// `trust_domain`; which workloads may call what is left to the policy layer.
/// ALPN is `h2` (gRPC).
pub fn server_config(
    source: &X509Source,
    trust_domain_name: &str,
) -> Result<Arc<rustls::ServerConfig>, RuntimeError> {
    let td = trust_domain(trust_domain_name)?;
    let config = spiffe_rustls::mtls_server(source.clone())
        .trust_domain_policy(LocalOnly(td.clone()))
        .authorize(authorizer::trust_domains([td]).map_err(|e| RuntimeError::Tls(e.to_string()))?)
        .with_alpn_protocols([b"h2".as_slice()])
        .build()
        .map_err(|e| RuntimeError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The client side: presents this process's SVID and accepts the server only
/// if its SVID carries exactly `server_id`.
pub fn client_config(
    source: &X509Source,
    trust_domain_name: &str,
    server_id: &str,
) -> Result<Arc<rustls::ClientConfig>, RuntimeError> {
    let td = trust_domain(trust_domain_name)?;
    let config = spiffe_rustls::mtls_client(source.clone())
        .trust_domain_policy(LocalOnly(td))
        .authorize(
            authorizer::exact([server_id])
                .map_err(|e| RuntimeError::Tls(format!("server SPIFFE ID {server_id:?}: {e}")))?,
        )
        .with_alpn_protocols([b"h2".as_slice()])
        .build()
        .map_err(|e| RuntimeError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}
