//! The policy layer end to end around a tiny tower service (no network).

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use prometheus_client::registry::Registry;
use prost::Message;
use tonic::body::Body;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt, service_fn};
use trustmesh_policy::{
    DecisionOutcome, PeerIdentity, PolicyEngine, PolicyInput, PolicyLayer, PolicyMetrics, Subject,
};
use trustmesh_proto::spiffe::workload::{JwtsvidRequest, ValidateJwtsvidRequest};

const VALIDATE: &str = "/SpiffeWorkloadAPI/ValidateJWTSVID";

/// What the inner service saw.
#[derive(Clone, Default)]
struct Seen {
    calls: Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>,
}

impl Seen {
    fn service(&self) -> BoxCloneService<Request<Body>, Response<Body>, Infallible> {
        let calls = self.calls.clone();
        BoxCloneService::new(service_fn(move |req: Request<Body>| {
            let calls = calls.clone();
            async move {
                let path = req.uri().path().to_owned();
                let headers = req.headers().clone();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                calls.lock().expect("lock").push((path, headers, body));
                let mut res = Response::new(Body::default());
                res.headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static("0"));
                Ok::<_, Infallible>(res)
            }
        }))
    }

    fn count(&self) -> usize {
        self.calls.lock().expect("lock").len()
    }
}

fn frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut out = Vec::with_capacity(encoded.len() + 5);
    out.push(0);
    out.extend_from_slice(&u32::try_from(encoded.len()).expect("len").to_be_bytes());
    out.extend_from_slice(&encoded);
    Bytes::from(out)
}

fn request(path: &str, body: Bytes, peer: Option<&str>) -> Request<Body> {
    let mut req = Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "grpc-test/1.0")
        .body(Body::new(Full::new(body)))
        .expect("request");
    req.extensions_mut().insert(PeerIdentity {
        spiffe_id: peer.map(Arc::from),
        remote_addr: Some("127.0.0.1:4000".parse().expect("addr")),
    });
    req
}

fn validate(audience: &str) -> Bytes {
    frame(&ValidateJwtsvidRequest {
        audience: audience.into(),
        svid: "eyJhbGciOi.x.y".into(),
    })
}

const GATEWAY: Option<&str> = Some("spiffe://trustmesh.local/svc/gateway");

struct Fixture {
    layer: PolicyLayer,
    metrics: PolicyMetrics,
    registry: Registry,
    denies: Arc<Mutex<Vec<(PolicyInput, String)>>>,
}

fn fixture(engine: PolicyEngine, service: &str) -> Fixture {
    let mut registry = Registry::default();
    let metrics = PolicyMetrics::register(&mut registry);
    let denies: Arc<Mutex<Vec<(PolicyInput, String)>>> = Arc::default();
    let hook_denies = denies.clone();
    let layer = PolicyLayer::new(engine, service, metrics.clone())
        .with_descriptors(&[trustmesh_proto::FILE_DESCRIPTOR_SET])
        .expect("descriptors")
        .with_deny_hook(Arc::new(move |input, decision| {
            hook_denies
                .lock()
                .expect("lock")
                .push((input.clone(), decision.reason.clone()));
        }));
    Fixture {
        layer,
        metrics,
        registry,
        denies,
    }
}

