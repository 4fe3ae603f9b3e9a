//! The audit log on both back-ends: idempotent appends, verification, and
//! every kind of tampering named by `verify`; retention that keeps the rest
//! verifiable; the daily files.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use trustmesh_audit::export::Exporter;
use trustmesh_audit::log::{AuditLog, VerifyFailure, verify};
use trustmesh_audit::record::Record;
use trustmesh_events::{Event, action};
use trustmesh_merkle::{LogState, SignedCheckpoint, SigningKey, VerifyError, to_hex};
use trustmesh_store::Backend;
use trustmesh_store::on_both_backends;
use trustmesh_store::testing::TestDb;

const ORIGIN: &str = "trustmesh.local/audit";

struct Fixture {
    test: TestDb,
    log: Arc<AuditLog>,
    key: SigningKey,
}

async fn fixture(backend: Backend) -> Fixture {
    let test = TestDb::open("audit", backend, 4, &trustmesh_audit::MIGRATIONS).await;
    let (key, pkcs8) = SigningKey::generate("trustmesh-audit").unwrap();
    let exporter = Exporter::new(&test.dir.path().join("log")).unwrap();
    let log = AuditLog::open(
        test.db.clone(),
        ORIGIN,
        SigningKey::from_pkcs8("trustmesh-audit", &pkcs8).unwrap(),
        Some(Arc::new(exporter)),
    )
    .await
    .unwrap();
    Fixture {
        test,
        log: Arc::new(log),
        key,
    }
}

fn login(i: usize) -> Event {
    Event::new("auth", action::LOGIN, &format!("user-{i}"))
        .by_user(format!("user-{i}"))
        .from_client(Some("203.0.113.9"), Some("Firefox"))
        .details(serde_json::json!({"n": i}))
}

impl Fixture {
    async fn fill(&self, n: usize) -> Vec<Event> {
        let events: Vec<Event> = (0..n).map(login).collect();
        for chunk in events.chunks(7) {
            self.log.append(chunk).await.unwrap();
        }
        events
    }

    async fn verify(&self, extra: Option<&str>) -> Result<u64, VerifyFailure> {
        verify(&self.test.db, ORIGIN, &[self.key.verifying_key()], extra)
            .await
            .map(|r| r.size)
    }

    async fn exec(&self, sql: &str) {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(self.test.db.pool())
            .await
            .unwrap();
    }
}

async fn appends_are_idempotent_and_verify(backend: Backend) {
    let f = fixture(backend).await;
    let events = f.fill(100).await;
    // Redelivery of everything, plus a batch repeating an id inside itself.
    let again = f.log.append(&events[..60]).await.unwrap();
    assert_eq!((again.appended, again.duplicates), (0, 60));
    let twice = [login(500), login(501)];
    let with_copy = [twice[0].clone(), twice[0].clone(), twice[1].clone()];
    let done = f.log.append(&with_copy).await.unwrap();
    assert_eq!((done.appended, done.duplicates), (2, 1));
    assert_eq!(f.log.size().await, 102);
    f.log.sign_checkpoint().await.unwrap().unwrap();
    assert_eq!(f.verify(None).await.unwrap(), 102);
    // The daily file holds each event once, with its chain fields.
    let day = OffsetDateTime::now_utc().date().to_string();
    let file =
        std::fs::read_to_string(f.test.dir.path().join("log").join(format!("{day}.log"))).unwrap();
    assert_eq!(file.lines().count(), 102);
    let first: serde_json::Value = serde_json::from_str(file.lines().next().unwrap()).unwrap();
    assert_eq!(first["idx"], 0);
    assert_eq!(first["leaf_hash"].as_str().unwrap().len(), 64);
    assert_eq!(first["chain"].as_str().unwrap().len(), 64);
}

