//! The gRPC handlers on both back-ends, called directly (the transport and
//! the policy layer are covered by `mesh.rs`): status codes, pagination
//! newest first with opaque tokens, and the deposit's second policy
//! decision with the agent's 24 h volume (the daily limit), also under
//! concurrency; a database with no connection to spare answers
//! `Unavailable` (retry), not `Internal`.

#![allow(clippy::unwrap_used)]

mod common;

use trustmesh_store::on_both_backends;

use std::sync::Arc;

use common::{Backend, TEST_AGENT, TestDb, fund, policies, recording_hook, user};
use tonic::{Code, Request};
use trustmesh_identity::PeerIdentity;
use trustmesh_policy::DENY_REASON_METADATA;
use trustmesh_proto::trustmesh::wallet::v1::wallet_server::Wallet;
use trustmesh_proto::trustmesh::wallet::v1::{
    DepositRequest, GetBalanceRequest, GetOutgoingVolumeRequest, ListTransactionsRequest,
    TransferRequest,
};
use trustmesh_wallet::WalletService;

on_both_backends!(
    transfer_statuses,
    balances_per_currency,
    transactions_are_paginated_newest_first,
    deposit_daily_limit_is_enforced,
    concurrent_deposits_respect_the_daily_limit,
    a_busy_database_is_unavailable,
);

fn service(db: &TestDb) -> WalletService {
    WalletService::new(db.store(), policies())
}

fn transfer_req(from: &str, to: &str, amount: i64) -> TransferRequest {
    TransferRequest {
        transfer_id: uuid::Uuid::new_v4().to_string(),
        from_user_id: from.to_owned(),
        to_user_id: to.to_owned(),
        amount,
        currency: "EUR".into(),
        kind: "payment".into(),
        reference: "p-1".into(),
        outgoing_limit_24h: 0,
    }
}

/// A request as the runtime hands it over: with the caller's SPIFFE ID.
fn from_peer<T>(spiffe_id: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(PeerIdentity {
        spiffe_id: Some(Arc::from(spiffe_id)),
        remote_addr: None,
    });
    request
}

fn deposit_req(to: &str, amount: i64, currency: &str, reference: &str) -> DepositRequest {
    DepositRequest {
        to_user_id: to.to_owned(),
        amount,
        currency: currency.to_owned(),
        reference: reference.to_owned(),
    }
}

