//! The `trustmesh.payment.v1.Payment` gRPC service. The policy layer has
//! already decided who may call what (`policies/payment/payment.rego`);
//! handlers validate, decide a second time with the facts only they know,
//! call the wallet over mTLS and record the outcome.
//!
//! Second decisions (the same policy, the same engine, facts added to
//! `input.request` that no caller can set because they are not proto
//! fields): `CreatePayment` with the payer's 24 h volume
//! (`payer_volume_24h`), `GetPayment` with the loaded payment's parties,
//! `Rollback` with the loaded payment's amount, currency and age.
//!
//! # Idempotency and crashes
//!
//! A payment is stored PENDING under a fresh UUID v7 *before* the wallet is
//! called, and that id is the wallet transfer id. A retry with the same key
//! finds the row: the same content returns it (a PENDING one is settled
//! first, with the same transfer id, which the wallet answers idempotently);
//! other content is `ALREADY_EXISTS`. Rollbacks work the same way with their
//! own id, one per payment.

use std::time::Duration;

use tonic::{Code, Request, Response, Status};
use trustmesh_events::{Event, action};
use trustmesh_policy::{
    Decision, DenyHook, Peer, PolicyEngine, PolicyInput, REQUEST_ID_HEADER, RequestContext,
    Subject, deny_status,
};
use trustmesh_proto::trustmesh::payment::v1::payment_server::Payment as PaymentApi;
use trustmesh_proto::trustmesh::payment::v1::{
    CreatePaymentReply, CreatePaymentRequest, GetPaymentRequest, ListTransactionsReply,
    ListTransactionsRequest, PaymentRecord, RollbackRecord, RollbackRequest,
};
use trustmesh_proto::trustmesh::wallet::v1::TransferRequest;
use trustmesh_proto::trustmesh::wallet::v1::wallet_client::WalletClient;
use trustmesh_runtime::MeshChannel;
use trustmesh_store::StoreError;

use crate::receivers::Receivers;
use crate::store::{
    MAX_IDEMPOTENCY_KEY, MAX_REASON, NewPayment, Payment, PaymentFilter, PaymentStatus,
    PaymentStore, Rollback, normalize_time, page_token, parse_page_token, parse_time, timestamp,
};

/// The most payments one `ListTransactions` page returns.
pub const MAX_PAGE: u32 = 200;
/// The page size when the request gives none.
pub const DEFAULT_PAGE: u32 = 50;
/// The request field carrying the payer's 24 h volume in the second
/// `CreatePayment` decision.
pub const PAYER_VOLUME_FIELD: &str = "payer_volume_24h";
/// How long the wallet may take to answer one transfer.
pub const WALLET_TIMEOUT: Duration = Duration::from_secs(10);
/// A PENDING rollback younger than this is another request's work in
/// progress (409 `rollback_in_progress`); an older one was left by a crash
/// and is resumed.
pub const ROLLBACK_RESUME_AFTER: Duration = Duration::from_secs(30);

/// The service name in policy inputs and events.
const SERVICE: &str = "payment";
const RPC_PREFIX: &str = "/trustmesh.payment.v1.Payment/";

/// Roles that see every payment (and its idempotency key).
const READER_ROLES: [&str; 2] = ["finance", "audit"];

/// The payment service.
#[derive(Clone)]
pub struct PaymentService {
    store: PaymentStore,
    wallet: WalletClient<MeshChannel>,
    policy: PolicyEngine,
    deny_hook: Option<DenyHook>,
    receivers: Option<Receivers>,
}

impl std::fmt::Debug for PaymentService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentService")
            .field("store", &self.store)
            .field("deny_hook", &self.deny_hook.is_some())
            .finish_non_exhaustive()
    }
}

/// A second decision that refused, with the input it was taken on.
struct Denial {
    input: PolicyInput,
    decision: Decision,
}

/// The facts of a call the handlers pass along.
struct Call {
    subject: Subject,
    context: RequestContext,
}

