//! `trustmesh up` as a user runs it: the gateway answers over HTTPS, every
//! process is on the mesh with its SPIFFE ID, a crashed child is restarted,
//! Ctrl-C leaves nothing behind, and mistakes are reported in one line.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use trustmesh_runtime::SvidFiles;
use trustmesh_tests::{
    Mesh, gateway_tls, health_client, http_get, https_get, metrics_with, process_alive,
    reckless_client_config, run_cli, signal, spiffe_id,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn up_runs_the_mesh_restarts_crashed_children_and_stops_cleanly() {
    let rt = runtime();
    let mut mesh = Mesh::start(&["--svid-ttl", "1h"]);
    let gateway = &mesh.endpoints["services"]["gateway"];
    assert_eq!(gateway["spiffe_id"], spiffe_id("/svc/gateway"));
    let grpc: std::net::SocketAddr = gateway["grpc"].as_str().unwrap().parse().unwrap();
    let admin: std::net::SocketAddr = gateway["admin"].as_str().unwrap().parse().unwrap();
    let first_pid = gateway["pid"].as_u64().unwrap() as u32;
    assert!(
        mesh.endpoints["workload_api"]
            .as_str()
            .unwrap()
            .starts_with("unix:")
    );

    // HTTPS with the local CA whose path endpoints.json names.
    let ca = mesh.gateway_ca();
    assert!(ca.exists(), "{}", ca.display());
    let health = rt
        .block_on(https_get(mesh.gateway_addr(), "/healthz", &ca))
        .unwrap();
    assert_eq!(health.status, 200, "{health:?}");
    for header in [
        "strict-transport-security",
        "content-security-policy",
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
    ] {
        assert!(
            health.headers.contains_key(header),
            "missing {header}: {health:?}"
        );
    }
    let ready = rt
        .block_on(https_get(mesh.gateway_addr(), "/readyz", &ca))
        .unwrap();
    assert_eq!(ready.status, 200, "{ready:?}");
    let missing = rt
        .block_on(https_get(mesh.gateway_addr(), "/nope", &ca))
        .unwrap();
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains("\"code\":\"not_found\""),
        "{}",
        missing.body
    );
    // The API's description, to anyone, the same as `trustmesh openapi` prints.
    let served = rt
        .block_on(https_get(mesh.gateway_addr(), "/api/v1/openapi.json", &ca))
        .unwrap();
    assert_eq!(served.status, 200, "{served:?}");
    let (code, printed, err) = run_cli(&["openapi"], &[]);
    assert_eq!(code, 0, "{err}");
    let served: serde_json::Value = serde_json::from_str(&served.body).unwrap();
    let printed: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(served, printed);
    assert!(served["paths"]["/api/v1/payments"]["post"].is_object());

    // A request refused before its body arrived (sent 50 ms after its
    // headers) leaves its kept-alive connection usable: the request sent
    // after it on the same connection is answered.
    let answers = rt.block_on(refused_then_next(mesh.gateway_addr(), &ca));
    assert!(answers.starts_with("HTTP/1.1 405"), "{answers}");
    assert!(
        answers.contains("\"status\":\"ok\""),
        "the connection ended after the refusal: {answers}"
    );

    // gRPC health over mTLS with an SVID minted from the mesh's CA.
    let svid_dir = mesh.dir.path().join("probe");
    let data_dir = mesh.data_dir();
    let (code, out, err) = run_cli(
        &[
            "identity",
            "mint",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--spiffe-id",
            &spiffe_id("/svc/probe"),
            "--ttl",
            "10m",
            "--out",
            svid_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let probe = SvidFiles::load(&svid_dir).unwrap();
    let serving = rt
        .block_on(async {
            health_client(&probe, grpc, &spiffe_id("/svc/gateway"))
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
        })
        .expect("gateway gRPC health")
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // Without a certificate: no answer.
    let refused = rt.block_on(async {
        let channel =
            trustmesh_runtime::connect_channel(reckless_client_config(None), &grpc.to_string())
                .unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
    });
    assert!(
        refused.is_err(),
        "a client without a certificate got an answer"
    );

    // Admin endpoint: metrics (the handshakes and decisions above) and health.
    let metrics = rt.block_on(metrics_with(
        admin,
        &[
            "tls_handshakes_total{outcome=\"ok\"}",
            "tls_handshakes_total{outcome=\"refused\"}",
        ],
    ));
    assert!(
        metrics.contains("tls_handshakes_total{outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tls_handshakes_total{outcome=\"refused\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("policy_decisions_total"), "{metrics}");
    // The HTTPS requests above, timed by route template; the unknown path
    // under one label for all.
    for route in ["GET /healthz", "GET /readyz", "_other"] {
        let timed = format!("http_server_handling_seconds_count{{route=\"{route}\"}} ");
        assert!(metrics.contains(&timed), "no {timed}in:\n{metrics}");
    }
    assert!(!metrics.contains("/nope"), "{metrics}");
    assert_eq!(rt.block_on(http_get(admin, "/healthz")).unwrap().0, 200);

    // Crash the gateway: up restarts it and publishes the new pid.
    signal(first_pid, nix::sys::signal::Signal::SIGKILL);
    let endpoints = mesh.wait_for_endpoints(Duration::from_secs(30), |e| {
        e["services"]["gateway"]["pid"]
            .as_u64()
            .is_some_and(|pid| pid as u32 != first_pid)
    });
    let second_pid = endpoints["services"]["gateway"]["pid"].as_u64().unwrap() as u32;
    let again = rt
        .block_on(https_get(mesh.gateway_addr(), "/healthz", &ca))
        .unwrap();
    assert_eq!(again.status, 200);
    assert!(mesh.log().contains("restarting"), "{}", mesh.log());

    // Ctrl-C: everything stops within 5 s and nothing is left behind.
    let socket = mesh.endpoints["workload_api"]
        .as_str()
        .unwrap()
        .trim_start_matches("unix:")
        .to_owned();
    let up_pid = mesh.pid();
    let (took, clean) = mesh.interrupt();
    assert!(clean, "up exited with an error:\n{}", mesh.log());
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    std::thread::sleep(Duration::from_millis(100));
    for pid in [up_pid, second_pid] {
        assert!(!process_alive(pid), "process {pid} is still running");
    }
    assert!(
        !std::path::Path::new(&socket).exists(),
        "the Workload API socket is left behind"
    );
}

/// The names of a process's threads, by how many there are of each.
fn thread_names(pid: u64) -> std::collections::BTreeMap<String, usize> {
    let mut names = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let comm = std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap_or_default();
        *names.entry(comm.trim().to_owned()).or_insert(0) += 1;
    }
    names
}

/// `PUT /api/v1/teams` (405) with its body late, then `GET /healthz`, on
/// one HTTP/1.1 connection; what came back until the second answer, the
/// end of the connection or 5 s.
async fn refused_then_next(gateway: std::net::SocketAddr, ca: &std::path::Path) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = gateway_tls(gateway, ca).await.unwrap();
    let body = r#"{"name":"x"}"#;
    let head = format!(
        "PUT /api/v1/teams HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tls.write_all(body.as_bytes()).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let read_both = async {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = tls.read(&mut buf).await {
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("\"status\":\"ok\"") {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read_both).await;
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn up_gives_every_service_the_worker_threads_asked_for() {
    let mesh = Mesh::start(&["--worker-threads", "3"]);
    for (name, service) in mesh.endpoints["services"].as_object().unwrap() {
        let names = thread_names(service["pid"].as_u64().unwrap());
        assert_eq!(
            names.get("tokio-rt-worker"),
            Some(&3),
            "{name}'s threads: {names:?}"
        );
    }
}

#[test]
fn configuration_errors_are_one_clear_line() {
    let check = |args: &[&str], envs: &[(&str, &str)], expect: &str| {
        let (code, out, err) = run_cli(args, envs);
        assert_ne!(code, 0, "{args:?} succeeded: {out}");
        let lines: Vec<&str> = err.trim().lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: expected one line, got:\n{err}");
        assert!(lines[0].contains(expect), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();

    check(
        &[
            "up",
            "--data-dir",
            data,
            "--gateway-addr",
            "127.0.0.1:99999",
        ],
        &[],
        "--gateway-addr",
    );
    check(
        &["up", "--data-dir", data, "--port-base", "not-a-port"],
        &[],
        "--port-base",
    );
    check(
        &["up", "--data-dir", data, "--svid-ttl", "soon"],
        &[],
        "--svid-ttl",
    );
    check(
        &["up", "--data-dir", data],
        &[("TRUSTMESH_WORKER_THREADS", "many")],
        "--worker-threads",
    );

    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    check(
        &["up", "--data-dir", file.to_str().unwrap()],
        &[],
        "is not usable",
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    check(
        &[
            "up",
            "--data-dir",
            data,
            "--gateway-addr",
            &taken_addr,
            "--port-base",
            "0",
        ],
        &[],
        "cannot listen on",
    );

    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("broken.rego"),
        "package trustmesh.broken\nallow if {\n",
    )
    .unwrap();
    check(
        &[
            "up",
            "--data-dir",
            data,
            "--port-base",
            "0",
            "--gateway-addr",
            "127.0.0.1:0",
        ],
        &[("TRUSTMESH_POLICY_DIR", policies.to_str().unwrap())],
        "broken.rego",
    );
    check(&["serve", "nonsense"], &[], "nonsense");
    check(&["frobnicate"], &[], "frobnicate");
}

#[test]
fn every_command_answers_help() {
    let commands: &[&[&str]] = &[
        &["--help"],
        &["up", "--help"],
        &["serve", "--help"],
        &["identity", "--help"],
        &["identity", "entry", "--help"],
        &["identity", "entry", "create", "--help"],
        &["identity", "entry", "list", "--help"],
        &["identity", "entry", "delete", "--help"],
        &["identity", "mint", "--help"],
        &["identity", "fetch", "--help"],
        &["policy", "--help"],
        &["policy", "test", "--help"],
        &["openapi", "--help"],
    ];
    for args in commands {
        let (code, out, err) = run_cli(args, &[]);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
}
