//! The ledger's rules against both back-ends: idempotent replays and
//! conflicts, overdraws, validation and overflow, deposits idempotent on
//! (agent, reference), the 24 h limits, events in the same transaction, and
//! the invariant check catching a corrupted ledger.

#![allow(clippy::unwrap_used)]

mod common;

use trustmesh_events::Outbox;
use trustmesh_store::on_both_backends;

use common::{Backend, TEST_AGENT, TestDb, deposit, eur, fund, payment, user};
use trustmesh_wallet::ledger::{LedgerError, TransferKind};
use trustmesh_wallet::store::Violation;

on_both_backends!(
    replay_returns_the_original_and_conflicts_are_refused,
    overdraw_is_refused_atomically,
    invalid_requests_are_refused,
    balances_never_overflow,
    deposits_are_idempotent_per_agent_and_reference,
    outgoing_limit_is_enforced_atomically,
    daily_deposit_check_is_serialised,
    events_are_written_with_the_change,
    invariant_check_catches_corruption,
);

async fn replay_returns_the_original_and_conflicts_are_refused(backend: Backend) {
    let db = TestDb::open(backend, 4).await;
    let store = db.store();
    let (alice, bob, carol) = (user(), user(), user());
    fund(&store, &alice, 1_000).await;

    let t = payment(&alice, &bob, 300);
    let first = store.transfer(&t).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.record.amount, 300);
    assert_eq!(first.record.from_user.as_deref(), Some(alice.as_str()));
    assert_eq!(first.record.kind, TransferKind::Payment);

    // The same request again: the original record, flagged, no second move.
    let again = store.transfer(&t).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.record, first.record);
    assert_eq!(eur(&store, &alice).await, 700);
    assert_eq!(eur(&store, &bob).await, 300);

    // A limit is a guard, not content: a retry with one is still a replay.
    let mut guarded = t.clone();
    guarded.outgoing_limit_24h = Some(1);
    assert!(store.transfer(&guarded).await.unwrap().replayed);

    // Same id, different content: refused, nothing moves.
    for changed in [
        {
            let mut c = t.clone();
            c.amount = 301;
            c
        },
        {
            let mut c = t.clone();
            c.to_user = carol.clone();
            c
        },
        {
            let mut c = t.clone();
            c.reference = "other".into();
            c
        },
        {
            let mut c = t.clone();
            c.kind = TransferKind::Rollback;
            c
        },
        {
            let mut c = t.clone();
            c.currency = "USD".into();
            c
        },
    ] {
        let err = store.transfer(&changed).await.unwrap_err();
        assert!(matches!(err, LedgerError::Conflict), "{err:?}");
    }
    assert_eq!(eur(&store, &alice).await, 700);
    assert_eq!(eur(&store, &bob).await, 300);
    assert_eq!(eur(&store, &carol).await, 0);
    let report = store.check_invariants().await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.transfers, 2);
}

async fn overdraw_is_refused_atomically(backend: Backend) {
    let db = TestDb::open(backend, 4).await;
    let store = db.store();
    let (alice, bob) = (user(), user());
    fund(&store, &alice, 100).await;

    let t = payment(&alice, &bob, 101);
    let err = store.transfer(&t).await.unwrap_err();
    assert!(matches!(err, LedgerError::InsufficientFunds), "{err:?}");
    assert_eq!(eur(&store, &alice).await, 100);
    assert_eq!(eur(&store, &bob).await, 0);
    // A refused transfer leaves no trace: no row, no event.
    assert!(
        store
            .transfer_by_id(&t.transfer_id)
            .await
            .unwrap()
            .is_none()
    );
    let events = Outbox::new(store.db().clone())
        .pending(10_000)
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "only the deposit: {events:?}");

    // A user who never held money cannot pay, in any currency.
    let err = store.transfer(&payment(&bob, &alice, 1)).await.unwrap_err();
    assert!(matches!(err, LedgerError::InsufficientFunds), "{err:?}");
    let mut usd = payment(&alice, &bob, 1);
    usd.currency = "USD".into();
    assert!(matches!(
        store.transfer(&usd).await.unwrap_err(),
        LedgerError::InsufficientFunds
    ));

    // Exactly the whole balance is fine; the refused id can be used later.
    let exact = payment(&alice, &bob, 100);
    store.transfer(&exact).await.unwrap();
    assert_eq!(eur(&store, &alice).await, 0);
    fund(&store, &alice, 101).await;
    let later = store.transfer(&t).await.unwrap();
    assert!(!later.replayed);
    assert_eq!(eur(&store, &alice).await, 0);
    assert_eq!(eur(&store, &bob).await, 201);
    let report = store.check_invariants().await.unwrap();
    assert!(report.is_ok(), "{report}");
}

