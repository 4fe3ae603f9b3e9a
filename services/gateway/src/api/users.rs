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

use super::Api;
use super::errors::{ApiError, ApiJson};
use super::session::{Caller, RequestInfo, clear_session_cookies, grpc_request};

#[derive(Debug, Serialize)]
struct ProfileView {
    user_id: String,
    email: String,
    display_name: String,
    role: String,
    team_id: Option<String>,
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

#[derive(Debug, Serialize)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateMe {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    current_password: Option<String>,
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteMe {
    password: String,
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    after: Option<String>,
}

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
    Ok(Json(serde_json::json!({"users": users, "next": next})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetRole {
    role: String,
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTeam {
    name: String,
    manager_id: String,
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddMember {
    user_id: String,
}

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
