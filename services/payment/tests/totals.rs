//! The payers' running totals the payment service's 24 h volume is read
//! from (migration 0003), on both back-ends: the window slides, FAILED and
//! refused payments never count, a stamp never goes back, a total that
//! would leave `i64` refuses the payment, `check_totals` reports a tampered
//! total or link, the migration backfills the totals of payments written
//! before it, and volumes read together in one batch are each their own.

#![allow(clippy::unwrap_used)]

use sqlx::Connection;
use time::{Duration, OffsetDateTime};
use trustmesh_events::{Event, action};
use trustmesh_payment::batch::{PaymentBatch, PaymentWrite, Written};
use trustmesh_payment::store::timestamp;
use trustmesh_payment::{MIGRATIONS, NewPayment, Payment, PaymentStatus, PaymentStore};
use trustmesh_store::group_commit::BatchHandler;
use trustmesh_store::testing::TestDb;
use trustmesh_store::{Backend, StoreError, on_both_backends};

on_both_backends!(
    the_window_slides_and_only_what_counts_is_counted,
    a_payers_stamps_never_go_back,
    a_total_that_would_overflow_refuses_the_payment,
    a_tampered_total_or_link_is_reported,
    the_migration_backfills_the_totals,
    a_refusal_racing_an_outcome_leaves_the_payment_where_it_is,
    volumes_read_together_are_each_their_own,
);

async fn open(backend: Backend) -> TestDb {
    TestDb::open("payment", backend, 4, &MIGRATIONS).await
}

fn user() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn new_payment(payer: &str, key: &str, amount: i64) -> NewPayment {
    NewPayment {
        payer_id: payer.to_owned(),
        receiver_id: user(),
        amount,
        currency: "EUR".to_owned(),
        idempotency_key: key.to_owned(),
    }
}

async fn pay(store: &PaymentStore, payer: &str, key: &str, amount: i64) -> Payment {
    store
        .insert_pending(&new_payment(payer, key, amount))
        .await
        .unwrap()
        .unwrap()
}

async fn settle(store: &PaymentStore, payment: &Payment, status: PaymentStatus) {
    let reason = (status == PaymentStatus::Failed).then_some("insufficient_funds");
    let event = Event::new("payment", action::PAYMENT, &payment.payment_id);
    let done = store.finish(payment, status, reason, &event).await.unwrap();
    assert_eq!(done.status, status);
}

async fn assert_sound(store: &PaymentStore) {
    let problems = store.check_totals().await.unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
}

async fn the_window_slides_and_only_what_counts_is_counted(backend: Backend) {
    let db = open(backend).await;
    let store = PaymentStore::new(db.db.clone());
    let payer = user();
    assert_eq!(store.volume_24h(&payer, "EUR").await.unwrap(), 0);

    let old = pay(&store, &payer, "old", 1_000).await;
    settle(&store, &old, PaymentStatus::Completed).await;
    let failed = pay(&store, &payer, "failed", 20).await;
    settle(&store, &failed, PaymentStatus::Failed).await;
    let refused = pay(&store, &payer, "refused", 300).await;
    store.delete_pending(&refused.payment_id).await.unwrap();
    let pending = pay(&store, &payer, "pending", 4).await;
    let done = pay(&store, &payer, "done", 50_000).await;
    settle(&store, &done, PaymentStatus::Completed).await;
    // Another currency and another payer are apart.
    let mut usd = new_payment(&payer, "usd", 7);
    usd.currency = "USD".to_owned();
    store.insert_pending(&usd).await.unwrap().unwrap();
    pay(&store, &user(), "other", 9).await;

    assert_eq!(
        store.volume_24h(&payer, "EUR").await.unwrap(),
        1_000 + 4 + 50_000
    );
    assert_eq!(store.volume_24h(&payer, "USD").await.unwrap(), 7);
    // The refused payment's key is free again, and its amount still never
    // counts.
    let again = pay(&store, &payer, "refused", 1).await;
    assert_eq!(
        store.volume_24h(&payer, "EUR").await.unwrap(),
        1_000 + 4 + 50_000 + 1
    );
    assert_sound(&store).await;

    // Everything up to the refused payment slides out of the window: what
    // is left is the pending, the done and the new payment.
    for payment in [&old, &failed, &pending, &done, &again] {
        store
            .backdate(&payment.payment_id, Duration::hours(25))
            .await
            .unwrap();
    }
    let refused_at: String = sqlx::query_scalar("SELECT created_at FROM refused_payments")
        .fetch_one(db.db.pool())
        .await
        .unwrap();
    let refused_at = trustmesh_payment::store::parse_time(&refused_at).unwrap();
    sqlx::query("UPDATE refused_payments SET created_at = $1")
        .bind(timestamp(refused_at - Duration::hours(25)))
        .execute(db.db.pool())
        .await
        .unwrap();
    assert_eq!(store.volume_24h(&payer, "EUR").await.unwrap(), 0);
    let fresh = pay(&store, &payer, "fresh", 60).await;
    settle(&store, &fresh, PaymentStatus::Completed).await;
    assert_eq!(store.volume_24h(&payer, "EUR").await.unwrap(), 60);
    assert_sound(&store).await;
}

