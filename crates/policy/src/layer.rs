//! The tower layer that authorizes every gRPC call of a tonic server.
//!
//! Per request it builds the [`PolicyInput`] (peer from the request
//! extensions, subject from the [`SubjectResolver`], context from the
//! metadata, and for unary methods whose input type is known the decoded
//! request message), asks the [`PolicyEngine`], and either passes the request
//! on unchanged or answers `PERMISSION_DENIED` itself.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::body::Body;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tower::{Layer, Service};
use trustmesh_identity::PeerIdentity;

use crate::engine::PolicyEngine;
use crate::error::PolicyError;
use crate::input::{Decision, Peer, PolicyInput, RequestContext, Subject, now_rfc3339};
use crate::metrics::{DecisionOutcome, PolicyMetrics};

/// The largest unary request body the layer buffers to decode (4 MiB, the
/// tonic default message limit); larger ones get `RESOURCE_EXHAUSTED`.
pub const MAX_DECODED_BODY: usize = 4 * 1024 * 1024;

/// The metadata key carrying the reason code of a deny.
pub const DENY_REASON_METADATA: &str = "x-trustmesh-deny-reason";

/// The request id header; generated (UUID v4) when absent.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The future a [`SubjectResolver`] returns.
pub type SubjectFuture = Pin<Box<dyn Future<Output = Result<Option<Subject>, Status>> + Send>>;

/// Finds the end user of a call from its metadata (typically by verifying a
/// bearer JWT, which may need a JWKS fetch, hence async). `Ok(None)`: no
/// user; `Err(status)`: the call is answered with that status (e.g.
/// `UNAUTHENTICATED` for a bad token).
pub trait SubjectResolver: Send + Sync {
    /// Resolves the subject of a call from its headers.
    fn resolve(&self, headers: &HeaderMap) -> SubjectFuture;
}

impl<F> SubjectResolver for F
where
    F: Fn(&HeaderMap) -> Result<Option<Subject>, Status> + Send + Sync,
{
    fn resolve(&self, headers: &HeaderMap) -> SubjectFuture {
        let result = self(headers);
        Box::pin(std::future::ready(result))
    }
}

/// A callback run on every deny, with the input and the decision.
pub type DenyHook = Arc<dyn Fn(&PolicyInput, &Decision) + Send + Sync>;

#[derive(Clone, Debug)]
struct MethodInfo {
    /// The request message type, for unary methods.
    unary_input: Option<MessageDescriptor>,
}

#[derive(Clone)]
struct Shared {
    engine: PolicyEngine,
    service: String,
    metrics: PolicyMetrics,
    methods: Arc<HashMap<String, MethodInfo>>,
    resolver: Option<Arc<dyn SubjectResolver>>,
    deny_hook: Option<DenyHook>,
    json_options: SerializeOptions,
}

/// A [`tower::Layer`] authorizing every call of a tonic server with the
/// service's policy package: `Server::builder().layer(policy_layer)`.
#[derive(Clone)]
pub struct PolicyLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PolicyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyLayer")
            .field("service", &self.shared.service)
            .field("known_methods", &self.shared.methods.len())
            .field("subject_resolver", &self.shared.resolver.is_some())
            .field("deny_hook", &self.shared.deny_hook.is_some())
            .finish_non_exhaustive()
    }
}

