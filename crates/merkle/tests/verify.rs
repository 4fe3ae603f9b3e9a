//! Full verification: every kind of tampering is caught and named.

#![allow(clippy::unwrap_used, missing_docs)]

use trustmesh_merkle::{
    Checkpoint, Entry, LogState, LogVerifier, SignedCheckpoint, SigningKey, VerifyError,
    chain_hash, leaf_hash,
};

const ORIGIN: &str = "trustmesh.local/audit";

struct Db {
    rows: Vec<(Vec<u8>, Entry)>,
    checkpoints: Vec<Checkpoint>,
    state: LogState,
}

/// A log of `n` events with a checkpoint every `every` entries.
fn db(n: u64, every: u64) -> Db {
    let mut state = LogState::new();
    let mut rows = Vec::new();
    let mut checkpoints = Vec::new();
    for i in 0..n {
        let data = format!(r#"{{"seq":{i},"action":"LOGIN","user":"u{}"}}"#, i % 7).into_bytes();
        let e = state.append(&data);
        rows.push((data, e));
        if (i + 1) % every == 0 {
            checkpoints.push(state.checkpoint(ORIGIN, 1_767_225_600 + i).unwrap());
        }
    }
    Db {
        rows,
        checkpoints,
        state,
    }
}

fn verify(
    rows: &[(Vec<u8>, Entry)],
    checkpoints: &[Checkpoint],
) -> Result<trustmesh_merkle::VerifyReport, VerifyError> {
    let mut v = LogVerifier::new(ORIGIN);
    for c in checkpoints {
        v.expect_checkpoint(c)?;
    }
    for (d, e) in rows {
        v.push(d, e)?;
    }
    v.finish()
}

#[test]
fn intact_log_verifies() {
    let db = db(1000, 100);
    let r = verify(&db.rows, &db.checkpoints).unwrap();
    assert_eq!(r.size, 1000);
    assert_eq!(r.first_index, 0);
    assert_eq!(r.root, db.state.root());
    assert_eq!(r.state, db.state);
    assert_eq!(r.checkpoints, (1..=10).map(|i| i * 100).collect::<Vec<_>>());
    // Without checkpoints, and hash-only.
    verify(&db.rows, &[]).unwrap();
    let mut v = LogVerifier::new(ORIGIN);
    for (_, e) in &db.rows {
        v.push_leaf_hash(e).unwrap();
    }
    assert_eq!(v.finish().unwrap().root, db.state.root());
    // Empty log, checkpoint of size 0.
    let empty = LogState::new().checkpoint(ORIGIN, 0).unwrap();
    assert_eq!(verify(&[], &[empty]).unwrap().size, 0);
}

#[test]
fn edited_content_is_named() {
    let db = db(300, 50);
    let mut rows = db.rows.clone();
    rows[137].0 = b"{\"seq\":137,\"action\":\"LOGOUT\"}".to_vec();
    let err = verify(&rows, &db.checkpoints).unwrap_err();
    assert!(
        matches!(err, VerifyError::LeafHashMismatch { index: 137, .. }),
        "{err}"
    );
    assert!(err.to_string().starts_with("entry #137: "), "{err}");
}

#[test]
fn edited_content_and_leaf_hash_is_named() {
    let db = db(300, 50);
    let mut rows = db.rows.clone();
    rows[42].0 = b"forged".to_vec();
    rows[42].1.leaf_hash = leaf_hash(b"forged");
    let err = verify(&rows, &db.checkpoints).unwrap_err();
    assert!(
        matches!(err, VerifyError::ChainMismatch { index: 42, .. }),
        "{err}"
    );
}

#[test]
fn edited_chain_column_is_named() {
    let db = db(300, 50);
    let mut rows = db.rows.clone();
    rows[7].1.chain[3] ^= 1;
    let err = verify(&rows, &db.checkpoints).unwrap_err();
    assert!(
        matches!(err, VerifyError::ChainMismatch { index: 7, .. }),
        "{err}"
    );
}

#[test]
fn deleted_row_is_named() {
    let db = db(300, 50);
    let mut rows = db.rows.clone();
    rows.remove(88);
    let err = verify(&rows, &db.checkpoints).unwrap_err();
    assert_eq!(
        err,
        VerifyError::OutOfOrder {
            expected: 88,
            found: 89
        }
    );
    assert!(err.to_string().starts_with("entry #88: "), "{err}");

    // Deleted and the following indexes renumbered to hide the gap.
    for (i, r) in rows.iter_mut().enumerate().skip(88) {
        r.1.index = i as u64;
    }
    let err = verify(&rows, &db.checkpoints).unwrap_err();
    assert!(
        matches!(err, VerifyError::ChainMismatch { index: 88, .. }),
        "{err}"
    );
}

#[test]
fn reordered_rows_are_named() {
    let db = db(300, 50);
    // Swapped whole rows (index column included): the index gives it away.
    let mut rows = db.rows.clone();
    rows.swap(10, 20);
    let err = verify(&rows, &db.checkpoints).unwrap_err();
    assert_eq!(
        err,
        VerifyError::OutOfOrder {
            expected: 10,
            found: 20
        }
    );
    // Swapped contents and hashes but not the index: the chain does.
    let mut rows = db.rows.clone();
    let (a, b) = (rows[10].clone(), rows[20].clone());
    rows[10] = (b.0, Entry { index: 10, ..b.1 });
    rows[20] = (a.0, Entry { index: 20, ..a.1 });
    let err = verify(&rows, &db.checkpoints).unwrap_err();
    assert!(
        matches!(err, VerifyError::ChainMismatch { index: 10, .. }),
        "{err}"
    );
    // Duplicated row.
    let mut rows = db.rows.clone();
    rows.insert(31, rows[30].clone());
    let err = verify(&rows, &db.checkpoints).unwrap_err();
    assert_eq!(
        err,
        VerifyError::OutOfOrder {
            expected: 31,
            found: 30
        }
    );
}

#[test]
fn truncation_is_caught_by_a_checkpoint() {
    let db = db(300, 50);
    // The newest 30 rows deleted; the checkpoint at 300 says they existed.
    let err = verify(&db.rows[..270], &db.checkpoints).unwrap_err();
    assert_eq!(
        err,
        VerifyError::Truncated {
            origin: ORIGIN.into(),
            checkpoint_size: 300,
            log_size: 270
        }
    );
    assert!(
        err.to_string()
            .contains("entry #270 is the first missing one"),
        "{err}"
    );
    // Without the checkpoint it cannot be seen (documented limitation).
    verify(&db.rows[..270], &db.checkpoints[..5]).unwrap();
}

#[test]
fn rewritten_history_is_caught_by_the_signed_root() {
    let db = db(300, 50);
    // The attacker rewrites event 120 and recomputes every hash after it.
    let mut rows = db.rows.clone();
    rows[120].0 = b"rewritten".to_vec();
    let mut chain = rows[119].1.chain;
    for (i, (d, e)) in rows.iter_mut().enumerate().skip(120) {
        e.leaf_hash = leaf_hash(d);
        chain = chain_hash(&chain, i as u64, &e.leaf_hash);
        e.chain = chain;
    }
    // Internally consistent...
    verify(&rows, &[]).unwrap();
    // ...but not with the checkpoints signed before the rewrite.
    let err = verify(&rows, &db.checkpoints).unwrap_err();
    match &err {
        VerifyError::RootMismatch {
            size,
            first_suspect,
            ..
        } => {
            assert_eq!((*size, *first_suspect), (150, 100));
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("among #100..#149"), "{err}");
}

#[test]
fn checkpoint_from_a_file() {
    let key = SigningKey::from_seed("trustmesh-audit", &[5; 32]).unwrap();
    let db = db(500, 1000);
    let mut s = LogState::new();
    for (_, e) in &db.rows[..321] {
        s.append_leaf_hash(e.leaf_hash);
    }
    let cp_text = key
        .sign(&s.checkpoint(ORIGIN, 1_767_225_600).unwrap())
        .to_text();
    let cp = SignedCheckpoint::open(&cp_text, &[key.verifying_key()]).unwrap();
    assert_eq!(cp.checkpoint().size(), 321);
    verify(&db.rows, std::slice::from_ref(cp.checkpoint())).unwrap();
    let err = verify(&db.rows[..300], std::slice::from_ref(cp.checkpoint())).unwrap_err();
    assert!(
        matches!(err, VerifyError::Truncated { log_size: 300, .. }),
        "{err}"
    );
    // A checkpoint of another log.
    let other = Checkpoint::new("elsewhere/log", 3, [0; 32], 0).unwrap();
    assert!(matches!(
        LogVerifier::new(ORIGIN).expect_checkpoint(&other),
        Err(VerifyError::OriginMismatch { .. })
    ));
}

#[test]
fn retention_keeps_verification_working() {
    let db = db(1000, 100);
    let k = 400usize;
    // Retention: the state at the cut and its checkpoint are kept; rows 0..400 deleted.
    let mut anchor = LogState::new();
    for (_, e) in &db.rows[..k] {
        anchor.append_leaf_hash(e.leaf_hash);
    }
    let anchor_cp = anchor.checkpoint(ORIGIN, 1_767_225_600).unwrap();
    // The anchor survives a round trip through the database.
    let anchor: LogState = serde_json::from_str(&serde_json::to_string(&anchor).unwrap()).unwrap();
    let remaining = &db.rows[k..];

    let mut v = LogVerifier::resume(ORIGIN, anchor.clone(), &anchor_cp).unwrap();
    for c in db.checkpoints.iter().filter(|c| c.size() >= k as u64) {
        v.expect_checkpoint(c).unwrap();
    }
    for (d, e) in remaining {
        v.push(d, e).unwrap();
    }
    let r = v.finish().unwrap();
    assert_eq!(
        (r.first_index, r.size, r.root),
        (400, 1000, db.state.root())
    );
    assert_eq!(r.checkpoints, vec![400, 500, 600, 700, 800, 900, 1000]);

    // Older checkpoints cannot be checked any more, and say so.
    let mut v = LogVerifier::resume(ORIGIN, anchor.clone(), &anchor_cp).unwrap();
    assert_eq!(
        v.expect_checkpoint(&db.checkpoints[0]),
        Err(VerifyError::BeforeAnchor {
            size: 100,
            anchor: 400
        })
    );

    // Tampering after the cut is still named.
    let mut rows = remaining.to_vec();
    rows[55].0 = b"edited".to_vec();
    let mut v = LogVerifier::resume(ORIGIN, anchor.clone(), &anchor_cp).unwrap();
    let err = rows.iter().try_for_each(|(d, e)| v.push(d, e)).unwrap_err();
    assert!(
        matches!(err, VerifyError::LeafHashMismatch { index: 455, .. }),
        "{err}"
    );

    // A forged anchor does not match its signed checkpoint.
    let mut forged = LogState::new();
    for (_, e) in &db.rows[1..=k] {
        forged.append_leaf_hash(e.leaf_hash);
    }
    assert!(matches!(
        LogVerifier::resume(ORIGIN, forged, &anchor_cp),
        Err(VerifyError::AnchorMismatch { .. })
    ));
}

#[test]
fn checkpoints_must_be_declared_before_their_size() {
    let db = db(100, 10);
    let mut v = LogVerifier::new(ORIGIN);
    for (d, e) in &db.rows[..50] {
        v.push(d, e).unwrap();
    }
    assert_eq!(
        v.expect_checkpoint(&db.checkpoints[1]),
        Err(VerifyError::DeclaredTooLate {
            size: 20,
            position: 50
        })
    );
    // At the current size it is checked at once.
    v.expect_checkpoint(&db.checkpoints[4]).unwrap();
    let mut wrong = Checkpoint::new(ORIGIN, 50, [9; 32], 0).unwrap();
    assert!(matches!(
        v.expect_checkpoint(&wrong),
        Err(VerifyError::RootMismatch { .. })
    ));
    wrong = Checkpoint::new(ORIGIN, 0, [9; 32], 0).unwrap();
    let err = LogVerifier::new(ORIGIN)
        .expect_checkpoint(&wrong)
        .unwrap_err();
    assert!(err.to_string().contains("size 0"), "{err}");
}
