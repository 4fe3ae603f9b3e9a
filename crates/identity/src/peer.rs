//! The identity of the peer of a connection, as seen by a server.
//!
//! The runtime computes a [`PeerIdentity`] once per TLS connection (parsing the
//! peer's leaf certificate costs a few microseconds) and puts it in the request
//! extensions, where the policy layer reads it.

use std::net::SocketAddr;
use std::sync::Arc;

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    /// The SPIFFE ID of the peer's X.509-SVID, if it presented one.
    pub spiffe_id: Option<Arc<str>>,
    /// The peer's socket address, if known.
    pub remote_addr: Option<SocketAddr>,
}

impl PeerIdentity {
    /// Builds the identity of a peer from its leaf certificate (DER) and address.
    pub fn from_leaf(cert_der: Option<&[u8]>, remote_addr: Option<SocketAddr>) -> Self {
        Self {
            spiffe_id: cert_der
                .and_then(spiffe_id_from_der)
                .map(|id| Arc::from(id.as_str())),
            remote_addr,
        }
    }

    /// An identity with no SPIFFE ID (a plaintext or unauthenticated peer).
    pub fn anonymous(remote_addr: Option<SocketAddr>) -> Self {
        Self {
            spiffe_id: None,
            remote_addr,
        }
    }
}

/// The SPIFFE ID of a leaf certificate: its single `spiffe://` URI SAN.
///
/// Returns `None` if the certificate does not parse or does not carry exactly
/// one URI SAN that is a valid SPIFFE ID.
pub fn spiffe_id_from_der(cert_der: &[u8]) -> Option<String> {
    spiffe::cert::spiffe_id_from_der(cert_der)
        .ok()
        .map(|id| id.to_string())
}

/// When a certificate stops being valid (its `notAfter`), or `None` if it
/// does not parse.
pub fn not_after_from_der(cert_der: &[u8]) -> Option<std::time::SystemTime> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).ok()?;
    let seconds = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}
