//! The `trustmesh.audit.v1.Audit` gRPC service. The policy layer decided
//! who may call what (`policies/audit/`: services append only their own
//! events; the `audit` and `admin` roles read); handlers validate, talk to
//! the log, and record every read of the log in the log itself.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trustmesh_events::{Event, action};
use trustmesh_merkle::to_hex;
use trustmesh_policy::Subject;
use trustmesh_proto::trustmesh::audit::v1::audit_server::Audit;
use trustmesh_proto::trustmesh::audit::v1::{
    AppendReply, AppendRequest, ListEventsReply, ListEventsRequest, StoredEvent, VerifyReply,
    VerifyRequest,
};

use crate::log::{AuditLog, LogError, verify};
use crate::query::{self, DEFAULT_PAGE, Filter};

/// The most events one `Append` may carry.
pub const MAX_APPEND: usize = 1000;

/// The audit service.
#[derive(Debug, Clone)]
pub struct AuditService {
    log: Arc<AuditLog>,
    /// What `Append` hands its events to (the log, and the alert rules).
    sink: crate::Ingest,
}

impl AuditService {
    /// A service over `log`, appending through `sink`.
    pub fn new(log: Arc<AuditLog>, sink: crate::Ingest) -> Self {
        Self { log, sink }
    }

    /// Records that `subject` read the log (`what`), in the log.
    async fn audit_read<T>(&self, request: &Request<T>, what: &str, details: serde_json::Value) {
        let subject = request.extensions().get::<Subject>().cloned();
        let peer = request
            .extensions()
            .get::<trustmesh_identity::PeerIdentity>()
            .and_then(|p| p.spiffe_id.as_deref().map(str::to_owned));
        let text = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let mut event = Event::new("audit", action::AUDIT_READ, what)
            .from_client(
                text("x-client-ip").as_deref(),
                text("x-client-user-agent").as_deref(),
            )
            .request(text("x-request-id").as_deref())
            .details(details);
        if let Some(subject) = subject {
            event = event.by_user(subject.sub);
        }
        if let Some(peer) = peer {
            event = event.by_workload(peer);
        }
        if let Err(e) = self.sink.ingest(vec![event]).await {
            tracing::error!(error = %e, "cannot record an audit read");
        }
    }
}

fn internal(e: LogError) -> Status {
    tracing::error!(error = %e, "audit log failure");
    Status::internal("audit log failure")
}

fn filter_of(req: &ListEventsRequest) -> Result<Filter, Status> {
    let some = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
    for (field, value) in [("since", &req.since), ("until", &req.until)] {
        if !value.is_empty()
            && time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
                .is_err()
        {
            return Err(Status::invalid_argument(format!(
                "{field} must be an RFC 3339 time such as 2026-11-22T10:00:00Z"
            )));
        }
    }
    if !req.status.is_empty() && req.status != "SUCCESS" && req.status != "FAIL" {
        return Err(Status::invalid_argument("status must be SUCCESS or FAIL"));
    }
    let before = if req.page_token.is_empty() {
        None
    } else {
        Some(
            req.page_token
                .parse::<u64>()
                .map_err(|_| Status::invalid_argument("invalid page_token"))?,
        )
    };
    Ok(Filter {
        user_id: some(&req.user_id),
        action: some(&req.action),
        status: some(&req.status),
        client_ip: some(&req.client_ip),
        since: some(&req.since),
        until: some(&req.until),
        before,
        limit: if req.page_size == 0 {
            DEFAULT_PAGE
        } else {
            req.page_size
        },
    })
}

impl AuditService {
    /// A page of events (of `only_action`, when given), recorded as a read.
    async fn list_and_record(
        &self,
        request: Request<ListEventsRequest>,
        only_action: Option<&str>,
    ) -> Result<Response<ListEventsReply>, Status> {
        let mut filter = filter_of(request.get_ref())?;
        if let Some(action) = only_action {
            filter.action = Some(action.to_owned());
        }
        let reply = self.list(filter.clone()).await?;
        let what = if only_action.is_some() {
            "decisions"
        } else {
            "events"
        };
        self.audit_read(
            &request,
            what,
            serde_json::json!({"filter": filter, "returned": reply.events.len()}),
        )
        .await;
        Ok(Response::new(reply))
    }

    async fn list(&self, filter: Filter) -> Result<ListEventsReply, Status> {
        let (records, next) = query::list(self.log.db(), &filter)
            .await
            .map_err(internal)?;
        Ok(ListEventsReply {
            events: records
                .iter()
                .map(|r| StoredEvent {
                    seq: r.idx,
                    event: Some(r.event().to_proto()),
                })
                .collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        })
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendReply>, Status> {
        let req = request.into_inner();
        if req.events.len() > MAX_APPEND {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_APPEND} events per call"
            )));
        }
        let mut events = Vec::with_capacity(req.events.len());
        for (i, msg) in req.events.into_iter().enumerate() {
            let event = Event::from_proto(msg)
                .map_err(|e| Status::invalid_argument(format!("event {i}: {e}")))?;
            events.push(event);
        }
        let done = self.sink.ingest(events).await.map_err(internal)?;
        Ok(Response::new(AppendReply {
            appended: done.appended,
            duplicates: done.duplicates,
        }))
    }

    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsReply>, Status> {
        self.list_and_record(request, None).await
    }

    async fn list_decisions(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsReply>, Status> {
        self.list_and_record(request, Some(action::POLICY_DENY))
            .await
    }

    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<VerifyReply>, Status> {
        let trusted = [self.log.verifying_key()];
        let latest: Option<String> =
            sqlx::query_scalar("SELECT signed FROM checkpoints ORDER BY size DESC LIMIT 1")
                .fetch_optional(self.log.db().pool())
                .await
                .map_err(|e| internal(e.into()))?;
        let reply = match verify(self.log.db(), self.log.origin(), &trusted, None).await {
            Ok(report) => VerifyReply {
                ok: true,
                size: report.size,
                root: to_hex(&report.root),
                checkpoint: latest.unwrap_or_default(),
                error: String::new(),
            },
            Err(e) => VerifyReply {
                ok: false,
                size: 0,
                root: String::new(),
                checkpoint: latest.unwrap_or_default(),
                error: e.to_string(),
            },
        };
        self.audit_read(&request, "verify", serde_json::json!({"ok": reply.ok}))
            .await;
        Ok(Response::new(reply))
    }
}