fn call_of<T>(request: &Request<T>) -> Result<Call, Status> {
    let subject = Subject::of(request)?;
    let mut context = RequestContext::now();
    let text = |name: &str| {
        request
            .metadata()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    if let Some(id) = text(REQUEST_ID_HEADER) {
        context.request_id = id;
    }
    context.client_ip = text("x-client-ip");
    context.user_agent = text("x-client-user-agent").or_else(|| text("user-agent"));
    Ok(Call { subject, context })
}

impl PaymentService {
    /// A service over `store`, moving money through `wallet` (a channel that
    /// presents the payment workload's SVID); `policy` (the engine of the
    /// runtime's policy layer) takes the second decisions.
    pub fn new(store: PaymentStore, wallet: MeshChannel, policy: PolicyEngine) -> Self {
        Self {
            store,
            wallet: WalletClient::new(wallet),
            policy,
            deny_hook: None,
            receivers: None,
        }
    }

    /// Pays only receivers that `receivers` finds in the user service.
    pub fn with_receivers(mut self, receivers: Receivers) -> Self {
        self.receivers = Some(receivers);
        self
    }

    /// Runs `hook` on every deny of a second decision (the audit trail).
    pub fn with_deny_hook(mut self, hook: DenyHook) -> Self {
        self.deny_hook = Some(hook);
        self
    }

    /// The store.
    pub fn store(&self) -> &PaymentStore {
        &self.store
    }

    /// A second decision of `method` with `request` as `input.request`; a
    /// deny is logged and audited.
    fn authorize(
        &self,
        method: &str,
        call: &Call,
        request: serde_json::Value,
    ) -> Result<(), Status> {
        match self.decide(method, call, request)? {
            None => Ok(()),
            Some(denial) => Err(self.refuse(call, denial)),
        }
    }

    /// A second decision of `method` with `request` as `input.request`:
    /// `None` when allowed, the denial (not yet logged nor audited: see
    /// [`PaymentService::refuse`]) when not.
    fn decide(
        &self,
        method: &str,
        call: &Call,
        request: serde_json::Value,
    ) -> Result<Option<Denial>, Status> {
        let input = PolicyInput {
            service: SERVICE.to_owned(),
            method: method.to_owned(),
            rpc: format!("{RPC_PREFIX}{method}"),
            // The gateway's call, which the layer admitted.
            peer: Peer {
                spiffe_id: None,
                workload: Some("gateway".to_owned()),
            },
            subject: Some(call.subject.clone()),
            request,
            context: call.context.clone(),
        };
        match self.policy.authorize(&input) {
            Ok(decision) if decision.allow => Ok(None),
            Ok(decision) => Ok(Some(Denial { input, decision })),
            Err(e) => {
                tracing::error!(error = %e, rpc = %input.rpc, "policy evaluation failed");
                Err(Status::internal("authorization failed"))
            }
        }
    }

    /// Logs and audits `denial`; the status to answer with.
    fn refuse(&self, call: &Call, denial: Denial) -> Status {
        let Denial { input, decision } = denial;
        tracing::info!(
            service = SERVICE,
            rpc = %input.rpc,
            reason = %decision.reason,
            user = %call.subject.sub,
            request_id = %call.context.request_id,
            "policy denied (second decision)"
        );
        if let Some(hook) = &self.deny_hook {
            hook(&input, &decision);
        }
        deny_status(&decision.reason)
    }

    /// The payer's daily volume limit in `currency` from the policy data
    /// (`data.limits.payment.daily_volume`), for the wallet's atomic check.
    fn daily_limit(&self, currency: &str) -> Option<i64> {
        let table = self
            .policy
            .data_at(&["limits", "payment", "daily_volume"])?;
        table
            .get(currency)
            .or_else(|| table.get("default"))
            .and_then(serde_json::Value::as_i64)
            .filter(|limit| *limit > 0)
    }

    /// Asks the wallet to post the payment's transfer and records the
    /// outcome. `Ok` with the stored payment (COMPLETED or FAILED); `Err`
    /// when nothing was decided (the payment stays PENDING for a retry) or
    /// the wallet refused for a reason that is not a payment outcome.
    async fn settle(&self, payment: Payment, call: &Call) -> Result<Payment, Status> {
        let Some(limit) = self.daily_limit(&payment.currency) else {
            tracing::error!(currency = %payment.currency, "no numeric data.limits.payment.daily_volume");
            return Err(Status::internal("authorization failed"));
        };
        let transfer = TransferRequest {
            transfer_id: payment.payment_id.clone(),
            from_user_id: payment.payer_id.clone(),
            to_user_id: payment.receiver_id.clone(),
            amount: payment.amount,
            currency: payment.currency.clone(),
            kind: "payment".to_owned(),
            reference: payment.payment_id.clone(),
            outgoing_limit_24h: limit,
        };
        let outcome = self
            .wallet
            .clone()
            .transfer(wallet_request(transfer, &call.context))
            .await;
        let event = |status: PaymentStatus, reason: Option<&str>| {
            let mut event = Event::new(SERVICE, action::PAYMENT, &payment.payment_id)
                .by_user(payment.payer_id.clone())
                .from_client(
                    call.context.client_ip.as_deref(),
                    call.context.user_agent.as_deref(),
                )
                .request(Some(&call.context.request_id))
                .details(serde_json::json!({
                    "payment_id": payment.payment_id,
                    "payer_id": payment.payer_id,
                    "receiver_id": payment.receiver_id,
                    "amount": payment.amount,
                    "currency": payment.currency,
                    "status": status.as_str(),
                    "failure_reason": reason,
                }));
            if status == PaymentStatus::Failed {
                event = event.failed();
            }
            event
        };
        match outcome {
            Ok(_) => {
                let e = event(PaymentStatus::Completed, None);
                self.store
                    .finish(&payment, PaymentStatus::Completed, None, &e)
                    .await
                    .map_err(internal)
            }
            Err(status) if is_reason(&status, Code::FailedPrecondition, "insufficient_funds") => {
                let reason = "insufficient_funds";
                let e = event(PaymentStatus::Failed, Some(reason));
                self.store
                    .finish(&payment, PaymentStatus::Failed, Some(reason), &e)
                    .await
                    .map_err(internal)
            }
            Err(status) if is_reason(&status, Code::FailedPrecondition, "limit_exceeded") => {
                // A concurrent payment of the same payer took the rest of
                // the daily volume: the same refusal as the policy's.
                self.store
                    .delete_pending(&payment.payment_id)
                    .await
                    .map_err(internal)?;
                let request = serde_json::json!({
                    "receiver_id": payment.receiver_id,
                    "amount": payment.amount,
                    "currency": payment.currency,
                    PAYER_VOLUME_FIELD: limit,
                });
                self.authorize("CreatePayment", call, request)?;
                Err(deny_status("daily_limit_exceeded"))
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                self.store
                    .delete_pending(&payment.payment_id)
                    .await
                    .map_err(internal)?;
                Err(Status::invalid_argument(status.message().to_owned()))
            }
            Err(status) => {
                tracing::warn!(
                    payment_id = %payment.payment_id,
                    code = ?status.code(),
                    message = status.message(),
                    "the wallet did not settle the payment; it stays pending"
                );
                Err(Status::unavailable(
                    "wallet_unavailable: the payment is pending; retry with the same idempotency key",
                ))
            }
        }
    }

    /// The refusal `refused` makes, unless `new` retries a payment stored
    /// before: that one is answered as it was, whatever changed since (the
    /// payer's volume, the limits, the receiver's account).
    async fn refuse_unless_retry(
        &self,
        new: &NewPayment,
        call: &Call,
        refused: impl FnOnce() -> Status,
    ) -> Result<Response<CreatePaymentReply>, Status> {
        match self
            .store
            .by_key(&new.payer_id, &new.idempotency_key)
            .await
            .map_err(internal)?
        {
            Some(existing) => self.replay(existing, new, call).await,
            None => Err(refused()),
        }
    }

    /// The answer to a retry of `existing` asking for `new`.
    async fn replay(
        &self,
        existing: Payment,
        new: &NewPayment,
        call: &Call,
    ) -> Result<Response<CreatePaymentReply>, Status> {
        if !existing.matches(new) {
            return Err(Status::already_exists(
                "idempotency_key_reused: this Idempotency-Key was used for another payment",
            ));
        }
        let payment = match existing.status {
            PaymentStatus::Pending => self.settle(existing, call).await?,
            _ => {
                // Read on a pooled connection: the outcome is confirmed to
                // the client only once it is durable (`group_commit`, *The
                // log's sync*).
                self.store.writer().barrier().await.map_err(internal)?;
                existing
            }
        };
        Ok(Response::new(CreatePaymentReply {
            payment: Some(record(payment, true)),
            replayed: true,
        }))
    }

    /// Posts the compensating transfer of `rollback` and records it.
    async fn run_rollback(
        &self,
        payment: &Payment,
        rollback: Rollback,
        call: &Call,
    ) -> Result<Payment, Status> {
        let transfer = TransferRequest {
            transfer_id: rollback.rollback_id.clone(),
            from_user_id: payment.receiver_id.clone(),
            to_user_id: payment.payer_id.clone(),
            amount: payment.amount,
            currency: payment.currency.clone(),
            kind: "rollback".to_owned(),
            reference: payment.payment_id.clone(),
            outgoing_limit_24h: 0,
        };
        let outcome = self
            .wallet
            .clone()
            .transfer(wallet_request(transfer, &call.context))
            .await;
        let event = |failure: Option<&str>| {
            let mut event = Event::new(SERVICE, action::ROLLBACK, &payment.payment_id)
                .by_user(call.subject.sub.clone())
                .from_client(
                    call.context.client_ip.as_deref(),
                    call.context.user_agent.as_deref(),
                )
                .request(Some(&call.context.request_id))
                .details(serde_json::json!({
                    "payment_id": payment.payment_id,
                    "rollback_id": rollback.rollback_id,
                    "by_user_id": rollback.by_user_id,
                    "reason": rollback.reason,
                    "payer_id": payment.payer_id,
                    "receiver_id": payment.receiver_id,
                    "amount": payment.amount,
                    "currency": payment.currency,
                    "failure_reason": failure,
                }));
            if failure.is_some() {
                event = event.failed();
            }
            event
        };
        match outcome {
            Ok(_) => self
                .store
                .complete_rollback(&rollback, &event(None))
                .await
                .map_err(internal),
            Err(status) if is_reason(&status, Code::FailedPrecondition, "insufficient_funds") => {
                self.store
                    .abandon_rollback(&rollback, &event(Some("insufficient_funds")))
                    .await
                    .map_err(internal)?;
                Err(Status::failed_precondition(
                    "insufficient_funds: the receiver can no longer cover the rollback",
                ))
            }
            Err(status) => {
                tracing::warn!(
                    rollback_id = %rollback.rollback_id,
                    code = ?status.code(),
                    message = status.message(),
                    "the wallet did not post the rollback; it stays pending"
                );
                Err(Status::unavailable(
                    "wallet_unavailable: the rollback is pending; try again shortly",
                ))
            }
        }
    }
}

/// A wallet call carrying the end user's request id (and a deadline).
fn wallet_request(transfer: TransferRequest, context: &RequestContext) -> Request<TransferRequest> {
    let mut request = Request::new(transfer);
    request.set_timeout(WALLET_TIMEOUT);
    if let Ok(value) = context.request_id.parse() {
        request.metadata_mut().insert(REQUEST_ID_HEADER, value);
    }
    request
}

/// Whether `status` has `code` and a message starting with `reason`.
fn is_reason(status: &Status, code: Code, reason: &str) -> bool {
    status.code() == code && status.message().starts_with(reason)
}

fn internal(e: StoreError) -> Status {
    if let StoreError::Overflow(why) = &e {
        // Only a payer's own running total can get there (payments add up
        // to more than an `i64` of minor units): the payer's request, not
        // the service, is what cannot go on.
        return Status::failed_precondition(format!("limit_exceeded: {why}"));
    }
    trustmesh_runtime::store_status("payment", &e)
}

/// `value` as a canonical (lowercase, hyphenated) UUID.
fn canonical_uuid(field: &str, value: &str) -> Result<String, Status> {
    uuid::Uuid::parse_str(value)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Status::invalid_argument(format!("invalid_{field}: {field} must be a UUID")))
}

