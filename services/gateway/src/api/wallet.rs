//! The wallet area: a user's balances and ledger entries. The owner reads
//! their own wallet; `finance` and `audit` may name another with `?user=`
//! (the wallet policy decides: `subject.sub == request.user_id`, or one of
//! those roles; anyone else gets 403 `not_owner`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use trustmesh_proto::trustmesh::wallet::v1::{
    GetBalanceRequest, ListTransactionsRequest, Transaction,
};
use utoipa::{IntoParams, ToSchema};

use super::Api;
use super::errors::{ApiError, ErrorBody};
use super::session::{Caller, RequestInfo, grpc_request};

/// `GET /api/v1/wallet?user=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct WalletQuery {
    /// Whose wallet (`finance` and `audit` only); the caller's by default.
    #[serde(default)]
    #[param(format = Uuid)]
    user: Option<String>,
}

/// `GET /api/v1/wallet/transactions?user=&limit=&page=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TransactionsQuery {
    /// Whose wallet (`finance` and `audit` only); the caller's by default.
    #[serde(default)]
    #[param(format = Uuid)]
    user: Option<String>,
    /// Entries per page: 50 when absent or 0, at most 200 (a larger
    /// number gets 200).
    #[serde(default)]
    #[param(format = Int64, maximum = 4294967295_u64)]
    limit: Option<u32>,
    /// The `next` of the previous page.
    #[serde(default)]
    page: Option<String>,
}

/// The wallet to read: `?user=` when given, else the caller's own.
fn owner(user: Option<String>, caller: &Caller) -> String {
    user.filter(|u| !u.is_empty())
        .unwrap_or_else(|| caller.claims.sub.clone())
}

/// One entry of a wallet's history.
#[derive(Debug, Serialize, ToSchema)]
struct TransactionView {
    transfer_id: String,
    /// What moved the money (`payment`, `deposit`, `rollback`, …).
    kind: String,
    /// ISO 4217 code.
    currency: String,
    /// Minor units (cents): positive in, negative out.
    amount: i64,
    /// The wallet's balance in this currency right after, in minor units.
    balance_after: i64,
    counterparty: String,
    reference: String,
    created_at: String,
}

impl From<Transaction> for TransactionView {
    fn from(t: Transaction) -> Self {
        Self {
            transfer_id: t.transfer_id,
            kind: t.kind,
            currency: t.currency,
            amount: t.amount,
            balance_after: t.balance_after,
            counterparty: t.counterparty,
            reference: t.reference,
            created_at: t.created_at,
        }
    }
}

/// A wallet's balance in one currency.
#[derive(Debug, Serialize, ToSchema)]
struct BalanceView {
    /// ISO 4217 code.
    currency: String,
    /// Minor units (cents); never negative.
    amount: i64,
}

/// A wallet's balances.
#[derive(Debug, Serialize, ToSchema)]
struct WalletView {
    user_id: String,
    balances: Vec<BalanceView>,
}

/// One page of a wallet's history, newest first.
#[derive(Debug, Serialize, ToSchema)]
struct TransactionPage {
    transactions: Vec<TransactionView>,
    /// For `page=` to get the next page; absent on the last one.
    next: Option<String>,
}

/// A wallet's balances
#[utoipa::path(
    get,
    path = "/api/v1/wallet",
    operation_id = "get_wallet",
    tag = "wallet",
    params(WalletQuery),
    responses(
        (status = OK, description = "the balances", body = WalletView),
        (status = FORBIDDEN, description = "`not_owner`: another user's wallet", body = ErrorBody),
    )
)]
pub(crate) async fn balance(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<WalletQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let request = GetBalanceRequest {
        user_id: owner(query.user, &caller),
    };
    let reply = api
        .call(
            api.wallet()?
                .get_balance(grpc_request(request, &info, Some(&caller), api.timeout())),
        )
        .await?;
    let balances = reply
        .balances
        .into_iter()
        .map(|b| BalanceView {
            currency: b.currency,
            amount: b.amount,
        })
        .collect();
    Ok(Json(WalletView {
        user_id: reply.user_id,
        balances,
    })
    .into_response())
}

/// A wallet's history, newest first
#[utoipa::path(
    get,
    path = "/api/v1/wallet/transactions",
    operation_id = "list_wallet_transactions",
    tag = "wallet",
    params(TransactionsQuery),
    responses(
        (status = OK, description = "one page of entries", body = TransactionPage),
        (status = FORBIDDEN, description = "`not_owner`: another user's wallet", body = ErrorBody),
    )
)]
pub(crate) async fn transactions(
    State(api): State<Api>,
    Extension(info): Extension<RequestInfo>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<TransactionsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let request = ListTransactionsRequest {
        user_id: owner(query.user, &caller),
        page_size: query.limit.unwrap_or(0),
        page_token: query.page.unwrap_or_default(),
    };
    let reply = api
        .call(api.wallet()?.list_transactions(grpc_request(
            request,
            &info,
            Some(&caller),
            api.timeout(),
        )))
        .await?;
    let transactions: Vec<TransactionView> = reply
        .transactions
        .into_iter()
        .map(TransactionView::from)
        .collect();
    let next = Some(reply.next_page_token).filter(|n| !n.is_empty());
    Ok(Json(TransactionPage { transactions, next }).into_response())
}
