//! Set-based writes of the payment path ([`PaymentBatch`]) against both
//! back-ends: one batch mixing new payments (one whose key is taken in the
//! database, two with the same new key), outcomes (one of a payment already
//! finished, one payment finished twice), and their events; the one-by-one
//! fallback gives the same answers; and the store's writer shares batches
//! between concurrent payments.

#![allow(clippy::unwrap_used)]

use sqlx::Connection;
use trustmesh_events::{Event, Outbox, action};
use trustmesh_payment::batch::{PaymentBatch, PaymentWrite};
use trustmesh_payment::store::timestamp;
use trustmesh_payment::{MIGRATIONS, NewPayment, PaymentStatus, PaymentStore};
use trustmesh_store::group_commit::BatchHandler;
use trustmesh_store::on_both_backends;
use trustmesh_store::testing::TestDb;

on_both_backends!(
    a_mixed_batch_answers_each_write,
    the_fallback_gives_the_same_answers,
    concurrent_payments_share_batches,
);

async fn open(backend: trustmesh_store::Backend) -> TestDb {
    TestDb::open("payment", backend, 4, &MIGRATIONS).await
}

fn user() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn new_payment(payer: &str, key: &str) -> NewPayment {
    NewPayment {
        payer_id: payer.to_owned(),
        receiver_id: user(),
        amount: 100,
        currency: "EUR".to_owned(),
        idempotency_key: key.to_owned(),
    }
}

fn now() -> String {
    timestamp(time::OffsetDateTime::now_utc())
}

fn pending(payment: &NewPayment) -> PaymentWrite {
    PaymentWrite::Pending {
        payment_id: uuid::Uuid::now_v7().to_string(),
        payment: payment.clone(),
        at: now(),
    }
}

fn finish(payment_id: &str, status: PaymentStatus, reason: Option<&str>) -> PaymentWrite {
    PaymentWrite::Finish {
        payment_id: payment_id.to_owned(),
        status,
        reason: reason.map(str::to_owned),
        at: now(),
        event: Box::new(Event::new("payment", action::PAYMENT, payment_id)),
    }
}

/// The answers to `items` written as one set-based batch, committed.
async fn write_batch(db: &TestDb, items: Vec<PaymentWrite>) -> Vec<bool> {
    let mut conn = db.db.pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let outcomes = PaymentBatch.run_batch(&mut tx, &items).await.unwrap();
    tx.commit().await.unwrap();
    outcomes.into_iter().map(|o| o.unwrap().done()).collect()
}

/// The answers to `items` written one by one through the fallback, each in
/// a savepoint of one transaction, committed.
async fn write_one_by_one(db: &TestDb, items: Vec<PaymentWrite>) -> Vec<bool> {
    let mut conn = db.db.pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let mut answers = Vec::new();
    for item in &items {
        let mut savepoint = tx.begin().await.unwrap();
        answers.push(
            PaymentBatch
                .run_one(&mut savepoint, item)
                .await
                .unwrap()
                .done(),
        );
        savepoint.commit().await.unwrap();
    }
    tx.commit().await.unwrap();
    answers
}

fn id_of(item: &PaymentWrite) -> String {
    match item {
        PaymentWrite::Pending { payment_id, .. } | PaymentWrite::Finish { payment_id, .. } => {
            payment_id.clone()
        }
    }
}