fn valid_currency(currency: &str) -> bool {
    currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())
}

/// The message form of a payment; `with_key` shows the idempotency key.
fn record(p: Payment, with_key: bool) -> PaymentRecord {
    PaymentRecord {
        payment_id: p.payment_id,
        payer_id: p.payer_id,
        receiver_id: p.receiver_id,
        amount: p.amount,
        currency: p.currency,
        status: p.status.as_str().to_owned(),
        failure_reason: p.failure_reason.unwrap_or_default(),
        rollback: p.rollback.filter(|r| r.completed).map(|r| RollbackRecord {
            rollback_id: r.rollback_id,
            by_user_id: r.by_user_id,
            reason: r.reason,
            created_at: r.created_at,
        }),
        created_at: p.created_at,
        updated_at: p.updated_at,
        idempotency_key: if with_key {
            p.idempotency_key
        } else {
            String::new()
        },
    }
}

/// Checks a new payment's fields; the error names the wrong one.
fn new_payment(payer: &str, req: CreatePaymentRequest) -> Result<NewPayment, Status> {
    let payer_id = canonical_uuid("payer", payer)?;
    let receiver_id = canonical_uuid("receiver_id", &req.receiver_id)?;
    if payer_id == receiver_id {
        return Err(Status::invalid_argument(
            "self_payment: the payer and the receiver are the same user",
        ));
    }
    if req.amount <= 0 {
        return Err(Status::invalid_argument(
            "invalid_amount: amount must be a positive number of minor units",
        ));
    }
    if !valid_currency(&req.currency) {
        return Err(Status::invalid_argument(
            "invalid_currency: currency must be three uppercase letters (ISO 4217, e.g. EUR)",
        ));
    }
    let key_chars = req.idempotency_key.chars().count();
    if key_chars == 0
        || key_chars > MAX_IDEMPOTENCY_KEY
        || req.idempotency_key.chars().any(char::is_control)
    {
        return Err(Status::invalid_argument(format!(
            "invalid_idempotency_key: the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} \
             printable characters"
        )));
    }
    Ok(NewPayment {
        payer_id,
        receiver_id,
        amount: req.amount,
        currency: req.currency,
        idempotency_key: req.idempotency_key,
    })
}

