//! Login benchmark through the real mesh: a release `trustmesh up` (auth,
//! user, gateway as processes, SQLite), clients over HTTPS.
//!
//! Reports registration latency with 50 users registering at once, the
//! two-step login (password step, then MFA step with a recovery code) with
//! 20 concurrent clients and with 50, and the MFA step alone (no Argon2id
//! in it, but the other clients' hashes running), p50/p99; each level is a
//! steady load of [`LOGINS_PER_LEVEL`] logins (every client starts its next
//! login as soon as its last one ends), enough samples that the p99 is not
//! just the slowest one or two; then the MFA
//! step (TOTP) of one client at a time, with nothing else running, as the
//! floor. Each client keeps one HTTPS connection (HTTP/1.1 keep-alive) for
//! both steps, as a browser or an API client does: a TLS handshake is not
//! part of either step. Login is dominated by Argon2id by design (`cargo
//! run --release -p trustmesh-auth --example hash_rate` gives the hash rate
//! per core).
//!
//! The first line gives the `fsync` latency of the disk under the data
//! directory at the start: every login commits (`synchronous = FULL`), so a
//! busy disk shows in every figure.
//!
//! Under each MFA figure, where its time goes: the p50/p99 of the same
//! steps as the gateway timed them (request in to response headers out,
//! `http_server_handling_seconds`) and as the auth service timed its
//! `LoginMfa` call (`grpc_server_handling_seconds`), read off their
//! `/metrics` histograms before and after the level. The client's figure
//! minus the gateway's is the HTTPS connection and the client's own
//! scheduling; the gateway's minus auth's is the gateway's work and its
//! mTLS hop to auth.
//!
//! Run: `cargo build --release -p trustmesh && cargo bench -p trustmesh-tests --bench login`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::Mutex;
use trustmesh_tests::hops::{self, Hop};
use trustmesh_tests::stats::{ms, percentile};
use trustmesh_tests::{Http1Connection, Mesh};

const PASSWORD: &str = "correct horse battery staple 7";
/// Logins per concurrency level; each spends one of a user's ten recovery
/// codes, so each level has `LOGINS_PER_LEVEL / 10` users of its own.
const LOGINS_PER_LEVEL: usize = 2_000;
/// The concurrency levels of the login measurement.
const LEVELS: [usize; 2] = [20, 50];
/// Recovery codes per user.
const CODES: usize = 10;

/// The MFA step as the gateway route and the auth RPC timed it, and the
/// stages of the auth store's writes (every write of the level: the MFA
/// steps' transactions and the password steps' tickets).
const MFA_HOPS: [Hop; 5] = [
    Hop {
        service: "gateway",
        metric: hops::HTTP,
        route: "POST /api/v1/auth/login/mfa",
    },
    Hop {
        service: "auth",
        metric: hops::GRPC,
        route: "/trustmesh.auth.v1.Auth/LoginMfa",
    },
    Hop::db_write("auth", "queue"),
    Hop::db_write("auth", "commit"),
    Hop::db_write("auth", "sync"),
];

/// One client: its own kept-alive HTTPS connection to the gateway.
struct Client {
    conn: Mutex<Http1Connection>,
}

