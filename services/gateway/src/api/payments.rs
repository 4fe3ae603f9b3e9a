//! The payments area: paying another user, reading a payment, and the
//! finance routes (every payment with filters, rollbacks).
//!
//! `POST /api/v1/payments` needs an `Idempotency-Key` header (1 to 255
//! printable characters): missing is 400 `idempotency_key_required`, empty,
//! too long or not printable is 422 `invalid_idempotency_key`. The answer:
//!
//! | outcome | status |
//! | --- | --- |
//! | completed | 201 (200 with `Idempotent-Replayed: true` for a retry) |
//! | refused for lack of funds (recorded as FAILED) | 409 `insufficient_funds`, the payment in `payment` |
//! | same key, other content | 409 `idempotency_key_reused` |
//! | over the per-payment maximum / the 24 h volume | 403 `limit_exceeded` / `daily_limit_exceeded` |
//! | invalid field (receiver, amount, currency, self payment) | 422 |
//! | no user has the receiver's id (nothing stored) | 404 `receiver_not_found` |
//! | the wallet did not answer (payment left PENDING) | 503; retry with the same key |
//!
//! A lack of funds is 409 (a conflict with the wallet's current state, like
//! every `FAILED_PRECONDITION`), not 422: the request itself is valid.
//! Rollbacks: 200 with the payment (`ROLLED_BACK`); 409 `already_rolled_back`,
//! `rollback_in_progress`, `insufficient_funds` (the receiver cannot cover
//! it) or `not_completed`; 403 `rollback_window_expired` or
//! `rollback_limit_exceeded` (policy); 404 `payment_not_found`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use trustmesh_proto::trustmesh::payment::v1::{
    CreatePaymentRequest, GetPaymentRequest, ListTransactionsRequest, PaymentRecord,
    RollbackRequest,
};
use utoipa::{IntoParams, ToSchema};

use super::Api;
use super::errors::{ApiError, ApiJson, ErrorBody, ErrorDetail};
use super::session::{Caller, RequestInfo, grpc_request};

/// The header naming a payment's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header set on the answer to a retry.
pub const REPLAYED: &str = "idempotent-replayed";
/// The longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The body of `POST /api/v1/payments`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewPayment {
    /// The user who gets the money.
    #[schema(format = Uuid)]
    receiver_id: String,
    /// Minor units (cents), more than 0.
    #[schema(example = 1250, minimum = 1)]
    amount: i64,
    /// ISO 4217 code.
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    currency: String,
}

/// The body of `POST /api/v1/finance/transactions/{id}/rollback`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackBody {
    /// Why, for the audit log: 1 to 500 characters.
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

/// Filters of `GET /api/v1/finance/transactions`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct FinanceQuery {
    /// Payments this user made or received.
    #[serde(default)]
    #[param(format = Uuid)]
    user: Option<String>,
    /// From this time on (RFC 3339).
    #[serde(default)]
    #[param(format = DateTime)]
    since: Option<String>,
    /// Before this time (RFC 3339).
    #[serde(default)]
    #[param(format = DateTime)]
    until: Option<String>,
    /// At least this many minor units.
    #[serde(default)]
    #[param(minimum = 0)]
    min_amount: Option<i64>,
    /// At most this many minor units.
    #[serde(default)]
    #[param(minimum = 0)]
    max_amount: Option<i64>,
    /// `PENDING`, `COMPLETED`, `FAILED` or `ROLLED_BACK`.
    #[serde(default)]
    #[param(pattern = "^(PENDING|COMPLETED|FAILED|ROLLED_BACK)$")]
    status: Option<String>,
    /// Payments per page: 50 when absent or 0, at most 200 (a larger
    /// number gets 200).
    #[serde(default)]
    #[param(format = Int64, maximum = 4294967295_u64)]
    limit: Option<u32>,
    /// The `next` of the previous page.
    #[serde(default)]
    page: Option<String>,
}

/// The rollback of a payment: who, when and why.
#[derive(Debug, Serialize, ToSchema)]
struct RollbackView {
    rollback_id: String,
    by_user_id: String,
    reason: String,
    /// RFC 3339, UTC.
    created_at: String,
}

