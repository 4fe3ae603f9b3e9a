//! Whether a payment's receiver is a user of the mesh.
//!
//! The wallet opens a user's wallet with the first money it receives, so a
//! payment to an id nobody has would move the money into a wallet nobody
//! owns. Before a payment is stored, its receiver is looked up in the user
//! service (`User/GetRole`); a receiver found is remembered for
//! [`KNOWN_FOR`], so that paying the same people again costs no call. A
//! receiver whose account was deleted meanwhile can therefore still be
//! paid for at most that long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::{Code, Status};
use trustmesh_proto::trustmesh::user::v1::GetRoleRequest;
use trustmesh_proto::trustmesh::user::v1::user_client::UserClient;
use trustmesh_runtime::MeshChannel;

/// How long a receiver found in the user service is taken as known.
pub const KNOWN_FOR: Duration = Duration::from_secs(60);

/// The most receivers remembered; past it the memory starts afresh.
const MAX_KNOWN: usize = 100_000;

/// The user service's answers about receivers, remembered for a while.
/// Cheap to clone.
#[derive(Clone)]
pub struct Receivers {
    users: UserClient<MeshChannel>,
    known: Arc<Mutex<HashMap<String, Instant>>>,
}

impl std::fmt::Debug for Receivers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receivers").finish_non_exhaustive()
    }
}

impl Receivers {
    /// Receivers looked up through `users`, a channel to the user service.
    pub fn new(users: MeshChannel) -> Self {
        Self {
            users: UserClient::new(users),
            known: Arc::default(),
        }
    }

    /// `Ok` when `user_id` is a user of the mesh; `NOT_FOUND`
    /// (`receiver_not_found`) when it is not, `UNAVAILABLE` when the user
    /// service cannot tell.
    pub async fn check(&self, user_id: &str) -> Result<(), Status> {
        if self.known_now(user_id) {
            return Ok(());
        }
        let request = GetRoleRequest {
            user_id: user_id.to_owned(),
        };
        match self.users.clone().get_role(request).await {
            Ok(_) => {
                self.remember(user_id);
                Ok(())
            }
            Err(status) if status.code() == Code::NotFound => {
                Err(Status::not_found("receiver_not_found: no user has this id"))
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot look up a receiver");
                Err(Status::unavailable(
                    "the payment's receiver could not be looked up; try again shortly",
                ))
            }
        }
    }

    fn known_now(&self, user_id: &str) -> bool {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known
            .get(user_id)
            .is_some_and(|found| found.elapsed() < KNOWN_FOR)
    }

    fn remember(&self, user_id: &str) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        known.insert(user_id.to_owned(), Instant::now());
    }
}
