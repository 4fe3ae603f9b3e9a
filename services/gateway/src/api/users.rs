//! The users area: the caller's profile, the user list and role changes
//! (admin), teams and their members.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use trustmesh_proto::trustmesh::user::v1::{
    AddTeamMemberRequest, CreateTeamRequest, DeleteMeRequest, GetMeRequest, ListUsersRequest,
    Profile, SetRoleRequest, Team, UpdateMeRequest,
};
use utoipa::{IntoParams, ToSchema};

use super::Api;
use super::errors::{ApiError, ApiJson, ErrorBody};
use super::session::{Caller, RequestInfo, clear_session_cookies, grpc_request};

/// A user's profile.
#[derive(Debug, Serialize, ToSchema)]
struct ProfileView {
    user_id: String,
    email: String,
    display_name: String,
    /// `user`, `manager`, `admin`, `finance` or `audit`.
    role: String,
    /// The team the user belongs to, if any.
    team_id: Option<String>,
    /// RFC 3339, UTC.
    created_at: String,
}

impl From<Profile> for ProfileView {
    fn from(p: Profile) -> Self {
        Self {
            user_id: p.user_id,
            email: p.email,
            display_name: p.display_name,
            role: p.role,
            team_id: Some(p.team_id).filter(|t| !t.is_empty()),
            created_at: p.created_at,
        }
    }
}

/// A team, its manager and its members.
#[derive(Debug, Serialize, ToSchema)]
struct TeamView {
    team_id: String,
    name: String,
    manager_id: String,
    member_ids: Vec<String>,
}

impl From<Team> for TeamView {
    fn from(t: Team) -> Self {
        Self {
            team_id: t.team_id,
            name: t.name,
            manager_id: t.manager_id,
            member_ids: t.member_ids,
        }
    }
}

/// The caller's profile
#[utoipa::path(
    get,
    path = "/api/v1/users/me",
    tag = "users",
    responses((status = OK, description = "the profile", body = ProfileView))
)]
pub(crate) async fn get_me(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let profile = api
        .call(api.user().get_me(grpc_request(
            GetMeRequest {},
            &info,
            Some(&caller),
            api.timeout(),
        )))
        .await?;
    Ok(Json(ProfileView::from(profile)).into_response())
}

/// `PATCH /users/me`: the fields to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateMe {
    #[serde(default)]
    display_name: Option<String>,
    /// A new email address; needs `current_password`.
    #[serde(default)]
    #[schema(format = Email)]
    email: Option<String>,
    #[serde(default)]
    #[schema(format = Password)]
    current_password: Option<String>,
}

/// Changes the caller's profile
#[utoipa::path(
    patch,
    path = "/api/v1/users/me",
    tag = "users",
    request_body = UpdateMe,
    responses(
        (status = OK, description = "the changed profile", body = ProfileView),
        (status = FORBIDDEN, description = "`wrong_password`: an email change with a wrong password", body = ErrorBody),
        (status = CONFLICT, description = "`email_taken`: another account has this email", body = ErrorBody),
        (status = LOCKED, description = "`account_locked`: too many wrong passwords (they count as failed logins)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds until the lock ends"))),
        (status = UNPROCESSABLE_ENTITY, description = "`password_required` for an email change, or a field that is not valid", body = ErrorBody),
    )
)]
pub(crate) async fn update_me(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<UpdateMe>,
) -> Result<Response, ApiError> {
    let request = UpdateMeRequest {
        display_name: body.display_name,
        email: body.email,
        current_password: body.current_password.unwrap_or_default(),
    };
    let profile = api
        .call(
            api.user()
                .update_me(grpc_request(request, &info, Some(&caller), api.timeout())),
        )
        .await?;
    Ok(Json(ProfileView::from(profile)).into_response())
}

/// `DELETE /users/me`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteMe {
    /// The caller's password, to confirm.
    #[schema(format = Password)]
    password: String,
}

/// Deletes the caller's account
///
/// The account and its sessions are gone at once; every service erases or
/// anonymises what it holds for the user.
#[utoipa::path(
    delete,
    path = "/api/v1/users/me",
    tag = "users",
    request_body = DeleteMe,
    responses(
        (status = NO_CONTENT, description = "deleted; a browser's cookies are deleted too"),
        (status = FORBIDDEN, description = "`wrong_password`", body = ErrorBody),
        (status = LOCKED, description = "`account_locked`: too many wrong passwords (they count as failed logins)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds until the lock ends"))),
    )
)]
pub(crate) async fn delete_me(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<DeleteMe>,
) -> Result<Response, ApiError> {
    let request = DeleteMeRequest {
        password: body.password,
    };
    api.call(
        api.user()
            .delete_me(grpc_request(request, &info, Some(&caller), api.timeout())),
    )
    .await?;
    api.ended().insert(&caller.claims.sid);
    let mut response = StatusCode::NO_CONTENT.into_response();
    clear_session_cookies(response.headers_mut());
    Ok(response)
}

