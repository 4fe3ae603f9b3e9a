//! The `trustmesh.user.v1.User` gRPC service. The policy layer has already
//! decided who may call what; handlers apply the domain rules (valid roles,
//! the last admin, a manager's own team) and talk to the store.

use std::time::Duration;

use tonic::{Request, Response, Status};
use trustmesh_policy::Subject;
use trustmesh_proto::trustmesh::auth::v1::auth_client::AuthClient;
use trustmesh_proto::trustmesh::auth::v1::{
    ChangeEmailRequest, DeleteAccountRequest, VerifyPasswordRequest,
};
use trustmesh_proto::trustmesh::user::v1::user_server::User;
use trustmesh_proto::trustmesh::user::v1::{
    AddTeamMemberRequest, CreateTeamRequest, DeleteMeReply, DeleteMeRequest, EnsureProfileRequest,
    GetMeRequest, GetRoleReply, GetRoleRequest, ListUsersReply, ListUsersRequest, Profile,
    SetRoleRequest, Team, UpdateMeRequest,
};
use trustmesh_runtime::{MeshChannel, on_behalf_of};
use trustmesh_store::StoreError;

use crate::revoker;
use crate::store::{
    PendingRevocation, ProfileRow, ROLES, RoleChangeError, RoleChanged, TeamRow, UserStore,
};

/// The most profiles one `ListUsers` page returns.
const MAX_PAGE: u32 = 200;
/// The longest display name accepted.
const MAX_DISPLAY_NAME: usize = 100;

/// The user service.
#[derive(Debug, Clone)]
pub struct UserService {
    store: UserStore,
    auth: AuthClient<MeshChannel>,
}

/// How many times a role change asks auth to end the user's sessions
/// before it leaves them to the [`crate::revoker`].
const REVOKE_ATTEMPTS: u32 = 3;

impl UserService {
    /// The profile of `user_id`, or `NOT_FOUND` with `missing`.
    async fn profile_or(&self, user_id: &str, missing: &str) -> Result<ProfileRow, Status> {
        self.store
            .profile(user_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(missing.to_owned()))
    }

    /// A service over `store`, reaching the auth service through `auth`.
    pub fn new(store: UserStore, auth: MeshChannel) -> Self {
        Self {
            store,
            auth: AuthClient::new(auth),
        }
    }

    /// Asks auth to end every session of the revocation's user after a
    /// role change (up to [`REVOKE_ATTEMPTS`] times, each within
    /// [`crate::revoker::REVOKE_TIMEOUT`]) and forgets the revocation once
    /// auth confirmed it; how many sessions ended.
    async fn end_sessions_of(&self, revocation: &PendingRevocation) -> Result<u32, Status> {
        let mut auth = self.auth.clone();
        let mut attempt = 1;
        let revoked = loop {
            let failed = match revoker::revoke(&mut auth, revocation).await {
                Ok(revoked) => break revoked,
                Err(status) if revoker::is_permanent(&status) => return Err(status),
                Err(status) => status,
            };
            if attempt == REVOKE_ATTEMPTS {
                return Err(failed);
            }
            tracing::warn!(user_id = %revocation.user_id, attempt, error = %failed.message(), "ending sessions failed; trying again");
            tokio::time::sleep(Duration::from_millis(100) * attempt).await;
            attempt += 1;
        };
        if let Err(e) = self.store.revocation_done(&revocation.revocation_id).await {
            // The revoker asks auth once more later: one sign-in more for
            // the user, nothing worse.
            tracing::warn!(user_id = %revocation.user_id, error = %e, "a confirmed revocation stays pending");
        }
        Ok(revoked)
    }
}

fn internal(e: StoreError) -> Status {
    trustmesh_runtime::store_status("user", &e)
}

fn to_profile(row: ProfileRow) -> Profile {
    Profile {
        user_id: row.user_id,
        email: row.email,
        display_name: row.display_name,
        role: row.role,
        team_id: row.team_id.unwrap_or_default(),
        created_at: row.created_at,
    }
}

fn to_team(row: TeamRow) -> Team {
    Team {
        team_id: row.team_id,
        name: row.name,
        manager_id: row.manager_id,
        member_ids: row.member_ids,
    }
}

fn valid_uuid(field: &str, value: &str) -> Result<(), Status> {
    uuid::Uuid::parse_str(value)
        .map(drop)
        .map_err(|_| Status::invalid_argument(format!("{field} must be a UUID")))
}