async fn invalid_requests_are_refused(backend: Backend) {
    let db = TestDb::open(backend, 2).await;
    let store = db.store();
    let (alice, bob) = (user(), user());
    fund(&store, &alice, 100).await;
    let invalid = |e: LedgerError| match e {
        LedgerError::Invalid(m) => m,
        other => panic!("expected Invalid, got {other:?}"),
    };

    let m = invalid(
        store
            .transfer(&payment(&alice, &alice, 1))
            .await
            .unwrap_err(),
    );
    assert!(m.contains("self_transfer"), "{m}");
    for amount in [0, -1, i64::MIN] {
        let m = invalid(
            store
                .transfer(&payment(&alice, &bob, amount))
                .await
                .unwrap_err(),
        );
        assert!(m.contains("amount"), "{m}");
    }
    for currency in ["eur", "EU", "EURO", "12X"] {
        let mut t = payment(&alice, &bob, 1);
        t.currency = currency.into();
        let m = invalid(store.transfer(&t).await.unwrap_err());
        assert!(m.contains("currency"), "{m}");
    }
    let mut t = payment(&alice, &bob, 1);
    t.transfer_id = "42".into();
    assert!(invalid(store.transfer(&t).await.unwrap_err()).contains("transfer_id"));
    let mut d = deposit(&bob, 0, "r");
    assert!(invalid(store.deposit(&d, |_| Ok(())).await.unwrap_err()).contains("amount"));
    d.amount = 1;
    d.reference.clear();
    assert!(invalid(store.deposit(&d, |_| Ok(())).await.unwrap_err()).contains("reference"));
    assert_eq!(eur(&store, &alice).await, 100);
    assert_eq!(store.check_invariants().await.unwrap().transfers, 1);
}

async fn balances_never_overflow(backend: Backend) {
    let db = TestDb::open(backend, 2).await;
    let store = db.store();
    let (alice, bob) = (user(), user());
    // Alice's wallet at i64::MAX: any credit would overflow it.
    fund(&store, &alice, i64::MAX).await;
    let err = store
        .deposit(&deposit(&alice, 1, "over"), |_| Ok(()))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Overflow), "{err:?}");
    // The agent's clearing account is at -i64::MAX: one more unit would
    // still fit its balance (down to i64::MIN) but not its running total of
    // deposits, which stays within i64 (like TigerBeetle's posted totals).
    let err = store
        .deposit(&deposit(&bob, 1, "under"), |_| Ok(()))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Overflow), "{err:?}");
    let mut other_agent = deposit(&bob, 1, "other");
    other_agent.agent = "spiffe://trustmesh.local/agent/other".to_owned();
    store.deposit(&other_agent, |_| Ok(())).await.unwrap();
    // Paying into a full wallet overflows too, and moves nothing.
    let err = store.transfer(&payment(&bob, &alice, 1)).await.unwrap_err();
    assert!(matches!(err, LedgerError::Overflow), "{err:?}");
    // So does a payment past its payer's running total of payments.
    let carol = user();
    store
        .transfer(&payment(&alice, &carol, i64::MAX))
        .await
        .unwrap();
    store
        .transfer(&payment(&carol, &alice, i64::MAX))
        .await
        .unwrap();
    let err = store
        .transfer(&payment(&alice, &carol, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Overflow), "{err:?}");
    assert_eq!(eur(&store, &alice).await, i64::MAX);
    assert_eq!(eur(&store, &bob).await, 1);
    assert_eq!(eur(&store, &carol).await, 0);
    let report = store.check_invariants().await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.currencies[0].user_total, i128::from(i64::MAX) + 1);
}

