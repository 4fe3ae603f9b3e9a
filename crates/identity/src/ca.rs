//! The issuer's certificate authority, kept in `<data_dir>/ca/`.
//!
//! `ca.pem` is a self-signed ECDSA P-256 certificate (CA=true, keyCertSign and
//! cRLSign, URI SAN `spiffe://<trust-domain>`, one year); `ca.key` its PKCS#8
//! key, mode 0600, in a 0700 directory.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber,
};
use spiffe::TrustDomain;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

use crate::IdentityError;
use crate::util::{atomic_write, ensure_dir, hex, read};

/// Validity of a newly created CA.
const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The path of the CA certificate of a data directory.
pub(crate) fn ca_cert_path(data_dir: &Path) -> PathBuf {
    data_dir.join("ca").join("ca.pem")
}

/// The CA: its certificate and an rcgen issuer holding its key.
pub(crate) struct Ca {
    pub(crate) cert_der: Vec<u8>,
    pub(crate) cert_pem: String,
    pub(crate) not_after: OffsetDateTime,
    pub(crate) issuer: rcgen::Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A random, positive, 16-byte certificate serial number.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 0x01;
    }
    SerialNumber::from_slice(&bytes)
}

/// Generates an ECDSA P-256 key pair.
pub(crate) fn generate_p256() -> Result<KeyPair, IdentityError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// Loads a PKCS#8 PEM key file that must hold an ECDSA P-256 key, tightening
/// its mode to 0600 if it is looser.
pub(crate) fn load_p256_key(path: &Path) -> Result<KeyPair, IdentityError> {
    tighten_mode(path, 0o600)?;
    let pem = String::from_utf8(read(path)?).map_err(|_| IdentityError::Corrupt {
        path: path.to_owned(),
        reason: "not a PEM file".to_owned(),
    })?;
    let key = KeyPair::from_pem(&pem).map_err(|e| IdentityError::Corrupt {
        path: path.to_owned(),
        reason: format!("not a PKCS#8 private key: {e}"),
    })?;
    if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(IdentityError::Corrupt {
            path: path.to_owned(),
            reason: "not an ECDSA P-256 key".to_owned(),
        });
    }
    Ok(key)
}

fn tighten_mode(path: &Path, mode: u32) -> Result<(), IdentityError> {
    let md = fs::metadata(path)
        .map_err(|e| IdentityError::io(format!("cannot read {}", path.display()), e))?;
    if md.permissions().mode() & 0o777 & !mode != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", md.permissions().mode() & 0o777),
            "private key file was readable by others; setting mode 0600");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| {
            IdentityError::io(format!("cannot set mode 0600 on {}", path.display()), e)
        })?;
    }
    Ok(())
}

/// Parses the first certificate of a PEM file.
fn first_cert_der(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let blocks = pem::parse_many(bytes).map_err(|e| IdentityError::Corrupt {
        path: path.to_owned(),
        reason: format!("not a PEM file: {e}"),
    })?;
    blocks
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .ok_or_else(|| IdentityError::Corrupt {
            path: path.to_owned(),
            reason: "no CERTIFICATE block".to_owned(),
        })
}

/// The trust domain named by the URI SAN of a CA certificate file, or `None`
/// if the file does not exist.
pub(crate) fn trust_domain_of_ca_file(path: &Path) -> Result<Option<TrustDomain>, IdentityError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(IdentityError::io(
                format!("cannot read {}", path.display()),
                e,
            ));
        }
    };
    let der = first_cert_der(path, &bytes)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| IdentityError::Corrupt {
        path: path.to_owned(),
        reason: format!("not an X.509 certificate: {e}"),
    })?;
    trust_domain_of(&cert)
        .map(Some)
        .ok_or_else(|| IdentityError::Corrupt {
            path: path.to_owned(),
            reason: "the CA certificate has no spiffe://<trust-domain> URI SAN".to_owned(),
        })
}

fn trust_domain_of(cert: &X509Certificate<'_>) -> Option<TrustDomain> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => TrustDomain::new(uri).ok(),
        _ => None,
    })
}

impl Ca {
    /// Loads the CA of `dir` (`ca.pem`, `ca.key`), or creates it if neither
    /// file exists.
    pub(crate) fn load_or_create(dir: &Path, td: &TrustDomain) -> Result<Self, IdentityError> {
        ensure_dir(dir, 0o700)?;
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(&cert_path, &key_path, td),
            (false, false) => Self::create(&cert_path, &key_path, td),
            (true, false) => Err(IdentityError::Corrupt {
                path: key_path,
                reason: "missing while ca.pem exists; restore it or remove the ca directory to create a new CA"
                    .to_owned(),
            }),
            (false, true) => Err(IdentityError::Corrupt {
                path: cert_path,
                reason: "missing while ca.key exists; restore it or remove the ca directory to create a new CA"
                    .to_owned(),
            }),
        }
    }

    fn create(cert_path: &Path, key_path: &Path, td: &TrustDomain) -> Result<Self, IdentityError> {
        let key = generate_p256()?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Trustmesh");
        dn.push(DnType::CommonName, format!("Trustmesh CA {}", td.as_str()));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI(rcgen::string::Ia5String::try_from(
            td.id_string(),
        )?)];
        params.not_before = now - Duration::from_secs(60);
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        // Key first: a CA certificate without its key would be useless.
        atomic_write(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        atomic_write(cert_path, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(trust_domain = %td, path = %cert_path.display(), "created a new CA");
        Self::from_parts(cert_path, cert.der().to_vec(), key, td)
    }

    fn load(cert_path: &Path, key_path: &Path, td: &TrustDomain) -> Result<Self, IdentityError> {
        let key = load_p256_key(key_path)?;
        let der = first_cert_der(cert_path, &read(cert_path)?)?;
        Self::from_parts(cert_path, der, key, td)
    }

    fn from_parts(
        cert_path: &Path,
        der: Vec<u8>,
        key: KeyPair,
        td: &TrustDomain,
    ) -> Result<Self, IdentityError> {
        let corrupt = |reason: String| IdentityError::Corrupt {
            path: cert_path.to_owned(),
            reason,
        };
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| corrupt(format!("not an X.509 certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(corrupt("not a CA certificate".to_owned()));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(corrupt(
                "does not match the private key in ca.key".to_owned(),
            ));
        }
        match trust_domain_of(&cert) {
            Some(ca_td) if &ca_td == td => {}
            Some(ca_td) => {
                return Err(IdentityError::Config(format!(
                    "the CA in {} belongs to trust domain {:?}, not {:?}; use that trust domain or another data directory",
                    cert_path.display(),
                    ca_td.as_str(),
                    td.as_str()
                )));
            }
            None => {
                return Err(corrupt(
                    "the CA certificate has no spiffe://<trust-domain> URI SAN".to_owned(),
                ));
            }
        }
        let not_after = cert.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            return Err(corrupt(format!(
                "the CA expired on {not_after}; remove the ca directory to create a new CA"
            )));
        }
        tracing::debug!(serial = %hex(cert.raw_serial()), %not_after, "CA loaded");
        let issuer = rcgen::Issuer::from_ca_cert_der(&der.as_slice().into(), key)?;
        let cert_pem = crate::util::pem_encode("CERTIFICATE", [der.as_slice()]);
        Ok(Self {
            cert_der: der,
            cert_pem,
            not_after,
            issuer,
        })
    }
}
