//! Money benchmark through the real mesh: a release `trustmesh up` (every
//! service a process, the relay shipping each event to audit), on SQLite and
//! then on PostgreSQL.
//!
//! 1. `wallet.Transfer` called directly over mTLS with the payment
//!    workload's SVID (minted by the mesh's issuer), [`CALLERS`] concurrent
//!    callers moving small amounts between [`ACCOUNTS`] funded wallets, with
//!    the 24 h volume check the payment service asks for: transfers/s,
//!    p50/p99.
//! 2. `POST /api/v1/payments` end to end through the gateway (HTTPS, JWT,
//!    payment service, policy with the 24 h volume, wallet), [`CALLERS`]
//!    users each paying random others over a kept-alive connection, each
//!    with a fresh `Idempotency-Key`: payments/s, p50/p99.
//!
//! Each path runs twice: closed loop (each caller sends its next request as
//! soon as its last one is answered: the most the mesh does) and paced at
//! the target rate ([`DIRECT_RATE`], [`E2E_RATE`]): requests are sent on a
//! fixed schedule whatever the answers, and each latency counts from the
//! request's scheduled time, so a stall shows in every request it delays
//! (no coordinated omission). The paced p50/p99 is the latency at the
//! target throughput.
//!
//! After each phase: what each hop timed of the same requests (its
//! `/metrics` histogram, warm-up included: the gateway's route, the payment
//! service's `CreatePayment`, the wallet's `Transfer`), the CPU each
//! process used, as a share of one core over the phase (where the time
//! goes), and `trustmesh wallet check`.
//!
//! Run: `cargo build --release -p trustmesh && cargo bench -p trustmesh-tests
//! --bench money` (PostgreSQL on 127.0.0.1:5432, as `scripts/services.sh`
//! starts it). `TRUSTMESH_BENCH_BACKENDS=sqlite` (or `postgres`) runs one.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trustmesh_proto::trustmesh::wallet::v1::wallet_client::WalletClient;
use trustmesh_proto::trustmesh::wallet::v1::{DepositRequest, TransferRequest};
use trustmesh_runtime::{MeshChannel, RunReport, SvidFiles, connect_channel};
use trustmesh_tests::hops::{self, Hop};
use trustmesh_tests::rest::{Api, bearer, login, register};
use trustmesh_tests::stats::{ms, percentile};
use trustmesh_tests::{Http1Connection, Mesh, PostgresDb, copy_dir, repo_root, run_cli, spiffe_id};

