//! The local issuer: a CA in the data directory plus a SPIFFE Workload API
//! server on a Unix socket, standing in for a SPIRE agent.
//!
//! ```no_run
//! # async fn run() -> Result<(), trustmesh_identity::IdentityError> {
//! use trustmesh_identity::{Issuer, IssuerConfig};
//! let issuer = Issuer::open(IssuerConfig::new(".trustmesh"))?;
//! let registry = issuer.registry();
//! // ... spawn children, registry.register_pid(child_pid, "spiffe://trustmesh.local/svc/x".into())
//! issuer.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType,
};
use spiffe::TrustDomain;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use trustmesh_proto::spiffe::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;

use crate::ca::{Ca, generate_p256, random_serial};
use crate::jwt::JwtKey;
use crate::registry::{EntryStore, Registry};
use crate::util::{
    atomic_write, ensure_dir, hex, parse_trust_domain, parse_workload_id, pem_encode,
};
use crate::{DEFAULT_TRUST_DOMAIN, IdentityError};

/// The shortest X.509-SVID TTL the issuer accepts.
pub const MIN_SVID_TTL: Duration = Duration::from_secs(2);
/// The longest X.509-SVID TTL the issuer accepts (the CA lives one year).
pub const MAX_SVID_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The default X.509-SVID TTL (SPIRE's default).
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(3600);
/// How far in the past an SVID's `notBefore` is set, for clock skew.
const BACKDATE: Duration = Duration::from_secs(10);
/// Longest Unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How often a running issuer polls `entries.json` for changes.
const ENTRY_POLL: Duration = Duration::from_millis(500);

/// Configuration of the issuer.
#[derive(Clone, Debug)]
pub struct IssuerConfig {
    /// The data directory: the CA lives in `<data_dir>/ca/`, entries in
    /// `<data_dir>/identity/`.
    pub data_dir: PathBuf,
    /// The trust domain name, e.g. `trustmesh.local` (no `spiffe://`).
    pub trust_domain: String,
    /// Lifetime of the X.509-SVIDs served by the Workload API (rotated at half-life).
    pub svid_ttl: Duration,
    /// Where the Workload API socket is created.
    pub socket_path: PathBuf,
}

impl IssuerConfig {
    /// The defaults for `data_dir`: trust domain [`DEFAULT_TRUST_DOMAIN`], TTL
    /// one hour, socket `<data_dir>/agent/workload.sock`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        let socket_path = data_dir.join("agent").join("workload.sock");
        Self {
            data_dir,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            svid_ttl: DEFAULT_SVID_TTL,
            socket_path,
        }
    }

    /// Sets the trust domain.
    #[must_use]
    pub fn with_trust_domain(mut self, trust_domain: impl Into<String>) -> Self {
        self.trust_domain = trust_domain.into();
        self
    }

    /// Sets the X.509-SVID TTL.
    #[must_use]
    pub fn with_svid_ttl(mut self, ttl: Duration) -> Self {
        self.svid_ttl = ttl;
        self
    }

    /// Sets the Workload API socket path.
    #[must_use]
    pub fn with_socket_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket_path = path.into();
        self
    }

    /// Checks every value; the error says which one is wrong and why.
    pub fn validate(&self) -> Result<(), IdentityError> {
        self.checked_trust_domain().map(|_| ())
    }

    fn checked_trust_domain(&self) -> Result<TrustDomain, IdentityError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(IdentityError::Config(
                "the data directory is empty".to_owned(),
            ));
        }
        if self.svid_ttl < MIN_SVID_TTL {
            return Err(IdentityError::Config(format!(
                "SVID TTL {:?} is too short (minimum {:?})",
                self.svid_ttl, MIN_SVID_TTL
            )));
        }
        if self.svid_ttl > MAX_SVID_TTL {
            return Err(IdentityError::Config(format!(
                "SVID TTL {:?} is too long (maximum {} days)",
                self.svid_ttl,
                MAX_SVID_TTL.as_secs() / 86400
            )));
        }
        if self.socket_path.as_os_str().is_empty() || self.socket_path.file_name().is_none() {
            return Err(IdentityError::Config(format!(
                "invalid Workload API socket path {:?}",
                self.socket_path
            )));
        }
        parse_trust_domain(&self.trust_domain)
    }
}