async fn an_edited_event_is_named(backend: Backend) {
    let f = fixture(backend).await;
    f.fill(50).await;
    f.log.sign_checkpoint().await.unwrap();
    f.exec("UPDATE events SET details = '{\"n\":999}' WHERE idx = 17")
        .await;
    let err = f.verify(None).await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyFailure::Log(VerifyError::LeafHashMismatch { index: 17, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("entry #17"), "{err}");
}

async fn reordered_rows_are_named(backend: Backend) {
    let f = fixture(backend).await;
    f.fill(30).await;
    // Swap the positions of entries 10 and 11 (hashes travel with them).
    f.exec("UPDATE events SET idx = -1 WHERE idx = 10").await;
    f.exec("UPDATE events SET idx = 10 WHERE idx = 11").await;
    f.exec("UPDATE events SET idx = 11 WHERE idx = -1").await;
    let err = f.verify(None).await.unwrap_err();
    assert!(err.to_string().contains("entry #10"), "{err}");
}

async fn deleting_the_newest_rows_is_detected(backend: Backend) {
    let f = fixture(backend).await;
    f.fill(50).await;
    let saved = f.log.sign_checkpoint().await.unwrap().unwrap().to_text();
    f.exec("DELETE FROM events WHERE idx >= 45").await;
    let err = f.verify(None).await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyFailure::Log(VerifyError::Truncated { log_size: 45, .. })
        ),
        "{err}"
    );
    // Covering the tracks in the database (state rewound, checkpoints gone)
    // is still caught by a checkpoint kept elsewhere.
    let mut state = LogState::new();
    let rows: Vec<String> = sqlx::query_scalar("SELECT leaf_hash FROM events ORDER BY idx")
        .fetch_all(f.test.db.pool())
        .await
        .unwrap();
    for hash in rows {
        state.append_leaf_hash(trustmesh_merkle::from_hex(&hash).unwrap());
    }
    let state = serde_json::to_string(&state).unwrap();
    sqlx::query("UPDATE log_state SET state = $1 WHERE id = 1")
        .bind(state)
        .execute(f.test.db.pool())
        .await
        .unwrap();
    f.exec("DELETE FROM checkpoints").await;
    assert_eq!(f.verify(None).await.unwrap(), 45);
    let err = f.verify(Some(&saved)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("entry #45 is the first missing one"),
        "{err}"
    );
}

async fn rewriting_history_after_a_checkpoint_is_detected(backend: Backend) {
    let f = fixture(backend).await;
    f.fill(40).await;
    let saved = f.log.sign_checkpoint().await.unwrap().unwrap().to_text();
    // An attacker who can write the database rewrites entry 12 and
    // recomputes every hash after it, and the state: the chain no longer
    // helps, the signed checkpoint does.
    f.exec("UPDATE events SET details = '{\"n\":-1}' WHERE idx = 12")
        .await;
    let sql = format!(
        "SELECT {} FROM events ORDER BY idx",
        trustmesh_audit::record::COLUMNS
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(f.test.db.pool())
        .await
        .unwrap();
    let mut state = LogState::new();
    for row in &rows {
        let (record, _) = Record::from_row(row).unwrap();
        let entry = state.append(&record.canonical_bytes());
        sqlx::query("UPDATE events SET leaf_hash = $1, chain = $2 WHERE idx = $3")
            .bind(to_hex(&entry.leaf_hash))
            .bind(to_hex(&entry.chain))
            .bind(i64::try_from(record.idx).unwrap())
            .execute(f.test.db.pool())
            .await
            .unwrap();
    }
    sqlx::query("UPDATE log_state SET state = $1 WHERE id = 1")
        .bind(serde_json::to_string(&state).unwrap())
        .execute(f.test.db.pool())
        .await
        .unwrap();
    let err = f.verify(None).await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyFailure::Log(VerifyError::RootMismatch { size: 40, .. })
        ),
        "{err}"
    );
    // The same with the stored checkpoints deleted: the saved one catches it.
    f.exec("DELETE FROM checkpoints").await;
    let err = f.verify(Some(&saved)).await.unwrap_err();
    assert!(
        matches!(err, VerifyFailure::Log(VerifyError::RootMismatch { .. })),
        "{err}"
    );
    // A forged checkpoint (not signed by the audit key) is refused.
    let (other, _) = SigningKey::generate("trustmesh-audit").unwrap();
    let forged = other.sign(
        SignedCheckpoint::open(&saved, &[f.key.verifying_key()])
            .unwrap()
            .checkpoint(),
    );
    assert!(matches!(
        f.verify(Some(&forged.to_text())).await.unwrap_err(),
        VerifyFailure::Checkpoint(_)
    ));
}

fn days_ago(days: i64) -> String {
    (OffsetDateTime::now_utc() - time::Duration::days(days))
        .format(&Rfc3339)
        .unwrap()
}

