//! Money end to end through `trustmesh up`, on SQLite and PostgreSQL:
//! agent deposits over mTLS (minted files and the Workload API with a
//! `unix:uid` entry), payments through the gateway with idempotency keys
//! under concurrency, the ledger check afterwards, and the policy refusals
//! of the issue (wallet reads, finance routes, limits, the gateway's SVID on
//! `wallet.Transfer`, an unlisted agent, rollback rules).
//!
//! The concurrency scenario is the issue's: [`PAYERS`] concurrent payers
//! making [`PAYMENTS`] random payments per back-end, a fifth of them sent
//! twice with the same idempotency key, some overdrawing.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use trustmesh_proto::trustmesh::wallet::v1::TransferRequest;
use trustmesh_proto::trustmesh::wallet::v1::wallet_client::WalletClient;
use trustmesh_runtime::{RunReport, SvidFiles};
use trustmesh_tests::rest::{Api, SignedIn, bearer, error_code, expect, json_of, signed_in};
use trustmesh_tests::{Mesh, PostgresDb, copy_dir, https_request, repo_root, run_cli, spiffe_id};

/// Concurrent payers.
const PAYERS: usize = 50;
/// Payments in the concurrency scenario (retries not counted).
const PAYMENTS: usize = 2_000;
/// What each payer gets deposited (EUR cents).
const FUNDS: i64 = 50_000;

/// `policies/` with the test agents listed and small USD limits.
fn policy_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("policies");
    copy_dir(&repo_root().join("policies"), &dir);
    let path = dir.join("data.json");
    let mut data: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let agent = json!({"max_deposit": 10_000_000, "daily_limit": 1_000_000_000, "currencies": ["EUR", "USD"]});
    data["agents"] = json!({"/agent/minted": agent.clone(), "/agent/uid-agent": agent});
    data["limits"] = json!({
        "payment": {"max_amount": {"default": 1_000_000, "USD": 1_000},
                    "daily_volume": {"default": 1_000_000_000, "USD": 2_000}},
        "rollback": {"max_amount": {"default": 1_000_000, "USD": 50}, "window_seconds": 86_400},
    });
    std::fs::write(&path, data.to_string()).unwrap();
    dir
}

fn cli(mesh: &Mesh, args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let data_dir = mesh.data_dir();
    let mut all = vec!["--data-dir", data_dir.to_str().unwrap()];
    all.extend_from_slice(args);
    // Subcommand options come after the subcommand path.
    let mut argv: Vec<&str> = Vec::new();
    let split = args
        .iter()
        .position(|a| a.starts_with("--"))
        .unwrap_or(args.len());
    argv.extend_from_slice(&args[..split]);
    argv.extend_from_slice(&all[..2]);
    argv.extend_from_slice(&args[split..]);
    let (code, out, err) = run_cli(&argv, envs);
    (code, format!("{out}{err}"))
}

fn deposit(
    mesh: &Mesh,
    to: &str,
    amount: i64,
    currency: &str,
    reference: &str,
    svid: Option<&Path>,
    envs: &[(&str, &str)],
) -> (i32, String) {
    let amount = amount.to_string();
    let mut args = vec![
        "agent",
        "deposit",
        "--to",
        to,
        "--amount",
        &amount,
        "--currency",
        currency,
        "--reference",
        reference,
    ];
    let dir;
    if let Some(svid) = svid {
        dir = svid.to_str().unwrap().to_owned();
        args.extend_from_slice(&["--svid-dir", &dir]);
    }
    cli(mesh, &args, envs)
}