fn header<'a>(res: &'a Response<Body>, name: &str) -> Option<&'a str> {
    res.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn allowed_call_reaches_the_inner_service_with_the_body_intact() {
    let f = fixture(common::engine(), "demo");
    let seen = Seen::default();
    let svc = f.layer.layer(seen.service());
    let body = validate("trustmesh");
    let res = svc
        .oneshot(request(VALIDATE, body.clone(), GATEWAY))
        .await
        .expect("infallible");
    assert_eq!(header(&res, "grpc-status"), Some("0"));
    let calls = seen.calls.lock().expect("lock");
    assert_eq!(calls.len(), 1);
    let (path, headers, received) = &calls[0];
    assert_eq!(path, VALIDATE);
    assert_eq!(received, &body, "body must be handed on unchanged");
    // A request id was generated and handed on.
    let id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert_eq!(
        f.metrics
            .decisions("demo", "ValidateJWTSVID", DecisionOutcome::Allow),
        1
    );
    assert!(f.denies.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn denied_call_gets_permission_denied_with_the_reason() {
    let f = fixture(common::engine(), "demo");
    let seen = Seen::default();
    let svc = f.layer.layer(seen.service());
    let mut req = request(VALIDATE, validate("elsewhere"), GATEWAY);
    req.headers_mut()
        .insert("x-request-id", http::HeaderValue::from_static("req-42"));
    req.headers_mut().insert(
        "x-client-ip",
        http::HeaderValue::from_static("198.51.100.4"),
    );
    let res = svc.oneshot(req).await.expect("infallible");
    assert_eq!(seen.count(), 0, "a denied call must not reach the service");
    assert_eq!(header(&res, "grpc-status"), Some("7"));
    assert_eq!(
        header(&res, "grpc-message"),
        Some("policy%20denied:%20audience_not_allowed")
    );
    assert_eq!(
        header(&res, "x-trustmesh-deny-reason"),
        Some("audience_not_allowed")
    );
    let status = tonic::Status::from_header_map(res.headers()).expect("status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "policy denied: audience_not_allowed");

    assert_eq!(
        f.metrics
            .decisions("demo", "ValidateJWTSVID", DecisionOutcome::Deny),
        1
    );
    let denies = f.denies.lock().expect("lock");
    assert_eq!(denies.len(), 1);
    let (input, reason) = &denies[0];
    assert_eq!(reason, "audience_not_allowed");
    assert_eq!(input.service, "demo");
    assert_eq!(input.method, "ValidateJWTSVID");
    assert_eq!(input.rpc, VALIDATE);
    assert_eq!(input.peer.spiffe_id.as_deref(), GATEWAY);
    assert_eq!(input.peer.workload.as_deref(), Some("gateway"));
    assert_eq!(
        input.request,
        serde_json::json!({"audience": "elsewhere", "svid": "eyJhbGciOi.x.y"})
    );
    assert_eq!(input.context.request_id, "req-42");
    assert_eq!(input.context.client_ip.as_deref(), Some("198.51.100.4"));
    assert_eq!(input.context.user_agent.as_deref(), Some("grpc-test/1.0"));
    let t = &input.context.time;
    assert!(
        t.len() >= 20 && t.as_bytes()[10] == b'T' && t.ends_with('Z'),
        "{t}"
    );
}

#[tokio::test]
async fn repeated_fields_and_defaults_are_decoded() {
    let f = fixture(common::engine(), "demo");
    let seen = Seen::default();
    let path = "/SpiffeWorkloadAPI/FetchJWTSVID";
    let ok = frame(&JwtsvidRequest {
        audience: vec!["a".into(), "trustmesh".into()],
        spiffe_id: String::new(),
    });
    let res = f
        .layer
        .layer(seen.service())
        .oneshot(request(path, ok, GATEWAY))
        .await
        .expect("infallible");
    assert_eq!(header(&res, "grpc-status"), Some("0"));
    assert_eq!(seen.count(), 1);

    let no = frame(&JwtsvidRequest {
        audience: vec!["a".into()],
        spiffe_id: String::new(),
    });
    let res = f
        .layer
        .layer(seen.service())
        .oneshot(request(path, no, GATEWAY))
        .await
        .expect("infallible");
    assert_eq!(
        header(&res, "x-trustmesh-deny-reason"),
        Some("audience_not_allowed")
    );
    let denies = f.denies.lock().expect("lock");
    // Default values are present (`spiffe_id: ""`), names as in the .proto.
    assert_eq!(
        denies[0].0.request,
        serde_json::json!({"audience": ["a"], "spiffe_id": ""})
    );
}

#[tokio::test]
async fn streaming_methods_get_an_empty_request() {
    let f = fixture(common::engine(), "demo");
    let seen = Seen::default();
    let res = f
        .layer
        .layer(seen.service())
        .oneshot(request(
            "/SpiffeWorkloadAPI/FetchX509SVID",
            frame(&ValidateJwtsvidRequest::default()),
            GATEWAY,
        ))
        .await
        .expect("infallible");
    assert_eq!(
        header(&res, "x-trustmesh-deny-reason"),
        Some("unknown_method")
    );
    let denies = f.denies.lock().expect("lock");
    assert_eq!(denies[0].0.request, serde_json::json!({}));
}

#[tokio::test]
async fn gateway_health_checks() {
    let engine = PolicyEngine::embedded().expect("embedded");
    let f = fixture(engine, "gateway");
    let seen = Seen::default();
    let path = "/grpc.health.v1.Health/Check";
    let res = f
        .layer
        .layer(seen.service())
        .oneshot(request(path, Bytes::new(), GATEWAY))
        .await
        .expect("infallible");
    assert_eq!(header(&res, "grpc-status"), Some("0"));
    assert_eq!(seen.count(), 1);

    let res = f
        .layer
        .layer(seen.service())
        .oneshot(request(path, Bytes::new(), None))
        .await
        .expect("infallible");
    assert_eq!(
        header(&res, "x-trustmesh-deny-reason"),
        Some("peer_unauthenticated")
    );

    let res = f
        .layer
        .layer(seen.service())
        .oneshot(request("/trustmesh.x.v1.X/Y", Bytes::new(), GATEWAY))
        .await
        .expect("infallible");
    assert_eq!(
        header(&res, "x-trustmesh-deny-reason"),
        Some("unknown_method")
    );
    assert_eq!(seen.count(), 1);
    assert_eq!(
        f.metrics
            .decisions("gateway", "Check", DecisionOutcome::Allow),
        1
    );
    assert_eq!(
        f.metrics
            .decisions("gateway", "Check", DecisionOutcome::Deny),
        1
    );
    assert_eq!(
        f.metrics.decisions("gateway", "Y", DecisionOutcome::Deny),
        1
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &f.registry).expect("encode");
    assert!(
        text.contains(
            r#"policy_decisions_total{service="gateway",method="Check",decision="allow"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"policy_decision_duration_seconds_count{service="gateway"} 3"#),
        "{text}"
    );
}

#[tokio::test]
async fn subject_resolver_feeds_the_subject_and_its_errors_are_returned() {
    let resolver = |headers: &HeaderMap| -> Result<Option<Subject>, tonic::Status> {
        match headers.get("authorization").map(|v| v.to_str()) {
            None => Ok(None),
            Some(Ok("Bearer good")) => Ok(Some(Subject {
                sub: "u-1".into(),
                role: "admin".into(),
                sid: "s-1".into(),
                mfa: true,
            })),
            Some(_) => Err(tonic::Status::unauthenticated("bad token")),
        }
    };
    let f = fixture(common::engine(), "demo");
    let layer = f.layer.clone().with_subject_resolver(Arc::new(resolver));
    let seen = Seen::default();
    let path = "/trustmesh.demo.v1.Demo/Purge";

    let mut req = request(path, Bytes::new(), GATEWAY);
    req.headers_mut().insert(
        "authorization",
        http::HeaderValue::from_static("Bearer good"),
    );
    let res = layer
        .layer(seen.service())
        .oneshot(req)
        .await
        .expect("infallible");
    assert_eq!(header(&res, "grpc-status"), Some("0"));
    assert_eq!(seen.count(), 1);

    let res = layer
        .layer(seen.service())
        .oneshot(request(path, Bytes::new(), GATEWAY))
        .await
        .expect("infallible");
    assert_eq!(
        header(&res, "x-trustmesh-deny-reason"),
        Some("role_required")
    );

    let mut req = request(path, Bytes::new(), GATEWAY);
    req.headers_mut().insert(
        "authorization",
        http::HeaderValue::from_static("Bearer bad"),
    );
    let res = layer
        .layer(seen.service())
        .oneshot(req)
        .await
        .expect("infallible");
    assert_eq!(header(&res, "grpc-status"), Some("16"));
    assert_eq!(seen.count(), 1);
}

#[tokio::test]
async fn oversized_and_compressed_bodies_are_refused() {
    let f = fixture(common::engine(), "demo");
    let seen = Seen::default();
    let big = Bytes::from(vec![0u8; trustmesh_policy::MAX_DECODED_BODY + 1]);
    let res = f
        .layer
        .layer(seen.service())
        .oneshot(request(VALIDATE, big, GATEWAY))
        .await
        .expect("infallible");
    assert_eq!(header(&res, "grpc-status"), Some("8"));

    let mut compressed = validate("trustmesh").to_vec();
    compressed[0] = 1;
    let res = f
        .layer
        .layer(seen.service())
        .oneshot(request(VALIDATE, Bytes::from(compressed), GATEWAY))
        .await
        .expect("infallible");
    assert_eq!(header(&res, "grpc-status"), Some("3"));

    let mut two = validate("trustmesh").to_vec();
    two.extend_from_slice(&validate("elsewhere"));
    let res = f
        .layer
        .layer(seen.service())
        .oneshot(request(VALIDATE, Bytes::from(two), GATEWAY))
        .await
        .expect("infallible");
    assert_eq!(header(&res, "grpc-status"), Some("3"));

    let res = f
        .layer
        .layer(seen.service())
        .oneshot(request(
            VALIDATE,
            Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]),
            GATEWAY,
        ))
        .await
        .expect("infallible");
    assert_eq!(header(&res, "grpc-status"), Some("3"));
    assert_eq!(seen.count(), 0);
}

#[tokio::test]
async fn evaluation_errors_are_internal() {
    let engine = PolicyEngine::embedded()
        .expect("embedded")
        .with_extra_policies(&[(
            "bad.rego".into(),
            "package trustmesh.bad\n\ndecision := 42\n".into(),
        )])
        .expect("loads");
    let f = fixture(engine, "bad");
    let seen = Seen::default();
    let res = f
        .layer
        .layer(seen.service())
        .oneshot(request(VALIDATE, validate("trustmesh"), GATEWAY))
        .await
        .expect("infallible");
    assert_eq!(header(&res, "grpc-status"), Some("13"));
    assert_eq!(seen.count(), 0);
    assert_eq!(
        f.metrics
            .decisions("bad", "ValidateJWTSVID", DecisionOutcome::Error),
        1
    );
}

#[test]
fn descriptors_must_decode() {
    let err = PolicyLayer::new(
        PolicyEngine::embedded().expect("embedded"),
        "demo",
        PolicyMetrics::unregistered(),
    )
    .with_descriptors(&[b"\xff\xff not a descriptor set"])
    .expect_err("garbage");
    assert!(matches!(err, trustmesh_policy::PolicyError::Descriptors(_)));
}

/// The layer fits tonic's server builder over its router (type check, and a
/// server that starts and stops at once).
#[tokio::test]
async fn layer_fits_the_tonic_server_builder() {
    let layer = PolicyLayer::new(
        PolicyEngine::embedded().expect("embedded"),
        "gateway",
        PolicyMetrics::unregistered(),
    );
    let routes = tonic::service::Routes::default();
    let served = tonic::transport::Server::builder()
        .layer(layer)
        .add_routes(routes)
        .serve_with_shutdown("127.0.0.1:0".parse().expect("addr"), async {})
        .await;
    assert!(served.is_ok(), "{served:?}");
}
