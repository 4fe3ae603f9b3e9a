//! SVIDs held in files (`svid.pem`, `key.pem`, `bundle.pem`, as written by
//! `trustmesh identity mint` or `spire-server x509 mint`) for agents that do
//! not use a Workload API. Such an identity does not rotate: mint a new one
//! before it expires.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::RuntimeError;

/// An X.509-SVID, its private key and the trust bundle, loaded from files.
#[derive(Debug)]
pub struct SvidFiles {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    bundle: Vec<CertificateDer<'static>>,
    spiffe_id: String,
}

impl SvidFiles {
    /// Loads `svid.pem`, `key.pem` and `bundle.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, RuntimeError> {
        let chain = read_certs(&dir.join("svid.pem"))?;
        let bundle = read_certs(&dir.join("bundle.pem"))?;
        let key_path = dir.join("key.pem");
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| files_error(&key_path, e))?;
        Self::from_parts(chain, key, bundle).map_err(|reason| RuntimeError::Files {
            path: dir.to_path_buf(),
            reason,
        })
    }

    /// Builds from DER parts already in memory (leaf first in `chain`).
    pub fn from_der(
        chain: Vec<Vec<u8>>,
        key_pkcs8: Vec<u8>,
        bundle: Vec<Vec<u8>>,
    ) -> Result<Self, RuntimeError> {
        let chain = chain.into_iter().map(CertificateDer::from).collect();
        let bundle = bundle.into_iter().map(CertificateDer::from).collect();
        let key = PrivateKeyDer::Pkcs8(key_pkcs8.into());
        Self::from_parts(chain, key, bundle).map_err(|reason| RuntimeError::Files {
            path: PathBuf::from("<memory>"),
            reason,
        })
    }

    fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: Vec<CertificateDer<'static>>,
    ) -> Result<Self, String> {
        let leaf = chain.first().ok_or("the SVID file holds no certificate")?;
        let spiffe_id = trustmesh_identity::peer::spiffe_id_from_der(leaf.as_ref())
            .ok_or("the SVID has no spiffe:// URI SAN")?;
        if bundle.is_empty() {
            return Err("the bundle holds no certificate".into());
        }
        Ok(Self {
            chain,
            key,
            bundle,
            spiffe_id,
        })
    }

    /// The SPIFFE ID of this SVID.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// The certificate chain (leaf first) and private key, for callers that
    /// build their own TLS configuration.
    pub fn parts(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.chain.clone(), self.key.clone_key())
    }

    /// A client configuration presenting this SVID (TLS 1.3, ALPN `h2`) that
    /// accepts the server only if it chains to the bundle and carries
    /// exactly `server_id`.
    pub fn client_config(
        &self,
        server_id: &str,
    ) -> Result<Arc<rustls::ClientConfig>, RuntimeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in &self.bundle {
            roots
                .add(cert.clone())
                .map_err(|e| RuntimeError::Tls(format!("bundle certificate rejected: {e}")))?;
        }
        let verifier = Arc::new(SpiffeServerVerifier {
            roots: Arc::new(roots),
            server_id: server_id.to_owned(),
            algorithms: provider.signature_verification_algorithms,
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| RuntimeError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| RuntimeError::Tls(format!("SVID key does not fit: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, RuntimeError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| files_error(path, e))
}

fn files_error(path: &Path, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Files {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Checks a server's SVID: chains to the bundle, valid now, and carries the
/// expected SPIFFE ID as its URI SAN. DNS names play no part.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    server_id: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match trustmesh_identity::peer::spiffe_id_from_der(end_entity.as_ref()) {
            Some(id) if id == self.server_id => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(rustls::Error::General(format!(
                "server presented SPIFFE ID {id}, expected {}",
                self.server_id
            ))),
            None => Err(rustls::Error::General(
                "server certificate has no SPIFFE ID".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
