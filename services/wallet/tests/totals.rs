//! The running totals the 24 h volumes are read from (migration 0003), on
//! both back-ends: the window slides (transfers stamped before it stop
//! counting) on the set-based path, on the per-posting fallback and for an
//! agent's deposits; `check_invariants` reports a tampered total; and the
//! migration backfills the totals of a ledger written before it.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use trustmesh_store::on_both_backends;
use trustmesh_wallet::MIGRATIONS;
use trustmesh_wallet::ledger::{LedgerError, NewTransfer, TransferKind, timestamp};
use trustmesh_wallet::store::Violation;

use common::{Backend, TEST_AGENT, TestDb, deposit, fund, payment, post_one_by_one, user};

on_both_backends!(
    the_volume_window_slides_on_both_paths,
    a_senders_stamps_never_go_back,
    an_agents_deposit_window_slides,
    a_tampered_total_is_reported,
    the_migration_backfills_the_totals,
);

/// Restamps transfer `transfer_id` as made `ago` before now.
async fn backdate(db: &TestDb, transfer_id: &str, ago: time::Duration) {
    sqlx::query("UPDATE transfers SET created_at = $1 WHERE transfer_id = $2")
        .bind(timestamp(OffsetDateTime::now_utc() - ago))
        .bind(transfer_id)
        .execute(db.db.pool())
        .await
        .unwrap();
}

fn hours(h: i64) -> time::Duration {
    time::Duration::hours(h)
}

fn limited(mut t: NewTransfer, limit: i64) -> NewTransfer {
    t.outgoing_limit_24h = Some(limit);
    t
}

async fn volume(db: &TestDb, owner: &str, kind: TransferKind) -> i64 {
    db.store()
        .outgoing_volume(owner, "EUR", kind)
        .await
        .unwrap()
        .0
}

async fn assert_sound(db: &TestDb) {
    let report = db.store().check_invariants().await.unwrap();
    assert!(report.is_ok(), "{report}");
}

async fn the_volume_window_slides_on_both_paths(backend: Backend) {
    let db = TestDb::open(backend, 4).await;
    let store = db.store();
    let (alice, bob) = (user(), user());
    fund(&store, &alice, 10_000).await;
    let mut earlier = Vec::new();
    for _ in 0..4 {
        let t = payment(&alice, &bob, 100);
        store.transfer(&t).await.unwrap();
        earlier.push(t.transfer_id);
    }
    assert_eq!(volume(&db, &alice, TransferKind::Payment).await, 400);
    // The first two slide out of the window, oldest first.
    backdate(&db, &earlier[0], hours(26)).await;
    backdate(&db, &earlier[1], hours(25)).await;
    assert_eq!(volume(&db, &alice, TransferKind::Payment).await, 200);

    // Set-based: 200 + 100 fits under 350, then 300 + 100 does not.
    store
        .transfer(&limited(payment(&alice, &bob, 100), 350))
        .await
        .unwrap();
    let refused = store
        .transfer(&limited(payment(&alice, &bob, 100), 350))
        .await;
    assert!(
        matches!(refused, Err(LedgerError::LimitExceeded)),
        "{refused:?}"
    );

    // Per posting: 300 + 50 fits, then 350 + 1 does not.
    let outcomes = post_one_by_one(
        &db,
        &[
            limited(payment(&alice, &bob, 50), 350),
            limited(payment(&alice, &bob, 1), 350),
        ],
    )
    .await;
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    assert!(
        matches!(outcomes[1], Err(LedgerError::LimitExceeded)),
        "{:?}",
        outcomes[1]
    );

    // A rollback is no payment: it moves money back but no volume.
    let mut back = payment(&bob, &alice, 30);
    back.kind = TransferKind::Rollback;
    store.transfer(&back).await.unwrap();
    assert_eq!(volume(&db, &bob, TransferKind::Payment).await, 0);
    // A limit it carries is checked on both paths alike.
    let mut limited_back = limited(back.clone(), 10);
    limited_back.transfer_id = uuid::Uuid::new_v4().to_string();
    let refused = store.transfer(&limited_back).await;
    assert!(
        matches!(refused, Err(LedgerError::LimitExceeded)),
        "{refused:?}"
    );
    let outcomes = post_one_by_one(&db, &[limited_back]).await;
    assert!(
        matches!(outcomes[0], Err(LedgerError::LimitExceeded)),
        "{:?}",
        outcomes[0]
    );

    // The third slides out too: 100 + 100 + 50 are left.
    backdate(&db, &earlier[2], hours(24) + time::Duration::minutes(1)).await;
    assert_eq!(volume(&db, &alice, TransferKind::Payment).await, 250);
    store
        .transfer(&limited(payment(&alice, &bob, 100), 350))
        .await
        .unwrap();
    assert_sound(&db).await;
}

