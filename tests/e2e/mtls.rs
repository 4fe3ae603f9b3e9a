//! The mTLS gRPC runtime under attack and under rotation: peers without a
//! valid SVID never get an answer, the policy decides what valid peers may
//! call, rotation fails no call, and shutdown lets in-flight calls finish.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use trustmesh_tests::echo::SayRequest;
use trustmesh_tests::echo::echo_client::EchoClient;
use trustmesh_tests::{
    EchoServer, TestIssuer, echo_client, echo_id, health_client, http_get, metrics_with,
    reckless_client_config, server_leaf, spiffe_id,
};

fn say(message: &str) -> SayRequest {
    SayRequest {
        message: message.into(),
        ..SayRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_gets_no_response() {
    let issuer = TestIssuer::start(Duration::from_secs(3600)).await;
    let server = EchoServer::start(&issuer).await;
    let channel =
        trustmesh_runtime::connect_channel(reckless_client_config(None), &server.addr.to_string())
            .unwrap();
    let err = EchoClient::new(channel)
        .say(say("hello"))
        .await
        .expect_err("a client without a certificate must not get an answer");
    assert_ne!(err.code(), tonic::Code::Ok);
    assert_ne!(
        err.code(),
        tonic::Code::PermissionDenied,
        "it must not even reach the policy: {err}"
    );
    // The gRPC health service is refused the same way.
    let channel =
        trustmesh_runtime::connect_channel(reckless_client_config(None), &server.addr.to_string())
            .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    assert!(
        health.is_err(),
        "health answered a client without a certificate"
    );
    let metrics = metrics_with(server.admin, &["tls_handshakes_total{outcome=\"refused\"}"]).await;
    assert!(
        metrics.contains("tls_handshakes_total{outcome=\"refused\"}"),
        "refused handshakes are counted:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_gets_no_response() {
    let issuer = TestIssuer::start(Duration::from_secs(3600)).await;
    let server = EchoServer::start(&issuer).await;
    // Same trust domain name, same SPIFFE ID as an allowed workload, but a
    // different CA: exactly what an attacker can mint for themselves.
    let rogue = TestIssuer::start(Duration::from_secs(3600)).await;
    let forged = rogue.mint(&spiffe_id("/svc/gateway"));
    let channel = trustmesh_runtime::connect_channel(
        reckless_client_config(Some(&forged)),
        &server.addr.to_string(),
    )
    .unwrap();
    let err = EchoClient::new(channel)
        .say(say("hello"))
        .await
        .expect_err("a certificate from another CA must not get an answer");
    assert_ne!(
        err.code(),
        tonic::Code::PermissionDenied,
        "it must not reach the policy: {err}"
    );
    // And a client that trusts only its own (rogue) bundle refuses our server.
    let err = echo_client(&forged, server.addr, &echo_id())
        .say(say("hello"))
        .await
        .expect_err("the server's SVID does not chain to the rogue bundle");
    assert_ne!(err.code(), tonic::Code::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_a_server_with_the_wrong_spiffe_id() {
    let issuer = TestIssuer::start(Duration::from_secs(3600)).await;
    let server = EchoServer::start(&issuer).await;
    let gateway = issuer.mint(&spiffe_id("/svc/gateway"));
    let err = echo_client(&gateway, server.addr, &spiffe_id("/svc/wallet"))
        .say(say("hello"))
        .await
        .expect_err("the echo server is not the wallet");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denies_with_reason_and_allows_the_listed_workload() {
    let issuer = TestIssuer::start(Duration::from_secs(3600)).await;
    let server = EchoServer::start(&issuer).await;

    let intruder = issuer.mint(&spiffe_id("/svc/intruder"));
    let denied = echo_client(&intruder, server.addr, &echo_id())
        .say(say("hello"))
        .await
        .expect_err("an unlisted workload is denied");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");
    assert_eq!(
        denied
            .metadata()
            .get("x-trustmesh-deny-reason")
            .and_then(|v| v.to_str().ok()),
        Some("workload_not_allowed"),
        "{denied:?}"
    );
    assert!(
        denied.message().contains("workload_not_allowed"),
        "{denied}"
    );

    let gateway = issuer.mint(&spiffe_id("/svc/gateway"));
    let mut client = echo_client(&gateway, server.addr, &echo_id());
    let reply = client
        .say(say("hello"))
        .await
        .expect("the gateway is allowed")
        .into_inner();
    assert_eq!(reply.message, "hello");
    assert_eq!(
        reply.peer,
        spiffe_id("/svc/gateway"),
        "the server saw the caller's SPIFFE ID"
    );

    // A rule on a request field: the layer decoded the protobuf request.
    let forbidden = client
        .say(say("forbidden"))
        .await
        .expect_err("the policy reads request fields");
    assert_eq!(forbidden.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        forbidden
            .metadata()
            .get("x-trustmesh-deny-reason")
            .and_then(|v| v.to_str().ok()),
        Some("message_forbidden")
    );

    // Health is open to any workload of the trust domain.
    let health = health_client(&intruder, server.addr, &echo_id())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "trustmesh.testing.v1.Echo".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let (status, metrics) = http_get(server.admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("policy_decisions_total"), "{metrics}");
    assert!(metrics.contains("decision=\"deny\""), "{metrics}");
    assert!(metrics.contains("decision=\"allow\""), "{metrics}");
    assert!(
        metrics.contains("policy_decision_duration_seconds"),
        "{metrics}"
    );
    // Every call timed from its arrival, denied ones too, by method; the
    // health check is not one of the descriptors' methods.
    for timed in [
        "grpc_server_handling_seconds_count{route=\"/trustmesh.testing.v1.Echo/Say\"} 3\n",
        "grpc_server_handling_seconds_count{route=\"_other\"} 1\n",
    ] {
        assert!(metrics.contains(timed), "no {timed}in:\n{metrics}");
    }
    let (status, _) = http_get(server.admin, "/healthz").await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_fails_no_call_and_changes_the_server_certificate() {
    let ttl = Duration::from_secs(3);
    let issuer = TestIssuer::start(ttl).await;
    let server = EchoServer::start(&issuer).await;
    let gateway = issuer.mint(&spiffe_id("/svc/gateway"));
    let observer = reckless_client_config(Some(&gateway));
    let mut long_lived = echo_client(&gateway, server.addr, &echo_id());

    let mut leaves = HashSet::new();
    let (mut calls, mut failures) = (0u32, Vec::new());
    let started = Instant::now();
    while started.elapsed() < ttl * 3 {
        // A fresh connection (new handshake) for every call, so each sees
        // the server's current SVID...
        let mut fresh = echo_client(&gateway, server.addr, &echo_id());
        for client in [&mut fresh, &mut long_lived] {
            calls += 1;
            if let Err(e) = client.say(say("tick")).await {
                failures.push(format!("{:?}: {e}", started.elapsed()));
            }
        }
        // ...and note which certificate the server presents.
        if let Ok(leaf) = server_leaf(observer.clone(), server.addr).await {
            leaves.insert(leaf);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed, first: {:?}",
        failures.len(),
        failures.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        leaves.len() >= 2,
        "the server presented {} certificate(s) over three TTLs",
        leaves.len()
    );
    assert!(calls > 20, "only {calls} calls were made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_calls_finish() {
    let issuer = TestIssuer::start(Duration::from_secs(3600)).await;
    let server = EchoServer::start(&issuer).await;
    let gateway = issuer.mint(&spiffe_id("/svc/gateway"));
    let mut client = echo_client(&gateway, server.addr, &echo_id());
    client.say(say("warm-up")).await.expect("warm-up call");
    let in_flight = tokio::spawn(async move {
        client
            .say(SayRequest {
                message: "slow".into(),
                delay_ms: 800,
                ..SayRequest::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = server.addr;
    server.stop().await;
    let reply = in_flight
        .await
        .unwrap()
        .expect("the in-flight call finished");
    assert_eq!(reply.into_inner().message, "slow");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}