async fn retention_removes_only_old_events_and_verify_still_passes(backend: Backend) {
    let f = fixture(backend).await;
    let mut old: Vec<Event> = (0..20).map(login).collect();
    for (i, e) in old.iter_mut().enumerate() {
        e.time = days_ago(120 - i as i64);
    }
    let mut recent: Vec<Event> = (20..45).map(login).collect();
    for e in recent.iter_mut().take(5) {
        e.time = days_ago(89);
    }
    f.log.append(&old).await.unwrap();
    f.log.sign_checkpoint().await.unwrap();
    f.log.append(&recent).await.unwrap();
    f.log.sign_checkpoint().await.unwrap();
    let old_day = old[0].time[..10].to_owned();
    let old_file = f.test.dir.path().join("log").join(format!("{old_day}.log"));
    assert!(old_file.exists());

    let cutoff = OffsetDateTime::now_utc() - time::Duration::days(90);
    assert_eq!(f.log.apply_retention(cutoff).await.unwrap(), 20);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(f.test.db.pool())
        .await
        .unwrap();
    assert_eq!(left, 25, "the 89-day-old events stay");
    assert!(!old_file.exists(), "the daily files of removed days go too");
    // What remains verifies against the checkpoint covering everything.
    assert_eq!(f.verify(None).await.unwrap(), 45);
    // Appending goes on; running retention again removes nothing more.
    f.fill(3).await;
    assert_eq!(f.log.apply_retention(cutoff).await.unwrap(), 0);
    f.log.sign_checkpoint().await.unwrap();
    assert_eq!(f.verify(None).await.unwrap(), 48);
    // An edit below the remaining rows cannot hide behind the anchor.
    f.exec("UPDATE events SET target = 'someone-else' WHERE idx = 20")
        .await;
    assert!(
        f.verify(None)
            .await
            .unwrap_err()
            .to_string()
            .contains("entry #20")
    );
}

async fn a_second_writer_fails_loudly(backend: Backend) {
    let f = fixture(backend).await;
    f.fill(3).await;
    let (key, _) = SigningKey::generate("trustmesh-audit").unwrap();
    let second = AuditLog::open(f.test.db.clone(), ORIGIN, key, None)
        .await
        .unwrap();
    second.append(&[login(100)]).await.unwrap();
    let err = f.log.append(&[login(101)]).await.unwrap_err();
    assert!(err.to_string().contains("another writer"), "{err}");
}

/// `verify` reads the log in chunks, each rendered as JSON by the
/// database: strings of every kind come back exactly, and an entry past
/// the first chunks is still named.
async fn odd_strings_and_long_logs_verify(backend: Backend) {
    let f = fixture(backend).await;
    // PostgreSQL text cannot hold NUL at all.
    let nul = if backend == Backend::Sqlite { "\0" } else { "" };
    let odd = format!(
        "quote\" backslash\\ slash/ tab\t newline\n bell\u{7} del\u{7f} é 😀 \u{2028}{nul} end"
    );
    let mut events: Vec<Event> = (0..9000).map(login).collect();
    events[4100] = Event::new("auth", action::LOGIN, &odd)
        .by_user(odd.clone())
        .from_client(Some(&odd), Some(&odd))
        .request(Some(&odd))
        .details(serde_json::json!({"k": odd, "nested": {"list": [1, 2.5, null, odd]}}));
    for chunk in events.chunks(1000) {
        f.log.append(chunk).await.unwrap();
    }
    f.log.sign_checkpoint().await.unwrap().unwrap();
    assert_eq!(f.verify(None).await.unwrap(), 9000);
    f.exec("UPDATE events SET target = 'someone-else' WHERE idx = 8500")
        .await;
    let err = f.verify(None).await.unwrap_err();
    assert!(err.to_string().contains("entry #8500"), "{err}");
}

on_both_backends!(
    appends_are_idempotent_and_verify,
    odd_strings_and_long_logs_verify,
    an_edited_event_is_named,
    reordered_rows_are_named,
    deleting_the_newest_rows_is_detected,
    rewriting_history_after_a_checkpoint_is_detected,
    retention_removes_only_old_events_and_verify_still_passes,
    a_second_writer_fails_loudly,
);