/// `GET /users?limit=&after=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Users per page: 50 when absent or 0, at most 200 (a larger
    /// number gets 200).
    #[serde(default)]
    #[param(format = Int64, maximum = 4294967295_u64)]
    limit: Option<u32>,
    /// The `next` of the previous page.
    #[serde(default)]
    after: Option<String>,
}

/// One page of users.
#[derive(Debug, Serialize, ToSchema)]
struct UserPage {
    users: Vec<ProfileView>,
    /// For `after=` to get the next page; absent on the last one.
    next: Option<String>,
}

/// Lists every user (admin)
#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    params(ListQuery),
    responses((status = OK, description = "one page of users", body = UserPage))
)]
pub(crate) async fn list_users(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let request = ListUsersRequest {
        limit: query.limit.unwrap_or(0),
        after: query.after.unwrap_or_default(),
    };
    let reply = api
        .call(
            api.user()
                .list_users(grpc_request(request, &info, Some(&caller), api.timeout())),
        )
        .await?;
    let users: Vec<ProfileView> = reply.users.into_iter().map(ProfileView::from).collect();
    let next = Some(reply.next).filter(|n| !n.is_empty());
    Ok(Json(UserPage { users, next }).into_response())
}

/// `POST /users/{id}/role`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetRole {
    /// `user`, `manager`, `admin`, `finance` or `audit`.
    #[schema(example = "manager")]
    role: String,
}

/// Gives a user another role (admin)
///
/// The user's sessions end, so that no token carries the old role. The
/// last admin cannot lose the role.
#[utoipa::path(
    post,
    path = "/api/v1/users/{id}/role",
    tag = "users",
    params(("id" = String, Path, format = Uuid, description = "the user's id")),
    request_body = SetRole,
    responses(
        (status = OK, description = "the profile with its new role", body = ProfileView),
        (status = NOT_FOUND, description = "no such user", body = ErrorBody),
        (status = CONFLICT, description = "`last_admin`", body = ErrorBody),
        (status = UNPROCESSABLE_ENTITY, description = "not a role", body = ErrorBody),
    )
)]
pub(crate) async fn set_role(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<SetRole>,
) -> Result<Response, ApiError> {
    let Path(user_id) = id?;
    let request = SetRoleRequest {
        user_id,
        email: String::new(),
        role: body.role,
    };
    let profile = api
        .call(
            api.user()
                .set_role(grpc_request(request, &info, Some(&caller), api.timeout())),
        )
        .await?;
    Ok(Json(ProfileView::from(profile)).into_response())
}

/// `POST /teams`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTeam {
    /// 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// The user who manages the team (role `manager` or `admin`).
    #[schema(format = Uuid)]
    manager_id: String,
}

/// Creates a team (admin)
#[utoipa::path(
    post,
    path = "/api/v1/teams",
    tag = "users",
    request_body = CreateTeam,
    responses(
        (status = CREATED, description = "the team", body = TeamView),
        (status = NOT_FOUND, description = "no such manager", body = ErrorBody),
        (status = CONFLICT, description = "`manager_role_required`, or a team with this name exists", body = ErrorBody),
        (status = UNPROCESSABLE_ENTITY, description = "a field is not valid", body = ErrorBody),
    )
)]
pub(crate) async fn create_team(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<CreateTeam>,
) -> Result<Response, ApiError> {
    let request = CreateTeamRequest {
        name: body.name,
        manager_id: body.manager_id,
    };
    let team = api
        .call(
            api.user()
                .create_team(grpc_request(request, &info, Some(&caller), api.timeout())),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(TeamView::from(team))).into_response())
}

/// `POST /teams/{id}/members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddMember {
    #[schema(format = Uuid)]
    user_id: String,
}

/// Adds a member to a team (admin, or the team's manager)
#[utoipa::path(
    post,
    path = "/api/v1/teams/{id}/members",
    tag = "users",
    params(("id" = String, Path, format = Uuid, description = "the team's id")),
    request_body = AddMember,
    responses(
        (status = OK, description = "the team with its new member", body = TeamView),
        (status = FORBIDDEN, description = "`not_team_manager`: a manager adds only to their own team", body = ErrorBody),
        (status = NOT_FOUND, description = "no such team or user", body = ErrorBody),
    )
)]
pub(crate) async fn add_team_member(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<AddMember>,
) -> Result<Response, ApiError> {
    let Path(team_id) = id?;
    let request = AddTeamMemberRequest {
        team_id,
        user_id: body.user_id,
    };
    let team = api
        .call(api.user().add_team_member(grpc_request(
            request,
            &info,
            Some(&caller),
            api.timeout(),
        )))
        .await?;
    Ok(Json(TeamView::from(team)).into_response())
}