/// A payment.
#[derive(Debug, Serialize, ToSchema)]
struct PaymentView {
    payment_id: String,
    payer_id: String,
    receiver_id: String,
    /// Minor units (cents).
    amount: i64,
    /// ISO 4217 code.
    currency: String,
    /// `PENDING`, `COMPLETED`, `FAILED` or `ROLLED_BACK`.
    status: String,
    /// Why a `FAILED` payment was refused (`insufficient_funds`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<String>,
    /// The payer's `Idempotency-Key` (shown to the payer).
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    rollback: Option<RollbackView>,
    /// RFC 3339, UTC.
    created_at: String,
    /// RFC 3339, UTC.
    updated_at: String,
}

/// A conflict of `POST /payments`: a payment refused by the wallet and
/// recorded as `FAILED` (with `payment`), or a key used for another
/// payment (`idempotency_key_reused`, without).
#[derive(Debug, Serialize, ToSchema)]
struct PaymentRefused {
    /// `insufficient_funds`, or the wallet's reason.
    error: ErrorDetail,
    /// The `FAILED` payment.
    #[serde(skip_serializing_if = "Option::is_none")]
    payment: Option<PaymentView>,
}

/// One page of payments, newest first.
#[derive(Debug, Serialize, ToSchema)]
struct PaymentPage {
    payments: Vec<PaymentView>,
    /// For `page=` to get the next page; absent on the last one.
    next: Option<String>,
}

impl From<PaymentRecord> for PaymentView {
    fn from(p: PaymentRecord) -> Self {
        let some = |s: String| Some(s).filter(|s| !s.is_empty());
        Self {
            payment_id: p.payment_id,
            payer_id: p.payer_id,
            receiver_id: p.receiver_id,
            amount: p.amount,
            currency: p.currency,
            status: p.status,
            failure_reason: some(p.failure_reason),
            idempotency_key: some(p.idempotency_key),
            rollback: p.rollback.map(|r| RollbackView {
                rollback_id: r.rollback_id,
                by_user_id: r.by_user_id,
                reason: r.reason,
                created_at: r.created_at,
            }),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// The idempotency key of a payment request.
fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers.get(IDEMPOTENCY_KEY).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            "POST /api/v1/payments needs an Idempotency-Key header",
        )
    })?;
    let invalid = || {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_idempotency_key",
            format!("the Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"),
        )
    };
    let key = value.to_str().map_err(|_| invalid())?;
    let chars = key.chars().count();
    if chars == 0 || chars > MAX_IDEMPOTENCY_KEY || key.chars().any(char::is_control) {
        return Err(invalid());
    }
    Ok(key.to_owned())
}

