//! Audit ingest benchmark: the real audit service (in process, mTLS,
//! policy, SQLite log with its Merkle tree) fed
//!
//! 1. through `Append` over mTLS by 4 relay-like clients sending batches
//!    of 500 events as fast as they are confirmed (events/s, and the
//!    latency of a batch from creation to commit, p50/p99);
//! 2. through RabbitMQ by the services' real relays (`crates/events`:
//!    outbox in SQLite, publisher confirms, durable queue; audit's
//!    consumer with manual acks after commit): 4 relays draining outboxes
//!    filled beforehand, as fast as they go (events/s stored), then one
//!    relay fed at a steady 5,000 events/s (lag from the outbox commit to
//!    storage in audit, p50/p99);
//! 3. `verify` of the whole log, topped up to a million events first
//!    (`AUDIT_BENCH_VERIFY_EVENTS`, default 1,000,000).
//!
//! Run: `cargo bench -p trustmesh-tests --bench audit_ingest` (needs RabbitMQ
//! on 127.0.0.1:5672, as `scripts/services.sh` starts it).
//! `AUDIT_BENCH_PARTS=direct,rabbit,lag,verify` (the default) picks parts.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use trustmesh_audit::alerts::{AlertConfig, Language, MailConfig};
use trustmesh_audit::{AuditConfig, keys, log, open_db};
use trustmesh_events::outbox::Outbox;
use trustmesh_events::{Destination, Event, Relay, action};
use trustmesh_proto::trustmesh::audit::v1::AppendRequest;
use trustmesh_proto::trustmesh::audit::v1::audit_client::AuditClient;
use trustmesh_runtime::{Hooks, Shutdown, connect_channel};
use trustmesh_store::{Db, StoreConfig};
use trustmesh_tests::stats::{ms, percentile};
use trustmesh_tests::{TRUST_DOMAIN, TestIssuer, spiffe_id, test_policies};

const BATCH: usize = 500;
/// Relays (services) publishing to RabbitMQ at once.
const RELAYS: usize = 4;

/// The outbox table, as every service's migrations create it.
const OUTBOX_TABLE: [&str; 2] = [
    "CREATE TABLE outbox (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, \
     service TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, \
     details TEXT NOT NULL, sent_at TEXT, status TEXT NOT NULL DEFAULT 'SUCCESS', \
     actor_user TEXT, actor_spiffe TEXT, client_ip TEXT, user_agent TEXT, request_id TEXT)",
    "CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL",
];

fn part(name: &str) -> bool {
    std::env::var("AUDIT_BENCH_PARTS")
        .map(|parts| parts.split(',').any(|p| p.trim() == name))
        .unwrap_or(true)
}

/// A service's outbox in its own SQLite file under `dir`.
async fn outbox(dir: &std::path::Path, n: usize) -> Outbox {
    let db = Db::connect(&StoreConfig {
        service: format!("relay{n}"),
        data_dir: dir.to_path_buf(),
        url: None,
        max_connections: 4,
        acquire_timeout: StoreConfig::DEFAULT_ACQUIRE_TIMEOUT,
    })
    .await
    .unwrap();
    for sql in OUTBOX_TABLE {
        sqlx::query(sql).execute(db.pool()).await.unwrap();
    }
    Outbox::new(db)
}

async fn depth(outboxes: &[Outbox]) -> i64 {
    let mut total = 0;
    for outbox in outboxes {
        total += outbox.depth().await.unwrap();
    }
    total
}

fn event(n: usize) -> Event {
    Event::new("auth", action::LOGIN_FAILED, &format!("user-{}", n % 1000))
        .failed()
        .from_client(
            Some("203.0.113.7"),
            Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/131"),
        )
        .request(Some(&uuid::Uuid::new_v4().to_string()))
        .details(serde_json::json!({"reason": "wrong_password", "n": n}))
}

