//! The error type of the identity crate.
//!
//! Every message is meant to be shown to an operator as one line: it names the
//! file, value or setting at fault and, for I/O errors, includes the cause.

use std::convert::Infallible;
use std::path::PathBuf;

/// Everything that can go wrong while configuring, running or using the issuer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A configuration value is invalid (TTL, trust domain, paths...).
    #[error("invalid identity configuration: {0}")]
    Config(String),

    /// A SPIFFE ID is malformed or not acceptable here.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId {
        /// The offending input.
        id: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A registration selector could not be parsed.
    #[error(
        "invalid selector {input:?}: {reason} (expected unix:uid:<N>, unix:gid:<N> or unix:path:</absolute/path>)"
    )]
    InvalidSelector {
        /// The offending input.
        input: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A registration entry is invalid or conflicts with an existing one.
    #[error("invalid registration entry: {0}")]
    InvalidEntry(String),

    /// An I/O operation on a file or directory failed.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The underlying error.
        cause: std::io::Error,
    },

    /// A file of the data directory exists but its content is unusable.
    #[error("{path}: {reason}", path = path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Generating or parsing a certificate or key failed.
    #[error("certificate error: {0}")]
    Certificate(String),

    /// Signing or encoding a JWT failed.
    #[error("JWT error: {0}")]
    Jwt(String),

    /// The Workload API socket could not be set up.
    #[error("Workload API socket {path}: {reason}", path = path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// The gRPC server failed.
    #[error("Workload API server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl IdentityError {
    /// Wraps an I/O error with a description of the operation (including the path).
    pub(crate) fn io(context: impl Into<String>, cause: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            cause,
        }
    }

    pub(crate) fn spiffe_id(id: impl Into<String>, reason: impl ToString) -> Self {
        Self::InvalidSpiffeId {
            id: id.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<Infallible> for IdentityError {
    fn from(never: Infallible) -> Self {
        match never {}
    }
}

impl From<rcgen::Error> for IdentityError {
    fn from(error: rcgen::Error) -> Self {
        Self::Certificate(error.to_string())
    }
}
