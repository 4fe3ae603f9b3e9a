//! Audit ingest benchmark: the real audit service (in process, mTLS,
//! policy, SQLite log with its Merkle tree) fed
//!
//! 1. through `Append` over mTLS by 4 relay-like clients sending batches
//!    of 500 events as fast as they are confirmed (events/s, and the
//!    latency of a batch from creation to commit, p50/p99);
//! 2. through RabbitMQ (publisher confirms, durable queue, consumer with
//!    manual acks) as fast as possible (events/s end to end), then at a
//!    steady 5,000 events/s (lag from publication to storage, p50/p99);
//! 3. `verify` of the whole log, scaled to a million events.
//!
//! Run: `cargo bench -p trustmesh-tests --bench audit_ingest` (needs RabbitMQ
//! on 127.0.0.1:5672, as `scripts/services.sh` starts it).

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use trustmesh_audit::alerts::{AlertConfig, Language, MailConfig};
use trustmesh_audit::{AuditConfig, keys, log, open_db};
use trustmesh_events::amqp::AmqpPublisher;
use trustmesh_events::{Event, action};
use trustmesh_proto::trustmesh::audit::v1::AppendRequest;
use trustmesh_proto::trustmesh::audit::v1::audit_client::AuditClient;
use trustmesh_runtime::{Shutdown, connect_channel};
use trustmesh_tests::{TRUST_DOMAIN, TestIssuer, spiffe_id, test_policies};

const BATCH: usize = 500;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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

async fn stored(db: &trustmesh_store::Db) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events")
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

    // 2a. RabbitMQ, as fast as possible: 4 publishers with confirms.
    let base = stored(&db).await;
    let rabbit_total = 200_000;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for publisher in 0..4 {
        let url = amqp_url.clone();
        tasks.push(tokio::spawn(async move {
            let mut amqp = AmqpPublisher::new(&url);
            for b in 0..rabbit_total / BATCH / 4 {
                let events: Vec<Event> = (0..BATCH)
                    .map(|i| event(10_000_000 + publisher * 1_000_000 + b * BATCH + i))
                    .collect();
                amqp.publish(&events).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let published = started.elapsed();
    wait_for(&db, base + rabbit_total as i64).await;
    let took = started.elapsed();
    println!(
        "audit ingest through RabbitMQ (4 publishers with confirms): {rabbit_total} events in {:.2} s = {:.0} events/s stored (published in {:.2} s)",
        took.as_secs_f64(),
        rabbit_total as f64 / took.as_secs_f64(),
        published.as_secs_f64(),
    );

    // 2b. RabbitMQ at a steady 5,000 events/s for 10 s: batches of 50
    // every 10 ms; the lag of a batch is from its publication to the
    // moment the log holds it.
    let base = stored(&db).await;
    let mut amqp = AmqpPublisher::new(&amqp_url);
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
        amqp.publish(&events).await.unwrap();
        sent.push((base + n as i64, at));
    }
    wait_for(&db, base + n as i64).await;
    let _ = done_tx.send(());
    let samples = watcher.await.unwrap();
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
        "audit ingest through RabbitMQ at 5,000 events/s for 10 s: lag from publication to storage p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(&lags, 0.5)),
        ms(percentile(&lags, 0.99)),
        ms(*lags.last().unwrap()),
    );

    // 3. Verify the whole log.
    shutdown.trigger();
    server.wait().await.unwrap();
    let size = stored(&db).await;
    let key = keys::load_public(&keys::public_key_path(data.path())).unwrap();
    let started = Instant::now();
    let report = log::verify(&db, &format!("{TRUST_DOMAIN}/audit"), &[key], None)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(report.size as i64, size);
    println!(
        "audit verify: {size} events in {:.2} s = {:.2} s per million events",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / size as f64
    );
    let _ = std::process::Command::new("rabbitmqctl")
        .args(["delete_vhost", &vhost])
        .output();
}