/// The number of events in the log (its indexes have no gaps; `MAX` reads
/// one index entry where `COUNT(*)` would scan them all, stealing CPU from
/// the service measured).
async fn stored(db: &trustmesh_store::Db) -> i64 {
    sqlx::query_scalar("SELECT COALESCE(MAX(idx) + 1, 0) FROM events")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

async fn wait_for(db: &trustmesh_store::Db, count: i64) {
    while stored(db).await < count {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A fresh RabbitMQ virtual host, so the run never reads anyone's queue.
fn vhost() -> String {
    let name = format!("tm_bench_{}", uuid::Uuid::new_v4().simple());
    for args in [
        vec!["add_vhost", name.as_str()],
        vec![
            "set_permissions",
            "-p",
            name.as_str(),
            "guest",
            ".*",
            ".*",
            ".*",
        ],
    ] {
        let ok = std::process::Command::new("rabbitmqctl")
            .args(&args)
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "rabbitmqctl {args:?}");
    }
    name
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let issuer = TestIssuer::start(Duration::from_secs(3600)).await;
    let data = tempfile::tempdir().unwrap();
    let vhost = vhost();
    let amqp_url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
    let source = issuer.source_for_self(&spiffe_id("/svc/audit")).await;
    let shutdown = Shutdown::new();
    let config = AuditConfig {
        data_dir: data.path().to_path_buf(),
        trust_domain: TRUST_DOMAIN.to_owned(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        amqp_url: Some(amqp_url.clone()),
        retention: Duration::from_secs(90 * 86400),
        checkpoint_every: Duration::from_secs(5),
        alerts: AlertConfig {
            failures: 5,
            window: Duration::from_secs(120),
            geoip: None,
            language: Language::English,
            security_copies: Vec::new(),
            admins: Vec::new(),
            report_every: Duration::from_secs(7 * 86400),
            mail: MailConfig {
                from: "bench <bench@example.com>".into(),
                outbox_dir: data.path().join("outbox-mail"),
                ..MailConfig::default()
            },
        },
    };
    let subjects: Arc<dyn trustmesh_policy::SubjectResolver> =
        Arc::new(|_: &http::HeaderMap| Ok(None));
    let server =
        trustmesh_audit::start(config, source, test_policies(), subjects, shutdown.clone())
            .await
            .unwrap();
    let db = open_db(data.path()).await.unwrap();

    // 1. Direct mTLS: 4 relays, batches of 500.
    if part("direct") {
        let auth = issuer.mint(&spiffe_id("/svc/auth"));
        let tls = auth.client_config(&spiffe_id("/svc/audit")).unwrap();
        let channel = connect_channel(tls, &server.addrs.grpc.to_string()).unwrap();
        let direct_total = 200_000;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for relay in 0..4 {
            let mut client = AuditClient::new(channel.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                for b in 0..direct_total / BATCH / 4 {
                    let created = Instant::now();
                    let events = (0..BATCH)
                        .map(|i| event(relay * 1_000_000 + b * BATCH + i).to_proto())
                        .collect();
                    client.append(AppendRequest { events }).await.unwrap();
                    latencies.push(created.elapsed());
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        let took = started.elapsed();
        latencies.sort();
        println!(
            "audit ingest, direct mTLS Append (4 relays, batches of {BATCH}): {direct_total} events in {:.2} s = {:.0} events/s; batch commit latency p50 {:.1} ms, p99 {:.1} ms",
            took.as_secs_f64(),
            direct_total as f64 / took.as_secs_f64(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
        );
    }

    if part("rabbit") {
        rabbit_flat_out(&db, data.path(), &amqp_url).await;
    }
    if part("lag") {
        rabbit_steady(&db, data.path(), &amqp_url).await;
    }

    // 3. Verify the whole log, topped up to a million events.
    shutdown.trigger();
    server.wait().await.unwrap();
    if part("verify") {
        verify(&db, data.path()).await;
    }
    let _ = std::process::Command::new("rabbitmqctl")
        .args(["delete_vhost", &vhost])
        .output();
}

/// Part 2a: RabbitMQ, as fast as possible: the real relays of 4 services
/// drain outboxes filled beforehand.
async fn rabbit_flat_out(db: &Db, dir: &std::path::Path, amqp_url: &str) {
    let per_relay = 50_000;
    let total = per_relay * RELAYS;
    let mut outboxes = Vec::new();
    for r in 0..RELAYS {
        let outbox = outbox(dir, r).await;
        let events: Vec<Event> = (0..per_relay)
            .map(|i| event(10_000_000 + r * 1_000_000 + i))
            .collect();
        for chunk in events.chunks(1000) {
            outbox.record_now(chunk).await.unwrap();
        }
        outboxes.push(outbox);
    }
    let base = stored(db).await;
    let relays_stop = Shutdown::new();
    let started = Instant::now();
    let relays: Vec<_> = outboxes
        .iter()
        .map(|outbox| {
            Relay::new(
                outbox.clone(),
                Destination::amqp(amqp_url),
                &Hooks::default().metrics,
            )
            .spawn(relays_stop.clone())
        })
        .collect();
    wait_for(db, base + total as i64).await;
    let took = started.elapsed();
    while depth(&outboxes).await > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let relayed = started.elapsed();
    relays_stop.trigger();
    for relay in relays {
        relay.await.unwrap();
    }
    println!(
        "audit ingest through RabbitMQ ({RELAYS} relays, outbox to audit): {total} events in {:.2} s = {:.0} events/s stored (all marked sent in the outboxes after {:.2} s)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        relayed.as_secs_f64(),
    );
}

/// Part 2b: RabbitMQ at a steady 5,000 events/s for 10 s: a service commits 50
/// events to its outbox every 10 ms and its relay ships them; the lag of a
/// batch is from its commit to the moment the audit log holds it.
async fn rabbit_steady(db: &Db, dir: &std::path::Path, amqp_url: &str) {
    let outbox = outbox(dir, 100).await;
    let relay_stop = Shutdown::new();
    let relay = Relay::new(
        outbox.clone(),
        Destination::amqp(amqp_url),
        &Hooks::default().metrics,
    )
    .spawn(relay_stop.clone());
    let base = stored(db).await;
    let mut sent: Vec<(i64, Instant)> = Vec::new();
    let watcher_db = db.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut done_rx = done_rx;
        loop {
            samples.push((Instant::now(), stored(&watcher_db).await));
            if done_rx.try_recv().is_ok() {
                return samples;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut n = 0usize;
    for _ in 0..1000 {
        tick.tick().await;
        let events: Vec<Event> = (0..50).map(|i| event(20_000_000 + n + i)).collect();
        n += 50;
        let at = Instant::now();
        outbox.record_now(&events).await.unwrap();
        sent.push((base + n as i64, at));
    }
    wait_for(db, base + n as i64).await;
    let _ = done_tx.send(());
    let samples = watcher.await.unwrap();
    relay_stop.trigger();
    relay.await.unwrap();
    let mut lags: Vec<Duration> = sent
        .iter()
        .map(|(count, at)| {
            let stored_at = samples
                .iter()
                .find(|(_, c)| c >= count)
                .map_or(Instant::now(), |(t, _)| *t);
            stored_at.saturating_duration_since(*at)
        })
        .collect();
    lags.sort();
    println!(
        "audit ingest through RabbitMQ at 5,000 events/s for 10 s (outbox, relay, audit): lag from outbox commit to storage p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(&lags, 0.5)),
        ms(percentile(&lags, 0.99)),
        ms(*lags.last().unwrap()),
    );
}

/// Part 3: `verify` of the whole log, after topping it up (audit stopped)
/// to `AUDIT_BENCH_VERIFY_EVENTS` events.
async fn verify(db: &Db, dir: &std::path::Path) {
    let want: i64 = std::env::var("AUDIT_BENCH_VERIFY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let origin = format!("{TRUST_DOMAIN}/audit");
    let have = stored(db).await;
    if have < want {
        let key = keys::load_or_create(dir).unwrap();
        let log = log::AuditLog::open(db.clone(), &origin, key, None)
            .await
            .unwrap();
        let mut n = usize::try_from(have).unwrap();
        while (n as i64) < want {
            let count = 5000.min(usize::try_from(want).unwrap() - n);
            let events: Vec<Event> = (0..count).map(|i| event(30_000_000 + n + i)).collect();
            log.append(&events).await.unwrap();
            n += count;
        }
    }
    let size = stored(db).await;
    let key = keys::load_public(&keys::public_key_path(dir)).unwrap();
    let started = Instant::now();
    let report = log::verify(db, &origin, &[key], None).await.unwrap();
    let took = started.elapsed();
    assert_eq!(report.size as i64, size);
    println!(
        "audit verify: {size} events in {:.2} s = {:.2} s per million events",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / size as f64
    );
}
