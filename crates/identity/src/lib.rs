//! Trustmesh identity: the local SPIFFE issuer and identity helpers.
//!
//! * [`Issuer`] keeps a CA in the data directory and serves the standard SPIFFE
//!   Workload API on a Unix socket, attesting callers by their Unix peer
//!   credentials like SPIRE's agent (see [`Registry`] and [`EntryStore`]).
//!   `trustmesh identity mint` uses [`Issuer::mint`] and [`Issuer::write_minted`].
//! * [`x509_source`] gives a workload its live `spiffe::X509Source`.
//! * [`PeerIdentity`] is what servers attach to each request about their peer.

mod ca;
pub mod error;
pub mod issuer;
mod jwt;
pub mod peer;
pub mod registry;
pub mod source;
mod util;
mod workload;

pub use error::IdentityError;
pub use issuer::{BoundIssuer, Issuer, IssuerConfig, MintedSvid, write_svid_files};
pub use peer::PeerIdentity;
pub use registry::{Entry, EntryStore, Registry, Selector};
pub use source::{SourceError, x509_source};

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "trustmesh.local";
