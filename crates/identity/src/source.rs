//! Building a live `spiffe::X509Source` for a workload, with errors that say
//! what went wrong (no endpoint, socket missing, no identity issued...).

use std::os::unix::fs::FileTypeExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use spiffe::transport::Endpoint;
use spiffe::x509_source::{SvidPicker, X509SourceError};
use spiffe::{SpiffeId, WorkloadApiClient, WorkloadApiError, X509Source, X509Svid};

/// The environment variable naming the Workload API endpoint.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";
/// How long [`x509_source`] waits for a first SVID.
pub const DEFAULT_SOURCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an X.509 source could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// No endpoint was given and `SPIFFE_ENDPOINT_SOCKET` is not set.
    #[error(
        "no Workload API endpoint: pass one or set SPIFFE_ENDPOINT_SOCKET (e.g. unix:/path/to/workload.sock)"
    )]
    MissingEndpoint,

    /// The endpoint string is malformed.
    #[error("invalid Workload API endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it is invalid.
        reason: String,
    },

    /// The Unix socket of the endpoint does not exist.
    #[error("Workload API socket {} does not exist (is the issuer running?)", path.display())]
    SocketMissing {
        /// The socket path.
        path: PathBuf,
    },

    /// The Unix socket path exists but cannot be used.
    #[error("Workload API socket {}: {reason}", path.display())]
    SocketUnusable {
        /// The socket path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The requested SPIFFE ID is malformed.
    #[error("invalid SPIFFE ID {want:?}: {reason}")]
    InvalidSpiffeId {
        /// The requested ID.
        want: String,
        /// Why it is invalid.
        reason: String,
    },

    /// The Workload API refused this process an identity.
    #[error(
        "the Workload API at {endpoint} issued no identity to this process (no registration entry matches it): {detail}"
    )]
    PermissionDenied {
        /// The endpoint.
        endpoint: String,
        /// The server's message.
        detail: String,
    },

    /// The process has identities, but not the one requested.
    #[error(
        "the Workload API at {endpoint} did not issue {want} to this process; it issued {available:?}"
    )]
    WantedIdNotIssued {
        /// The endpoint.
        endpoint: String,
        /// The requested SPIFFE ID.
        want: String,
        /// The SPIFFE IDs actually issued.
        available: Vec<String>,
    },

    /// The Workload API could not be reached.
    #[error("cannot reach the Workload API at {endpoint}: {detail}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The transport error.
        detail: String,
    },

    /// No SVID arrived in time, for no identifiable reason.
    #[error("no X.509-SVID from the Workload API at {endpoint} within {timeout:?}: {detail}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// How long we waited.
        timeout: Duration,
        /// What the last attempt reported.
        detail: String,
    },

    /// Any other failure of the source.
    #[error("X.509 source for {endpoint}: {source}")]
    Source {
        /// The endpoint.
        endpoint: String,
        /// The underlying error.
        #[source]
        source: X509SourceError,
    },
}

/// Picks the SVID with a given SPIFFE ID, or the first one.
#[derive(Debug)]
struct Picker(Option<SpiffeId>);

impl SvidPicker for Picker {
    fn pick_svid(&self, svids: &[Arc<X509Svid>]) -> Option<usize> {
        match &self.0 {
            Some(want) => svids.iter().position(|s| s.spiffe_id() == want),
            None => (!svids.is_empty()).then_some(0),
        }
    }
}

/// Builds a live X.509 source from `endpoint` (`unix:/path`, or
/// `SPIFFE_ENDPOINT_SOCKET` when `None`), selecting the SVID whose SPIFFE ID
/// is `want` (the first one when `None`). Waits up to
/// [`DEFAULT_SOURCE_TIMEOUT`] for a first SVID.
///
/// Call `shutdown().await` on the source at exit.
pub async fn x509_source(
    endpoint: Option<&str>,
    want: Option<&str>,
) -> Result<X509Source, SourceError> {
    x509_source_with_timeout(endpoint, want, DEFAULT_SOURCE_TIMEOUT).await
}

