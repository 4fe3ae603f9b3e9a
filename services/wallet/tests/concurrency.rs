//! The ledger under concurrent load, on both back-ends: 50 tasks make about
//! 2,000 random transfers among 20 users funded by deposits, including
//! retries with the same id (sequential and simultaneous) and transfers that
//! must overdraw. Afterwards: the zero-sum invariant holds, no wallet is
//! negative, cached balances equal the entries, every retry returned the
//! original record, every balance is what the accepted transfers imply, and
//! each accepted transfer is in both users' histories exactly once.
//!
//! The throughput is printed (`cargo nextest run -p trustmesh-wallet
//! --success-output immediate concurrency`).

#![allow(clippy::unwrap_used)]

mod common;

use trustmesh_store::on_both_backends;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{Backend, TestDb, eur, fund, user};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trustmesh_wallet::ledger::{LedgerError, NewTransfer, TransferKind, TransferRecord};

const USERS: usize = 20;
const TASKS: usize = 50;
const OPS_PER_TASK: usize = 40;
const FUNDING: i64 = 10_000;

on_both_backends!(random_transfers_keep_the_ledger_sound);

#[derive(Default)]
struct Tally {
    /// Transfers that moved money (first, non-replayed success), by id.
    accepted: HashMap<String, TransferRecord>,
    refused: usize,
    must_overdraw: usize,
    retries: usize,
    simultaneous: usize,
}

