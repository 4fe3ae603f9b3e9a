//! One authorization decision for a realistic input: the gateway calling a
//! service's `Transfer` on behalf of a user with a role, with a request of a
//! few fields. Criterion reports the mean/median; after it, a plain loop of
//! timed calls prints p50/p90/p99/p99.9 for each evaluator, and the layer's
//! full in-process path (frame decode, input, decision, metrics) is timed too.
//!
//! `cargo bench -p trustmesh-policy --bench decision`

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response};
use http_body_util::Full;
use prost::Message;
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt, service_fn};
use trustmesh_policy::{PeerIdentity, PolicyEngine, PolicyInput, PolicyLayer, PolicyMetrics};
use trustmesh_proto::spiffe::workload::ValidateJwtsvidRequest;

#[path = "../tests/common/mod.rs"]
mod common;

const TIMED_CALLS: usize = 200_000;

fn engines() -> Vec<(&'static str, PolicyEngine)> {
    let rvm = common::engine();
    let interp = rvm.clone().interpreter_only().expect("interpreter");
    vec![("rvm", rvm), ("interpreter", interp)]
}

fn bench_decision(c: &mut Criterion) {
    let input = common::transfer_input();
    for (name, engine) in engines() {
        let d = engine.authorize(&input).expect("eval");
        assert!(d.allow, "{d:?}");
        c.bench_function(&format!("authorize/{name}"), |b| {
            b.iter(|| engine.authorize(black_box(&input)).expect("eval"))
        });
    }
    let engine = common::engine();
    c.bench_function("build_input_value", |b| {
        b.iter(|| black_box(&input).to_value())
    });
    let mut deny = input.clone();
    deny.peer.workload = Some("wallet".into());
    c.bench_function("authorize/rvm/deny", |b| {
        b.iter(|| engine.authorize(black_box(&deny)).expect("eval"))
    });
}

fn frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut out = Vec::with_capacity(encoded.len() + 5);
    out.push(0);
    out.extend_from_slice(&u32::try_from(encoded.len()).expect("len").to_be_bytes());
    out.extend_from_slice(&encoded);
    Bytes::from(out)
}

type Svc = trustmesh_policy::PolicyService<
    tower::util::BoxCloneService<Request<Body>, Response<Body>, Infallible>,
>;

fn layered() -> Svc {
    let layer = PolicyLayer::new(common::engine(), "demo", PolicyMetrics::unregistered())
        .with_descriptors(&[trustmesh_proto::FILE_DESCRIPTOR_SET])
        .expect("descriptors");
    let inner = tower::util::BoxCloneService::new(service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::default()))
    }));
    layer.layer(inner)
}

fn layer_request(body: &Bytes, peer: &PeerIdentity) -> Request<Body> {
    let mut req = Request::builder()
        .method("POST")
        .uri("http://localhost/SpiffeWorkloadAPI/ValidateJWTSVID")
        .header("content-type", "application/grpc")
        .header("x-request-id", "bench-1")
        .body(Body::new(Full::new(body.clone())))
        .expect("request");
    req.extensions_mut().insert(peer.clone());
    req
}

fn bench_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let svc = layered();
    let body = frame(&ValidateJwtsvidRequest {
        audience: "trustmesh".into(),
        svid: "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln".into(),
    });
    let peer = PeerIdentity {
        spiffe_id: Some(Arc::from("spiffe://trustmesh.local/svc/gateway")),
        remote_addr: None,
    };
    c.bench_function("layer/unary_call_decoded", |b| {
        b.iter(|| {
            let res = rt
                .block_on(svc.clone().oneshot(layer_request(&body, &peer)))
                .expect("infallible");
            black_box(res)
        })
    });
}

fn run_criterion() {
    let mut c = Criterion::default().configure_from_args();
    bench_decision(&mut c);
    bench_layer(&mut c);
    c.final_summary();
}

fn percentiles(label: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    println!(
        "{label:<34} n={} p50={:.2}µs p90={:.2}µs p99={:.2}µs p99.9={:.2}µs max={:.2}µs",
        samples.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        at(1.0)
    );
}

fn timed_decisions(engine: &PolicyEngine, input: &PolicyInput) -> Vec<Duration> {
    for _ in 0..10_000 {
        black_box(engine.authorize(input).expect("eval"));
    }
    let mut samples = Vec::with_capacity(TIMED_CALLS);
    for _ in 0..TIMED_CALLS {
        let t = Instant::now();
        black_box(engine.authorize(black_box(input)).expect("eval"));
        samples.push(t.elapsed());
    }
    samples
}

fn timed_layer_calls() -> Vec<Duration> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut svc = layered();
    let body = frame(&ValidateJwtsvidRequest {
        audience: "trustmesh".into(),
        svid: "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln".into(),
    });
    let peer = PeerIdentity {
        spiffe_id: Some(Arc::from("spiffe://trustmesh.local/svc/gateway")),
        remote_addr: None,
    };
    let n = TIMED_CALLS / 4;
    let mut samples = Vec::with_capacity(n);
    rt.block_on(async {
        for i in 0..(n + 5_000) {
            let req = layer_request(&body, &peer);
            let t = Instant::now();
            let ready = svc.ready().await.expect("infallible");
            let res = ready.call(req).await.expect("infallible");
            let took = t.elapsed();
            black_box(res);
            if i >= 5_000 {
                samples.push(took);
            }
        }
    });
    samples
}

fn main() {
    run_criterion();

    // `cargo test --benches` runs this binary with `--bench` absent: keep it quick.
    // `--profile-time` (profiling one benchmark) skips them too.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--profile-time") {
        return;
    }
    println!();
    println!("Percentiles over {TIMED_CALLS} timed decisions (one thread, Instant per call):");
    let input = common::transfer_input();
    for (name, engine) in engines() {
        percentiles(
            &format!("authorize/{name}"),
            timed_decisions(&engine, &input),
        );
    }
    percentiles("layer/unary_call_decoded", timed_layer_calls());
}