/// Writes the scenario with `write` and checks every answer, row and event.
async fn scenario<F, Fut>(db: &TestDb, write: F)
where
    F: Fn(Vec<PaymentWrite>) -> Fut,
    Fut: std::future::Future<Output = Vec<bool>>,
{
    let store = PaymentStore::new(db.db.clone());
    let payer = user();
    // Before the batch: a payment with key "taken", one already finished
    // and one still pending.
    let taken = store
        .insert_pending(&new_payment(&payer, "taken"))
        .await
        .unwrap()
        .unwrap();
    let done = store
        .insert_pending(&new_payment(&payer, "done"))
        .await
        .unwrap()
        .unwrap();
    let event = Event::new("payment", action::PAYMENT, &done.payment_id);
    store
        .finish(&done, PaymentStatus::Completed, None, &event)
        .await
        .unwrap();
    let open = store
        .insert_pending(&new_payment(&payer, "open"))
        .await
        .unwrap()
        .unwrap();
    let outbox = Outbox::new(db.db.clone());
    let events_before = outbox.pending(1_000).await.unwrap().len();

    let fresh = pending(&new_payment(&payer, "fresh"));
    let twin = new_payment(&payer, "twin");
    let (twin_a, twin_b) = (pending(&twin), pending(&twin));
    let items = vec![
        fresh.clone(),
        pending(&new_payment(&payer, "taken")),
        twin_a.clone(),
        twin_b.clone(),
        finish(
            &done.payment_id,
            PaymentStatus::Failed,
            Some("insufficient_funds"),
        ),
        finish(
            &open.payment_id,
            PaymentStatus::Failed,
            Some("insufficient_funds"),
        ),
        finish(&open.payment_id, PaymentStatus::Completed, None),
        finish(&taken.payment_id, PaymentStatus::Completed, None),
    ];
    let answers = write(items).await;
    assert_eq!(
        answers,
        vec![true, false, true, false, false, true, false, true],
        "fresh stored; taken key refused; first twin stored, second refused; \
         finished payment left; open moved once (first request wins); taken moved"
    );

    let get = |id: String| {
        let store = store.clone();
        async move { store.get(&id).await.unwrap().unwrap() }
    };
    assert_eq!(get(id_of(&fresh)).await.status, PaymentStatus::Pending);
    assert!(store.get(&id_of(&twin_b)).await.unwrap().is_none());
    assert_eq!(
        store
            .by_key(&payer, "twin")
            .await
            .unwrap()
            .unwrap()
            .payment_id,
        id_of(&twin_a)
    );
    assert_eq!(
        get(done.payment_id.clone()).await.status,
        PaymentStatus::Completed
    );
    let open_now = get(open.payment_id.clone()).await;
    assert_eq!(open_now.status, PaymentStatus::Failed);
    assert_eq!(
        open_now.failure_reason.as_deref(),
        Some("insufficient_funds")
    );
    let taken_now = get(taken.payment_id.clone()).await;
    assert_eq!(taken_now.status, PaymentStatus::Completed);
    assert_eq!(taken_now.failure_reason, None);

    // One event per payment moved, none for the others.
    let events = outbox.pending(1_000).await.unwrap();
    let new_targets: Vec<&str> = events[events_before..]
        .iter()
        .map(|e| e.target.as_str())
        .collect();
    assert_eq!(
        new_targets,
        vec![open.payment_id.as_str(), taken.payment_id.as_str()]
    );

    // The payments not stored left no gap in the payer's running total:
    // taken, done, fresh and the first twin count, the FAILED one not.
    let problems = store.check_totals().await.unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(store.volume_24h(&payer, "EUR").await.unwrap(), 400);
}

async fn a_mixed_batch_answers_each_write(backend: trustmesh_store::Backend) {
    let db = open(backend).await;
    scenario(&db, |items| write_batch(&db, items)).await;
}

async fn the_fallback_gives_the_same_answers(backend: trustmesh_store::Backend) {
    let db = open(backend).await;
    scenario(&db, |items| write_one_by_one(&db, items)).await;
}

async fn concurrent_payments_share_batches(backend: trustmesh_store::Backend) {
    let db = open(backend).await;
    let store = PaymentStore::new(db.db.clone());
    let payer = user();
    let mut tasks = Vec::new();
    for n in 0..200 {
        let (store, payer) = (store.clone(), payer.clone());
        tasks.push(tokio::spawn(async move {
            let payment = store
                .insert_pending(&new_payment(&payer, &format!("k{n}")))
                .await
                .unwrap()
                .unwrap();
            let event = Event::new("payment", action::PAYMENT, &payment.payment_id);
            let done = store
                .finish(&payment, PaymentStatus::Completed, None, &event)
                .await
                .unwrap();
            assert_eq!(done.status, PaymentStatus::Completed);
            assert_eq!(done, store.get(&payment.payment_id).await.unwrap().unwrap());
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = store.writer_stats();
    assert_eq!(stats.units, 400, "{stats:?}");
    assert_eq!(stats.fallbacks, 0, "{stats:?}");
    assert!(stats.batches < stats.units, "{stats:?}");
    assert_eq!(store.volume_24h(&payer, "EUR").await.unwrap(), 200 * 100);
    let events = Outbox::new(db.db.clone()).pending(1_000).await.unwrap();
    assert_eq!(events.len(), 200);
}