/// An X.509-SVID minted by the issuer, with its private key.
#[derive(Clone)]
pub struct MintedSvid {
    /// The SPIFFE ID (the certificate's only URI SAN).
    pub spiffe_id: String,
    /// DER certificates, leaf first.
    pub cert_chain_der: Vec<Vec<u8>>,
    /// The leaf's private key, unencrypted PKCS#8 DER.
    pub key_pkcs8_der: Vec<u8>,
    /// The leaf's `notAfter`.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for MintedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("MintedSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial_hex())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl MintedSvid {
    /// The certificate chain as PEM, leaf first.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", self.cert_chain_der.iter().map(Vec::as_slice))
    }

    /// The private key as PKCS#8 PEM (`PRIVATE KEY`).
    pub fn key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", [self.key_pkcs8_der.as_slice()])
    }

    /// The leaf certificate (DER).
    pub fn leaf_der(&self) -> &[u8] {
        self.cert_chain_der.first().map_or(&[], Vec::as_slice)
    }

    /// The leaf's serial number, lowercase hex.
    pub fn serial_hex(&self) -> String {
        use x509_parser::prelude::FromDer as _;
        x509_parser::certificate::X509Certificate::from_der(self.leaf_der())
            .map(|(_, c)| hex(c.raw_serial()))
            .unwrap_or_default()
    }
}

/// State shared by the issuer, its handles and the Workload API service.
pub(crate) struct Inner {
    pub(crate) config: IssuerConfig,
    pub(crate) trust_domain: TrustDomain,
    pub(crate) ca: Ca,
    pub(crate) jwt: JwtKey,
    pub(crate) registry: Registry,
    /// The current X.509-SVID of each SPIFFE ID, shared by all streams (like
    /// SPIRE's agent cache): reconnecting clients get the same SVID until it
    /// reaches half-life.
    svid_cache: Mutex<HashMap<String, CachedSvid>>,
}

#[derive(Clone)]
struct CachedSvid {
    svid: MintedSvid,
    rotate_at: Instant,
}

/// Rotation never happens more often than this, whatever the TTL.
const MIN_ROTATION: Duration = Duration::from_millis(500);

/// The local CA and SPIFFE Workload API server.
#[derive(Clone)]
pub struct Issuer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("trust_domain", &self.inner.trust_domain.as_str())
            .field("data_dir", &self.inner.config.data_dir)
            .field("socket_path", &self.inner.config.socket_path)
            .finish_non_exhaustive()
    }
}

fn absolute(path: &Path) -> Result<PathBuf, IdentityError> {
    std::path::absolute(path)
        .map_err(|e| IdentityError::io(format!("cannot resolve path {}", path.display()), e))
}

impl Issuer {
    /// Validates `config`, then loads the CA and JWT key of the data directory
    /// or creates them. Relative paths are made absolute.
    pub fn open(mut config: IssuerConfig) -> Result<Self, IdentityError> {
        let trust_domain = config.checked_trust_domain()?;
        config.data_dir = absolute(&config.data_dir)?;
        config.socket_path = absolute(&config.socket_path)?;
        let socket_len = config.socket_path.as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(IdentityError::Config(format!(
                "Workload API socket path {} is too long for a Unix socket ({socket_len} bytes, at most {MAX_SOCKET_PATH}); use a shorter data directory or socket path",
                config.socket_path.display()
            )));
        }
        fs::create_dir_all(&config.data_dir).map_err(|e| {
            IdentityError::io(
                format!("cannot create data directory {}", config.data_dir.display()),
                e,
            )
        })?;
        let ca_dir = config.data_dir.join("ca");
        let ca = Ca::load_or_create(&ca_dir, &trust_domain)?;
        let jwt = JwtKey::load_or_create(&ca_dir.join("jwt.key"))?;
        let store = EntryStore::open_in(&config.data_dir, trust_domain.clone())?;
        let registry = Registry::new(store);
        tracing::info!(trust_domain = %trust_domain, data_dir = %config.data_dir.display(),
            svid_ttl = ?config.svid_ttl, "identity issuer opened");
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                trust_domain,
                ca,
                jwt,
                registry,
                svid_cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The effective configuration (absolute paths).
    pub fn config(&self) -> &IssuerConfig {
        &self.inner.config
    }

    /// The trust domain name.
    pub fn trust_domain(&self) -> &str {
        self.inner.trust_domain.as_str()
    }

    /// The Workload API socket path.
    pub fn socket_path(&self) -> &Path {
        &self.inner.config.socket_path
    }