async fn a_payers_stamps_never_go_back(backend: Backend) {
    let db = open(backend).await;
    let store = PaymentStore::new(db.db.clone());
    let payer = user();
    // A replica whose clock is an hour ahead stored a payment.
    let ahead = timestamp(OffsetDateTime::now_utc() + Duration::hours(1));
    let mut conn = db.db.pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let written = PaymentBatch
        .run_one(
            &mut tx,
            &PaymentWrite::Pending {
                payment_id: uuid::Uuid::now_v7().to_string(),
                payment: new_payment(&payer, "ahead", 10),
                at: ahead.clone(),
            },
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    drop(conn);
    assert_eq!(
        written,
        Written::Stored {
            created_at: ahead.clone()
        }
    );
    // This one, asked for later by the clock here, is not stamped before it.
    let next = pay(&store, &payer, "next", 5).await;
    assert_eq!(next.created_at, ahead);
    let stored = store.get(&next.payment_id).await.unwrap().unwrap();
    assert_eq!(stored.created_at, ahead);
    assert_eq!(store.volume_24h(&payer, "EUR").await.unwrap(), 15);
    assert_sound(&store).await;
}

async fn a_total_that_would_overflow_refuses_the_payment(backend: Backend) {
    let db = open(backend).await;
    let store = PaymentStore::new(db.db.clone());
    let payer = user();
    let first = pay(&store, &payer, "big", i64::MAX - 10).await;
    settle(&store, &first, PaymentStatus::Failed).await;
    let refused = store.insert_pending(&new_payment(&payer, "over", 11)).await;
    assert!(
        matches!(refused, Err(StoreError::Overflow(_))),
        "{refused:?}"
    );
    assert!(store.by_key(&payer, "over").await.unwrap().is_none());
    // Up to the last unit still fits.
    pay(&store, &payer, "fits", 10).await;
    assert_eq!(store.volume_24h(&payer, "EUR").await.unwrap(), 10);
    assert_sound(&store).await;
}

async fn a_tampered_total_or_link_is_reported(backend: Backend) {
    let db = open(backend).await;
    let store = PaymentStore::new(db.db.clone());
    let payer = user();
    let first = pay(&store, &payer, "a", 100).await;
    pay(&store, &payer, "b", 200).await;
    assert_sound(&store).await;

    sqlx::query("UPDATE payer_totals SET total = total + 1")
        .execute(db.db.pool())
        .await
        .unwrap();
    let problems = store.check_totals().await.unwrap();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("total 301, payments add up to 300"));
    sqlx::query("UPDATE payer_totals SET total = total - 1")
        .execute(db.db.pool())
        .await
        .unwrap();

    sqlx::query("UPDATE payments SET payer_total_after = 99 WHERE payment_id = $1")
        .bind(&first.payment_id)
        .execute(db.db.pool())
        .await
        .unwrap();
    let problems = store.check_totals().await.unwrap();
    // The tampered link and the one after it.
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].contains(&first.payment_id) || problems[1].contains(&first.payment_id));
    sqlx::query("UPDATE payments SET payer_total_after = 100 WHERE payment_id = $1")
        .bind(&first.payment_id)
        .execute(db.db.pool())
        .await
        .unwrap();
    assert_sound(&store).await;

    // A payment written around the totals (a replica still running the
    // code before them) is reported: its pair has no total, its link none.
    let stray = user();
    sqlx::query(
        "INSERT INTO payments (payment_id, payer_id, receiver_id, amount, currency, \
         idempotency_key, status, created_at, updated_at) \
         VALUES ($1, $2, $3, 3, 'EUR', 'old', 'COMPLETED', $4, $4)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&stray)
    .bind(user())
    .bind(timestamp(OffsetDateTime::now_utc()))
    .execute(db.db.pool())
    .await
    .unwrap();
    let problems = store.check_totals().await.unwrap();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&stray) && p.contains("total 0, payments add up to 3")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&stray) && p.contains("total after None")),
        "{problems:#?}"
    );
}

