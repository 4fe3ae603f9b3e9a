//! Login benchmark through the real mesh: a release `trustmesh up` (auth,
//! user, gateway as processes, SQLite), clients over HTTPS.
//!
//! Reports registration latency with 50 users registering at once, the
//! two-step login (password step, then MFA step) with 20 concurrent clients
//! and with 50, and the MFA step alone (no Argon2id in it), p50/p99.
//! Login is dominated by Argon2id by design (`cargo run --release -p
//! trustmesh-auth --example hash_rate` gives the hash rate per core).
//!
//! Run: `cargo build --release -p trustmesh && cargo bench -p trustmesh-tests --bench login`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use trustmesh_tests::{Mesh, https_request};

const PASSWORD: &str = "correct horse battery staple 7";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Client {
    addr: std::net::SocketAddr,
    ca: std::path::PathBuf,
}

impl Client {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let body = body.to_string();
        let r = https_request(self.addr, &self.ca, "POST", path, &[], Some(&body))
            .await
            .unwrap();
        (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        )
    }
}

/// Registers and confirms one user; returns (email, recovery codes, latency
/// of the register call).
async fn register(client: &Client, n: usize) -> (String, Vec<String>, Duration) {
    let email = format!("bench{n}.{}@example.com", uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let (status, reg) = client
        .post(
            "/api/v1/auth/register",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(status, 201, "{reg}");
    let uri = reg["otpauth_uri"].as_str().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let code = totp_rs::TOTP::from_url_unchecked(uri)
        .unwrap()
        .generate(now);
    let (status, confirmed) = client
        .post(
            "/api/v1/auth/register/confirm",
            json!({"enrollment_token": reg["enrollment_token"], "code": code}),
        )
        .await;
    assert_eq!(status, 200, "{confirmed}");
    let codes = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (email, codes, took)
}

/// One full login (password step + recovery-code MFA step); returns (total,
/// MFA step alone).
async fn login(client: &Client, email: &str, code: &str) -> (Duration, Duration) {
    let started = Instant::now();
    let (status, step1) = client
        .post(
            "/api/v1/auth/login",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{step1}");
    let mfa_started = Instant::now();
    let (status, step2) = client
        .post(
            "/api/v1/auth/login/mfa",
            json!({"mfa_ticket": step1["mfa_ticket"], "recovery_code": code}),
        )
        .await;
    assert_eq!(status, 200, "{step2}");
    (started.elapsed(), mfa_started.elapsed())
}

async fn login_round(
    client: &Arc<Client>,
    users: &[(String, Vec<String>)],
    concurrency: usize,
    round: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut tasks = Vec::new();
    for (email, codes) in users.iter().take(concurrency) {
        let client = client.clone();
        let email = email.clone();
        let code = codes[round].clone();
        tasks.push(tokio::spawn(
            async move { login(&client, &email, &code).await },
        ));
    }
    let (mut totals, mut mfas) = (Vec::new(), Vec::new());
    for task in tasks {
        let (total, mfa) = task.await.unwrap();
        totals.push(total);
        mfas.push(mfa);
    }
    (totals, mfas)
}

fn main() {
    // Generous per-IP limits: every benchmark client comes from 127.0.0.1.
    let mesh = Mesh::start_with_env(&[], &[("TRUSTMESH_AUTH_IP_MAX_FAILURES", "0")]);
    let client = Arc::new(Client {
        addr: mesh.gateway_addr(),
        ca: mesh.gateway_ca(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm up the path (connections, JWKS caches).
        let _ = register(&client, 9999).await;

        let started = Instant::now();
        let mut tasks = Vec::new();
        for n in 0..50 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move { register(&client, n).await }));
        }
        let mut users = Vec::new();
        let mut register_times = Vec::new();
        for task in tasks {
            let (email, codes, took) = task.await.unwrap();
            users.push((email, codes));
            register_times.push(took);
        }
        register_times.sort();
        println!(
            "registration, 50 users at once: p50 {:.0} ms  p99 {:.0} ms  (all 50 confirmed in {:.1} s)",
            ms(percentile(&register_times, 0.5)),
            ms(percentile(&register_times, 0.99)),
            started.elapsed().as_secs_f64()
        );

        for (concurrency, rounds) in [(20usize, 4usize), (50, 4)] {
            let (mut totals, mut mfas) = (Vec::new(), Vec::new());
            let offset = if concurrency == 20 { 0 } else { 4 };
            for round in 0..rounds {
                let (t, m) = login_round(&client, &users, concurrency, offset + round).await;
                totals.extend(t);
                mfas.extend(m);
            }
            totals.sort();
            mfas.sort();
            println!(
                "login (password + MFA), {concurrency} concurrent clients, {} logins: p50 {:.0} ms  p99 {:.0} ms | MFA step alone: p50 {:.1} ms  p99 {:.1} ms",
                totals.len(),
                ms(percentile(&totals, 0.5)),
                ms(percentile(&totals, 0.99)),
                ms(percentile(&mfas, 0.5)),
                ms(percentile(&mfas, 0.99)),
            );
        }
    });
    drop(mesh);
}
