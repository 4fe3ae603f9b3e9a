//! The audit area (roles `audit` and `admin`, read-only): events with
//! filters, policy denies, and a verification of the whole log. The audit
//! service records every one of these reads in the log itself.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use trustmesh_proto::trustmesh::audit::v1::{
    ListEventsReply, ListEventsRequest, StoredEvent, VerifyRequest,
};
use utoipa::{IntoParams, ToSchema};

use super::Api;
use super::errors::ApiError;
use super::session::{Caller, RequestInfo, grpc_request};

/// Filters of `GET /api/v1/audit/events` and `/decisions`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventQuery {
    /// Events about or by this user.
    #[serde(default)]
    #[param(format = Uuid)]
    user: Option<String>,
    /// One action (`LOGIN`, `ROLE_CHANGED`, `POLICY_DENY`, …); ignored by
    /// `/audit/decisions`, whose events are all `POLICY_DENY`.
    #[serde(default)]
    action: Option<String>,
    /// `SUCCESS` or `FAIL`.
    #[serde(default)]
    #[param(pattern = "^(SUCCESS|FAIL)$")]
    status: Option<String>,
    /// The client's IP address.
    #[serde(default)]
    ip: Option<String>,
    /// From this time on (RFC 3339).
    #[serde(default)]
    #[param(format = DateTime)]
    since: Option<String>,
    /// Before this time (RFC 3339).
    #[serde(default)]
    #[param(format = DateTime)]
    until: Option<String>,
    /// Events per page: 50 when absent or 0, at most 200 (a larger
    /// number gets 200).
    #[serde(default)]
    #[param(format = Int64, maximum = 4294967295_u64)]
    limit: Option<u32>,
    /// The `next` of the previous page.
    #[serde(default)]
    page: Option<String>,
}

impl EventQuery {
    fn request(self) -> ListEventsRequest {
        ListEventsRequest {
            user_id: self.user.unwrap_or_default(),
            action: self.action.unwrap_or_default(),
            status: self.status.unwrap_or_default(),
            client_ip: self.ip.unwrap_or_default(),
            since: self.since.unwrap_or_default(),
            until: self.until.unwrap_or_default(),
            page_size: self.limit.unwrap_or(0),
            page_token: self.page.unwrap_or_default(),
        }
    }
}

/// One event of the audit log.
#[derive(Debug, Serialize, ToSchema)]
struct EventView {
    /// Its place in the log.
    seq: u64,
    id: String,
    time: String,
    service: String,
    action: String,
    status: String,
    actor_user: Option<String>,
    actor_spiffe: Option<String>,
    target: String,
    client_ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    /// What the event says beyond the fields above (per action).
    #[schema(value_type = Object)]
    details: serde_json::Value,
}

/// One page of events, newest first.
#[derive(Debug, Serialize, ToSchema)]
struct EventPage {
    events: Vec<EventView>,
    /// For `page=` to get the next page; absent on the last one.
    next: Option<String>,
}

/// What a verification of the whole log found.
#[derive(Debug, Serialize, ToSchema)]
struct VerifyView {
    /// Whether every entry, the hash chain and the Merkle tree agree.
    ok: bool,
    /// Events covered, those removed by retention included.
    size: u64,
    /// The Merkle tree's root (hex), if the log has entries.
    root: Option<String>,
    /// The latest signed checkpoint (a C2SP signed note).
    checkpoint: Option<String>,
    /// The first thing found wrong, if any.
    error: Option<String>,
}

fn view(stored: StoredEvent) -> Option<EventView> {
    let e = stored.event?;
    let some = |s: String| Some(s).filter(|s| !s.is_empty());
    Some(EventView {
        seq: stored.seq,
        id: e.id,
        time: e.time,
        service: e.service,
        action: e.action,
        status: e.status,
        actor_user: some(e.actor_user),
        actor_spiffe: some(e.actor_spiffe),
        target: e.target,
        client_ip: some(e.client_ip),
        user_agent: some(e.user_agent),
        request_id: some(e.request_id),
        details: serde_json::from_str(&e.details_json).unwrap_or(serde_json::Value::Null),
    })
}

fn page(reply: ListEventsReply) -> Response {
    let events: Vec<EventView> = reply.events.into_iter().filter_map(view).collect();
    let next = Some(reply.next_page_token).filter(|n| !n.is_empty());
    Json(EventPage { events, next }).into_response()
}

/// Lists events of the audit log (audit, admin)
#[utoipa::path(
    get,
    path = "/api/v1/audit/events",
    operation_id = "list_audit_events",
    tag = "audit",
    params(EventQuery),
    responses((status = OK, description = "one page of events", body = EventPage))
)]
pub(crate) async fn list_events(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    list(&api, &info, &caller, query, false).await
}

/// Lists the policy denies of the audit log (audit, admin)
#[utoipa::path(
    get,
    path = "/api/v1/audit/decisions",
    operation_id = "list_audit_decisions",
    tag = "audit",
    params(EventQuery),
    responses((status = OK, description = "one page of `POLICY_DENY` events", body = EventPage))
)]
pub(crate) async fn list_decisions(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    list(&api, &info, &caller, query, true).await
}

/// One page of events (or of policy denies only, with `decisions`).
async fn list(
    api: &Api,
    info: &RequestInfo,
    caller: &Caller,
    query: Result<Query<EventQuery>, QueryRejection>,
    decisions: bool,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let request = grpc_request(query.request(), info, Some(caller), api.timeout());
    let mut audit = api.audit()?;
    let reply = if decisions {
        api.call(audit.list_decisions(request)).await?
    } else {
        api.call(audit.list_events(request)).await?
    };
    Ok(page(reply))
}

/// Verifies the whole audit log (audit, admin)
#[utoipa::path(
    get,
    path = "/api/v1/audit/verify",
    operation_id = "verify_audit_log",
    tag = "audit",
    responses((status = OK, description = "what the verification found", body = VerifyView))
)]
pub(crate) async fn verify(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let request = grpc_request(VerifyRequest {}, &info, Some(&caller), api.timeout());
    let reply = api.call(api.audit()?.verify(request)).await?;
    Ok(Json(VerifyView {
        ok: reply.ok,
        size: reply.size,
        root: Some(reply.root).filter(|r| !r.is_empty()),
        checkpoint: Some(reply.checkpoint).filter(|c| !c.is_empty()),
        error: Some(reply.error).filter(|e| !e.is_empty()),
    })
    .into_response())
}
