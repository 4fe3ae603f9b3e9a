//! Ends the sessions a role change owes, until the auth service confirms it.
//!
//! A role change commits a row in `pending_revocations` with the new role
//! ([`UserStore::set_role`]); the request then asks auth itself
//! ([`revoke`]) and forgets the row once auth has answered. A row still
//! there after [`REVOKER_GRACE`] (auth did not answer, or the service
//! stopped between the commit and the call) is asked for again by
//! [`Revoker::run`] every [`REVOKER_EVERY`], oldest first, until auth
//! answers: no session keeps a role its user no longer has for longer than
//! auth is out of reach.
//!
//! A revocation can reach auth twice (the service stopped after auth
//! answered and before the row went, or two replicas took the same row).
//! The second one ends the sessions opened in between: one sign-in more
//! for the user, never a session with an old role.

use std::time::Duration;

use tonic::{Code, Status};
use trustmesh_proto::trustmesh::auth::v1::RevokeUserSessionsRequest;
use trustmesh_proto::trustmesh::auth::v1::auth_client::AuthClient;
use trustmesh_runtime::{MeshChannel, Shutdown};
use trustmesh_store::{StoreError, timestamp};

use crate::store::{PendingRevocation, UserStore};

/// How often the revoker looks for revocations auth has not confirmed.
pub const REVOKER_EVERY: Duration = Duration::from_secs(5);
/// How old a pending revocation must be before the revoker takes it: the
/// request that made it is done asking by then.
pub const REVOKER_GRACE: Duration = Duration::from_secs(30);
/// How long auth may take to answer one revocation (a role change's three
/// asks fit in the gateway's 15 s upstream timeout).
pub const REVOKE_TIMEOUT: Duration = Duration::from_secs(3);
/// The reason recorded on each session a role change ends.
pub const ROLE_CHANGED: &str = "role_changed";
/// The most revocations one statement of the revoker reads.
const PAGE: u32 = 100;

/// Asks auth once (within [`REVOKE_TIMEOUT`]) to end every session of the
/// revocation's user; how many ended.
pub async fn revoke(
    auth: &mut AuthClient<MeshChannel>,
    revocation: &PendingRevocation,
) -> Result<u32, Status> {
    let request = RevokeUserSessionsRequest {
        user_id: revocation.user_id.clone(),
        reason: ROLE_CHANGED.to_owned(),
        requested_by: revocation.requested_by.clone(),
    };
    match tokio::time::timeout(REVOKE_TIMEOUT, auth.revoke_user_sessions(request)).await {
        Ok(Ok(reply)) => Ok(reply.into_inner().revoked),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::deadline_exceeded("auth did not answer in time")),
    }
}

/// Whether asking again cannot help: auth found the request itself wrong.
/// (A policy refusal is not: it ends once the policy is mended.)
pub fn is_permanent(status: &Status) -> bool {
    status.code() == Code::InvalidArgument
}

/// What one pass of the revoker did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Revocations auth confirmed (and the store forgot).
    pub confirmed: usize,
    /// Revocations auth refused as malformed (forgotten, logged as errors).
    pub dropped: usize,
    /// Whether the pass stopped because auth did not answer (the rest
    /// waits for the next pass).
    pub auth_unreachable: bool,
}

/// Asks auth again for the revocations a role change left pending.
#[derive(Debug, Clone)]
pub struct Revoker {
    store: UserStore,
    auth: AuthClient<MeshChannel>,
}

impl Revoker {
    /// A revoker over `store`, reaching auth through `auth`.
    pub fn new(store: UserStore, auth: MeshChannel) -> Self {
        Self {
            store,
            auth: AuthClient::new(auth),
        }
    }

    /// One pass: asks auth for every revocation requested at least `grace`
    /// ago, oldest first, and stops at the first one auth does not answer.
    pub async fn run_due(&self, grace: Duration) -> Result<Pass, StoreError> {
        let grace = time::Duration::try_from(grace).unwrap_or(time::Duration::ZERO);
        let due = timestamp(time::OffsetDateTime::now_utc() - grace);
        let mut auth = self.auth.clone();
        let mut pass = Pass::default();
        loop {
            let page = self.store.due_revocations(&due, PAGE).await?;
            for revocation in &page {
                match revoke(&mut auth, revocation).await {
                    Ok(revoked) => {
                        tracing::info!(
                            user_id = %revocation.user_id,
                            requested_at = %revocation.requested_at,
                            revoked,
                            "sessions ended after a role change (revoker)"
                        );
                        pass.confirmed += 1;
                    }
                    Err(status) if is_permanent(&status) => {
                        tracing::error!(
                            user_id = %revocation.user_id,
                            error = %status.message(),
                            "auth refused a session revocation as malformed; dropping it"
                        );
                        pass.dropped += 1;
                    }
                    Err(status) => {
                        tracing::warn!(
                            user_id = %revocation.user_id,
                            requested_at = %revocation.requested_at,
                            code = ?status.code(),
                            error = %status.message(),
                            "sessions of a user whose role changed not yet ended; asking again in {}s",
                            REVOKER_EVERY.as_secs()
                        );
                        pass.auth_unreachable = true;
                        return Ok(pass);
                    }
                }
                self.store
                    .revocation_done(&revocation.revocation_id)
                    .await?;
            }
            if page.len() < PAGE as usize {
                return Ok(pass);
            }
        }
    }

    /// Runs a pass every [`REVOKER_EVERY`] (revocations [`REVOKER_GRACE`]
    /// old) until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            if let Err(e) = self.run_due(REVOKER_GRACE).await {
                tracing::warn!(error = %e, "the revoker could not read its pending revocations");
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(REVOKER_EVERY) => {}
            }
        }
    }
}