#[tonic::async_trait]
impl User for UserService {
    async fn get_me(&self, request: Request<GetMeRequest>) -> Result<Response<Profile>, Status> {
        let me = Subject::of(&request)?;
        let row = self
            .profile_or(&me.sub, "no profile for this account")
            .await?;
        Ok(Response::new(to_profile(row)))
    }

    async fn update_me(
        &self,
        request: Request<UpdateMeRequest>,
    ) -> Result<Response<Profile>, Status> {
        let me = Subject::of(&request)?;
        if let Some(name) = &request.get_ref().display_name {
            let name = name.trim();
            if name.chars().count() > MAX_DISPLAY_NAME {
                return Err(Status::invalid_argument(format!(
                    "display_name is longer than {MAX_DISPLAY_NAME} characters"
                )));
            }
            if name.chars().any(char::is_control) {
                return Err(Status::invalid_argument(
                    "display_name contains control characters",
                ));
            }
            if !self
                .store
                .set_display_name(&me.sub, name)
                .await
                .map_err(internal)?
            {
                return Err(Status::not_found("no profile for this account"));
            }
        }
        if let Some(new_email) = &request.get_ref().email {
            // An email change needs the password again: auth checks it,
            // normalises the address and keeps it unique.
            let password = request.get_ref().current_password.clone();
            if password.is_empty() {
                return Err(Status::invalid_argument(
                    "password_required: changing the email needs current_password",
                ));
            }
            let mut auth = self.auth.clone();
            let changed = auth
                .change_email(on_behalf_of(
                    request.metadata(),
                    ChangeEmailRequest {
                        user_id: me.sub.clone(),
                        password,
                        new_email: new_email.clone(),
                    },
                ))
                .await?
                .into_inner();
            if !self
                .store
                .set_email(&me.sub, &changed.email)
                .await
                .map_err(internal)?
            {
                return Err(Status::not_found("no profile for this account"));
            }
        }
        self.get_me(request.map(|_| GetMeRequest {})).await
    }

