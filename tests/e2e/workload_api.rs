//! The local Workload API behaves as SPIRE's agent does toward clients: the
//! security header is required, unattested callers are refused, and a process
//! registered by a `unix:uid` entry receives its SVID — with the standard
//! `spiffe` client library, through a running `trustmesh up`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use trustmesh_proto::spiffe::workload::X509svidRequest;
use trustmesh_runtime::SvidFiles;
use trustmesh_tests::{Mesh, TestIssuer, health_client, run_cli, spiffe_id, workload_api_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_the_security_header_is_invalid_argument() {
    let issuer = TestIssuer::start(Duration::from_secs(3600)).await;
    let socket = issuer.dir.path().join("agent/workload.sock");
    let mut client = workload_api_client(&socket).await;
    let err = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .expect_err("no header");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unattested_caller_is_permission_denied() {
    let issuer = TestIssuer::start(Duration::from_secs(3600)).await;
    let socket = issuer.dir.path().join("agent/workload.sock");
    let mut client = workload_api_client(&socket).await;
    let mut request = tonic::Request::new(X509svidRequest {});
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let err = match client.fetch_x509svid(request).await {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            stream
                .message()
                .await
                .expect_err("an unattested caller gets no SVID")
        }
    };
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
}

#[test]
fn a_unix_uid_entry_hands_its_svid_to_the_process() {
    let mesh = Mesh::start(&[]);
    let data_dir = mesh.data_dir();
    let data_dir = data_dir.to_str().unwrap();
    let socket = mesh.endpoints["workload_api"].as_str().unwrap().to_owned();
    let uid = nix::unistd::getuid().as_raw().to_string();
    let agent = spiffe_id("/agent/acme");

    // Not registered yet: refused.
    let (code, out, err) = run_cli(
        &[
            "identity",
            "fetch",
            "--data-dir",
            data_dir,
            "--socket",
            &socket,
        ],
        &[],
    );
    assert_ne!(code, 0, "an unregistered process got an SVID: {out}");
    assert!(
        err.to_lowercase().contains("denied") || err.contains("no identity"),
        "{err}"
    );

    let selector = format!("unix:uid:{uid}");
    let (code, out, err) = run_cli(
        &[
            "identity",
            "entry",
            "create",
            "--data-dir",
            data_dir,
            "--spiffe-id",
            &agent,
            "--selector",
            &selector,
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let entry_id = out.split_whitespace().next().unwrap().to_owned();
    let (code, listed, _) = run_cli(&["identity", "entry", "list", "--data-dir", data_dir], &[]);
    assert_eq!(code, 0);
    assert!(
        listed.contains(&agent) && listed.contains(&selector),
        "{listed}"
    );

    // Registered: the standard spiffe client gets the SVID, through the
    // socket given either way a workload would.
    let out_dir = mesh.dir.path().join("fetched");
    let (code, out, err) = run_cli(
        &[
            "identity",
            "fetch",
            "--data-dir",
            data_dir,
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[("SPIFFE_ENDPOINT_SOCKET", &socket)],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), agent);

    // The fetched SVID works on the mesh: the gateway's health answers it.
    let svid = SvidFiles::load(&out_dir).unwrap();
    assert_eq!(svid.spiffe_id(), agent);
    let grpc = mesh.endpoints["services"]["gateway"]["grpc"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        health_client(&svid, grpc, &spiffe_id("/svc/gateway"))
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
    })
    .expect("health with the fetched SVID");

    // Deleted: refused again.
    let (code, _, err) = run_cli(
        &[
            "identity",
            "entry",
            "delete",
            "--data-dir",
            data_dir,
            &entry_id,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run_cli(
        &[
            "identity",
            "fetch",
            "--data-dir",
            data_dir,
            "--socket",
            &socket,
        ],
        &[],
    );
    assert_ne!(code, 0, "a deleted entry still hands out SVIDs: {out}");
}