impl Client {
    async fn connect(mesh_addr: std::net::SocketAddr, ca: &Path) -> Self {
        Self {
            conn: Mutex::new(Http1Connection::gateway(mesh_addr, ca).await.unwrap()),
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let body = body.to_string();
        let r = self
            .conn
            .lock()
            .await
            .request("POST", path, &[], Some(&body))
            .await
            .unwrap();
        (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        )
    }
}

/// A registered user: email, TOTP enrolment URI, recovery codes.
#[derive(Clone)]
struct User {
    email: String,
    otpauth_uri: String,
    recovery: Vec<String>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn totp(uri: &str, at: u64) -> String {
    totp_rs::TOTP::from_url_unchecked(uri).unwrap().generate(at)
}

/// Registers and confirms one user; returns it and the latency of the
/// register call.
async fn register(client: &Client, n: usize) -> (User, Duration) {
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
    let uri = reg["otpauth_uri"].as_str().unwrap().to_owned();
    let (status, confirmed) = client
        .post(
            "/api/v1/auth/register/confirm",
            json!({"enrollment_token": reg["enrollment_token"], "code": totp(&uri, unix_now())}),
        )
        .await;
    assert_eq!(status, 200, "{confirmed}");
    let recovery = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let user = User {
        email,
        otpauth_uri: uri,
        recovery,
    };
    (user, took)
}

/// The password step; returns the MFA ticket.
async fn password_step(client: &Client, email: &str) -> Value {
    let (status, step1) = client
        .post(
            "/api/v1/auth/login",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{step1}");
    step1["mfa_ticket"].clone()
}

/// The MFA step with `code` (`{"recovery_code": …}` or `{"code": …}`).
async fn mfa_step(client: &Client, ticket: Value, mut code: Value) -> Duration {
    code["mfa_ticket"] = ticket;
    let started = Instant::now();
    let (status, step2) = client.post("/api/v1/auth/login/mfa", code).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{step2}");
    assert!(step2["access_token"].is_string(), "{step2}");
    took
}

/// One full login (password step + recovery-code MFA step); returns (total,
/// MFA step alone).
async fn login(client: &Client, email: &str, code: &str) -> (Duration, Duration) {
    let started = Instant::now();
    let ticket = password_step(client, email).await;
    let mfa = mfa_step(client, ticket, json!({"recovery_code": code})).await;
    (started.elapsed(), mfa)
}

/// [`LOGINS_PER_LEVEL`] logins by `concurrency` clients, each starting its
/// next login as soon as its last one ends, with the recovery codes of
/// `users` (client `c` spends those of users `c`, `c + concurrency`, …).
/// Returns the latencies of the whole logins and of their MFA steps.
async fn login_level(
    clients: &[Arc<Client>],
    users: &Arc<Vec<User>>,
    concurrency: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().take(concurrency).enumerate() {
        let (client, users) = (client.clone(), users.clone());
        tasks.push(tokio::spawn(async move {
            let (mut totals, mut mfas) = (Vec::new(), Vec::new());
            for user in users.iter().skip(c).step_by(concurrency) {
                for code in &user.recovery {
                    let (total, mfa) = login(&client, &user.email, code).await;
                    totals.push(total);
                    mfas.push(mfa);
                }
            }
            (totals, mfas)
        }));
    }
    let (mut totals, mut mfas) = (Vec::new(), Vec::new());
    for task in tasks {
        let (t, m) = task.await.unwrap();
        totals.extend(t);
        mfas.extend(m);
    }
    (totals, mfas)
}

/// One client per user of the largest level, each on a new connection.
async fn connect_clients(addr: std::net::SocketAddr, ca: &Path) -> Vec<Arc<Client>> {
    let mut clients = Vec::new();
    for _ in 0..LEVELS[LEVELS.len() - 1] {
        clients.push(Arc::new(Client::connect(addr, ca).await));
    }
    clients
}

/// Registers users `from..to` with `clients`, all at once; returns them and
/// the latencies of their register calls.
async fn register_all(
    clients: &[Arc<Client>],
    from: usize,
    to: usize,
) -> (Vec<User>, Vec<Duration>) {
    let mut tasks = Vec::new();
    for n in from..to {
        let client = clients[n % clients.len()].clone();
        tasks.push(tokio::spawn(async move { register(&client, n).await }));
    }
    let (mut users, mut times) = (Vec::new(), Vec::new());
    for task in tasks {
        let (user, took) = task.await.unwrap();
        users.push(user);
        times.push(took);
    }
    (users, times)
}

/// The latency of `fsync` on the disk under `dir`: p50 and max of 30.
fn fsync_latency(dir: &Path) -> (Duration, Duration) {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).unwrap();
    let mut times = Vec::new();
    for _ in 0..30 {
        file.write_all(&[0u8; 4096]).unwrap();
        let started = Instant::now();
        file.sync_all().unwrap();
        times.push(started.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(path);
    times.sort();
    (percentile(&times, 0.5), times[times.len() - 1])
}

fn main() {
    // Generous per-IP limits: every benchmark client comes from 127.0.0.1.
    let mesh = Mesh::start_with_env(&[], &[("TRUSTMESH_AUTH_IP_MAX_FAILURES", "0")]);
    let (addr, ca) = (mesh.gateway_addr(), mesh.gateway_ca());
    let (fsync_p50, fsync_max) = fsync_latency(&mesh.data_dir());
    println!(
        "fsync on the data directory's disk: p50 {:.2} ms  max {:.2} ms",
        ms(fsync_p50),
        ms(fsync_max)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let clients = connect_clients(addr, &ca).await;
        // Warm up the path (connections, JWKS caches).
        let _ = register(&clients[0], 9999).await;

        let started = Instant::now();
        let (first, mut register_times) = register_all(&clients, 0, clients.len()).await;
        register_times.sort();
        println!(
            "registration, 50 users at once: p50 {:.0} ms  p99 {:.0} ms  (all 50 confirmed in {:.1} s)",
            ms(percentile(&register_times, 0.5)),
            ms(percentile(&register_times, 0.99)),
            started.elapsed().as_secs_f64()
        );

        let per_level = LOGINS_PER_LEVEL / CODES;
        let mut users = first;
        let (rest, _) = register_all(&clients, users.len(), per_level * LEVELS.len()).await;
        users.extend(rest);
        for (level, concurrency) in LEVELS.into_iter().enumerate() {
            // Fresh connections: the gateway closes the ones a level left idle.
            let clients = connect_clients(addr, &ca).await;
            let level_users = Arc::new(users[level * per_level..][..per_level].to_vec());
            assert!(level_users.iter().all(|u| u.recovery.len() == CODES));
            let before = hops::read(&mesh, &MFA_HOPS).await;
            let (mut totals, mut mfas) = login_level(&clients, &level_users, concurrency).await;
            let inside = hops::inside(&MFA_HOPS, &before, &hops::read(&mesh, &MFA_HOPS).await);
            totals.sort();
            mfas.sort();
            println!(
                "login (password + MFA), {concurrency} concurrent clients, {} logins: p50 {:.0} ms  p99 {:.0} ms | MFA step alone: p50 {:.1} ms  p99 {:.1} ms  p99.9 {:.1} ms",
                totals.len(),
                ms(percentile(&totals, 0.5)),
                ms(percentile(&totals, 0.99)),
                ms(percentile(&mfas, 0.5)),
                ms(percentile(&mfas, 0.99)),
                ms(percentile(&mfas, 0.999)),
            );
            println!("{inside}");
        }

        // The floor: one client at a time, TOTP, nothing else running. The
        // code of the next time step (within the accepted window) is fresh
        // even for a user who confirmed in this one.
        let clients = connect_clients(addr, &ca).await;
        let before = hops::read(&mesh, &MFA_HOPS).await;
        let mut mfas = Vec::new();
        for (client, user) in clients.iter().zip(users.iter()) {
            let ticket = password_step(client, &user.email).await;
            let code = totp(&user.otpauth_uri, unix_now() + 30);
            mfas.push(mfa_step(client, ticket, json!({"code": code})).await);
        }
        mfas.sort();
        println!(
            "MFA step (TOTP), one client at a time, {} logins: p50 {:.1} ms  p99 {:.1} ms",
            mfas.len(),
            ms(percentile(&mfas, 0.5)),
            ms(percentile(&mfas, 0.99)),
        );
        println!(
            "{}",
            hops::inside(&MFA_HOPS, &before, &hops::read(&mesh, &MFA_HOPS).await)
        );
    });
    drop(mesh);
}
