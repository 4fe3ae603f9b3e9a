//! The errors of the runtime, each saying what failed and where.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What can go wrong while starting or running a mesh process.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The SPIFFE Workload API did not give this process an identity.
    #[error("no SPIFFE identity: {0}")]
    Identity(String),
    /// The TLS configuration could not be built from the SVID source.
    #[error("cannot build the mTLS configuration: {0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// SVID files could not be read or are not valid.
    #[error("cannot load SVID files from {path}: {reason}")]
    Files {
        /// The file or folder concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The policy engine could not be prepared.
    #[error(transparent)]
    Policy(#[from] trustmesh_policy::PolicyError),
    /// The admin endpoint failed.
    #[error(transparent)]
    Admin(#[from] trustmesh_telemetry::AdminError),
    /// The gRPC server failed while running.
    #[error("gRPC server failed: {0}")]
    Serve(String),
    /// The server stopped because the process can no longer serve safely
    /// ([`crate::GrpcServer::stop_on_fault`]): restart it.
    #[error("stopped on a fault: {0}")]
    Fault(String),
    /// A client could not reach a server.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The server address.
        addr: String,
        /// Why the connection failed.
        reason: String,
    },
}
