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

use super::Api;
use super::errors::{ApiError, ApiJson};
use super::session::{Caller, RequestInfo, grpc_request};

/// The header naming a payment's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header set on the answer to a retry.
pub const REPLAYED: &str = "idempotent-replayed";
/// The longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The body of `POST /api/v1/payments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewPayment {
    receiver_id: String,
    amount: i64,
    currency: String,
}

/// The body of `POST /api/v1/finance/transactions/{id}/rollback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackBody {
    reason: String,
}

/// Filters of `GET /api/v1/finance/transactions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FinanceQuery {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    min_amount: Option<i64>,
    #[serde(default)]
    max_amount: Option<i64>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    page: Option<String>,
}

#[derive(Debug, Serialize)]
struct RollbackView {
    rollback_id: String,
    by_user_id: String,
    reason: String,
    created_at: String,
}

#[derive(Debug, Serialize)]
struct PaymentView {
    payment_id: String,
    payer_id: String,
    receiver_id: String,
    amount: i64,
    currency: String,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    rollback: Option<RollbackView>,
    created_at: String,
    updated_at: String,
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
        let body = serde_json::json!({
            "error": {"code": code, "message": "the payment was refused; it is recorded as FAILED"},
            "payment": view,
        });
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
    Ok(Json(serde_json::json!({"payments": payments, "next": next})).into_response())
}

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
