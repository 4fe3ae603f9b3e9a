//! The audit trail end to end through `trustmesh up`: sensitive actions and
//! policy denies reach the audit log, only auditors and admins read it (and
//! their reads are recorded), no secret is ever stored, `trustmesh audit
//! verify` passes and names a tampered entry; and no event is lost or
//! duplicated while RabbitMQ or the audit service go down and come back.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trustmesh_tests::rest::{Api, expect, json_of, login, register, unique_email};
use trustmesh_tests::{Mesh, PostgresDb, run_cli, signal};

/// A mesh that signs audit checkpoints every second.
fn mesh_with(envs: &[(&str, &str)]) -> Mesh {
    let mut all = vec![("TRUSTMESH_AUDIT_CHECKPOINT_EVERY", "1s")];
    all.extend_from_slice(envs);
    Mesh::start_with_env(&[], &all)
}

/// Every event of the log, through the API, as the auditor `token`.
fn all_events(api: &Api, token: &str, path: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut page: Option<String> = None;
    loop {
        let url = match &page {
            Some(p) => format!("{path}?limit=200&page={p}"),
            None => format!("{path}?limit=200"),
        };
        let reply = api.get_with(&url, token);
        assert_eq!(reply.status, 200, "{reply:?}");
        let body = json_of(&reply);
        events.extend(body["events"].as_array().unwrap().iter().cloned());
        match body["next"].as_str() {
            Some(next) => page = Some(next.to_owned()),
            None => return events,
        }
    }
}

