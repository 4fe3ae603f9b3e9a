//! The mesh runtime every Trustmesh process is built on.
//!
//! A service hands its tonic routes to [`GrpcServer`] and gets, without writing
//! any of it: mutual TLS 1.3 with its SPIFFE X.509-SVID (live rotation through
//! the Workload API), the peer's SPIFFE ID attached to each request as a
//! [`PeerIdentity`](trustmesh_identity::PeerIdentity), the Rego policy layer
//! on every call, the standard `grpc.health.v1` service, Prometheus metrics
//! and health on an admin port, and graceful shutdown.
//!
//! Clients dial other services with [`MeshClient`], which checks the SPIFFE ID
//! of the server it reaches. Agents that hold their SVID in files rather than
//! behind a Workload API use [`SvidFiles`].

mod client;
mod client_facts;
mod directory;
mod error;
mod files;
mod hooks;
pub mod latency;
mod retry;
mod server;
mod shutdown;
mod store_status;
mod subject;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;

pub use client::{MeshChannel, MeshClient, connect_channel};
pub use client_facts::{CLIENT_FACTS, on_behalf_of};
pub use directory::{Directory, RunReport};
pub use error::RuntimeError;
pub use files::SvidFiles;
pub use hooks::Hooks;
pub use retry::RetryUnprocessed;
pub use server::{GrpcServer, RunningServer, ServerAddrs};
pub use shutdown::{Shutdown, shutdown_signal};
pub use store_status::store_status;
pub use subject::{
    JwtSubjects, SESSION_CHECK_TTL, TOKEN_AUDIENCE, TOKEN_ISSUER, auth_verifier, bearer_token,
    subject_from_claims,
};
pub use tls::{client_config, server_config};