impl PolicyLayer {
    /// A layer for the logical service `service` (package `trustmesh.<service>`).
    pub fn new(engine: PolicyEngine, service: &str, metrics: PolicyMetrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                engine,
                service: service.to_owned(),
                metrics,
                methods: Arc::new(HashMap::new()),
                resolver: None,
                deny_hook: None,
                json_options: SerializeOptions::new()
                    .use_proto_field_name(true)
                    .skip_default_fields(false)
                    .stringify_64_bit_integers(false),
            }),
        }
    }

    /// Decodes one or more encoded `FileDescriptorSet`s so that the request
    /// of each unary method they describe is decoded into `input.request`.
    pub fn with_descriptors(mut self, fds_bytes: &[&[u8]]) -> Result<Self, PolicyError> {
        let mut pool = DescriptorPool::new();
        for bytes in fds_bytes {
            pool.decode_file_descriptor_set(*bytes)
                .map_err(|e| PolicyError::Descriptors(e.to_string().replace('\n', " ")))?;
        }
        let mut methods = HashMap::new();
        for service in pool.services() {
            for method in service.methods() {
                let unary = !method.is_client_streaming() && !method.is_server_streaming();
                methods.insert(
                    format!("/{}/{}", service.full_name(), method.name()),
                    MethodInfo {
                        unary_input: unary.then(|| method.input()),
                    },
                );
            }
        }
        Arc::make_mut(&mut self.shared).methods = Arc::new(methods);
        Ok(self)
    }

    /// The paths (`/package.Service/Method`) of the methods the descriptors
    /// given to [`PolicyLayer::with_descriptors`] describe.
    pub fn method_paths(&self) -> impl Iterator<Item = &str> {
        self.shared.methods.keys().map(String::as_str)
    }

    /// Resolves the end user of each call with `r`.
    pub fn with_subject_resolver(mut self, r: Arc<dyn SubjectResolver>) -> Self {
        Arc::make_mut(&mut self.shared).resolver = Some(r);
        self
    }

    /// Runs `h` on every deny (the audit trail hooks in here).
    pub fn with_deny_hook(mut self, h: DenyHook) -> Self {
        Arc::make_mut(&mut self.shared).deny_hook = Some(h);
        self
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = PolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`PolicyLayer`].
#[derive(Clone)]
pub struct PolicyService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for PolicyService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyService")
            .field("service", &self.shared.service)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The future of [`PolicyService`].
pub type PolicyFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

impl<S, ResBody> Service<Request<Body>> for PolicyService<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = PolicyFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The instance that was polled ready serves this call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            match shared.authorize(req).await {
                Ok(req) => {
                    let mut inner = inner;
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

impl Shared {
    /// Authorizes `req`: the request to hand on, or the status to answer with.
    async fn authorize(&self, mut req: Request<Body>) -> Result<Request<Body>, Status> {
        let rpc = req.uri().path().to_owned();
        let method = rpc.rsplit('/').next().unwrap_or_default().to_owned();

        let spiffe_id = req
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.spiffe_id.as_deref())
            .map(str::to_owned);
        let workload = spiffe_id
            .as_deref()
            .and_then(|id| self.engine.workload_for(id));
        let subject = match &self.resolver {
            Some(resolver) => resolver.resolve(req.headers()).await?,
            None => None,
        };
        let context = request_context(req.headers_mut());

        let unary_input = self.methods.get(&rpc).and_then(|m| m.unary_input.as_ref());
        let request = match unary_input {
            Some(desc) => {
                let (parts, body) = req.into_parts();
                let bytes = read_body(body).await?;
                let request = decode_unary(desc, &bytes, &self.json_options)?;
                req = Request::from_parts(parts, Body::new(Full::new(bytes)));
                request
            }
            None => serde_json::Value::Object(serde_json::Map::new()),
        };

        let input = PolicyInput {
            service: self.service.clone(),
            method,
            rpc,
            peer: Peer {
                spiffe_id,
                workload,
            },
            subject,
            request,
            context,
        };

        let started = Instant::now();
        let result = self.engine.authorize(&input);
        let took = started.elapsed();
        match result {
            Ok(decision) if decision.allow => {
                self.metrics
                    .record(&input.service, &input.method, DecisionOutcome::Allow, took);
                // Handlers read the verified end user from the extensions.
                if let Some(subject) = input.subject {
                    req.extensions_mut().insert(subject);
                }
                Ok(req)
            }
            Ok(decision) => {
                self.metrics
                    .record(&input.service, &input.method, DecisionOutcome::Deny, took);
                // A deny is a security event: logged at info until the
                // audit pipeline records it through the deny hook.
                tracing::info!(
                    service = %input.service,
                    rpc = %input.rpc,
                    peer = input.peer.spiffe_id.as_deref().unwrap_or("-"),
                    reason = %decision.reason,
                    request_id = %input.context.request_id,
                    "policy denied"
                );
                if let Some(hook) = &self.deny_hook {
                    hook(&input, &decision);
                }
                Err(deny_status(&decision.reason))
            }
            Err(e) => {
                self.metrics
                    .record(&input.service, &input.method, DecisionOutcome::Error, took);
                tracing::error!(
                    service = %input.service,
                    rpc = %input.rpc,
                    request_id = %input.context.request_id,
                    error = %e,
                    "policy evaluation failed"
                );
                Err(Status::internal("authorization failed"))
            }
        }
    }
}

/// `PERMISSION_DENIED` with `policy denied: <reason>` and the reason in
/// `x-trustmesh-deny-reason`.
pub fn deny_status(reason: &str) -> Status {
    let mut metadata = MetadataMap::new();
    match MetadataValue::try_from(reason) {
        Ok(value) => {
            metadata.insert(DENY_REASON_METADATA, value);
        }
        Err(_) => tracing::warn!(reason, "deny reason is not a valid metadata value"),
    }
    Status::with_metadata(
        Code::PermissionDenied,
        format!("policy denied: {reason}"),
        metadata,
    )
}

/// The context of a call from its metadata; inserts a generated
/// `x-request-id` when the call has none, so the handler sees the same id.
fn request_context(headers: &mut HeaderMap) -> RequestContext {
    let text = |headers: &HeaderMap, name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let request_id = match text(headers, REQUEST_ID_HEADER) {
        Some(id) => id,
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            if let Ok(value) = HeaderValue::from_str(&id) {
                headers.insert(REQUEST_ID_HEADER, value);
            }
            id
        }
    };
    RequestContext {
        time: now_rfc3339(),
        client_ip: text(headers, "x-client-ip"),
        user_agent: text(headers, "x-client-user-agent").or_else(|| text(headers, "user-agent")),
        request_id,
    }
}