/// [`x509_source`] with an explicit bound on the wait for a first SVID.
pub async fn x509_source_with_timeout(
    endpoint: Option<&str>,
    want: Option<&str>,
    timeout: Duration,
) -> Result<X509Source, SourceError> {
    let raw = match endpoint {
        Some(e) => e.to_owned(),
        None => match std::env::var(ENDPOINT_ENV) {
            Ok(e) if !e.is_empty() => e,
            _ => return Err(SourceError::MissingEndpoint),
        },
    };
    let parsed = Endpoint::parse(&raw).map_err(|e| SourceError::InvalidEndpoint {
        endpoint: raw.clone(),
        reason: e.to_string(),
    })?;
    if let Endpoint::Unix(path) = &parsed {
        check_socket(path)?;
    }
    let want = want
        .map(|w| {
            SpiffeId::new(w).map_err(|e| SourceError::InvalidSpiffeId {
                want: w.to_owned(),
                reason: e.to_string(),
            })
        })
        .transpose()?;

    let built = X509Source::builder()
        .endpoint(&raw)
        .picker(Picker(want.clone()))
        .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(2))
        .initial_sync_timeout(timeout)
        .build()
        .await;
    match built {
        Ok(source) => Ok(source),
        Err(X509SourceError::InitialSyncTimeout) => {
            Err(diagnose(&raw, parsed, want, timeout).await)
        }
        Err(X509SourceError::Source(e)) => Err(from_api_error(&raw, e)),
        Err(source) => Err(SourceError::Source {
            endpoint: raw,
            source,
        }),
    }
}

fn check_socket(path: &std::path::Path) -> Result<(), SourceError> {
    match std::fs::metadata(path) {
        Ok(md) if md.file_type().is_socket() => Ok(()),
        Ok(_) => Err(SourceError::SocketUnusable {
            path: path.to_owned(),
            reason: "not a Unix socket".to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SourceError::SocketMissing {
            path: path.to_owned(),
        }),
        Err(e) => Err(SourceError::SocketUnusable {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

fn from_api_error(endpoint: &str, e: WorkloadApiError) -> SourceError {
    match e {
        WorkloadApiError::NoIdentityIssued => SourceError::PermissionDenied {
            endpoint: endpoint.to_owned(),
            detail: "no identity issued".to_owned(),
        },
        WorkloadApiError::PermissionDenied(detail) => SourceError::PermissionDenied {
            endpoint: endpoint.to_owned(),
            detail,
        },
        WorkloadApiError::Transport(t) => SourceError::Unreachable {
            endpoint: endpoint.to_owned(),
            detail: t.to_string(),
        },
        other => SourceError::Source {
            endpoint: endpoint.to_owned(),
            source: X509SourceError::Source(other),
        },
    }
}

/// After a timeout, one direct fetch to say why no SVID arrived.
async fn diagnose(
    endpoint: &str,
    parsed: Endpoint,
    want: Option<SpiffeId>,
    timeout: Duration,
) -> SourceError {
    let probe = async {
        let client = WorkloadApiClient::connect(parsed).await?;
        client.fetch_all_x509_svids().await
    };
    match tokio::time::timeout(Duration::from_secs(3), probe).await {
        Ok(Ok(svids)) => {
            let available: Vec<String> = svids.iter().map(|s| s.spiffe_id().to_string()).collect();
            match want {
                Some(want) if !svids.iter().any(|s| s.spiffe_id() == &want) => {
                    SourceError::WantedIdNotIssued {
                        endpoint: endpoint.to_owned(),
                        want: want.to_string(),
                        available,
                    }
                }
                _ => SourceError::Timeout {
                    endpoint: endpoint.to_owned(),
                    timeout,
                    detail: format!("an SVID is available now ({available:?}); retry"),
                },
            }
        }
        Ok(Err(e)) => from_api_error(endpoint, e),
        Err(_) => SourceError::Timeout {
            endpoint: endpoint.to_owned(),
            timeout,
            detail: "the Workload API does not answer".to_owned(),
        },
    }
}