/// Concurrent callers in both phases.
const CALLERS: usize = 64;
/// Funded wallets the direct transfers move money between.
const ACCOUNTS: usize = 1_000;
/// What every wallet gets deposited (EUR cents): never overdrawn here.
const FUNDS: i64 = 100_000_000;
/// Measured time per phase, after [`WARMUP`] (`TRUSTMESH_BENCH_SECS`
/// overrides it, e.g. to attach a profiler).
fn phase() -> Duration {
    let secs = std::env::var("TRUSTMESH_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(secs)
}
/// The offered load of the paced `wallet.Transfer` phase (the target).
const DIRECT_RATE: u32 = 3_000;
/// The offered load of the paced `POST /payments` phase (the target).
const E2E_RATE: u32 = 1_000;
/// Calls made before the measurement starts (connections, caches).
const WARMUP: Duration = Duration::from_secs(2);
/// HTTP/2 connections the direct callers share (a service's mesh client
/// keeps one per peer; a few spread the load over the server's threads).
const CHANNELS: usize = 4;

/// The repository's policies with the bench agent listed and limits no
/// benchmark payment reaches.
fn policy_dir(root: &Path) -> PathBuf {
    let dir = root.join("policies");
    copy_dir(&repo_root().join("policies"), &dir);
    let path = dir.join("data.json");
    let mut data: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    data["agents"] = json!({"/agent/bench": {
        "max_deposit": FUNDS, "daily_limit": i64::MAX / 4, "currencies": ["EUR"]}});
    data["limits"]["payment"] = json!({
        "max_amount": {"default": 1_000_000},
        "daily_volume": {"default": i64::MAX / 4},
    });
    std::fs::write(&path, data.to_string()).unwrap();
    dir
}

/// Mints files for `id` with the mesh's issuer.
fn mint(mesh: &Mesh, id: &str, out: &Path) -> SvidFiles {
    let data_dir = mesh.data_dir();
    let (code, stdout, stderr) = run_cli(
        &[
            "identity",
            "mint",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--spiffe-id",
            id,
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    SvidFiles::load(out).unwrap()
}

/// Clients of the wallet over `CHANNELS` mTLS connections as `svid`.
fn wallet_clients(mesh: &Mesh, svid: &SvidFiles) -> Vec<WalletClient<MeshChannel>> {
    let addr = RunReport::read(&mesh.data_dir(), "wallet").unwrap().grpc;
    (0..CHANNELS)
        .map(|_| {
            let config = svid.client_config(&spiffe_id("/svc/wallet")).unwrap();
            WalletClient::new(connect_channel(config, &addr.to_string()).unwrap())
        })
        .collect()
}

/// CPU time (user + system) of a process, from `/proc/<pid>/stat`.
fn cpu_of(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// The PostgreSQL server's processes (the postmaster and its backends).
fn postgres_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            pids.push(pid);
        }
    }
    pids
}

/// CPU used so far by each part of the system under test.
fn cpu_snapshot(mesh: &Mesh) -> BTreeMap<String, Duration> {
    let mut cpu = BTreeMap::new();
    for service in ["gateway", "payment", "wallet", "audit", "auth", "user"] {
        if let Some(report) = RunReport::read(&mesh.data_dir(), service) {
            cpu.insert(service.to_owned(), cpu_of(report.pid));
        }
    }
    cpu.insert("up (issuer)".to_owned(), cpu_of(mesh.pid()));
    cpu.insert(
        "postgresql".to_owned(),
        postgres_pids().into_iter().map(cpu_of).sum(),
    );
    cpu.insert("bench clients".to_owned(), cpu_of(std::process::id()));
    cpu
}

/// Prints each part's share of one core between two snapshots.
fn print_cpu(
    before: &BTreeMap<String, Duration>,
    after: &BTreeMap<String, Duration>,
    wall: Duration,
) {
    let mut parts: Vec<(String, f64)> = after
        .iter()
        .map(|(name, t)| {
            let used = t.saturating_sub(before.get(name).copied().unwrap_or_default());
            (
                name.clone(),
                used.as_secs_f64() / wall.as_secs_f64() * 100.0,
            )
        })
        .filter(|(_, share)| *share >= 0.5)
        .collect();
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = parts.iter().map(|p| p.1).sum();
    let text: Vec<String> = parts.iter().map(|(n, s)| format!("{n} {s:.0}%")).collect();
    println!(
        "    CPU (% of one core; 200% = both): {} | total {total:.0}%",
        text.join(", ")
    );
}

/// Latencies and errors of one phase.
#[derive(Default)]
struct Outcome {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

impl Outcome {
    /// Counts one request's result, answered after `latency`.
    fn record(&mut self, result: Result<(), String>, latency: Duration) {
        match result {
            Ok(()) => self.latencies.push(latency),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// The wallet's own time for a transfer.
const WALLET_TRANSFER: Hop = Hop {
    service: "wallet",
    metric: hops::GRPC,
    route: "/trustmesh.wallet.v1.Wallet/Transfer",
};

/// The wallet's transfer and its database writes' stages (queued,
/// committing, waiting for the log's sync).
const TRANSFER_HOPS: [Hop; 4] = [
    WALLET_TRANSFER,
    Hop::db_write("wallet", "queue"),
    Hop::db_write("wallet", "commit"),
    Hop::db_write("wallet", "sync"),
];

/// The hops of `POST /api/v1/payments`: the gateway, the payment service,
/// the wallet, and the stages of the payment service's and the wallet's
/// database writes (two payment writes per payment, one wallet write).
const PAYMENT_HOPS: [Hop; 9] = [
    Hop {
        service: "gateway",
        metric: hops::HTTP,
        route: "POST /api/v1/payments",
    },
    Hop {
        service: "payment",
        metric: hops::GRPC,
        route: "/trustmesh.payment.v1.Payment/CreatePayment",
    },
    WALLET_TRANSFER,
    Hop::db_write("payment", "queue"),
    Hop::db_write("payment", "commit"),
    Hop::db_write("payment", "sync"),
    Hop::db_write("wallet", "queue"),
    Hop::db_write("wallet", "commit"),
    Hop::db_write("wallet", "sync"),
];

/// Runs `phase`, then prints its report as `what` and what each of `hops`
/// timed of it.
async fn measure(mesh: &Mesh, hops: &[Hop], what: &str, phase: impl Future<Output = Outcome>) {
    let before = hops::read(mesh, hops).await;
    let mut outcome = phase.await;
    report(what, &mut outcome);
    println!(
        "{}",
        hops::inside(hops, &before, &hops::read(mesh, hops).await)
    );
}

fn report(what: &str, outcome: &mut Outcome) {
    outcome.latencies.sort();
    let rate = outcome.latencies.len() as f64 / phase().as_secs_f64();
    println!(
        "  {what}: {rate:.0}/s  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} calls, {} errors{})",
        ms(percentile(&outcome.latencies, 0.5)),
        ms(percentile(&outcome.latencies, 0.99)),
        ms(percentile(&outcome.latencies, 1.0)),
        outcome.latencies.len(),
        outcome.errors,
        outcome
            .first_error
            .as_ref()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default(),
    );
}

/// Runs `call` from [`CALLERS`] tasks for [`WARMUP`] then [`phase`],
/// keeping the latencies of the measured part.
async fn drive<F, Fut>(mesh: &Mesh, call: F) -> Outcome
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let call = Arc::new(call);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let (call, measuring, stop) = (call.clone(), measuring.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let counted = measuring.load(Ordering::Relaxed);
                let started = Instant::now();
                let result = call(caller, n).await;
                if !counted || stop.load(Ordering::Relaxed) {
                    continue;
                }
                outcome.record(result, started.elapsed());
            }
            outcome
        }));
    }
    tokio::time::sleep(WARMUP).await;
    let before = cpu_snapshot(mesh);
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(phase()).await;
    stop.store(true, Ordering::Relaxed);
    let wall = started.elapsed();
    let after = cpu_snapshot(mesh);
    let mut all = Outcome::default();
    for task in tasks {
        let outcome = task.await.unwrap();
        all.latencies.extend(outcome.latencies);
        all.errors += outcome.errors;
        if all.first_error.is_none() {
            all.first_error = outcome.first_error;
        }
    }
    print_cpu(&before, &after, wall);
    all
}