    /// The Workload API endpoint for `SPIFFE_ENDPOINT_SOCKET` (`unix:/abs/path`).
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.inner.config.socket_path.display())
    }

    /// The path of the CA certificate (`<data_dir>/ca/ca.pem`).
    pub fn ca_cert_path(&self) -> PathBuf {
        crate::ca::ca_cert_path(&self.inner.config.data_dir)
    }

    /// The registration entries (a cheap clone handle).
    pub fn registry(&self) -> Registry {
        self.inner.registry.clone()
    }

    /// The trust bundle: the CA certificate, DER.
    pub fn bundle_der(&self) -> Vec<u8> {
        self.inner.ca.cert_der.clone()
    }

    /// The trust bundle: the CA certificate, PEM.
    pub fn bundle_pem(&self) -> String {
        self.inner.ca.cert_pem.clone()
    }

    /// The JWT bundle: a JWKS document (`{"keys":[...]}`) with the JWT-SVID key.
    pub fn jwt_bundle_json(&self) -> Vec<u8> {
        self.inner.jwt.jwks_json.clone()
    }

    /// Mints an X.509-SVID for `spiffe_id` (in this trust domain, with a
    /// path) valid for `ttl` (at least one second; never past the CA).
    pub fn mint(&self, spiffe_id: &str, ttl: Duration) -> Result<MintedSvid, IdentityError> {
        self.inner.mint(spiffe_id, ttl)
    }

    /// Writes `svid.pem` (chain, 0644), `key.pem` (0600) and `bundle.pem`
    /// (0644) to `out_dir`, creating it if needed; each file atomically.
    pub fn write_minted(&self, svid: &MintedSvid, out_dir: &Path) -> Result<(), IdentityError> {
        write_svid_files(
            out_dir,
            &svid.cert_chain_der,
            &svid.key_pkcs8_der,
            std::slice::from_ref(&self.inner.ca.cert_der),
        )
    }

    /// Creates the Workload API socket (replacing a stale one; refusing to
    /// replace a live one) without serving yet. No async runtime needed.
    pub fn bind(self) -> Result<BoundIssuer, IdentityError> {
        let path = self.inner.config.socket_path.clone();
        let socket_err = |reason: String| IdentityError::Socket {
            path: path.clone(),
            reason,
        };
        if let Some(parent) = path.parent() {
            let default_dir = self.inner.config.data_dir.join("agent");
            if parent == default_dir || !parent.exists() {
                ensure_dir(parent, 0o755)?;
            }
        }
        match fs::symlink_metadata(&path) {
            Ok(md) if md.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                    return Err(socket_err(
                        "another process is already serving on this socket".to_owned(),
                    ));
                }
                tracing::debug!(path = %path.display(), "removing stale Workload API socket");
                fs::remove_file(&path)
                    .map_err(|e| socket_err(format!("cannot remove the stale socket: {e}")))?;
            }
            Ok(_) => {
                return Err(socket_err(
                    "the path exists and is not a socket; refusing to replace it".to_owned(),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(socket_err(e.to_string())),
        }
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .map_err(|e| socket_err(format!("cannot bind: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| socket_err(e.to_string()))?;
        // Like SPIRE's public socket: anyone may connect, attestation decides.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777))
            .map_err(|e| socket_err(format!("cannot set mode 0777: {e}")))?;
        tracing::info!(endpoint = %self.endpoint(), "Workload API socket bound");
        Ok(BoundIssuer {
            issuer: self,
            listener,
        })
    }

    /// Binds the socket (see [`Issuer::bind`]) and serves the SPIFFE Workload
    /// API until `shutdown` completes. Open streams are ended on shutdown and
    /// the socket file is removed.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), IdentityError> {
        self.bind()?.serve(shutdown).await
    }
}

impl Inner {
    /// The current X.509-SVID for `spiffe_id` with the TTL of the
    /// configuration, and when to rotate it (half of its remaining life):
    /// the cached one until then, a freshly minted one after.
    pub(crate) fn current_svid(
        &self,
        spiffe_id: &str,
    ) -> Result<(MintedSvid, Instant), IdentityError> {
        let mut cache = self
            .svid_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if let Some(cached) = cache.get(spiffe_id)
            && now < cached.rotate_at
        {
            return Ok((cached.svid.clone(), cached.rotate_at));
        }
        let svid = self.mint(spiffe_id, self.config.svid_ttl)?;
        let remaining = svid
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let rotate_at = now + (remaining / 2).max(MIN_ROTATION);
        let wall_now = SystemTime::now();
        cache.retain(|_, c| c.svid.not_after > wall_now);
        cache.insert(
            svid.spiffe_id.clone(),
            CachedSvid {
                svid: svid.clone(),
                rotate_at,
            },
        );
        Ok((svid, rotate_at))
    }

    pub(crate) fn mint(&self, spiffe_id: &str, ttl: Duration) -> Result<MintedSvid, IdentityError> {
        let id = parse_workload_id(spiffe_id, &self.trust_domain)?;
        if ttl < Duration::from_secs(1) {
            return Err(IdentityError::Config(format!(
                "SVID TTL {ttl:?} is too short (minimum 1s)"
            )));
        }
        let now = SystemTime::now();
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| IdentityError::Certificate("the system clock is before 1970".to_owned()))?
            .as_secs();
        let to_dt = |secs: u64| {
            i64::try_from(secs)
                .ok()
                .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
                .ok_or_else(|| IdentityError::Certificate("time out of range".to_owned()))
        };
        let not_before = to_dt(now_secs.saturating_sub(BACKDATE.as_secs()))?;
        let not_after = to_dt(now_secs.saturating_add(ttl.as_secs()))?.min(self.ca.not_after);
        if not_after <= OffsetDateTime::now_utc() {
            return Err(IdentityError::Certificate(
                "the CA has expired; remove <data_dir>/ca to create a new one".to_owned(),
            ));
        }

        let key = generate_p256()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Trustmesh");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(rcgen::string::Ia5String::try_from(
            id.to_string(),
        )?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.ca.issuer)?;
        let svid = MintedSvid {
            spiffe_id: id.to_string(),
            cert_chain_der: vec![cert.der().to_vec()],
            key_pkcs8_der: key.serialize_der(),
            not_after: UNIX_EPOCH
                + Duration::from_secs(u64::try_from(not_after.unix_timestamp()).unwrap_or(0)),
        };
        tracing::debug!(spiffe_id = %svid.spiffe_id, serial = %svid.serial_hex(),
            %not_after, "minted X.509-SVID");
        Ok(svid)
    }
}

