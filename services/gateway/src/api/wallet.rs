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

use super::Api;
use super::errors::ApiError;
use super::session::{Caller, RequestInfo, grpc_request};

/// `GET /api/v1/wallet?user=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WalletQuery {
    #[serde(default)]
    user: Option<String>,
}

/// `GET /api/v1/wallet/transactions?user=&limit=&page=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransactionsQuery {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    page: Option<String>,
}

/// The wallet to read: `?user=` when given, else the caller's own.
fn owner(user: Option<String>, caller: &Caller) -> String {
    user.filter(|u| !u.is_empty())
        .unwrap_or_else(|| caller.claims.sub.clone())
}

#[derive(Debug, Serialize)]
struct TransactionView {
    transfer_id: String,
    kind: String,
    currency: String,
    amount: i64,
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
    let balances: Vec<serde_json::Value> = reply
        .balances
        .into_iter()
        .map(|b| serde_json::json!({"currency": b.currency, "amount": b.amount}))
        .collect();
    Ok(Json(serde_json::json!({"user_id": reply.user_id, "balances": balances})).into_response())
}

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
    Ok(Json(serde_json::json!({"transactions": transactions, "next": next})).into_response())
}
