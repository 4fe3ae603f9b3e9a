//! The local certificate authority behind the gateway's HTTPS in local mode.
//!
//! `trustmesh up` serves `https://127.0.0.1:8443` with a certificate issued by
//! a CA created once in `<data-dir>/gateway/` (`ca.pem`, and `ca.key` readable
//! by the owner only). Point a client at `ca.pem` (`curl --cacert`) to trust
//! it. The server certificate is re-issued at every start.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// Errors while preparing the local CA.
#[derive(Debug, thiserror::Error)]
pub enum LocalCaError {
    /// A file of the CA could not be read or written.
    #[error("local HTTPS CA in {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate could not be generated or the stored CA is unreadable.
    #[error("local HTTPS CA: {0}")]
    Cert(String),
}

/// The local HTTPS CA of a data directory.
#[derive(Debug)]
pub struct LocalCa {
    dir: PathBuf,
    ca_pem: String,
    key: KeyPair,
}

impl LocalCa {
    /// Loads the CA from `dir`, creating it on first use.
    pub fn ensure(dir: &Path) -> Result<Self, LocalCaError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LocalCaError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        if cert_path.exists() && key_path.exists() {
            // A private key others can read is tightened back to 0600.
            let mode = fs::metadata(&key_path)
                .map_err(io(&key_path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %key_path.display(), mode = format!("{mode:o}"), "gateway CA key was readable by others; setting 0600");
                fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))
                    .map_err(io(&key_path))?;
            }
            let ca_pem = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key_pem = fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| LocalCaError::Cert(e.to_string()))?;
            return Ok(Self {
                dir: dir.to_path_buf(),
                ca_pem,
                key,
            });
        }
        let key = KeyPair::generate().map_err(cert_error)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Trustmesh");
        name.push(DnType::CommonName, "Trustmesh local gateway CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key).map_err(cert_error)?;
        write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
        fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ca_pem: cert.pem(),
            key,
        })
    }

    /// Where the CA certificate is (what clients should trust).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A fresh server certificate for `localhost`, `127.0.0.1` and `::1`
    /// (valid 30 days) in a TLS server configuration offering h2 and
    /// HTTP/1.1.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, LocalCaError> {
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &self.key).map_err(cert_error)?;
        let key = KeyPair::generate().map_err(cert_error)?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).map_err(cert_error)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(30);
        let cert = params.signed_by(&key, &issuer).map_err(cert_error)?;
        let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(self.ca_pem.as_bytes())
            .map_err(|e: rustls::pki_types::pem::Error| LocalCaError::Cert(e.to_string()))?;
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca_der];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| LocalCaError::Cert(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| LocalCaError::Cert(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn cert_error(e: rcgen::Error) -> LocalCaError {
    LocalCaError::Cert(e.to_string())
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