#[tonic::async_trait]
impl PaymentApi for PaymentService {
    async fn create_payment(
        &self,
        request: Request<CreatePaymentRequest>,
    ) -> Result<Response<CreatePaymentReply>, Status> {
        let call = call_of(&request)?;
        let new = new_payment(&call.subject.sub, request.into_inner())?;
        // The rolling 24 h volume (the wallet checks it again atomically).
        let volume = self
            .store
            .volume_24h(&new.payer_id, &new.currency)
            .await
            .map_err(internal)?;
        let decision = self.decide(
            "CreatePayment",
            &call,
            serde_json::json!({
                "receiver_id": new.receiver_id,
                "amount": new.amount,
                "currency": new.currency,
                PAYER_VOLUME_FIELD: volume,
            }),
        )?;
        if let Some(denial) = decision {
            // A retry of a payment made before the volume grew (or the
            // limits changed) is answered as the original was.
            return self
                .refuse_unless_retry(&new, &call, || self.refuse(&call, denial))
                .await;
        }
        if let Some(receivers) = &self.receivers
            && let Err(refused) = receivers.check(&new.receiver_id).await
        {
            return self.refuse_unless_retry(&new, &call, || refused).await;
        }
        let Some(pending) = self.store.insert_pending(&new).await.map_err(internal)? else {
            // The payer's key is taken: a retry, or a concurrent request
            // with the same key that was first.
            let existing = self
                .store
                .by_key(&new.payer_id, &new.idempotency_key)
                .await
                .map_err(internal)?
                .ok_or_else(|| Status::aborted("concurrent request; retry"))?;
            return self.replay(existing, &new, &call).await;
        };
        let payment = self.settle(pending, &call).await?;
        tracing::info!(
            payment_id = %payment.payment_id,
            status = payment.status.as_str(),
            amount = payment.amount,
            currency = %payment.currency,
            "payment settled"
        );
        Ok(Response::new(CreatePaymentReply {
            payment: Some(record(payment, true)),
            replayed: false,
        }))
    }