fn reason(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get(DENY_REASON_METADATA)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn transfer_statuses(backend: Backend) {
    let db = TestDb::open(backend, 4).await;
    let wallet = service(&db);
    let (alice, bob) = (user(), user());
    fund(wallet.store(), &alice, 1_000).await;

    let req = transfer_req(&alice, &bob, 400);
    let first = wallet
        .transfer(Request::new(req.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    let record = first.transfer.unwrap();
    assert_eq!(record.kind, "payment");
    assert_eq!(record.agent_id, "");
    assert_eq!(record.from_user_id, alice);
    let again = wallet
        .transfer(Request::new(req.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.transfer.unwrap(), record);

    // An upper-case spelling of the same ids is the same request.
    let mut shouted = req.clone();
    shouted.transfer_id = req.transfer_id.to_uppercase();
    shouted.from_user_id = alice.to_uppercase();
    assert!(
        wallet
            .transfer(Request::new(shouted))
            .await
            .unwrap()
            .into_inner()
            .replayed
    );

    let mut conflict = req.clone();
    conflict.amount = 1;
    let status = wallet.transfer(Request::new(conflict)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    let status = wallet
        .transfer(Request::new(transfer_req(&alice, &bob, 601)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().starts_with("insufficient_funds"),
        "{status:?}"
    );

    let cases = [
        (transfer_req(&alice, &alice, 1), "self_transfer"),
        (transfer_req(&alice, &bob, 0), "amount"),
        (transfer_req(&alice, &bob, -3), "amount"),
        (
            TransferRequest {
                currency: "euro".into(),
                ..transfer_req(&alice, &bob, 1)
            },
            "currency",
        ),
        (
            TransferRequest {
                kind: "deposit".into(),
                ..transfer_req(&alice, &bob, 1)
            },
            "kind",
        ),
        (
            TransferRequest {
                kind: String::new(),
                ..transfer_req(&alice, &bob, 1)
            },
            "kind",
        ),
        (
            TransferRequest {
                transfer_id: String::new(),
                ..transfer_req(&alice, &bob, 1)
            },
            "transfer_id",
        ),
        (transfer_req("bob", &bob, 1), "from_user_id"),
    ];
    for (req, field) in cases {
        let status = wallet.transfer(Request::new(req)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    }

    // The rolling limit guard and the volume query.
    let mut limited = transfer_req(&alice, &bob, 200);
    limited.outgoing_limit_24h = 500;
    let status = wallet.transfer(Request::new(limited)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().starts_with("limit_exceeded"), "{status:?}");
    let volume = wallet
        .get_outgoing_volume(Request::new(GetOutgoingVolumeRequest {
            user_id: alice.clone(),
            currency: "EUR".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(volume.volume, 400);
    let status = wallet
        .get_outgoing_volume(Request::new(GetOutgoingVolumeRequest {
            user_id: alice.clone(),
            currency: "eu".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn balances_per_currency(backend: Backend) {
    let db = TestDb::open(backend, 4).await;
    let wallet = service(&db);
    let alice = user();
    let empty = wallet
        .get_balance(Request::new(GetBalanceRequest {
            user_id: alice.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(empty.balances.is_empty());
    for (currency, amount) in [("USD", 5), ("EUR", 7), ("USD", 10)] {
        wallet
            .deposit(from_peer(
                TEST_AGENT,
                deposit_req(&alice, amount, currency, &user()),
            ))
            .await
            .unwrap();
    }
    let reply = wallet
        .get_balance(Request::new(GetBalanceRequest {
            user_id: alice.to_uppercase(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.user_id, alice);
    let balances: Vec<(String, i64)> = reply
        .balances
        .into_iter()
        .map(|b| (b.currency, b.amount))
        .collect();
    assert_eq!(balances, [("EUR".to_owned(), 7), ("USD".to_owned(), 15)]);
    let status = wallet
        .get_balance(Request::new(GetBalanceRequest {
            user_id: "me".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn transactions_are_paginated_newest_first(backend: Backend) {
    let db = TestDb::open(backend, 4).await;
    let wallet = service(&db);
    let (alice, bob) = (user(), user());
    fund(wallet.store(), &alice, 10_000).await;
    let mut ids = Vec::new();
    for amount in 1..=24 {
        let (from, to) = if amount % 3 == 0 {
            (&bob, &alice)
        } else {
            (&alice, &bob)
        };
        let reply = wallet
            .transfer(Request::new(transfer_req(from, to, amount)))
            .await
            .unwrap()
            .into_inner();
        ids.push(reply.transfer.unwrap().transfer_id);
    }
    let list = |token: String, size: u32| {
        let wallet = wallet.clone();
        let alice = alice.clone();
        async move {
            wallet
                .list_transactions(Request::new(ListTransactionsRequest {
                    user_id: alice,
                    page_size: size,
                    page_token: token,
                }))
                .await
        }
    };
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(token, 10).await.unwrap().into_inner();
        sizes.push(page.transactions.len());
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    // 24 transfers + the deposit = 25 entries: pages of 10, 10, 5.
    assert_eq!(sizes, [10, 10, 5]);

    // The whole history in one page, newest first, with running balances.
    let all = list(String::new(), 200).await.unwrap().into_inner();
    assert!(all.next_page_token.is_empty());
    assert_eq!(all.transactions.len(), 25);
    let newest_first: Vec<&str> = all
        .transactions
        .iter()
        .map(|t| t.transfer_id.as_str())
        .collect();
    let mut expected: Vec<&str> = ids[..24].iter().map(String::as_str).collect();
    expected.reverse();
    assert_eq!(&newest_first[..24], &expected[..]);
    let deposit = &all.transactions[24];
    assert_eq!(deposit.kind, "deposit");
    assert_eq!(deposit.counterparty, TEST_AGENT);
    assert_eq!(deposit.amount, 10_000);
    assert_eq!(deposit.balance_after, 10_000);
    let first_payment = &all.transactions[23];
    assert_eq!(first_payment.amount, -1);
    assert_eq!(first_payment.counterparty, bob);
    assert_eq!(first_payment.balance_after, 9_999);
    // Each entry's balance is the previous one plus its amount.
    for pair in all.transactions.windows(2) {
        assert_eq!(
            pair[0].balance_after,
            pair[1].balance_after + pair[0].amount
        );
    }
    // Paging yields exactly the same sequence.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(token, 7).await.unwrap().into_inner();
        paged.extend(page.transactions);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(paged, all.transactions);
    // 0 means the default (50); above 200 is capped.
    assert_eq!(
        list(String::new(), 0)
            .await
            .unwrap()
            .into_inner()
            .transactions
            .len(),
        25
    );
    assert_eq!(
        list(String::new(), 5_000)
            .await
            .unwrap()
            .into_inner()
            .transactions
            .len(),
        25
    );
    // Forged tokens are refused.
    for bad in ["garbage", "ZTE6bm90LWEtdXVpZA", "%%%"] {
        let status = list(bad.to_owned(), 10).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
    }
}

async fn deposit_daily_limit_is_enforced(backend: Backend) {
    let db = TestDb::open(backend, 4).await;
    let (hook, denies) = recording_hook();
    let wallet = service(&db).with_deny_hook(hook);
    let alice = user();
    // The test agent: at most 1,000,000 per deposit, 5,000,000 a day per currency.
    for i in 0..5 {
        let reply = wallet
            .deposit(from_peer(
                TEST_AGENT,
                deposit_req(&alice, 1_000_000, "EUR", &format!("day-{i}")),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(!reply.replayed);
        assert_eq!(reply.transfer.unwrap().agent_id, TEST_AGENT);
    }
    let status = wallet
        .deposit(from_peer(
            TEST_AGENT,
            deposit_req(&alice, 1, "EUR", "day-5"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "daily_limit_exceeded");
    assert_eq!(*denies.lock().unwrap(), ["daily_limit_exceeded"]);
    // A retry of an earlier deposit is still answered (idempotency first).
    let replay = wallet
        .deposit(from_peer(
            TEST_AGENT,
            deposit_req(&alice, 1_000_000, "EUR", "day-0"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    // The limit is per currency.
    wallet
        .deposit(from_peer(
            TEST_AGENT,
            deposit_req(&alice, 1_000_000, "USD", "usd-0"),
        ))
        .await
        .unwrap();
    // The handler's decision repeats the layer's checks (defense in depth).
    let status = wallet
        .deposit(from_peer(
            TEST_AGENT,
            deposit_req(&alice, 1_000_001, "USD", "usd-1"),
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "limit_exceeded");
    let status = wallet
        .deposit(from_peer(
            "spiffe://trustmesh.local/agent/mallory",
            deposit_req(&alice, 1, "USD", "m-1"),
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "agent_not_allowed");
    // No SPIFFE ID at all.
    let status = wallet
        .deposit(Request::new(deposit_req(&alice, 1, "USD", "anon")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Nothing refused moved money.
    let report = wallet.store().check_invariants().await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.transfers, 6);
}

async fn concurrent_deposits_respect_the_daily_limit(backend: Backend) {
    let db = TestDb::open(backend, 12).await;
    let wallet = service(&db);
    let alice = user();
    let attempts = futures::future::join_all((0..10).map(|i| {
        let wallet = wallet.clone();
        let req = deposit_req(&alice, 1_000_000, "EUR", &format!("burst-{i}"));
        tokio::spawn(async move { wallet.deposit(from_peer(TEST_AGENT, req)).await })
    }))
    .await;
    let mut ok = 0;
    for attempt in attempts {
        match attempt.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => assert_eq!(reason(&status), "daily_limit_exceeded", "{status:?}"),
        }
    }
    assert_eq!(ok, 5, "exactly the daily limit gets through");
    let balance = wallet
        .get_balance(Request::new(GetBalanceRequest {
            user_id: alice.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(balance.balances[0].amount, 5_000_000);
}

/// Every pooled connection taken and none freed within the acquire
/// timeout: reads and postings answer `Unavailable` with the store's busy
/// message (the gateway's 503), and work again once a connection is free.
async fn a_busy_database_is_unavailable(backend: Backend) {
    let db = TestDb::open_single(backend).await;
    let wallet = service(&db);
    let (alice, bob) = (user(), user());
    let held = db.db.pool().acquire().await.unwrap();

    let balance = || {
        wallet.get_balance(Request::new(GetBalanceRequest {
            user_id: alice.clone(),
        }))
    };
    let status = balance().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), trustmesh_store::BUSY_MESSAGE);
    let status = wallet
        .transfer(Request::new(transfer_req(&alice, &bob, 1)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = wallet
        .deposit(from_peer(
            TEST_AGENT,
            deposit_req(&alice, 5, "EUR", &user()),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    drop(held);
    assert!(balance().await.unwrap().into_inner().balances.is_empty());
}