/// An issuer whose Workload API socket is bound, ready to [`serve`](BoundIssuer::serve).
#[derive(Debug)]
pub struct BoundIssuer {
    issuer: Issuer,
    listener: std::os::unix::net::UnixListener,
}

impl BoundIssuer {
    /// The issuer.
    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// Serves the Workload API until `shutdown` completes (needs a tokio runtime).
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), IdentityError> {
        let inner = Arc::clone(&self.issuer.inner);
        let path = inner.config.socket_path.clone();
        let listener = tokio::net::UnixListener::from_std(self.listener).map_err(|e| {
            IdentityError::Socket {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let poller = tokio::spawn(poll_entries(inner.registry.clone(), stop_rx.clone()));
        let service = crate::workload::WorkloadService::new(Arc::clone(&inner), stop_rx);
        let signal = async move {
            shutdown.await;
            tracing::info!("Workload API shutting down");
            let _ = stop_tx.send(true);
        };
        let result = tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(service))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), signal)
            .await;
        poller.abort();
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the Workload API socket");
        }
        tracing::info!("Workload API stopped");
        result.map_err(IdentityError::from)
    }
}

/// Notices changes of `entries.json` made by other processes, so that open
/// streams follow them.
async fn poll_entries(registry: Registry, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(ENTRY_POLL) => registry.refresh(),
        }
    }
}

/// Writes an X.509-SVID as `svid.pem` (chain, leaf first), `key.pem` (PKCS#8,
/// 0600) and `bundle.pem` into `out_dir`, each atomically (a fresh temporary
/// file renamed over the old one), so an existing file's looser mode or owner
/// is never kept.
pub fn write_svid_files(
    out_dir: &Path,
    chain_der: &[Vec<u8>],
    key_pkcs8_der: &[u8],
    bundle_der: &[Vec<u8>],
) -> Result<(), IdentityError> {
    fs::create_dir_all(out_dir).map_err(|e| {
        IdentityError::io(format!("cannot create directory {}", out_dir.display()), e)
    })?;
    let pem = |tag: &str, ders: &[Vec<u8>]| pem_encode(tag, ders.iter().map(Vec::as_slice));
    atomic_write(
        &out_dir.join("key.pem"),
        pem_encode("PRIVATE KEY", [key_pkcs8_der]).as_bytes(),
        0o600,
    )?;
    atomic_write(
        &out_dir.join("svid.pem"),
        pem("CERTIFICATE", chain_der).as_bytes(),
        0o644,
    )?;
    atomic_write(
        &out_dir.join("bundle.pem"),
        pem("CERTIFICATE", bundle_der).as_bytes(),
        0o644,
    )?;
    Ok(())
}