    async fn get_payment(
        &self,
        request: Request<GetPaymentRequest>,
    ) -> Result<Response<PaymentRecord>, Status> {
        let call = call_of(&request)?;
        let payment_id = canonical_uuid("payment_id", &request.get_ref().payment_id)?;
        let payment = self
            .store
            .get(&payment_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found("payment_not_found: no such payment"))?;
        self.authorize(
            "GetPayment",
            &call,
            serde_json::json!({
                "payment_id": payment.payment_id,
                "payer_id": payment.payer_id,
                "receiver_id": payment.receiver_id,
            }),
        )?;
        let with_key = call.subject.sub == payment.payer_id
            || READER_ROLES.contains(&call.subject.role.as_str());
        Ok(Response::new(record(payment, with_key)))
    }

    async fn list_transactions(
        &self,
        request: Request<ListTransactionsRequest>,
    ) -> Result<Response<ListTransactionsReply>, Status> {
        let req = request.into_inner();
        let optional = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        let time = |field: &str, value: &str| -> Result<Option<String>, Status> {
            match optional(value) {
                None => Ok(None),
                Some(text) => normalize_time(&text).map(Some).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "invalid_{field}: {field} must be an RFC 3339 time"
                    ))
                }),
            }
        };
        let filter = PaymentFilter {
            user_id: optional(&req.user_id)
                .map(|u| canonical_uuid("user_id", &u))
                .transpose()?,
            since: time("since", &req.since)?,
            until: time("until", &req.until)?,
            min_amount: (req.min_amount != 0).then_some(req.min_amount),
            max_amount: (req.max_amount != 0).then_some(req.max_amount),
            status: optional(&req.status)
                .map(|s| {
                    PaymentStatus::parse(&s).ok_or_else(|| {
                        Status::invalid_argument(
                            "invalid_status: status must be PENDING, COMPLETED, FAILED or ROLLED_BACK",
                        )
                    })
                })
                .transpose()?,
            before: optional(&req.page_token)
                .map(|t| {
                    parse_page_token(&t).ok_or_else(|| {
                        Status::invalid_argument(
                            "invalid_page_token: page_token is not a token this service issued",
                        )
                    })
                })
                .transpose()?,
        };
        if req.min_amount < 0 || req.max_amount < 0 {
            return Err(Status::invalid_argument(
                "invalid_amount: amount bounds must not be negative",
            ));
        }
        let size = match req.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let mut payments = self.store.list(&filter, size + 1).await.map_err(internal)?;
        let next_page_token = if payments.len() > size as usize {
            payments.truncate(size as usize);
            payments
                .last()
                .map(|p| page_token(&p.payment_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListTransactionsReply {
            payments: payments.into_iter().map(|p| record(p, true)).collect(),
            next_page_token,
        }))
    }

    async fn rollback(
        &self,
        request: Request<RollbackRequest>,
    ) -> Result<Response<PaymentRecord>, Status> {
        let call = call_of(&request)?;
        let req = request.into_inner();
        let payment_id = canonical_uuid("payment_id", &req.payment_id)?;
        let reason = req.reason.trim().to_owned();
        let reason_chars = reason.chars().count();
        if reason_chars == 0 || reason_chars > MAX_REASON {
            return Err(Status::invalid_argument(format!(
                "invalid_reason: a rollback needs a reason of 1 to {MAX_REASON} characters"
            )));
        }
        let payment = self
            .store
            .get(&payment_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found("payment_not_found: no such payment"))?;
        let already =
            || Status::already_exists("already_rolled_back: this payment was rolled back already");
        let rollback = match &payment.rollback {
            Some(r) if r.completed => return Err(already()),
            Some(r) => resumable(r)?,
            None => {
                if payment.status != PaymentStatus::Completed {
                    return Err(Status::failed_precondition(format!(
                        "not_completed: only a completed payment can be rolled back (it is {})",
                        payment.status.as_str()
                    )));
                }
                let now = time::OffsetDateTime::now_utc();
                let age = parse_time(&payment.created_at)
                    .map(|t| (now - t).whole_seconds().max(0))
                    .ok_or_else(|| internal(StoreError::Query(sqlx::Error::RowNotFound)))?;
                self.authorize(
                    "Rollback",
                    &call,
                    serde_json::json!({
                        "payment_id": payment.payment_id,
                        "reason": reason,
                        "payment_amount": payment.amount,
                        "payment_currency": payment.currency,
                        "payment_age_seconds": age,
                    }),
                )?;
                match self
                    .store
                    .begin_rollback(&payment.payment_id, &call.subject.sub, &reason)
                    .await
                    .map_err(internal)?
                {
                    Ok(claimed) => claimed,
                    Err(existing) if existing.completed => return Err(already()),
                    Err(existing) => resumable(&existing)?,
                }
            }
        };
        let payment = self.run_rollback(&payment, rollback, &call).await?;
        tracing::info!(payment_id = %payment.payment_id, by = %call.subject.sub, "payment rolled back");
        Ok(Response::new(record(payment, true)))
    }
}

/// A PENDING rollback found by another request: resumed if it is old (a
/// crash left it), refused while it may still be in progress.
fn resumable(rollback: &Rollback) -> Result<Rollback, Status> {
    let age = parse_time(&rollback.created_at)
        .map(|t| time::OffsetDateTime::now_utc() - t)
        .unwrap_or(time::Duration::ZERO);
    if age.whole_seconds() >= ROLLBACK_RESUME_AFTER.as_secs() as i64 {
        Ok(rollback.clone())
    } else {
        Err(Status::already_exists(
            "rollback_in_progress: a rollback of this payment is in progress",
        ))
    }
}

/// The current time in the stored form (tests).
#[doc(hidden)]
pub fn now_timestamp() -> String {
    timestamp(time::OffsetDateTime::now_utc())
}