/// Polls `check` over the auditor's view until it holds (10 s at most).
#[track_caller]
fn eventually(api: &Api, token: &str, path: &str, what: &str, check: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = all_events(api, token, path);
        if check(&events) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never showed in {path}: {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn has(events: &[Value], action: &str, user: &str) -> bool {
    events
        .iter()
        .any(|e| e["action"] == action && (e["actor_user"] == user || e["target"] == user))
}

fn audit_verify(data_dir: &Path, envs: &[(&str, &str)], extra: &[&str]) -> (i32, String) {
    let mut args = vec!["audit", "verify", "--data-dir", data_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, out, err) = run_cli(&args, envs);
    (code, format!("{out}{err}"))
}

fn trail(mesh: &Mesh, envs: &[(&str, &str)]) {
    let api = Api::new(mesh);
    let (auditor_email, user_email, finance_email) = (
        unique_email("auditor"),
        unique_email("user"),
        unique_email("finance"),
    );
    let auditor = register(&api, &auditor_email);
    let user = register(&api, &user_email);
    let finance = register(&api, &finance_email);
    mesh.grant_role(&auditor_email, "audit");
    mesh.grant_role(&finance_email, "finance");

    let auditor_token = login(
        &api,
        &auditor_email,
        json!({"recovery_code": auditor.recovery_codes[0]}),
    )["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = login(
        &api,
        &user_email,
        json!({"recovery_code": user.recovery_codes[0]}),
    );
    let user_token = session["access_token"].as_str().unwrap().to_owned();
    let finance_token = login(
        &api,
        &finance_email,
        json!({"recovery_code": finance.recovery_codes[0]}),
    )["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // A wrong password, then users and finance knocking on the audit routes.
    let wrong = api.post(
        "/api/v1/auth/login",
        json!({"email": user_email, "password": "not the password at all"}),
    );
    expect(&wrong, 401, "invalid_credentials");
    for (token, who) in [(&user_token, "user"), (&finance_token, "finance")] {
        for path in [
            "/api/v1/audit/events",
            "/api/v1/audit/decisions",
            "/api/v1/audit/verify",
        ] {
            let refused = api.get_with(path, token);
            assert_eq!(refused.status, 403, "{who} on {path}: {refused:?}");
        }
    }

    // The auditor sees it all: logins, the failure, the role grants, the denies.
    eventually(
        &api,
        &auditor_token,
        "/api/v1/audit/events",
        "the journey",
        |events| {
            has(events, "LOGIN", &user.user_id)
                && has(events, "LOGIN_FAILED", &user.user_id)
                && has(events, "LOGIN", &auditor.user_id)
                && events.iter().any(|e| {
                    e["action"] == "ROLE_CHANGED" && e["target"] == auditor.user_id.as_str()
                })
        },
    );
    eventually(
        &api,
        &auditor_token,
        "/api/v1/audit/decisions",
        "the denies",
        |events| {
            events.iter().any(|e| {
                e["action"] == "POLICY_DENY"
                    && e["actor_user"] == user.user_id.as_str()
                    && e["target"] == "GET /api/v1/audit/events"
                    && e["details"]["reason"] == "role_required"
            }) && events
                .iter()
                .any(|e| e["actor_user"] == finance.user_id.as_str())
        },
    );
    let failed: Vec<Value> = all_events(&api, &auditor_token, "/api/v1/audit/events")
        .into_iter()
        .filter(|e| e["action"] == "LOGIN_FAILED")
        .collect();
    assert!(
        failed.iter().any(|e| e["status"] == "FAIL"
            && e["details"]["reason"] == "wrong_password"
            && e["client_ip"] == "127.0.0.1"),
        "{failed:#?}"
    );
    // Filters work, and a bad one is a 4xx with a reason.
    let only_fail = api.get_with("/api/v1/audit/events?status=FAIL&limit=200", &auditor_token);
    assert!(
        json_of(&only_fail)["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["status"] == "FAIL")
    );
    let bad = api.get_with("/api/v1/audit/events?since=yesterday", &auditor_token);
    assert_eq!(bad.status, 422, "{bad:?}");
    let unknown = api.get_with("/api/v1/audit/events?colour=red", &auditor_token);
    assert_eq!(unknown.status / 100, 4, "{unknown:?}");

    // Reads are recorded, and the log verifies online.
    let verified = api.get_with("/api/v1/audit/verify", &auditor_token);
    assert_eq!(verified.status, 200, "{verified:?}");
    assert_eq!(json_of(&verified)["ok"], true, "{verified:?}");
    eventually(
        &api,
        &auditor_token,
        "/api/v1/audit/events",
        "the auditor's reads",
        |events| {
            // A read of events names its filter as JSON.
            events.iter().any(|e| {
                e["action"] == "AUDIT_READ"
                    && e["actor_user"] == auditor.user_id.as_str()
                    && e["details"]["filter"]["limit"].is_u64()
            })
        },
    );

    // No secret anywhere in the log: passwords, codes, TOTP seeds, tokens.
    let everything =
        serde_json::to_string(&all_events(&api, &auditor_token, "/api/v1/audit/events")).unwrap();
    let seed = |uri: &str| {
        uri.split("secret=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_owned()
    };
    let mut secrets = vec![
        trustmesh_tests::rest::PASSWORD.to_owned(),
        "not the password at all".to_owned(),
        seed(&auditor.otpauth_uri),
        seed(&user.otpauth_uri),
        user_token.clone(),
        auditor_token.clone(),
        session["refresh_token"].as_str().unwrap().to_owned(),
    ];
    secrets.extend(auditor.recovery_codes.iter().cloned());
    secrets.extend(user.recovery_codes.iter().cloned());
    for secret in &secrets {
        assert!(
            !everything.contains(secret.as_str()),
            "a secret is in the audit log"
        );
    }

    // Offline verification passes against the checkpoint, then names a
    // tampered entry.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, out) = audit_verify(&mesh.data_dir(), envs, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: "), "{out}");
    let checkpoint = mesh.data_dir().join("audit/log/checkpoint.txt");
    let (code, out) = audit_verify(
        &mesh.data_dir(),
        envs,
        &["--checkpoint", checkpoint.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_trail_on_sqlite() {
    let mut mesh = mesh_with(&[]);
    trail(&mesh, &[]);
    // Tamper with the stored log (mesh stopped): verify fails and says where.
    let _ = mesh.interrupt();
    let db = mesh.data_dir().join("audit.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query("UPDATE events SET target = 'nobody' WHERE idx = 3")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
    let (code, out) = audit_verify(&mesh.data_dir(), &[], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("entry #3"), "{out}");
}

#[test]
fn the_trail_on_postgres() {
    let db = PostgresDb::create();
    let envs = [("DATABASE_URL", db.url.as_str())];
    let mesh = mesh_with(&envs);
    trail(&mesh, &envs);
    drop(mesh);
}

// ---------------------------------------------------------------------------
// Nothing lost, nothing twice

/// A RabbitMQ virtual host of its own (so tests never see each other's
/// queues), deleted afterwards; it also makes sure the broker is running
/// again if a test stopped it and failed.
struct Vhost {
    name: String,
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl must be installed (scripts/services.sh starts RabbitMQ)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Vhost {
    fn create() -> Vhost {
        let name = format!("tm_{}", uuid::Uuid::new_v4().simple());
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost { name }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}

/// Counts of `LOGIN_FAILED` rows and distinct ids in the audit SQLite file.
fn stored_failures(data_dir: &Path) -> (i64, i64) {
    let db = data_dir.join("audit.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let Ok(pool) = sqlx::AnyPool::connect(&format!("sqlite://{}?mode=ro", db.display())).await
        else {
            return (0, 0);
        };
        let counts: (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(DISTINCT id) FROM events WHERE action = 'LOGIN_FAILED'",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or((0, 0));
        pool.close().await;
        counts
    })
}

fn audit_pid(mesh: &Mesh) -> u32 {
    let report: Value =
        serde_json::from_slice(&std::fs::read(mesh.data_dir().join("run/audit.json")).unwrap())
            .unwrap();
    u32::try_from(report["pid"].as_u64().unwrap()).unwrap()
}

/// Produces failed logins (one `LOGIN_FAILED` event each, committed in
/// auth's outbox before the 401) while `disrupt` runs between phases.
fn nothing_lost(mesh: &Mesh, phases: &[&dyn Fn()]) {
    let api = Api::new(mesh);
    let per_phase = 60;
    let mut produced = 0;
    let start: &dyn Fn() = &|| {};
    for (i, disrupt) in std::iter::once(start)
        .chain(phases.iter().copied())
        .enumerate()
    {
        disrupt();
        for n in 0..per_phase {
            let reply = api.post(
                "/api/v1/auth/login",
                json!({"email": format!("ghost{i}-{n}@example.com"), "password": "wrong password 123"}),
            );
            expect(&reply, 401, "invalid_credentials");
            produced += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (rows, distinct) = stored_failures(&mesh.data_dir());
        assert_eq!(rows, distinct, "an event was stored twice");
        if rows == produced {
            break;
        }
        assert!(
            rows < produced && Instant::now() < deadline,
            "audit holds {rows} of {produced} events:\n{}",
            mesh.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Nothing arrives late either, and the log verifies.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stored_failures(&mesh.data_dir()), (produced, produced));
    let (code, out) = audit_verify(&mesh.data_dir(), &[], &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn no_event_is_lost_or_doubled_when_rabbitmq_and_audit_go_down() {
    let vhost = Vhost::create();
    let url = vhost.url();
    let mesh = mesh_with(&[
        ("AMQP_URL", url.as_str()),
        ("TRUSTMESH_AUTH_IP_MAX_FAILURES", "0"),
    ]);
    let stop_broker = || rabbitmqctl(&["stop_app"]);
    let kill_audit = || signal(audit_pid(&mesh), nix::sys::signal::Signal::SIGKILL);
    let start_broker = || rabbitmqctl(&["start_app"]);
    nothing_lost(&mesh, &[&stop_broker, &kill_audit, &start_broker]);
    drop(mesh);
    drop(vhost);
}

#[test]
fn no_event_is_lost_or_doubled_when_audit_dies_mid_stream_over_mtls() {
    let mesh = mesh_with(&[("TRUSTMESH_AUTH_IP_MAX_FAILURES", "0")]);
    let kill_audit = || signal(audit_pid(&mesh), nix::sys::signal::Signal::SIGKILL);
    let nothing = || {};
    nothing_lost(&mesh, &[&kill_audit, &nothing, &kill_audit]);
}