async fn deposits_are_idempotent_per_agent_and_reference(backend: Backend) {
    let db = TestDb::open(backend, 4).await;
    let store = db.store();
    let (alice, bob) = (user(), user());
    let d = deposit(&alice, 500, "bank-ref-1");
    let first = store.deposit(&d, |_| Ok(())).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.record.kind, TransferKind::Deposit);
    assert_eq!(first.record.agent.as_deref(), Some(TEST_AGENT));
    assert_eq!(first.record.from_user, None);

    let again = store.deposit(&d, |_| Ok(())).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.record, first.record);
    assert_eq!(eur(&store, &alice).await, 500);

    // Same agent and reference, other content: refused.
    for changed in [
        deposit(&alice, 501, "bank-ref-1"),
        deposit(&bob, 500, "bank-ref-1"),
        {
            let mut c = d.clone();
            c.currency = "USD".into();
            c
        },
    ] {
        let err = store.deposit(&changed, |_| Ok(())).await.unwrap_err();
        assert!(matches!(err, LedgerError::Conflict), "{err:?}");
    }
    // Another agent may use the same reference: its own namespace.
    let mut other = d.clone();
    other.agent = "spiffe://trustmesh.local/agent/other-bank".into();
    let theirs = store.deposit(&other, |_| Ok(())).await.unwrap();
    assert!(!theirs.replayed);
    assert_ne!(theirs.record.transfer_id, first.record.transfer_id);
    assert_eq!(eur(&store, &alice).await, 1_000);

    // Concurrent retries of one new deposit: exactly one posts.
    let d = deposit(&bob, 70, "bank-ref-2");
    let attempts = futures::future::join_all((0..8).map(|_| {
        let store = store.clone();
        let d = d.clone();
        tokio::spawn(async move { store.deposit(&d, |_| Ok(())).await.unwrap() })
    }))
    .await;
    let posted: Vec<_> = attempts.into_iter().map(Result::unwrap).collect();
    assert_eq!(posted.iter().filter(|p| !p.replayed).count(), 1);
    assert!(posted.iter().all(|p| p.record == posted[0].record));
    assert_eq!(eur(&store, &bob).await, 70);
    let report = store.check_invariants().await.unwrap();
    assert!(report.is_ok(), "{report}");
}

