//! The `SpiffeWorkloadAPI` gRPC service, behaving toward clients as SPIRE's
//! agent does: the `workload.spiffe.io: true` header is required
//! (InvalidArgument otherwise), callers are attested by their Unix peer
//! credentials (PermissionDenied "no identity issued" when nothing matches),
//! and the streaming RPCs push a new message on every change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use trustmesh_proto::spiffe::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse, spiffe_workload_api_server::SpiffeWorkloadApi,
};

use crate::issuer::{Inner, MintedSvid};
use crate::registry::Caller;

/// The security header every Workload API call must carry.
const SECURITY_HEADER: &str = "workload.spiffe.io";
/// The PermissionDenied message of SPIRE (clients match on it).
const NO_IDENTITY: &str = "no identity issued";
/// Rotation never happens more often than this, whatever the TTL.
const MIN_ROTATION: Duration = Duration::from_millis(500);

type Stream<T> = ReceiverStream<Result<T, Status>>;

/// The Workload API service.
pub(crate) struct WorkloadService {
    inner: Arc<Inner>,
    stop: watch::Receiver<bool>,
}

impl WorkloadService {
    pub(crate) fn new(inner: Arc<Inner>, stop: watch::Receiver<bool>) -> Self {
        Self { inner, stop }
    }

    /// Checks the security header, then attests the caller: its identities,
    /// or PermissionDenied if it has none.
    fn attest<T>(&self, request: &Request<T>, rpc: &str) -> Result<(Caller, Vec<String>), Status> {
        let caller = caller_of(request)?;
        let ids = self.inner.registry.identities(&caller);
        if ids.is_empty() {
            tracing::info!(%caller, rpc, "no identity issued");
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        tracing::debug!(%caller, rpc, ids = ?ids, "caller attested");
        Ok((caller, ids))
    }
}

fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(v) if v.to_str().is_ok_and(|s| s == "true") => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

fn caller_of<T>(request: &Request<T>) -> Result<Caller, Status> {
    let cred = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .ok_or_else(|| {
            tracing::warn!("Workload API caller without Unix peer credentials");
            Status::permission_denied(format!(
                "{NO_IDENTITY}: the caller's credentials are unavailable"
            ))
        })?;
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok());
    Ok(Caller::new(pid, cred.uid(), cred.gid()))
}

/// Resolves when the server shuts down (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One X.509-SVID held by a stream, with its rotation deadline.
struct Held {
    svid: MintedSvid,
    rotate_at: Instant,
}

fn current(inner: &Inner, id: &str) -> Result<Held, Status> {
    inner
        .current_svid(id)
        .map(|(svid, rotate_at)| Held {
            svid,
            rotate_at: Instant::from_std(rotate_at),
        })
        .map_err(|e| {
            tracing::error!(spiffe_id = %id, error = %e, "cannot mint an X.509-SVID");
            Status::internal("cannot mint an X.509-SVID")
        })
}

fn serials(held: &[Held]) -> Vec<String> {
    held.iter().map(|h| h.svid.serial_hex()).collect()
}

fn x509_response(inner: &Inner, held: &[Held]) -> X509svidResponse {
    X509svidResponse {
        svids: held
            .iter()
            .map(|h| X509svid {
                spiffe_id: h.svid.spiffe_id.clone(),
                x509_svid: h.svid.cert_chain_der.concat(),
                x509_svid_key: h.svid.key_pkcs8_der.clone(),
                bundle: inner.ca.cert_der.clone(),
                hint: String::new(),
            })
            .collect(),
        crl: Vec::new(),
        federated_bundles: HashMap::new(),
    }
}

fn mint_all(inner: &Inner, ids: &[String], reuse: Vec<Held>) -> Result<Vec<Held>, Status> {
    let mut reuse = reuse;
    ids.iter()
        .map(
            |id| match reuse.iter().position(|h| &h.svid.spiffe_id == id) {
                Some(i) => Ok(reuse.swap_remove(i)),
                None => current(inner, id),
            },
        )
        .collect()
}

