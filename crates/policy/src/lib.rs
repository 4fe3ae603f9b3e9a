//! Trustmesh authorization: Rego policies evaluated in-process with regorus.
//!
//! - [`PolicyEngine`] loads the policies of `policies/` (compiled into the
//!   binary, or from `TRUSTMESH_POLICY_DIR`) and answers
//!   `data.trustmesh.<service>.decision` for a [`PolicyInput`].
//! - [`PolicyLayer`] is the tower layer every tonic server wears: it builds the
//!   input of each call, denies with `PERMISSION_DENIED` and a stable reason
//!   code (`x-trustmesh-deny-reason`), and records [`PolicyMetrics`].
//! - [`run_tests`] runs the `test_*` rules of `policies/**/*_test.rego`
//!   (`trustmesh policy test`).
//!
//! The input document, the reason codes and how to add a service's policy
//! are documented in `policies/README.md`.

mod engine;
mod error;
mod input;
mod layer;
mod metrics;
mod testing;

pub use engine::{NO_POLICY, POLICY_DIR_ENV, PolicyEngine};
pub use error::PolicyError;
pub use input::{Decision, Peer, PolicyInput, RequestContext, Subject};
pub use layer::{
    DENY_REASON_METADATA, DenyHook, MAX_DECODED_BODY, PolicyFuture, PolicyLayer, PolicyService,
    REQUEST_ID_HEADER, SubjectFuture, SubjectResolver, deny_status,
};
pub use metrics::{DecisionOutcome, MAX_METHODS_PER_SERVICE, OTHER_METHOD, PolicyMetrics};
pub use testing::{TestOutcome, TestSource, run_tests};
/// The peer identity the layer reads from each request's extensions
/// (re-exported from `trustmesh-identity`).
pub use trustmesh_identity::PeerIdentity;
