//! Set-based posting ([`TransferBatch`]) against both back-ends: one batch
//! mixing good transfers, overdraws, volume refusals, retries with the same
//! id (same content and different content, in the database and within the
//! batch), and a chain where a payment is covered only by a credit earlier
//! in the same batch. Afterwards: the outcome of each, the balances, the
//! ledger's invariants (zero sum, cached balances, no negative wallet), and
//! exactly one outbox event per accepted transfer. Also: the per-posting
//! fallback gives the same answers, and the store's writer batches
//! concurrent transfers.

#![allow(clippy::unwrap_used)]

mod common;

use sqlx::Connection;
use trustmesh_events::Outbox;
use trustmesh_store::group_commit::BatchHandler;
use trustmesh_store::on_both_backends;
use trustmesh_wallet::batch::TransferBatch;
use trustmesh_wallet::ledger::{LedgerError, NewTransfer, Posted};

use common::{Backend, TestDb, eur, fund, payment, post_one_by_one, user};

on_both_backends!(
    a_mixed_batch_posts_each_transfer_on_its_own,
    the_fallback_gives_the_same_answers,
    concurrent_transfers_share_batches,
);

/// The outcome of each of `items` posted as one set-based batch in one
/// transaction, committed.
async fn post_batch(db: &TestDb, items: &[NewTransfer]) -> Vec<Result<Posted, LedgerError>> {
    let mut conn = db.db.pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let outcomes = TransferBatch.run_batch(&mut tx, items).await.unwrap();
    tx.commit().await.unwrap();
    outcomes
}

/// Users, funding and the batch of the scenario, and what each transfer's
/// outcome must be.
struct Scenario {
    alice: String,
    bob: String,
    carol: String,
    erin: String,
    frank: String,
    items: Vec<NewTransfer>,
    earlier: NewTransfer,
}

async fn scenario(db: &TestDb) -> Scenario {
    let store = db.store();
    let (alice, bob, carol, erin, frank) = (user(), user(), user(), user(), user());
    fund(&store, &alice, 1_000).await;
    fund(&store, &carol, 500).await;
    // Posted before the batch: 100 of alice's 24 h volume.
    let earlier = payment(&alice, &carol, 100);
    store.transfer(&earlier).await.unwrap();

    let first = payment(&alice, &bob, 300); // bob has no wallet yet
    let chain = payment(&bob, &erin, 250); // covered only by `first`
    let overdraw = payment(&carol, &alice, 10_000);
    let mut over_limit = payment(&alice, &carol, 200); // 100 + 300 + 200 > 500
    over_limit.outgoing_limit_24h = Some(500);
    let mut at_limit = payment(&alice, &carol, 100); // 100 + 300 + 100 = 500
    at_limit.outgoing_limit_24h = Some(500);
    let mut changed = earlier.clone();
    changed.amount = 101;
    let penniless = payment(&frank, &alice, 1); // frank has no wallet
    let chain_overdraw = payment(&erin, &alice, 251); // erin holds 250
    let items = vec![
        first.clone(),
        chain,
        overdraw,
        over_limit,
        at_limit,
        earlier.clone(), // a retry of a committed transfer
        changed,         // its id with other content
        first,           // a simultaneous retry within the batch
        penniless,
        chain_overdraw,
    ];
    Scenario {
        alice,
        bob,
        carol,
        erin,
        frank,
        items,
        earlier,
    }
}