/// Sends `call` at `rate` per second for [`WARMUP`] then [`phase`], each
/// request on its own schedule (the `n`-th at `n / rate` s) from caller
/// `n % CALLERS`, whatever the answers; keeps the latencies of the measured
/// part, each from its request's scheduled time.
async fn paced<F, Fut>(mesh: &Mesh, rate: u32, call: F) -> Outcome
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let call = Arc::new(call);
    let start = tokio::time::Instant::now();
    let measured_from = start + WARMUP;
    let total = u64::from(rate) * (WARMUP + phase()).as_secs();
    let mut requests = Vec::with_capacity(total as usize);
    let mut before = None;
    for n in 0..total {
        let at = start + Duration::from_secs_f64(n as f64 / f64::from(rate));
        tokio::time::sleep_until(at).await;
        if before.is_none() && at >= measured_from {
            before = Some((cpu_snapshot(mesh), Instant::now()));
        }
        let call = call.clone();
        requests.push(tokio::spawn(async move {
            let result = call(n as usize % CALLERS, n).await;
            (at, at.elapsed(), result)
        }));
    }
    let after = cpu_snapshot(mesh);
    let wall = before.as_ref().map(|(_, started)| started.elapsed());
    let mut outcome = Outcome::default();
    for request in requests {
        let (at, latency, result) = request.await.unwrap();
        if at < measured_from {
            continue;
        }
        outcome.record(result, latency);
    }
    if let (Some((before, _)), Some(wall)) = (before, wall) {
        print_cpu(&before, &after, wall);
    }
    outcome
}