async fn the_migration_backfills_the_totals(backend: Backend) {
    // A payment database at the last version before the running totals.
    let before_totals = trustmesh_store::testing::migrations_before(&MIGRATIONS, 3);
    let db = TestDb::open("payment", backend, 4, &before_totals).await;
    let (alice, bob) = (user(), user());
    let legacy = [
        (&alice, "EUR", 1_000, "COMPLETED", 30),
        (&alice, "EUR", 200, "COMPLETED", 3),
        (&alice, "EUR", 30, "FAILED", 2),
        (&alice, "EUR", 4, "PENDING", 1),
        (&alice, "USD", 40, "ROLLED_BACK", 1),
        (&bob, "EUR", 10, "COMPLETED", 26),
    ];
    for (n, (payer, currency, amount, status, hours_ago)) in legacy.into_iter().enumerate() {
        let at = timestamp(OffsetDateTime::now_utc() - Duration::hours(hours_ago));
        sqlx::query(
            "INSERT INTO payments (payment_id, payer_id, receiver_id, amount, currency, \
             idempotency_key, status, failure_reason, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, $8)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(payer)
        .bind(user())
        .bind(amount)
        .bind(currency)
        .bind(format!("k{n}"))
        .bind(status)
        .bind(&at)
        .execute(db.db.pool())
        .await
        .unwrap();
    }

    // An offline check refuses the old schema rather than migrating it.
    let refused = db.db.require_migrated(&MIGRATIONS, &MIGRATIONS).await;
    assert!(
        matches!(&refused, Err(StoreError::SchemaMismatch { why, .. }) if why.contains("[3]")),
        "{refused:?}"
    );
    MIGRATIONS.run(db.db.pool()).await.unwrap();
    db.db
        .require_migrated(&MIGRATIONS, &MIGRATIONS)
        .await
        .unwrap();
    // And a binary that knows fewer migrations than the database has.
    let older = trustmesh_store::testing::migrations_before(&MIGRATIONS, 3);
    let refused = db.db.require_migrated(&older, &older).await;
    assert!(
        matches!(&refused, Err(StoreError::SchemaMismatch { why, .. }) if why.contains("newer")),
        "{refused:?}"
    );
    let store = PaymentStore::new(db.db.clone());
    assert_sound(&store).await;
    assert_eq!(store.volume_24h(&alice, "EUR").await.unwrap(), 200 + 4);
    assert_eq!(store.volume_24h(&alice, "USD").await.unwrap(), 40);
    assert_eq!(store.volume_24h(&bob, "EUR").await.unwrap(), 0);

    // Payments after the migration carry on from the backfilled totals.
    pay(&store, &alice, "after", 6).await;
    pay(&store, &bob, "after", 7).await;
    assert_eq!(store.volume_24h(&alice, "EUR").await.unwrap(), 200 + 4 + 6);
    assert_eq!(store.volume_24h(&bob, "EUR").await.unwrap(), 7);
    assert_sound(&store).await;
}

async fn a_refusal_racing_an_outcome_leaves_the_payment_where_it_is(backend: Backend) {
    let db = open(backend).await;
    let store = PaymentStore::new(db.db.clone());
    let payer = user();
    let payment = pay(&store, &payer, "raced", 5).await;
    // A retry's outcome is being written (not yet committed) when the
    // refusal of the first attempt arrives.
    let mut conn = db.db.pool().acquire().await.unwrap();
    let mut outcome = conn.begin().await.unwrap();
    sqlx::query("UPDATE payments SET status = 'COMPLETED' WHERE payment_id = $1")
        .bind(&payment.payment_id)
        .execute(&mut *outcome)
        .await
        .unwrap();
    let refusal = {
        let (store, id) = (store.clone(), payment.payment_id.clone());
        tokio::spawn(async move { store.delete_pending(&id).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    outcome.commit().await.unwrap();
    drop(conn);
    refusal.await.unwrap().unwrap();

    let stored = store.get(&payment.payment_id).await.unwrap().unwrap();
    assert_eq!(stored.status, PaymentStatus::Completed);
    let refused: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM refused_payments")
        .fetch_one(db.db.pool())
        .await
        .unwrap();
    assert_eq!(refused, 0);
    assert_eq!(store.volume_24h(&payer, "EUR").await.unwrap(), 5);
    // A second refusal of a payment already refused changes nothing.
    let again = pay(&store, &payer, "twice", 7).await;
    store.delete_pending(&again.payment_id).await.unwrap();
    store.delete_pending(&again.payment_id).await.unwrap();
    assert_eq!(store.volume_24h(&payer, "EUR").await.unwrap(), 5);
    assert_sound(&store).await;
}

async fn volumes_read_together_are_each_their_own(backend: Backend) {
    let db = open(backend).await;
    let store = PaymentStore::new(db.db.clone());
    let (a, b, never, broken) = (user(), user(), user(), user());
    pay(&store, &a, "a1", 10).await;
    let mut usd = new_payment(&a, "a2", 7);
    usd.currency = "USD".to_owned();
    store.insert_pending(&usd).await.unwrap().unwrap();
    let b1 = pay(&store, &b, "b1", 300).await;
    settle(&store, &b1, PaymentStatus::Completed).await;
    let b2 = pay(&store, &b, "b2", 40).await;
    settle(&store, &b2, PaymentStatus::Failed).await;
    // A chain that does not add up: its FAILED payment is more than its
    // total.
    let lost = pay(&store, &broken, "x", 20).await;
    settle(&store, &lost, PaymentStatus::Failed).await;
    sqlx::query("UPDATE payer_totals SET total = 5 WHERE payer_id = $1")
        .bind(&broken)
        .execute(db.db.pool())
        .await
        .unwrap();

    // Queued together (a payer twice, too): one answer each, the broken
    // chain an error of its own.
    let asks = [
        (&a, "EUR"),
        (&b, "EUR"),
        (&broken, "EUR"),
        (&a, "USD"),
        (&never, "EUR"),
        (&a, "EUR"),
        (&b, "USD"),
    ];
    let answers =
        futures::future::join_all(asks.iter().map(|(payer, cur)| store.volume_24h(payer, cur)))
            .await;
    let volumes: Vec<Option<i64>> = answers
        .iter()
        .map(|answer| answer.as_ref().ok().copied())
        .collect();
    assert_eq!(
        volumes,
        [
            Some(10),
            Some(300),
            None,
            Some(7),
            Some(0),
            Some(10),
            Some(0)
        ]
    );
    assert!(
        matches!(&answers[2], Err(StoreError::Inconsistent(why)) if why.contains(&broken)),
        "{:?}",
        answers[2]
    );
    assert_eq!(store.volume_stats().reads, asks.len() as u64);
}