async fn random_transfers_keep_the_ledger_sound(backend: Backend) {
    let db = TestDb::open(backend, 16).await;
    let store = db.store();
    let users: Arc<Vec<String>> = Arc::new((0..USERS).map(|_| user()).collect());
    for u in users.iter() {
        fund(&store, u, FUNDING).await;
    }
    let tally = Arc::new(Mutex::new(Tally::default()));

    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        let users = users.clone();
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(task as u64);
            let mut mine: Vec<(NewTransfer, TransferRecord)> = Vec::new();
            let mut calls = 0usize;
            for _ in 0..OPS_PER_TASK {
                // A retry of one of this task's accepted transfers.
                if !mine.is_empty() && rng.random_bool(0.15) {
                    let (t, original) = &mine[rng.random_range(0..mine.len())];
                    let again = store.transfer(t).await.unwrap();
                    calls += 1;
                    assert!(again.replayed, "a retry must be a replay");
                    assert_eq!(&again.record, original, "a retry returns the original");
                    tally.lock().unwrap().retries += 1;
                    continue;
                }
                let from = rng.random_range(0..USERS);
                let mut to = rng.random_range(0..USERS - 1);
                if to >= from {
                    to += 1;
                }
                let overdraw = rng.random_bool(0.05);
                let amount = if overdraw {
                    // More than all the money there is.
                    FUNDING * USERS as i64 + 1
                } else {
                    rng.random_range(1..=3_000)
                };
                let t = NewTransfer {
                    transfer_id: uuid::Uuid::new_v4().to_string(),
                    from_user: users[from].clone(),
                    to_user: users[to].clone(),
                    amount,
                    currency: "EUR".into(),
                    kind: TransferKind::Payment,
                    reference: format!("task-{task}"),
                    outgoing_limit_24h: None,
                };
                // Sometimes the same request twice at the same moment.
                let simultaneous = rng.random_bool(0.05);
                let mut outcomes = if simultaneous {
                    let (a, b) = tokio::join!(store.transfer(&t), store.transfer(&t));
                    calls += 2;
                    vec![a, b]
                } else {
                    calls += 1;
                    vec![store.transfer(&t).await]
                };
                // The original before its replay.
                outcomes.sort_by_key(|o| matches!(o, Ok(p) if p.replayed));
                let mut tally = tally.lock().unwrap();
                if simultaneous {
                    tally.simultaneous += 1;
                }
                if overdraw {
                    tally.must_overdraw += 1;
                }
                let mut first: Option<TransferRecord> = None;
                for outcome in outcomes {
                    match outcome {
                        Ok(posted) if !posted.replayed => {
                            assert!(!overdraw, "an overdraw was accepted");
                            assert!(first.is_none(), "one id moved money twice");
                            assert!(
                                tally
                                    .accepted
                                    .insert(
                                        posted.record.transfer_id.clone(),
                                        posted.record.clone()
                                    )
                                    .is_none()
                            );
                            first = Some(posted.record);
                        }
                        Ok(posted) => {
                            // The replay of a simultaneous twin.
                            let original = tally.accepted.get(&posted.record.transfer_id);
                            assert_eq!(original, Some(&posted.record));
                        }
                        Err(LedgerError::InsufficientFunds) => tally.refused += 1,
                        Err(e) => panic!("unexpected error {e:?}"),
                    }
                }
                if let Some(record) = first {
                    mine.push((t, record));
                }
            }
            calls
        }));
    }
    let mut calls = 0;
    for task in tasks {
        calls += task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let tally = Arc::try_unwrap(tally)
        .ok()
        .expect("tasks are done")
        .into_inner()
        .unwrap();
    println!(
        "{backend:?}: {calls} Transfer calls in {:.2} s = {:.0} calls/s \
         ({} accepted, {} refused for funds incl. {} forced overdraws, {} retries, {} simultaneous pairs)",
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64(),
        tally.accepted.len(),
        tally.refused,
        tally.must_overdraw,
        tally.retries,
        tally.simultaneous,
    );
    assert!(calls >= 2_000, "{calls}");
    assert!(
        tally.accepted.len() > 500,
        "too few accepted: {}",
        tally.accepted.len()
    );
    assert!(tally.retries > 100 && tally.must_overdraw > 20 && tally.simultaneous > 20);

    // Simultaneous retries of one id are cut into runs, not failed.
    assert_eq!(
        store.writer_stats().fallbacks,
        0,
        "{:?}",
        store.writer_stats()
    );

    // The ledger is sound.
    let report = store.check_invariants().await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.transfers as usize, tally.accepted.len() + USERS);
    assert_eq!(report.currencies[0].sum, 0);
    assert_eq!(
        report.currencies[0].user_total,
        i128::from(FUNDING) * USERS as i128
    );

    // Every balance is what the accepted transfers imply.
    let mut expected: HashMap<&str, i64> = users.iter().map(|u| (u.as_str(), FUNDING)).collect();
    for r in tally.accepted.values() {
        let from = r.from_user.as_deref().unwrap();
        *expected.get_mut(from).unwrap() -= r.amount;
        *expected.get_mut(r.to_user.as_str()).unwrap() += r.amount;
    }
    for u in users.iter() {
        let balance = eur(&store, u).await;
        assert!(balance >= 0);
        assert_eq!(balance, expected[u.as_str()], "balance of {u}");
    }

    // Each accepted transfer is in both histories exactly once; histories
    // are newest first and hold nothing else (besides the funding deposit).
    for u in users.iter() {
        let mut seen: Vec<String> = Vec::new();
        let mut entry_ids: Vec<String> = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let page = store.history(u, before.as_deref(), 37).await.unwrap();
            if page.is_empty() {
                break;
            }
            for e in &page {
                seen.push(e.transfer_id.clone());
                entry_ids.push(e.entry_id.clone());
            }
            before = page.last().map(|e| e.entry_id.clone());
        }
        let mut sorted = entry_ids.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(entry_ids, sorted, "history of {u} is newest first");
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "a transfer twice in {u}'s history"
        );
        let mine: HashSet<&String> = tally
            .accepted
            .values()
            .filter(|r| r.to_user == *u || r.from_user.as_deref() == Some(u.as_str()))
            .map(|r| &r.transfer_id)
            .collect();
        assert_eq!(
            seen.len(),
            mine.len() + 1,
            "{u}: history = accepted + deposit"
        );
        for id in mine {
            assert!(unique.contains(id), "{id} missing from {u}'s history");
        }
    }
}