/// Buffers a request body of at most [`MAX_DECODED_BODY`] bytes.
async fn read_body(body: Body) -> Result<Bytes, Status> {
    match Limited::new(body, MAX_DECODED_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(
            Status::resource_exhausted(format!("request larger than {MAX_DECODED_BODY} bytes")),
        ),
        Err(e) => match e.downcast::<Status>() {
            Ok(status) => Err(*status),
            Err(e) => Err(Status::cancelled(format!("request body not received: {e}"))),
        },
    }
}

/// Decodes the single gRPC frame of a unary request into proto3 JSON (field
/// names as in the `.proto`, default values included, 64-bit integers as
/// numbers). An empty body gives `{}` (the handler rejects it).
fn decode_unary(
    desc: &MessageDescriptor,
    body: &[u8],
    options: &SerializeOptions,
) -> Result<serde_json::Value, Status> {
    if body.is_empty() {
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    }
    let malformed = || Status::invalid_argument("malformed gRPC request frame");
    let (header, message) = body.split_at_checked(5).ok_or_else(malformed)?;
    let [flag, l0, l1, l2, l3] = *header else {
        return Err(malformed());
    };
    match flag {
        0 => {}
        1 => {
            return Err(Status::invalid_argument(
                "compressed requests are not accepted",
            ));
        }
        _ => return Err(malformed()),
    }
    let len = usize::try_from(u32::from_be_bytes([l0, l1, l2, l3])).map_err(|_| malformed())?;
    if message.len() != len {
        return Err(Status::invalid_argument(
            "a unary request must carry exactly one message",
        ));
    }
    let message = DynamicMessage::decode(desc.clone(), message)
        .map_err(|_| Status::invalid_argument("malformed request message"))?;
    message
        .serialize_with_options(serde_json::value::Serializer, options)
        .map_err(|e| Status::invalid_argument(format!("request message not representable: {e}")))
}