async fn outgoing_limit_is_enforced_atomically(backend: Backend) {
    let db = TestDb::open(backend, 8).await;
    let store = db.store();
    let (alice, bob) = (user(), user());
    fund(&store, &alice, 10_000).await;
    // 20 concurrent payments of 100 under a 24 h limit of 1,000: exactly 10 pass.
    let results = futures::future::join_all((0..20).map(|_| {
        let store = store.clone();
        let mut t = payment(&alice, &bob, 100);
        t.outgoing_limit_24h = Some(1_000);
        tokio::spawn(async move { store.transfer(&t).await })
    }))
    .await;
    let mut ok = 0;
    for r in results {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(LedgerError::LimitExceeded) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(eur(&store, &alice).await, 9_000);
    let (volume, since) = store
        .outgoing_volume(&alice, "EUR", TransferKind::Payment)
        .await
        .unwrap();
    assert_eq!(volume, 1_000);
    assert!(since.ends_with('Z'), "{since}");
    // Rollbacks are not payments: they do not count toward the volume.
    let mut back = payment(&bob, &alice, 100);
    back.kind = TransferKind::Rollback;
    store.transfer(&back).await.unwrap();
    let (bob_volume, _) = store
        .outgoing_volume(&bob, "EUR", TransferKind::Payment)
        .await
        .unwrap();
    assert_eq!(bob_volume, 0);
}

async fn daily_deposit_check_is_serialised(backend: Backend) {
    let db = TestDb::open(backend, 8).await;
    let store = db.store();
    let alice = user();
    // A daily limit of 500 checked by the store's callback: of 12
    // concurrent deposits of 100, exactly 5 fit.
    let results = futures::future::join_all((0..12).map(|i| {
        let store = store.clone();
        let d = deposit(&alice, 100, &format!("ref-{i}"));
        tokio::spawn(async move {
            store
                .deposit(&d, |volume| {
                    if volume + 100 > 500 {
                        Err(LedgerError::Refused("daily_limit_exceeded".into()))
                    } else {
                        Ok(())
                    }
                })
                .await
        })
    }))
    .await;
    let ok = results
        .into_iter()
        .filter(|r| matches!(r, Ok(Ok(_))))
        .count();
    assert_eq!(ok, 5);
    assert_eq!(eur(&store, &alice).await, 500);
    let (agent_volume, _) = store
        .outgoing_volume(TEST_AGENT, "EUR", TransferKind::Deposit)
        .await
        .unwrap();
    assert_eq!(agent_volume, 500);
}

async fn events_are_written_with_the_change(backend: Backend) {
    let db = TestDb::open(backend, 2).await;
    let store = db.store();
    let (alice, bob) = (user(), user());
    let d = store
        .deposit(&deposit(&alice, 250, "ev-1"), |_| Ok(()))
        .await
        .unwrap();
    let t = store.transfer(&payment(&alice, &bob, 50)).await.unwrap();
    // Replays and refusals write nothing.
    store
        .deposit(&deposit(&alice, 250, "ev-1"), |_| Ok(()))
        .await
        .unwrap();
    let _ = store
        .transfer(&payment(&bob, &alice, 51))
        .await
        .unwrap_err();

    let events = Outbox::new(store.db().clone())
        .pending(10_000)
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    let (action, target, details) = (&events[0].action, &events[0].target, &events[0].details);
    assert_eq!(action, "DEPOSIT");
    assert_eq!(target, &d.record.transfer_id);
    assert_eq!(details["amount"], 250);
    assert_eq!(details["currency"], "EUR");
    assert_eq!(details["agent"], TEST_AGENT);
    assert_eq!(details["to_user_id"], alice.as_str());
    assert_eq!(details["reference"], "ev-1");
    let (action, target, details) = (&events[1].action, &events[1].target, &events[1].details);
    assert_eq!(action, "TRANSFER");
    assert_eq!(target, &t.record.transfer_id);
    assert_eq!(details["from_user_id"], alice.as_str());
    assert_eq!(details["to_user_id"], bob.as_str());
    assert_eq!(details["amount"], 50);
    assert_eq!(details["kind"], "payment");

    // The deposit's event names the agent that made it.
    let (status, actor): (String, Option<String>) =
        sqlx::query_as("SELECT status, actor_spiffe FROM outbox ORDER BY id LIMIT 1")
            .fetch_one(db.db.pool())
            .await
            .unwrap();
    assert_eq!(status, "SUCCESS");
    assert_eq!(actor.as_deref(), Some(TEST_AGENT));
    sqlx::query("SELECT actor_user, client_ip, user_agent, request_id, sent_at FROM outbox")
        .fetch_all(db.db.pool())
        .await
        .unwrap();
}

async fn invariant_check_catches_corruption(backend: Backend) {
    let db = TestDb::open(backend, 2).await;
    let store = db.store();
    let (alice, bob) = (user(), user());
    fund(&store, &alice, 100).await;
    store.transfer(&payment(&alice, &bob, 40)).await.unwrap();
    let report = store.check_invariants().await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.entries, 4);
    assert_eq!(report.currencies.len(), 1);
    assert_eq!(report.currencies[0].sum, 0);
    assert_eq!(report.currencies[0].accounts, 3);
    assert_eq!(report.currencies[0].user_total, 100);

    // Someone edits a cached balance behind the ledger's back.
    sqlx::query("UPDATE accounts SET balance = balance + 5 WHERE owner = $1")
        .bind(&bob)
        .execute(db.db.pool())
        .await
        .unwrap();
    // And removes an entry.
    sqlx::query(
        "DELETE FROM entries WHERE owner = $1 AND transfer_id IN \
         (SELECT transfer_id FROM transfers WHERE kind = 'deposit')",
    )
    .bind(&alice)
    .execute(db.db.pool())
    .await
    .unwrap();
    let report = trustmesh_wallet::check_invariants(&db.db).await.unwrap();
    assert!(!report.is_ok());
    let text = report.to_string();
    assert!(
        report
            .violations
            .iter()
            .any(|v| matches!(v, Violation::NonZeroSum { sum: 5, .. })),
        "{text}"
    );
    assert!(
        report.violations.iter().any(|v| matches!(
            v,
            Violation::CachedMismatch { owner, cached: 45, derived: 40, .. } if owner == &bob
        )),
        "{text}"
    );
    assert!(
        report.violations.iter().any(|v| matches!(
            v,
            Violation::CachedMismatch { owner, cached: 60, derived: -40, .. } if owner == &alice
        )),
        "{text}"
    );
    assert!(
        report
            .violations
            .iter()
            .any(|v| matches!(v, Violation::UnbalancedTransfer { .. })),
        "{text}"
    );
}
