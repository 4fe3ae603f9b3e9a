//! The peer identity the runtime puts in each request's extensions.
//!
//! Temporary local copy of `trustmesh_identity::PeerIdentity` (same fields),
//! used until the identity crate builds; the layer reads this type from the
//! request extensions.

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