    async fn delete_me(
        &self,
        request: Request<DeleteMeRequest>,
    ) -> Result<Response<DeleteMeReply>, Status> {
        let me = Subject::of(&request)?;
        let (metadata, _, message) = request.into_parts();
        let mut auth = self.auth.clone();
        let verified = auth
            .verify_password(on_behalf_of(
                &metadata,
                VerifyPasswordRequest {
                    user_id: me.sub.clone(),
                    password: message.password,
                },
            ))
            .await?
            .into_inner();
        if !verified.ok {
            return Err(Status::permission_denied(
                "wrong_password: the password is wrong",
            ));
        }
        // Sessions and credentials first: once this returns, no token of
        // the account is accepted any more.
        auth.delete_account(on_behalf_of(
            &metadata,
            DeleteAccountRequest {
                user_id: me.sub.clone(),
            },
        ))
        .await?;
        self.store.delete(&me.sub).await.map_err(internal)?;
        tracing::info!(user_id = %me.sub, "account deleted");
        Ok(Response::new(DeleteMeReply {}))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersReply>, Status> {
        let req = request.into_inner();
        let limit = match req.limit {
            0 => 50,
            n => n.min(MAX_PAGE),
        };
        let rows = self.store.list(&req.after, limit).await.map_err(internal)?;
        let next = if rows.len() == limit as usize {
            rows.last().map(|r| r.user_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListUsersReply {
            users: rows.into_iter().map(to_profile).collect(),
            next,
        }))
    }

    async fn set_role(
        &self,
        request: Request<SetRoleRequest>,
    ) -> Result<Response<Profile>, Status> {
        let changed_by = request
            .extensions()
            .get::<Subject>()
            .map(|s| s.sub.clone())
            .unwrap_or_else(|| "ops".to_owned());
        let req = request.into_inner();
        if !ROLES.contains(&req.role.as_str()) {
            return Err(Status::invalid_argument(format!(
                "role must be one of {}",
                ROLES.join(", ")
            )));
        }
        let target = match (req.user_id.is_empty(), req.email.is_empty()) {
            (false, true) => {
                valid_uuid("user_id", &req.user_id)?;
                req.user_id
            }
            (true, false) => self
                .store
                .profile_by_email(&req.email.trim().to_lowercase())
                .await
                .map_err(internal)?
                .map(|p| p.user_id)
                .ok_or_else(|| Status::not_found("no user with this email"))?,
            _ => {
                return Err(Status::invalid_argument(
                    "give exactly one of user_id and email",
                ));
            }
        };
        match self
            .store
            .set_role(&target, &req.role, &changed_by)
            .await
            .map_err(internal)?
        {
            Ok(RoleChanged {
                from,
                revocation: None,
            }) => {
                tracing::info!(user_id = %target, role = %from, %changed_by, "role unchanged: the user has it already");
            }
            Ok(RoleChanged {
                from,
                revocation: Some(revocation),
            }) => {
                tracing::info!(user_id = %target, %from, to = %req.role, %changed_by, "role changed");
                // No token may keep the old role: the user's sessions end
                // and they sign in again with the new one. Should auth not
                // answer, the revocation committed with the role is asked
                // for again by the revoker until auth answers; the caller
                // hears that the sessions live on until then.
                let revoked = self.end_sessions_of(&revocation).await.map_err(|e| {
                    tracing::warn!(user_id = %target, error = %e.message(), "role changed, sessions not revoked yet");
                    Status::unavailable(
                        "sessions_not_revoked: the role changed; the user's sessions end \
                         as soon as the auth service answers (asked again every few seconds)",
                    )
                })?;
                tracing::info!(user_id = %target, revoked, "sessions ended after a role change");
            }
            Err(RoleChangeError::NotFound) => return Err(Status::not_found("no such user")),
            Err(RoleChangeError::LastAdmin) => {
                tracing::info!(user_id = %target, to = %req.role, %changed_by, "refused: last admin");
                return Err(Status::failed_precondition(
                    "last_admin: the last admin cannot be demoted",
                ));
            }
        }
        let row = self.profile_or(&target, "no such user").await?;
        Ok(Response::new(to_profile(row)))
    }

    async fn create_team(
        &self,
        request: Request<CreateTeamRequest>,
    ) -> Result<Response<Team>, Status> {
        let req = request.into_inner();
        let name = req.name.trim();
        if name.is_empty() || name.chars().count() > MAX_DISPLAY_NAME {
            return Err(Status::invalid_argument("name must be 1 to 100 characters"));
        }
        valid_uuid("manager_id", &req.manager_id)?;
        let manager = self.profile_or(&req.manager_id, "no such manager").await?;
        if manager.role != "manager" && manager.role != "admin" {
            return Err(Status::failed_precondition(
                "manager_role_required: the manager must have the manager role",
            ));
        }
        match self.store.create_team(name, &req.manager_id).await {
            Ok(team) => Ok(Response::new(to_team(team))),
            Err(StoreError::Query(e))
                if e.as_database_error()
                    .is_some_and(|d| d.is_unique_violation()) =>
            {
                Err(Status::already_exists("a team with this name exists"))
            }
            Err(e) => Err(internal(e)),
        }
    }

    async fn add_team_member(
        &self,
        request: Request<AddTeamMemberRequest>,
    ) -> Result<Response<Team>, Status> {
        let me = Subject::of(&request)?;
        let req = request.into_inner();
        valid_uuid("team_id", &req.team_id)?;
        valid_uuid("user_id", &req.user_id)?;
        let team = self
            .store
            .team(&req.team_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found("no such team"))?;
        // A manager's scope is their own team.
        if me.role != "admin" && team.manager_id != me.sub {
            return Err(Status::permission_denied(
                "not_team_manager: managers manage only their own team",
            ));
        }
        if !self
            .store
            .add_member(&req.team_id, &req.user_id)
            .await
            .map_err(internal)?
        {
            return Err(Status::not_found("no such user"));
        }
        let team = self
            .store
            .team(&req.team_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found("no such team"))?;
        Ok(Response::new(to_team(team)))
    }

    async fn ensure_profile(
        &self,
        request: Request<EnsureProfileRequest>,
    ) -> Result<Response<Profile>, Status> {
        let req = request.into_inner();
        valid_uuid("user_id", &req.user_id)?;
        if req.email.is_empty() {
            return Err(Status::invalid_argument("email is required"));
        }
        let row = self
            .store
            .ensure_profile(&req.user_id, &req.email)
            .await
            .map_err(internal)?;
        Ok(Response::new(to_profile(row)))
    }

    async fn get_role(
        &self,
        request: Request<GetRoleRequest>,
    ) -> Result<Response<GetRoleReply>, Status> {
        let req = request.into_inner();
        let row = self.profile_or(&req.user_id, "no such user").await?;
        Ok(Response::new(GetRoleReply { role: row.role }))
    }
}