fn mint(mesh: &Mesh, id: &str, out: &Path) {
    let (code, text) = cli(
        mesh,
        &[
            "identity",
            "mint",
            "--spiffe-id",
            id,
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{text}");
}

fn pay(
    api: &Api,
    token: &str,
    key: Option<&str>,
    to: &str,
    amount: i64,
    currency: &str,
) -> trustmesh_tests::HttpsResponse {
    let auth = bearer(token);
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    api.call(
        "POST",
        "/api/v1/payments",
        &headers,
        Some(json!({"receiver_id": to, "amount": amount, "currency": currency})),
    )
}

/// Every transfer id in `user`'s wallet history (read as `reader`).
fn history(api: &Api, reader: &str, user: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut page: Option<String> = None;
    loop {
        let path = match &page {
            Some(p) => format!("/api/v1/wallet/transactions?user={user}&limit=200&page={p}"),
            None => format!("/api/v1/wallet/transactions?user={user}&limit=200"),
        };
        let reply = api.get_with(&path, reader);
        assert_eq!(reply.status, 200, "{reply:?}");
        let body = json_of(&reply);
        ids.extend(
            body["transactions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["transfer_id"].as_str().unwrap().to_owned()),
        );
        match body["next"].as_str() {
            Some(next) => page = Some(next.to_owned()),
            None => return ids,
        }
    }
}

fn money_end_to_end(label: &str, envs: &[(&str, &str)]) {
    let root = tempfile::tempdir().unwrap();
    let policies = policy_dir(root.path());
    let mut all = vec![("TRUSTMESH_POLICY_DIR", policies.to_str().unwrap())];
    all.extend_from_slice(envs);
    let mesh = Mesh::start_with_env(&[], &all);
    let api = Api::new(&mesh);

    let finance = signed_in(&api, &mesh, "finance", Some("finance"));
    let payers: Vec<SignedIn> = (0..PAYERS)
        .map(|i| signed_in(&api, &mesh, &format!("payer{i}"), None))
        .collect();

    // Deposits with minted files, and a replay of one.
    let minted = root.path().join("minted");
    mint(&mesh, &spiffe_id("/agent/minted"), &minted);
    for (i, p) in payers.iter().enumerate() {
        let (code, out) = deposit(
            &mesh,
            &p.id,
            FUNDS,
            "EUR",
            &format!("m-{i}"),
            Some(&minted),
            &[],
        );
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with("deposited"), "{out}");
    }
    let (code, out) = deposit(
        &mesh,
        &payers[0].id,
        FUNDS,
        "EUR",
        "m-0",
        Some(&minted),
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("already deposited"), "{out}");

    // A deposit with an SVID from the Workload API (a unix:uid entry).
    let socket = mesh.endpoints["workload_api"].as_str().unwrap().to_owned();
    let uid = nix::unistd::getuid().as_raw().to_string();
    let selector = format!("unix:uid:{uid}");
    let uid_agent = spiffe_id("/agent/uid-agent");
    let (code, out) = cli(
        &mesh,
        &[
            "identity",
            "entry",
            "create",
            "--spiffe-id",
            &uid_agent,
            "--selector",
            &selector,
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = deposit(
        &mesh,
        &payers[0].id,
        5_000,
        "USD",
        "uid-1",
        None,
        &[("SPIFFE_ENDPOINT_SOCKET", &socket)],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("deposited 5000 USD"), "{out}");

    // An agent not in data.agents, and a service SVID that is no agent: refused.
    let mallory = root.path().join("mallory");
    mint(&mesh, &spiffe_id("/agent/mallory"), &mallory);
    let (code, out) = deposit(&mesh, &payers[0].id, 1, "EUR", "x", Some(&mallory), &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("agent_not_allowed") && out.lines().count() == 1,
        "{out}"
    );
    let gateway_files = root.path().join("gateway");
    mint(&mesh, &spiffe_id("/svc/gateway"), &gateway_files);
    let (code, out) = deposit(
        &mesh,
        &payers[0].id,
        1,
        "EUR",
        "y",
        Some(&gateway_files),
        &[],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("agent_not_allowed"), "{out}");

    // The gateway's SVID calling wallet.Transfer directly: PERMISSION_DENIED.
    let wallet_addr = RunReport::read(&mesh.data_dir(), "wallet").unwrap().grpc;
    let files = SvidFiles::load(&gateway_files).unwrap();
    let config = files.client_config(&spiffe_id("/svc/wallet")).unwrap();
    let denied = api
        .block_on(async {
            let channel =
                trustmesh_runtime::connect_channel(config, &wallet_addr.to_string()).unwrap();
            WalletClient::new(channel)
                .transfer(TransferRequest {
                    transfer_id: uuid::Uuid::new_v4().to_string(),
                    from_user_id: payers[0].id.clone(),
                    to_user_id: payers[1].id.clone(),
                    amount: 1,
                    currency: "EUR".into(),
                    kind: "payment".into(),
                    reference: "steal".into(),
                    outgoing_limit_24h: 0,
                })
                .await
        })
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    // Concurrency: every payer pays at random, some retries, some overdraws.
    let started = Instant::now();
    let ca = api.ca();
    let addr = api.addr();
    let ids: Arc<Vec<(String, String)>> = Arc::new(
        payers
            .iter()
            .map(|p| (p.id.clone(), p.token.clone()))
            .collect(),
    );
    let per_payer = PAYMENTS / PAYERS;
    let outcomes: Vec<Vec<(String, u16, Value, bool)>> = api.block_on(async {
        let tasks: Vec<_> = (0..PAYERS)
            .map(|me| {
                let ids = ids.clone();
                let ca = ca.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for n in 0..per_payer {
                        let r = uuid::Uuid::new_v4();
                        let b = r.as_bytes();
                        let to = (me + 1 + usize::from(b[0]) % (PAYERS - 1)) % PAYERS;
                        let amount = 1 + i64::from(u16::from_le_bytes([b[1], b[2]])) % 12_000;
                        let key = format!("{me}-{n}");
                        let body =
                            json!({"receiver_id": ids[to].0, "amount": amount, "currency": "EUR"})
                                .to_string();
                        let auth = bearer(&ids[me].1);
                        let headers = [
                            ("authorization", auth.as_str()),
                            ("idempotency-key", key.as_str()),
                        ];
                        let send = || {
                            https_request(
                                addr,
                                &ca,
                                "POST",
                                "/api/v1/payments",
                                &headers,
                                Some(&body),
                            )
                        };
                        let first = send().await.unwrap();
                        let v: Value = serde_json::from_str(&first.body).unwrap_or(Value::Null);
                        out.push((key.clone(), first.status, v.clone(), false));
                        if b[3].is_multiple_of(5) {
                            let again = send().await.unwrap();
                            let w: Value = serde_json::from_str(&again.body).unwrap_or(Value::Null);
                            out.push((key, again.status, w, true));
                        }
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        all
    });
    let elapsed = started.elapsed();
    let sent: usize = outcomes.iter().map(Vec::len).sum();
    eprintln!(
        "{label}: {sent} payment requests ({} new) from {PAYERS} payers in {:.1}s: {:.0} requests/s",
        PAYMENTS,
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64()
    );

    // Retries answered with the original; collect accepted payments.
    let mut originals: HashMap<String, (u16, Value)> = HashMap::new();
    let mut accepted: Vec<Value> = Vec::new();
    let (mut completed, mut failed) = (0, 0);
    for (key, status, body, retry) in outcomes.into_iter().flatten() {
        let payment = if status == 409 {
            body["payment"].clone()
        } else {
            body.clone()
        };
        if retry {
            let (first_status, first) = &originals[&key];
            assert!(
                matches!((first_status, status), (201, 200) | (409, 409)),
                "{key}: {first_status} then {status}"
            );
            assert_eq!(first["payment_id"], payment["payment_id"], "{key}");
            assert_eq!(first["status"], payment["status"], "{key}");
            continue;
        }
        assert!(status == 201 || status == 409, "{key}: {status} {body}");
        match payment["status"].as_str() {
            Some("COMPLETED") => {
                completed += 1;
                accepted.push(payment.clone());
            }
            Some("FAILED") => {
                failed += 1;
                assert_eq!(body["error"]["code"], "insufficient_funds");
            }
            other => panic!("{key}: {other:?}"),
        }
        originals.insert(key, (status, payment));
    }
    eprintln!("{label}: {completed} completed, {failed} refused for lack of funds");
    assert!(
        completed > 0 && failed > 0,
        "the scenario should both pay and overdraw"
    );

    // Each accepted payment exactly once in both histories; no negative wallet.
    let mut histories: HashMap<String, Vec<String>> = HashMap::new();
    for p in &payers {
        histories.insert(p.id.clone(), history(&api, &finance.token, &p.id));
    }
    for payment in &accepted {
        let id = payment["payment_id"].as_str().unwrap();
        for side in ["payer_id", "receiver_id"] {
            let user = payment[side].as_str().unwrap();
            let n = histories[user].iter().filter(|t| *t == id).count();
            assert_eq!(n, 1, "{id} appears {n} times in {side} {user}'s history");
        }
    }
    for p in &payers {
        let reply = api.get_with("/api/v1/wallet", &p.token);
        assert_eq!(reply.status, 200, "{reply:?}");
        for b in json_of(&reply)["balances"].as_array().unwrap() {
            assert!(b["amount"].as_i64().unwrap() >= 0, "{b}");
        }
    }
    let (code, out) = cli(&mesh, &["wallet", "check"], envs);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: every invariant holds"), "{out}");
    // The payers' running totals held under the same load.
    let (code, out) = cli(&mesh, &["payment", "check"], envs);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: every running total holds"), "{out}");

    // Policy refusals.
    let (a, b) = (&payers[0], &payers[1]);
    expect(
        &api.get_with(&format!("/api/v1/wallet?user={}", b.id), &a.token),
        403,
        "not_owner",
    );
    expect(
        &api.get_with(
            &format!("/api/v1/wallet/transactions?user={}", b.id),
            &a.token,
        ),
        403,
        "not_owner",
    );
    expect(
        &api.get_with("/api/v1/finance/transactions", &a.token),
        403,
        "role_required",
    );
    let auth = bearer(&a.token);
    let fake = uuid::Uuid::now_v7();
    let r = api.call(
        "POST",
        &format!("/api/v1/finance/transactions/{fake}/rollback"),
        &[("authorization", &auth)],
        Some(json!({"reason": "x"})),
    );
    expect(&r, 403, "role_required");
    expect(
        &pay(&api, &a.token, None, &b.id, 1, "EUR"),
        400,
        "idempotency_key_required",
    );
    expect(
        &pay(&api, &a.token, Some(&"k".repeat(256)), &b.id, 1, "EUR"),
        422,
        "invalid_idempotency_key",
    );
    // Nobody has this id: nothing is paid or stored, so the key stays free.
    let nobody = uuid::Uuid::now_v7().to_string();
    expect(
        &pay(&api, &a.token, Some("to-nobody"), &nobody, 1, "EUR"),
        404,
        "receiver_not_found",
    );
    let kept = pay(&api, &a.token, Some("to-nobody"), &b.id, 1, "EUR");
    assert!(
        kept.status == 201 || error_code(&kept) == "insufficient_funds",
        "{kept:?}"
    );
    expect(
        &pay(&api, &a.token, Some("usd-big"), &b.id, 1_001, "USD"),
        403,
        "limit_exceeded",
    );
    let u1 = pay(&api, &a.token, Some("usd-1"), &b.id, 1_000, "USD");
    assert_eq!(u1.status, 201, "{u1:?}");
    let u2 = pay(&api, &a.token, Some("usd-2"), &b.id, 1_000, "USD");
    assert_eq!(u2.status, 201, "{u2:?}");
    expect(
        &pay(&api, &a.token, Some("usd-3"), &b.id, 1, "USD"),
        403,
        "daily_limit_exceeded",
    );
    expect(
        &pay(&api, &a.token, Some("usd-1"), &b.id, 999, "USD"),
        409,
        "idempotency_key_reused",
    );
    let p1 = json_of(&u1)["payment_id"].as_str().unwrap().to_owned();
    // The receiver reads it; a stranger may not.
    assert_eq!(
        api.get_with(&format!("/api/v1/payments/{p1}"), &b.token)
            .status,
        200
    );
    expect(
        &api.get_with(&format!("/api/v1/payments/{p1}"), &payers[2].token),
        403,
        "not_party",
    );

    // Rollbacks: above the USD maximum (50), then a small one, then twice.
    let fin = bearer(&finance.token);
    let rollback = |id: &str| {
        api.call(
            "POST",
            &format!("/api/v1/finance/transactions/{id}/rollback"),
            &[("authorization", &fin)],
            Some(json!({"reason": "customer complaint"})),
        )
    };
    expect(&rollback(&p1), 403, "rollback_limit_exceeded");
    let small = pay(&api, &b.token, Some("eur-small"), &a.id, 40, "EUR");
    assert_eq!(small.status, 201, "{small:?}");
    let small_id = json_of(&small)["payment_id"].as_str().unwrap().to_owned();
    let done = rollback(&small_id);
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(json_of(&done)["status"], "ROLLED_BACK");
    assert_eq!(json_of(&done)["rollback"]["by_user_id"], finance.id);
    expect(&rollback(&small_id), 409, "already_rolled_back");
    let listed = api.get_with(
        &format!(
            "/api/v1/finance/transactions?status=ROLLED_BACK&user={}",
            b.id
        ),
        &finance.token,
    );
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(json_of(&listed)["payments"].as_array().unwrap().len(), 1);
    let (code, out) = cli(&mesh, &["wallet", "check"], envs);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&mesh, &["payment", "check"], envs);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn money_on_sqlite() {
    money_end_to_end("sqlite", &[]);
}

#[test]
fn money_on_postgres() {
    let db = PostgresDb::create();
    money_end_to_end("postgres", &[("DATABASE_URL", db.url.as_str())]);
}

/// The operator's checks read what the services wrote: pointed at a data
/// directory without databases (a typo in `--data-dir`), they say so and
/// exit non-zero, and create nothing there.
#[test]
fn the_checks_refuse_a_data_directory_without_databases() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for (service, check) in [
        ("wallet", ["wallet", "check"]),
        ("payment", ["payment", "check"]),
    ] {
        let args = [check[0], check[1], "--data-dir", data_dir.to_str().unwrap()];
        let (code, out, err) = run_cli(&args, &[]);
        assert_ne!(code, 0, "{out}{err}");
        assert!(
            err.contains(&format!("there is no {service} database at")),
            "{out}{err}"
        );
        assert!(
            !data_dir.exists(),
            "`{}` created the data directory",
            check.join(" ")
        );
    }
}
