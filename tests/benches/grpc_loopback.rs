//! Loopback benchmark of one unary gRPC call through the full mesh path
//! (mTLS 1.3 + peer SPIFFE ID + Rego policy with request decoding) against
//! the same call over plaintext without policy, in one run.
//!
//! Reports, for each: single-caller p50/p99 latency, and calls/s with p50/p99
//! at 64 concurrent callers (spread over 4 HTTP/2 connections); then full
//! mTLS handshakes per second and memory per open mTLS connection.
//! Client and server share this process and the machine's cores.
//!
//! Run: `cargo bench -p trustmesh-tests --bench grpc_loopback`
//! (`BENCH_SECONDS` sets the length of each throughput phase, default 5).

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use trustmesh_runtime::{MeshChannel, RetryUnprocessed, Shutdown, SvidFiles};
use trustmesh_tests::echo::SayRequest;
use trustmesh_tests::echo::echo_client::EchoClient;
use trustmesh_tests::echo::echo_server::EchoServer as EchoGrpc;
use trustmesh_tests::stats::percentile;
use trustmesh_tests::{
    EchoServer, EchoService, TestIssuer, echo_id, reckless_client_config, server_leaf, spiffe_id,
};

const CALLERS: usize = 64;
const CONNECTIONS: usize = 4;

struct Figures {
    single_p50: Duration,
    single_p99: Duration,
    rate: f64,
    p50: Duration,
    p99: Duration,
}

fn request() -> SayRequest {
    SayRequest {
        message: "benchmark payload".into(),
        user_id: "0190b0c4-6d1c-7c3a-9d4e-2f1a3b5c7d9e".into(),
        delay_ms: 0,
    }
}

async fn measure(channels: Vec<MeshChannel>, seconds: u64) -> Figures {
    // Single caller, sequential.
    let mut client = EchoClient::new(channels[0].clone());
    for _ in 0..500 {
        client.say(request()).await.unwrap();
    }
    let mut single = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let started = Instant::now();
        client.say(request()).await.unwrap();
        single.push(started.elapsed());
    }
    single.sort();

    // 64 concurrent callers.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let mut client = EchoClient::new(channels[caller % channels.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            while Instant::now() < deadline {
                let call = Instant::now();
                client.say(request()).await.unwrap();
                latencies.push(call.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    Figures {
        single_p50: percentile(&single, 0.5),
        single_p99: percentile(&single, 0.99),
        rate: all.len() as f64 / elapsed,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
    }
}

async fn plaintext_server() -> (SocketAddr, Shutdown) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let wait = shutdown.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(EchoGrpc::new(EchoService))
            .serve_with_incoming_shutdown(tokio_stream_incoming(listener), async move {
                wait.wait().await
            })
            .await
            .unwrap();
    });
    (addr, shutdown)
}

fn tokio_stream_incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(tcp, _)| {
            let _ = tcp.set_nodelay(true);
            tcp
        });
        Some((accepted, listener))
    })
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn print(label: &str, f: &Figures) {
    println!(
        "{label:<26} single caller p50 {:>7.1} µs  p99 {:>7.1} µs | {CALLERS} callers: {:>8.0} calls/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
        f.single_p50.as_secs_f64() * 1e6,
        f.single_p99.as_secs_f64() * 1e6,
        f.rate,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
    );
}

async fn handshakes_per_second(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    seconds: u64,
) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let mut count = 0u64;
            while Instant::now() < deadline {
                server_leaf(config.clone(), addr).await.unwrap();
                count += 1;
            }
            count
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let issuer = TestIssuer::start(Duration::from_secs(3600)).await;
        let mesh_server = EchoServer::start(&issuer).await;
        let gateway: SvidFiles = issuer.mint(&spiffe_id("/svc/gateway"));
        let (plain_addr, plain_shutdown) = plaintext_server().await;

        let mtls_channels = || -> Vec<MeshChannel> {
            (0..CONNECTIONS)
                .map(|_| {
                    let config = gateway.client_config(&echo_id()).unwrap();
                    trustmesh_runtime::connect_channel(config, &mesh_server.addr.to_string()).unwrap()
                })
                .collect()
        };
        // The same client stack (with its retry layer), minus TLS.
        let plain_channels = || -> Vec<MeshChannel> {
            (0..CONNECTIONS)
                .map(|_| {
                    RetryUnprocessed::new(
                        Channel::from_shared(format!("http://{plain_addr}"))
                            .unwrap()
                            .tcp_nodelay(true)
                            .connect_lazy(),
                    )
                })
                .collect()
        };

        println!("unary Echo/Say on loopback, {seconds} s per throughput phase, {CONNECTIONS} HTTP/2 connections");
        // Interleave the two paths twice and keep the better run of each, so
        // a noisy neighbour does not decide the comparison.
        let mut plain_runs = Vec::new();
        let mut mesh_runs = Vec::new();
        for _ in 0..2 {
            plain_runs.push(measure(plain_channels(), seconds).await);
            mesh_runs.push(measure(mtls_channels(), seconds).await);
        }
        let best = |runs: Vec<Figures>| runs.into_iter().max_by(|a, b| a.rate.total_cmp(&b.rate)).unwrap();
        let plain = best(plain_runs);
        let mesh = best(mesh_runs);
        print("plaintext, no policy", &plain);
        print("mTLS + policy (full path)", &mesh);
        println!(
            "ratio full/plaintext: single-caller p50 {:.2}x, 64-caller p50 {:.2}x, throughput {:.2}x",
            mesh.single_p50.as_secs_f64() / plain.single_p50.as_secs_f64(),
            mesh.p50.as_secs_f64() / plain.p50.as_secs_f64(),
            mesh.rate / plain.rate,
        );

        let observer = reckless_client_config(Some(&gateway));
        let rate = handshakes_per_second(observer.clone(), mesh_server.addr, seconds.min(3)).await;
        println!("new mTLS handshakes (TLS 1.3, P-256, 16 concurrent): {rate:.0}/s");

        // Memory per open connection: open N idle mTLS HTTP/2 connections
        // (client and server sides both live in this process).
        let open = 500;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib();
        let mut held = Vec::with_capacity(open);
        for _ in 0..open {
            let config = gateway.client_config(&echo_id()).unwrap();
            let channel = trustmesh_runtime::connect_channel(config, &mesh_server.addr.to_string()).unwrap();
            let mut client = EchoClient::new(channel);
            client.say(request()).await.unwrap();
            held.push(client);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib();
        println!(
            "memory per open mTLS connection (client + server side, RSS delta over {open}): {:.1} KiB",
            (after.saturating_sub(before)) as f64 / open as f64
        );
        drop(held);
        plain_shutdown.trigger();
        mesh_server.stop().await;
    });
}