/// A small pseudo-random number from (caller, n): no shared RNG state.
fn pick(caller: usize, n: u64, salt: u64, modulo: usize) -> usize {
    let mut x = (caller as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(n.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(salt);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 29;
    (x % modulo as u64) as usize
}

/// Deposits [`FUNDS`] into each of `users`' wallets, [`CALLERS`] at a time.
async fn fund(agent: &[WalletClient<MeshChannel>], users: &[String]) {
    let users = Arc::new(users.to_vec());
    let mut tasks = Vec::new();
    for worker in 0..CALLERS {
        let (users, mut client) = (users.clone(), agent[worker % agent.len()].clone());
        tasks.push(tokio::spawn(async move {
            for i in (worker..users.len()).step_by(CALLERS) {
                client
                    .deposit(DepositRequest {
                        to_user_id: users[i].clone(),
                        amount: FUNDS,
                        currency: "EUR".into(),
                        reference: format!("fund-{}", users[i]),
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Registers and signs in [`CALLERS`] users through the gateway; returns
/// (user id, access token) of each.
fn sign_in_users(mesh: &Mesh) -> Vec<(String, String)> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                scope.spawn(move || {
                    let api = Api::new(mesh);
                    (t..CALLERS)
                        .step_by(8)
                        .map(|i| {
                            let email =
                                format!("payer{i}.{}@example.com", uuid::Uuid::new_v4().simple());
                            let reg = register(&api, &email);
                            let session = login(
                                &api,
                                &email,
                                json!({"recovery_code": reg.recovery_codes[0]}),
                            );
                            let token = session["access_token"].as_str().unwrap().to_owned();
                            (reg.user_id, token)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    })
}

/// `trustmesh wallet check` and `trustmesh payment check` on the mesh's
/// databases: both must pass after a run.
fn offline_checks(mesh: &Mesh, envs: &[(&str, &str)]) {
    let data_dir = mesh.data_dir();
    for service in ["wallet", "payment"] {
        let (code, out, err) = run_cli(
            &[service, "check", "--data-dir", data_dir.to_str().unwrap()],
            envs,
        );
        println!(
            "  trustmesh {service} check: {}",
            out.trim().lines().last().unwrap_or("")
        );
        assert_eq!(code, 0, "{out}{err}");
    }
}

fn bench_backend(label: &str, envs: &[(&str, &str)]) {
    println!("== {label}");
    let root = tempfile::tempdir().unwrap();
    let policies = policy_dir(root.path());
    let mut all = vec![
        ("TRUSTMESH_POLICY_DIR", policies.to_str().unwrap()),
        // Every benchmark client comes from 127.0.0.1.
        ("TRUSTMESH_AUTH_IP_MAX_FAILURES", "0"),
    ];
    all.extend_from_slice(envs);
    let mesh = Mesh::start_with_env(&[], &all);
    let agent = mint(
        &mesh,
        &spiffe_id("/agent/bench"),
        &root.path().join("agent"),
    );
    let payment = mint(
        &mesh,
        &spiffe_id("/svc/payment"),
        &root.path().join("payment"),
    );
    let users = sign_in_users(&mesh);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let accounts: Vec<String> = (0..ACCOUNTS)
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        let mut funded = accounts.clone();
        funded.extend(users.iter().map(|(id, _)| id.clone()));
        let started = Instant::now();
        fund(&wallet_clients(&mesh, &agent), &funded).await;
        println!(
            "  funding: {} deposits by the agent in {:.1} s",
            funded.len(),
            started.elapsed().as_secs_f64()
        );

        // 1. wallet.Transfer, directly, as the payment workload.
        let clients = Arc::new(wallet_clients(&mesh, &payment));
        let accounts = Arc::new(accounts);
        let transfer = move |caller: usize, n: u64| {
            let mut client = clients[caller % CHANNELS].clone();
            let accounts = accounts.clone();
            async move {
                let from = pick(caller, n, 1, ACCOUNTS);
                let to = (from + 1 + pick(caller, n, 2, ACCOUNTS - 1)) % ACCOUNTS;
                // As the payment service sends them: the payment's id (a
                // time-ordered UUID v7) is both the transfer id and its
                // reference.
                let payment_id = uuid::Uuid::now_v7().to_string();
                client
                    .transfer(TransferRequest {
                        transfer_id: payment_id.clone(),
                        from_user_id: accounts[from].clone(),
                        to_user_id: accounts[to].clone(),
                        amount: 1 + pick(caller, n, 3, 100) as i64,
                        currency: "EUR".into(),
                        kind: "payment".into(),
                        reference: payment_id,
                        outgoing_limit_24h: i64::MAX / 4,
                    })
                    .await
                    .map(drop)
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
        };
        measure(
            &mesh,
            &TRANSFER_HOPS,
            &format!("wallet.Transfer direct, {CALLERS} callers, closed loop"),
            drive(&mesh, transfer.clone()),
        )
        .await;
        measure(
            &mesh,
            &TRANSFER_HOPS,
            &format!("wallet.Transfer direct, paced at {DIRECT_RATE}/s"),
            paced(&mesh, DIRECT_RATE, transfer),
        )
        .await;

        // 2. POST /payments through the gateway, one connection per user.
        let mut connections = Vec::new();
        for _ in 0..CALLERS {
            let conn = Http1Connection::gateway(mesh.gateway_addr(), &mesh.gateway_ca())
                .await
                .unwrap();
            connections.push(tokio::sync::Mutex::new(conn));
        }
        let connections = Arc::new(connections);
        let users = Arc::new(users.clone());
        let pay = move |caller: usize, n: u64| {
            let (connections, users) = (connections.clone(), users.clone());
            async move {
                let (_, token) = &users[caller];
                let to = (caller + 1 + pick(caller, n, 4, CALLERS - 1)) % CALLERS;
                let body = json!({
                    "receiver_id": users[to].0,
                    "amount": 1 + pick(caller, n, 5, 100),
                    "currency": "EUR",
                })
                .to_string();
                let auth = bearer(token);
                let key = uuid::Uuid::new_v4().to_string();
                let mut conn = connections[caller].lock().await;
                let reply = conn
                    .request(
                        "POST",
                        "/api/v1/payments",
                        &[("authorization", &auth), ("idempotency-key", &key)],
                        Some(&body),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if reply.status == 201 {
                    Ok(())
                } else {
                    Err(format!("{} {}", reply.status, reply.body))
                }
            }
        };
        measure(
            &mesh,
            &PAYMENT_HOPS,
            &format!("POST /payments end to end, {CALLERS} users, closed loop"),
            drive(&mesh, pay.clone()),
        )
        .await;
        measure(
            &mesh,
            &PAYMENT_HOPS,
            &format!("POST /payments end to end, paced at {E2E_RATE}/s"),
            paced(&mesh, E2E_RATE, pay),
        )
        .await;
    });
    offline_checks(&mesh, envs);
    drop(mesh);
}

fn main() {
    let backends =
        std::env::var("TRUSTMESH_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".to_owned());
    for backend in backends.split(',') {
        match backend.trim() {
            "sqlite" => bench_backend("SQLite (embedded default)", &[]),
            "postgres" => {
                let db = PostgresDb::create();
                bench_backend("PostgreSQL", &[("DATABASE_URL", db.url.as_str())]);
            }
            other => panic!("unknown back-end {other:?}: sqlite or postgres"),
        }
    }
}