/// Pays another user
///
/// The same `Idempotency-Key` with the same content returns the original
/// answer (200, `Idempotent-Replayed: true`); with other content it is
/// refused. The per-payment maximum and the payer's rolling 24 h volume
/// are checked by policy.
#[utoipa::path(
    post,
    path = "/api/v1/payments",
    operation_id = "create_payment",
    tag = "payments",
    params(("Idempotency-Key" = String, Header, min_length = 1, max_length = 255,
        description = "1 to 255 printable characters, chosen by the client")),
    request_body = NewPayment,
    responses(
        (status = CREATED, description = "paid", body = PaymentView),
        (status = OK, description = "a retry: the original payment",
            body = PaymentView, headers(("Idempotent-Replayed" = String, description = "`true`"))),
        (status = BAD_REQUEST, description = "`idempotency_key_required`", body = ErrorBody),
        (status = FORBIDDEN, description = "`limit_exceeded` or `daily_limit_exceeded`", body = ErrorBody),
        (status = NOT_FOUND, description = "`receiver_not_found`: no user has this id (nothing is stored; the key stays free)", body = ErrorBody),
        (status = CONFLICT, description = "`insufficient_funds` (the payment is recorded as `FAILED` and \
            comes along), or `idempotency_key_reused` (another payment had this key; no `payment`)",
            body = PaymentRefused),
        (status = UNPROCESSABLE_ENTITY, description = "`invalid_idempotency_key`, or an invalid receiver, amount or currency", body = ErrorBody),
        (status = SERVICE_UNAVAILABLE, description = "the wallet did not answer; the payment is `PENDING`: retry with the same key", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewPayment>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let request = CreatePaymentRequest {
        receiver_id: body.receiver_id,
        amount: body.amount,
        currency: body.currency,
        idempotency_key: key,
    };
    let reply = api
        .call(api.payment()?.create_payment(grpc_request(
            request,
            &info,
            Some(&caller),
            api.timeout(),
        )))
        .await?;
    let payment = reply
        .payment
        .ok_or_else(|| ApiError::upstream("the payment service answered without a payment"))?;
    let view = PaymentView::from(payment);
    let mut response = if view.status == "FAILED" {
        let code = view
            .failure_reason
            .clone()
            .unwrap_or_else(|| "payment_failed".to_owned());
        let body = PaymentRefused {
            error: ErrorDetail {
                code,
                message: "the payment was refused; it is recorded as FAILED".to_owned(),
            },
            payment: Some(view),
        };
        (StatusCode::CONFLICT, Json(body)).into_response()
    } else if reply.replayed {
        (StatusCode::OK, Json(view)).into_response()
    } else {
        (StatusCode::CREATED, Json(view)).into_response()
    };
    if reply.replayed {
        response
            .headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// One payment (its payer, its receiver, finance and audit)
#[utoipa::path(
    get,
    path = "/api/v1/payments/{id}",
    operation_id = "get_payment",
    tag = "payments",
    params(("id" = String, Path, format = Uuid, description = "the payment's id")),
    responses(
        (status = OK, description = "the payment", body = PaymentView),
        (status = NOT_FOUND, description = "`payment_not_found`", body = ErrorBody),
    )
)]
pub(crate) async fn get(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(payment_id) = id?;
    let request = GetPaymentRequest { payment_id };
    let payment = api
        .call(api.payment()?.get_payment(grpc_request(
            request,
            &info,
            Some(&caller),
            api.timeout(),
        )))
        .await?;
    Ok(Json(PaymentView::from(payment)).into_response())
}

/// Lists every payment, with filters (finance)
#[utoipa::path(
    get,
    path = "/api/v1/finance/transactions",
    operation_id = "list_finance_transactions",
    tag = "payments",
    params(FinanceQuery),
    responses((status = OK, description = "one page of payments", body = PaymentPage))
)]
pub(crate) async fn list(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<FinanceQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let request = ListTransactionsRequest {
        user_id: q.user.unwrap_or_default(),
        since: q.since.unwrap_or_default(),
        until: q.until.unwrap_or_default(),
        min_amount: q.min_amount.unwrap_or(0),
        max_amount: q.max_amount.unwrap_or(0),
        status: q.status.unwrap_or_default(),
        page_size: q.limit.unwrap_or(0),
        page_token: q.page.unwrap_or_default(),
    };
    let reply = api
        .call(api.payment()?.list_transactions(grpc_request(
            request,
            &info,
            Some(&caller),
            api.timeout(),
        )))
        .await?;
    let payments: Vec<PaymentView> = reply.payments.into_iter().map(PaymentView::from).collect();
    let next = Some(reply.next_page_token).filter(|n| !n.is_empty());
    Ok(Json(PaymentPage { payments, next }).into_response())
}

/// Rolls a payment back with a compensating transfer (finance)
///
/// Within 24 h of the payment, up to the configured maximum, once.
#[utoipa::path(
    post,
    path = "/api/v1/finance/transactions/{id}/rollback",
    operation_id = "rollback_payment",
    tag = "payments",
    params(("id" = String, Path, format = Uuid, description = "the payment's id")),
    request_body = RollbackBody,
    responses(
        (status = OK, description = "the payment, now `ROLLED_BACK`", body = PaymentView),
        (status = FORBIDDEN, description = "`rollback_window_expired` or `rollback_limit_exceeded`", body = ErrorBody),
        (status = NOT_FOUND, description = "`payment_not_found`", body = ErrorBody),
        (status = CONFLICT, description = "`already_rolled_back`, `rollback_in_progress`, `insufficient_funds` \
            (the receiver cannot cover it) or `not_completed`", body = ErrorBody),
    )
)]
pub(crate) async fn rollback(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Result<Response, ApiError> {
    let Path(payment_id) = id?;
    let request = RollbackRequest {
        payment_id,
        reason: body.reason,
    };
    let payment = api
        .call(
            api.payment()?
                .rollback(grpc_request(request, &info, Some(&caller), api.timeout())),
        )
        .await?;
    Ok(Json(PaymentView::from(payment)).into_response())
}
