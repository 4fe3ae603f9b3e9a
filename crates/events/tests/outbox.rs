//! The outbox on both back-ends: delivered events leave it, exactly those,
//! whatever their number (the `DELETE`s are chunked and padded).

#![allow(clippy::unwrap_used, missing_docs)]

use trustmesh_events::{Event, Outbox};
use trustmesh_store::testing::TestDb;
use trustmesh_store::{Backend, on_both_backends};

/// The gateway's migrations: its database is an outbox and nothing else,
/// so the tests run on the table exactly as the services create it.
static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../services/gateway/migrations");

async fn open(backend: Backend) -> (TestDb, Outbox) {
    let db = TestDb::open("events", backend, 2, &MIGRATIONS).await;
    let outbox = Outbox::new(db.db.clone());
    (db, outbox)
}

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event::new("test", "TESTED", &format!("target-{i}")))
        .collect()
}

async fn ids_left(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
        .fetch_all(db.db.pool())
        .await
        .unwrap()
}

async fn delivered_events_leave_the_outbox_and_no_other(backend: Backend) {
    let (db, outbox) = open(backend).await;
    let all = events(700);
    outbox.record_now(&all).await.unwrap();
    let mut ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();

    // Three (a statement padded to four), then 600 (one of 512 and one of
    // 88 padded to 128).
    outbox.remove_delivered(&ids[..3]).await.unwrap();
    assert_eq!(ids_left(&db).await, ids[3..]);
    outbox.remove_delivered(&ids[3..603]).await.unwrap();
    assert_eq!(ids_left(&db).await, ids[603..]);
    assert_eq!(outbox.depth().await.unwrap(), 97);

    // Removing them again, or nothing, changes nothing.
    outbox.remove_delivered(&ids[..603]).await.unwrap();
    outbox.remove_delivered(&[]).await.unwrap();
    assert_eq!(ids_left(&db).await, ids[603..]);
    let pending = outbox.pending(1_000).await.unwrap();
    let pending: Vec<&str> = pending.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(pending, ids[603..]);
}

async fn rows_an_older_version_marked_sent_are_purged(backend: Backend) {
    let (db, outbox) = open(backend).await;
    let all = events(3);
    outbox.record_now(&all).await.unwrap();
    sqlx::query("UPDATE outbox SET sent_at = '2026-12-06T00:00:00Z' WHERE id = $1")
        .bind(&all[0].id)
        .execute(db.db.pool())
        .await
        .unwrap();
    assert_eq!(outbox.depth().await.unwrap(), 2);
    assert_eq!(outbox.purge_sent("2026-12-05T00:00:00Z").await.unwrap(), 0);
    assert_eq!(outbox.purge_sent("2026-12-07T00:00:00Z").await.unwrap(), 1);
    let mut rest = vec![all[1].id.clone(), all[2].id.clone()];
    rest.sort_unstable();
    assert_eq!(ids_left(&db).await, rest);
}

on_both_backends!(
    delivered_events_leave_the_outbox_and_no_other,
    rows_an_older_version_marked_sent_are_purged,
);