/// Serves one `FetchX509SVID` stream until the client goes away, the server
/// stops, or the caller loses all its identities.
async fn run_x509_stream(
    inner: Arc<Inner>,
    caller: Caller,
    ids: Vec<String>,
    tx: mpsc::Sender<Result<X509svidResponse, Status>>,
    mut changes: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut held = match mint_all(&inner, &ids, Vec::new()) {
        Ok(h) => h,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    tracing::info!(%caller, ids = ?ids, serials = ?serials(&held), "X.509-SVIDs issued");
    if tx.send(Ok(x509_response(&inner, &held))).await.is_err() {
        return;
    }
    loop {
        let next_rotation = held
            .iter()
            .map(|h| h.rotate_at)
            .min()
            .unwrap_or_else(|| Instant::now() + MIN_ROTATION);
        tokio::select! {
            () = tx.closed() => break,
            () = stopped(&mut stop) => break,
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                let ids = inner.registry.identities(&caller);
                if ids.is_empty() {
                    tracing::info!(%caller, "identities withdrawn");
                    let _ = tx.send(Err(Status::permission_denied(NO_IDENTITY))).await;
                    break;
                }
                let current: Vec<&String> = held.iter().map(|h| &h.svid.spiffe_id).collect();
                if current.len() == ids.len() && current.iter().zip(&ids).all(|(a, b)| *a == b) {
                    continue;
                }
                held = match mint_all(&inner, &ids, held) {
                    Ok(h) => h,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                tracing::info!(%caller, ids = ?ids, serials = ?serials(&held),
                    "identities changed; X.509-SVIDs pushed");
                if tx.send(Ok(x509_response(&inner, &held))).await.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep_until(next_rotation) => {
                let now = Instant::now();
                let mut rotated = false;
                for h in &mut held {
                    if h.rotate_at <= now {
                        match current(&inner, &h.svid.spiffe_id) {
                            Ok(new) => {
                                rotated |= new.svid.cert_chain_der != h.svid.cert_chain_der;
                                *h = new;
                            }
                            Err(_) => h.rotate_at = now + MIN_ROTATION,
                        }
                    }
                }
                if rotated {
                    tracing::info!(%caller, serials = ?serials(&held), "X.509-SVIDs rotated");
                    if tx.send(Ok(x509_response(&inner, &held))).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    tracing::debug!(%caller, "FetchX509SVID stream closed");
}

/// Serves a stream whose content never changes (bundles): the first message,
/// then nothing until the client leaves, the server stops, or the caller
/// loses its identities.
async fn run_static_stream<T: Send + 'static>(
    inner: Arc<Inner>,
    caller: Caller,
    message: T,
    tx: mpsc::Sender<Result<T, Status>>,
    mut changes: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    if tx.send(Ok(message)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            () = tx.closed() => break,
            () = stopped(&mut stop) => break,
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                if inner.registry.identities(&caller).is_empty() {
                    let _ = tx.send(Err(Status::permission_denied(NO_IDENTITY))).await;
                    break;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadService {
    type FetchX509SVIDStream = Stream<X509svidResponse>;
    type FetchX509BundlesStream = Stream<X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        let (caller, ids) = self.attest(&request, "FetchX509SVID")?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(run_x509_stream(
            Arc::clone(&self.inner),
            caller,
            ids,
            tx,
            self.inner.registry.subscribe(),
            self.stop.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&request)?;
        let (caller, _) = self.attest(&request, "FetchX509Bundles")?;
        let message = X509BundlesResponse {
            crl: Vec::new(),
            bundles: HashMap::from([(
                self.inner.trust_domain.id_string(),
                self.inner.ca.cert_der.clone(),
            )]),
        };
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(run_static_stream(
            Arc::clone(&self.inner),
            caller,
            message,
            tx,
            self.inner.registry.subscribe(),
            self.stop.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&request)?;
        if request.get_ref().audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let (caller, ids) = self.attest(&request, "FetchJWTSVID")?;
        let req = request.into_inner();
        let ids = if req.spiffe_id.is_empty() {
            ids
        } else {
            let wanted = spiffe::SpiffeId::new(&req.spiffe_id)
                .map_err(|e| {
                    Status::invalid_argument(format!(
                        "invalid requested SPIFFE ID {:?}: {e}",
                        req.spiffe_id
                    ))
                })?
                .to_string();
            if !ids.contains(&wanted) {
                tracing::info!(%caller, requested = %wanted, "JWT-SVID for a foreign SPIFFE ID refused");
                return Err(Status::permission_denied(format!(
                    "{NO_IDENTITY}: the caller is not entitled to {wanted}"
                )));
            }
            vec![wanted]
        };
        let mut svids = Vec::with_capacity(ids.len());
        for id in ids {
            let token = self.inner.jwt.sign(&id, &req.audience).map_err(|e| {
                tracing::error!(spiffe_id = %id, error = %e, "cannot sign a JWT-SVID");
                Status::internal("cannot sign a JWT-SVID")
            })?;
            tracing::info!(%caller, spiffe_id = %id, audience = ?req.audience, "JWT-SVID issued");
            svids.push(Jwtsvid {
                spiffe_id: id,
                svid: token,
                hint: String::new(),
            });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&request)?;
        let (caller, _) = self.attest(&request, "FetchJWTBundles")?;
        let message = JwtBundlesResponse {
            bundles: HashMap::from([(
                self.inner.trust_domain.id_string(),
                self.inner.jwt.jwks_json.clone(),
            )]),
        };
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(run_static_stream(
            Arc::clone(&self.inner),
            caller,
            message,
            tx,
            self.inner.registry.subscribe(),
            self.stop.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        let req = request.get_ref();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let (caller, _) = self.attest(&request, "ValidateJWTSVID")?;
        let req = request.into_inner();
        let (spiffe_id, claims) = self
            .inner
            .jwt
            .validate(&req.svid, &req.audience, &self.inner.trust_domain)
            .map_err(|reason| {
                tracing::debug!(%caller, %reason, "JWT-SVID rejected");
                Status::invalid_argument(reason)
            })?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id,
            claims: Some(crate::jwt::to_struct(claims)),
        }))
    }
}