async fn a_senders_stamps_never_go_back(backend: Backend) {
    let db = TestDb::open(backend, 4).await;
    let store = db.store();
    let (alice, bob) = (user(), user());
    fund(&store, &alice, 1_000).await;
    let first = payment(&alice, &bob, 10);
    store.transfer(&first).await.unwrap();
    // Alice's last payment was stamped by a replica whose clock runs an
    // hour ahead (or this clock was stepped back since).
    let ahead = timestamp(OffsetDateTime::now_utc() + hours(1));
    sqlx::query("UPDATE transfers SET created_at = $1 WHERE transfer_id = $2")
        .bind(&ahead)
        .bind(&first.transfer_id)
        .execute(db.db.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE accounts SET out_last_at = $1 WHERE owner = $2")
        .bind(&ahead)
        .bind(&alice)
        .execute(db.db.pool())
        .await
        .unwrap();
    // Her next payments, on both paths, are not stamped before it.
    let set_based = store.transfer(&payment(&alice, &bob, 20)).await.unwrap();
    assert_eq!(set_based.record.created_at, ahead);
    let outcomes = post_one_by_one(&db, &[payment(&alice, &bob, 30)]).await;
    assert_eq!(outcomes[0].as_ref().unwrap().record.created_at, ahead);
    // Bob, whose clock is not involved, is stamped now.
    let bobs = store.transfer(&payment(&bob, &alice, 5)).await.unwrap();
    assert!(bobs.record.created_at < ahead);
    assert_eq!(volume(&db, &alice, TransferKind::Payment).await, 60);
    assert_sound(&db).await;
}

async fn an_agents_deposit_window_slides(backend: Backend) {
    let db = TestDb::open(backend, 4).await;
    let store = db.store();
    let alice = user();
    let first = store
        .deposit(&deposit(&alice, 300, "d1"), |_| Ok(()))
        .await
        .unwrap();
    store
        .deposit(&deposit(&alice, 200, "d2"), |_| Ok(()))
        .await
        .unwrap();
    backdate(&db, &first.record.transfer_id, hours(25)).await;
    // The limit's check sees the deposits of the window before this one.
    let seen = Arc::new(Mutex::new(None));
    let sink = seen.clone();
    store
        .deposit(&deposit(&alice, 50, "d3"), move |volume| {
            *sink.lock().unwrap() = Some(volume);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(200));
    assert_eq!(volume(&db, TEST_AGENT, TransferKind::Deposit).await, 250);
    // The user's wallet sent nothing; the agent paid no payment.
    assert_eq!(volume(&db, &alice, TransferKind::Payment).await, 0);
    assert_eq!(volume(&db, TEST_AGENT, TransferKind::Payment).await, 0);
    assert_sound(&db).await;
}

async fn a_tampered_total_is_reported(backend: Backend) {
    let db = TestDb::open(backend, 4).await;
    let store = db.store();
    let (alice, bob) = (user(), user());
    fund(&store, &alice, 1_000).await;
    let mut ids = Vec::new();
    for amount in [100, 200, 300] {
        let t = payment(&alice, &bob, amount);
        store.transfer(&t).await.unwrap();
        ids.push(t.transfer_id);
    }
    assert_sound(&db).await;

    // An account total that is not the sum of its payments.
    sqlx::query("UPDATE accounts SET out_total = out_total + 1 WHERE owner = $1")
        .bind(&alice)
        .execute(db.db.pool())
        .await
        .unwrap();
    let report = store.check_invariants().await.unwrap();
    assert!(
        report.violations.iter().any(|v| matches!(
            v,
            Violation::OutTotalMismatch {
                recorded: 601,
                derived: 600,
                ..
            }
        )),
        "{report}"
    );
    sqlx::query("UPDATE accounts SET out_total = out_total - 1 WHERE owner = $1")
        .bind(&alice)
        .execute(db.db.pool())
        .await
        .unwrap();
    assert_sound(&db).await;

    // A link of the chain that does not rise by its amount.
    sqlx::query(
        "UPDATE transfers SET out_total_after = out_total_after + 5 WHERE transfer_id = $1",
    )
    .bind(&ids[1])
    .execute(db.db.pool())
    .await
    .unwrap();
    let report = store.check_invariants().await.unwrap();
    let broken: Vec<&str> = report
        .violations
        .iter()
        .filter_map(|v| match v {
            Violation::BrokenTotalChain { transfer_id } => Some(transfer_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(broken, [ids[1].as_str(), ids[2].as_str()], "{report}");
}

/// A transfer as the ledger wrote it before migration 0003: the transfer,
/// its accounts (created on first use), both balances and both entries.
async fn legacy_transfer(
    db: &TestDb,
    kind: &str,
    from: (&str, &str),
    to: &str,
    amount: i64,
    currency: &str,
    ago: time::Duration,
) -> String {
    let pool = db.db.pool();
    let at = timestamp(OffsetDateTime::now_utc() - ago);
    let transfer_id = uuid::Uuid::now_v7().to_string();
    let agent = (from.0 == "agent").then_some(from.1);
    sqlx::query(
        "INSERT INTO transfers (transfer_id, kind, from_kind, from_owner, to_owner, amount, \
         currency, reference, agent, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $1, $8, $9)",
    )
    .bind(&transfer_id)
    .bind(kind)
    .bind(from.0)
    .bind(from.1)
    .bind(to)
    .bind(amount)
    .bind(currency)
    .bind(agent)
    .bind(&at)
    .execute(pool)
    .await
    .unwrap();
    for (account_kind, owner, delta) in [(from.0, from.1, -amount), ("user", to, amount)] {
        sqlx::query(
            "INSERT INTO accounts (account_id, kind, owner, currency, balance, created_at) \
             VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(account_kind)
        .bind(owner)
        .bind(currency)
        .bind(&at)
        .execute(pool)
        .await
        .unwrap();
        let (account_id, balance): (String, i64) = sqlx::query_as(
            "UPDATE accounts SET balance = balance + $1 \
             WHERE kind = $2 AND owner = $3 AND currency = $4 RETURNING account_id, balance",
        )
        .bind(delta)
        .bind(account_kind)
        .bind(owner)
        .bind(currency)
        .fetch_one(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO entries (entry_id, transfer_id, account_id, owner, amount, \
             balance_after, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&transfer_id)
        .bind(&account_id)
        .bind(owner)
        .bind(delta)
        .bind(balance)
        .bind(&at)
        .execute(pool)
        .await
        .unwrap();
    }
    transfer_id
}

async fn the_migration_backfills_the_totals(backend: Backend) {
    // A ledger at the last version before the running totals.
    let before_totals = trustmesh_store::testing::migrations_before(&MIGRATIONS, 3);
    let guard = trustmesh_store::testing::TestDb::open("wallet", backend, 4, &before_totals).await;
    let db = TestDb::wrap(guard, backend);
    let (alice, bob) = (user(), user());
    let agent = ("agent", TEST_AGENT);
    legacy_transfer(&db, "deposit", agent, &alice, 1_000, "EUR", hours(30)).await;
    legacy_transfer(&db, "deposit", agent, &alice, 500, "USD", hours(2)).await;
    legacy_transfer(
        &db,
        "payment",
        ("user", &alice),
        &bob,
        100,
        "EUR",
        hours(26),
    )
    .await;
    legacy_transfer(&db, "payment", ("user", &alice), &bob, 200, "EUR", hours(3)).await;
    legacy_transfer(&db, "payment", ("user", &alice), &bob, 40, "USD", hours(1)).await;
    legacy_transfer(&db, "rollback", ("user", &bob), &alice, 50, "EUR", hours(1)).await;
    legacy_transfer(&db, "payment", ("user", &bob), &alice, 10, "EUR", hours(1)).await;

    MIGRATIONS.run(db.db.pool()).await.unwrap();
    assert_sound(&db).await;
    let usd = |owner: String, kind| {
        let store = db.store();
        async move { store.outgoing_volume(&owner, "USD", kind).await.unwrap().0 }
    };
    assert_eq!(volume(&db, &alice, TransferKind::Payment).await, 200);
    assert_eq!(usd(alice.clone(), TransferKind::Payment).await, 40);
    assert_eq!(volume(&db, &bob, TransferKind::Payment).await, 10);
    assert_eq!(volume(&db, TEST_AGENT, TransferKind::Deposit).await, 0);
    assert_eq!(usd(TEST_AGENT.to_owned(), TransferKind::Deposit).await, 500);

    // Postings after the migration carry on from the backfilled totals.
    let store = db.store();
    store
        .transfer(&limited(payment(&alice, &bob, 300), 500))
        .await
        .unwrap();
    let refused = store
        .transfer(&limited(payment(&alice, &bob, 1), 500))
        .await;
    assert!(
        matches!(refused, Err(LedgerError::LimitExceeded)),
        "{refused:?}"
    );
    fund(&store, &bob, 5).await;
    assert_sound(&db).await;
}