async fn check_outcomes(db: &TestDb, s: &Scenario, outcomes: &[Result<Posted, LedgerError>]) {
    let store = db.store();
    assert_eq!(outcomes.len(), s.items.len());
    let posted = |i: usize| match &outcomes[i] {
        Ok(p) => p.clone(),
        Err(e) => panic!("transfer {i} was refused: {e:?}"),
    };
    let refused = |i: usize| match &outcomes[i] {
        Err(e) => e.to_string(),
        Ok(p) => panic!("transfer {i} was posted: {p:?}"),
    };
    for i in [0, 1, 4] {
        let p = posted(i);
        assert!(!p.replayed, "{i}");
        assert!(s.items[i].transfer_id == p.record.transfer_id);
        assert!(p.record.matches_transfer(&s.items[i]), "{i}");
    }
    assert!(refused(2).starts_with("insufficient_funds"));
    assert!(refused(3).starts_with("limit_exceeded"));
    let replay = posted(5);
    assert!(replay.replayed);
    assert_eq!(
        Some(&replay.record),
        store
            .transfer_by_id(&s.earlier.transfer_id)
            .await
            .unwrap()
            .as_ref()
    );
    assert!(matches!(outcomes[6], Err(LedgerError::Conflict)));
    let twin = posted(7);
    assert!(twin.replayed);
    assert_eq!(twin.record, posted(0).record);
    assert!(refused(8).starts_with("insufficient_funds"));
    assert!(refused(9).starts_with("insufficient_funds"));

    // Balances: alice 1,000 - 100 - 300 - 100; bob 300 - 250; carol 500 +
    // 100 + 100; erin 250; frank nothing (and no wallet).
    assert_eq!(eur(&store, &s.alice).await, 500);
    assert_eq!(eur(&store, &s.bob).await, 50);
    assert_eq!(eur(&store, &s.carol).await, 700);
    assert_eq!(eur(&store, &s.erin).await, 250);
    assert!(store.balances(&s.frank).await.unwrap().is_empty());

    // Refused transfers left no row; the ledger is sound.
    for i in [2, 3, 8, 9] {
        assert!(
            store
                .transfer_by_id(&s.items[i].transfer_id)
                .await
                .unwrap()
                .is_none(),
            "{i}"
        );
    }
    let report = store.check_invariants().await.unwrap();
    assert!(report.is_ok(), "{report}");
    // Two deposits, the earlier transfer and three from the batch.
    assert_eq!(report.transfers, 6);
    assert_eq!(report.entries, 12);
    assert_eq!(report.currencies[0].sum, 0);
    assert_eq!(report.currencies[0].user_total, 1_500);

    // One event per accepted transfer, naming it, in the outbox.
    let events = Outbox::new(db.db.clone()).pending(10_000).await.unwrap();
    let transfers: Vec<&str> = events
        .iter()
        .filter(|e| e.action == "TRANSFER")
        .map(|e| e.target.as_str())
        .collect();
    assert_eq!(events.len(), 2 + 1 + 3, "{events:?}");
    assert_eq!(
        transfers,
        [
            s.earlier.transfer_id.as_str(),
            s.items[0].transfer_id.as_str(),
            s.items[1].transfer_id.as_str(),
            s.items[4].transfer_id.as_str(),
        ]
    );
    let chain = events
        .iter()
        .find(|e| e.target == s.items[1].transfer_id)
        .unwrap();
    assert_eq!(chain.details["from_user_id"], s.bob.as_str());
    assert_eq!(chain.details["to_user_id"], s.erin.as_str());
    assert_eq!(chain.details["amount"], 250);
    assert_eq!(chain.actor.user_id.as_deref(), Some(s.bob.as_str()));

    // Histories carry the balances after each entry.
    let bob_history = store.history(&s.bob, None, 10).await.unwrap();
    let after: Vec<(i64, i64)> = bob_history
        .iter()
        .map(|e| (e.amount, e.balance_after))
        .collect();
    assert_eq!(after, [(-250, 50), (300, 300)]);
}

async fn a_mixed_batch_posts_each_transfer_on_its_own(backend: Backend) {
    let db = TestDb::open(backend, 4).await;
    let s = scenario(&db).await;
    let outcomes = post_batch(&db, &s.items).await;
    check_outcomes(&db, &s, &outcomes).await;

    // The same batch again: every accepted transfer is a replay, every
    // refused one refused again, nothing moves.
    let again = post_batch(&db, &s.items).await;
    for i in [0, 1, 4, 5, 7] {
        assert!(
            matches!(&again[i], Ok(p) if p.replayed),
            "{i}: {:?}",
            again[i]
        );
    }
    let store = db.store();
    assert_eq!(eur(&store, &s.alice).await, 500);
    let report = store.check_invariants().await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.transfers, 6);
}

async fn the_fallback_gives_the_same_answers(backend: Backend) {
    let db = TestDb::open(backend, 4).await;
    let s = scenario(&db).await;
    let outcomes = post_one_by_one(&db, &s.items).await;
    check_outcomes(&db, &s, &outcomes).await;
}

async fn concurrent_transfers_share_batches(backend: Backend) {
    let db = TestDb::open(backend, 8).await;
    let store = db.store();
    let users: Vec<String> = (0..10).map(|_| user()).collect();
    for u in &users {
        fund(&store, u, 1_000).await;
    }
    // 200 concurrent transfers of 10 in a ring: each user pays 20 times
    // and is paid 20 times.
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            let t = payment(&users[i % 10], &users[(i + 1) % 10], 10);
            tokio::spawn(async move { store.transfer(&t).await })
        })
        .collect();
    for task in tasks {
        assert!(!task.await.unwrap().unwrap().replayed);
    }
    for u in &users {
        assert_eq!(eur(&store, u).await, 1_000);
    }
    let report = store.check_invariants().await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.transfers, 210);
    let events = Outbox::new(db.db.clone()).pending(10_000).await.unwrap();
    assert_eq!(events.len(), 210);
    let stats = store.writer_stats();
    assert_eq!(stats.units, 210);
    assert!(stats.batches < stats.units, "{stats:?}");
    assert_eq!(stats.fallbacks, 0, "a set-based batch failed: {stats:?}");
}
