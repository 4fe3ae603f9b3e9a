//! The CA in the data directory, minting, and the files of `identity mint`.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{TD, assert_signed_by, id, serial_of};
use trustmesh_identity::peer::spiffe_id_from_der;
use trustmesh_identity::{IdentityError, Issuer, IssuerConfig, PeerIdentity};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn reopening_keeps_the_ca_and_keys_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let first = Issuer::open(IssuerConfig::new(dir.path())).unwrap();
    let bundle = first.bundle_der();
    let jwks = first.jwt_bundle_json();
    let svid = first.mint(&id("svc/a"), Duration::from_secs(60)).unwrap();
    drop(first);

    let ca_dir = dir.path().join("ca");
    assert_eq!(mode(&ca_dir), 0o700);
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
    assert_eq!(mode(&ca_dir.join("jwt.key")), 0o600);
    assert!(ca_dir.join("ca.pem").is_file());
    assert_eq!(mode(&dir.path().join("identity")), 0o700);

    let second = Issuer::open(IssuerConfig::new(dir.path())).unwrap();
    assert_eq!(second.bundle_der(), bundle, "the CA is reused");
    assert_eq!(
        second.jwt_bundle_json(),
        jwks,
        "the JWT key and kid are reused"
    );
    // An SVID minted before the restart still chains to the bundle.
    assert_signed_by(&svid.cert_chain_der[0], &second.bundle_der());
    assert_eq!(
        second.bundle_pem(),
        fs::read_to_string(ca_dir.join("ca.pem")).unwrap()
    );
}

#[test]
fn ca_profile() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::open(IssuerConfig::new(dir.path())).unwrap();
    let der = issuer.bundle_der();
    let (_, ca) = X509Certificate::from_der(&der).unwrap();
    assert!(ca.is_ca());
    let ku = ca.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    let sans: Vec<String> = ca
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(sans, vec![format!("URI(spiffe://{TD})")]);
    let validity = ca.validity().time_to_expiration().unwrap();
    assert!(validity > time::Duration::days(364) && validity <= time::Duration::days(366));
    assert_signed_by(&der, &der);
}

#[test]
fn a_loose_key_file_is_tightened() {
    let dir = tempfile::tempdir().unwrap();
    drop(Issuer::open(IssuerConfig::new(dir.path())).unwrap());
    let key = dir.path().join("ca/ca.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    drop(Issuer::open(IssuerConfig::new(dir.path())).unwrap());
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn configuration_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let err = |config: IssuerConfig| match Issuer::open(config) {
        Ok(_) => panic!("accepted an invalid configuration"),
        Err(e) => e.to_string(),
    };
    let msg = err(IssuerConfig::new(dir.path()).with_svid_ttl(Duration::from_secs(1)));
    assert!(msg.contains("too short"), "{msg}");
    for td in ["Trustmesh Local", "spiffe://trustmesh.local", "", "a/b"] {
        let msg = err(IssuerConfig::new(dir.path()).with_trust_domain(td));
        assert!(msg.contains("trust domain"), "{td}: {msg}");
    }
    let msg = err(IssuerConfig::new(""));
    assert!(msg.contains("data directory"), "{msg}");
    let long = dir.path().join("x".repeat(120)).join("workload.sock");
    let msg = err(IssuerConfig::new(dir.path()).with_socket_path(long));
    assert!(msg.contains("too long"), "{msg}");
    // Nothing was created for the invalid configurations except what the
    // socket-path check follows; a valid reopen under another trust domain fails.
    drop(Issuer::open(IssuerConfig::new(dir.path())).unwrap());
    let msg = err(IssuerConfig::new(dir.path()).with_trust_domain("example.org"));
    assert!(msg.contains("belongs to trust domain"), "{msg}");
    // A minimum TTL of 2 s is accepted.
    Issuer::open(IssuerConfig::new(dir.path()).with_svid_ttl(Duration::from_secs(2))).unwrap();
}

#[test]
fn a_half_written_ca_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    drop(Issuer::open(IssuerConfig::new(dir.path())).unwrap());
    fs::remove_file(dir.path().join("ca/ca.key")).unwrap();
    let err = Issuer::open(IssuerConfig::new(dir.path())).unwrap_err();
    assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("ca.key"), "{err}");
}

#[test]
fn minted_svid_has_the_spiffe_x509_profile() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::open(IssuerConfig::new(dir.path())).unwrap();
    let want = id("svc/payment");
    let before = SystemTime::now();
    let svid = issuer.mint(&want, Duration::from_secs(3600)).unwrap();
    assert_eq!(svid.spiffe_id, want);
    assert_eq!(svid.cert_chain_der.len(), 1);

    // The spiffe crate's own profile checks.
    let parsed =
        spiffe::X509Svid::parse_from_der(&svid.cert_chain_der[0], &svid.key_pkcs8_der).unwrap();
    assert_eq!(parsed.spiffe_id().to_string(), want);
    assert_signed_by(&svid.cert_chain_der[0], &issuer.bundle_der());

    let (_, leaf) = X509Certificate::from_der(&svid.cert_chain_der[0]).unwrap();
    let mut uris = 0;
    for ext in leaf.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::KeyUsage(ku) => {
                assert!(ext.critical, "KeyUsage is critical");
                assert!(ku.digital_signature());
                assert!(!ku.key_cert_sign() && !ku.crl_sign());
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert!(eku.server_auth && eku.client_auth);
            }
            ParsedExtension::BasicConstraints(bc) => assert!(!bc.ca),
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => {
                            uris += 1;
                            assert_eq!(*uri, want);
                        }
                        other => panic!("unexpected SAN {other}"),
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(uris, 1, "exactly one URI SAN");
    assert!(
        leaf.basic_constraints().unwrap().is_some(),
        "BasicConstraints present"
    );
    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    let now = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - 12..=now - 9).contains(&nb),
        "not_before = now - 10 s"
    );
    assert!(
        (now + 3599..=now + 3601).contains(&na),
        "not_after = now + ttl"
    );
    assert_eq!(
        svid.not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
        na
    );

    // Serials are random.
    let other = issuer.mint(&want, Duration::from_secs(3600)).unwrap();
    assert_ne!(
        serial_of(&svid.cert_chain_der[0]),
        serial_of(&other.cert_chain_der[0])
    );
    assert_ne!(svid.key_pkcs8_der, other.key_pkcs8_der);
    // Debug never shows the key.
    let debug = format!("{svid:?}");
    assert!(
        debug.contains(&want) && !debug.contains("key_pkcs8_der"),
        "{debug}"
    );
}

#[test]
fn mint_rejects_foreign_or_pathless_ids() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::open(IssuerConfig::new(dir.path())).unwrap();
    for bad in [
        "spiffe://example.org/svc/a",
        "spiffe://trustmesh.local",
        "spiffe://trustmesh.local/",
        "https://trustmesh.local/svc/a",
        "svc/a",
        "",
    ] {
        let err = issuer.mint(bad, Duration::from_secs(60)).unwrap_err();
        assert!(
            matches!(err, IdentityError::InvalidSpiffeId { .. }),
            "{bad}: {err}"
        );
    }
    assert!(issuer.mint(&id("svc/a"), Duration::ZERO).is_err());
}

#[test]
fn mint_writes_three_pem_files_with_the_right_modes() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::open(IssuerConfig::new(dir.path())).unwrap();
    let want = id("agent/blue");
    let svid = issuer.mint(&want, Duration::from_secs(600)).unwrap();
    let out = dir.path().join("out/agent");
    issuer.write_minted(&svid, &out).unwrap();

    assert_eq!(mode(&out.join("key.pem")), 0o600);
    assert_eq!(mode(&out.join("svid.pem")), 0o644);
    assert_eq!(mode(&out.join("bundle.pem")), 0o644);

    let certs = pem::parse_many(fs::read(out.join("svid.pem")).unwrap()).unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].tag(), "CERTIFICATE");
    let key = pem::parse(fs::read(out.join("key.pem")).unwrap()).unwrap();
    assert_eq!(key.tag(), "PRIVATE KEY");
    let bundle = pem::parse(fs::read(out.join("bundle.pem")).unwrap()).unwrap();
    assert_eq!(bundle.contents(), issuer.bundle_der().as_slice());

    let parsed = spiffe::X509Svid::parse_from_der(certs[0].contents(), key.contents()).unwrap();
    assert_eq!(parsed.spiffe_id().to_string(), want);
    assert_signed_by(certs[0].contents(), bundle.contents());
    // The PEM files use LF line endings.
    assert!(
        !fs::read_to_string(out.join("svid.pem"))
            .unwrap()
            .contains('\r')
    );

    // Writing again replaces the files and keeps the key private.
    fs::set_permissions(out.join("key.pem"), fs::Permissions::from_mode(0o644)).unwrap();
    let again = issuer.mint(&want, Duration::from_secs(600)).unwrap();
    issuer.write_minted(&again, &out).unwrap();
    assert_eq!(mode(&out.join("key.pem")), 0o600);
    let certs = pem::parse_many(fs::read(out.join("svid.pem")).unwrap()).unwrap();
    assert_eq!(certs[0].contents(), again.cert_chain_der[0].as_slice());
}

#[test]
fn peer_identity_reads_the_uri_san() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::open(IssuerConfig::new(dir.path())).unwrap();
    let want = id("svc/gateway");
    let svid = issuer.mint(&want, Duration::from_secs(60)).unwrap();
    assert_eq!(
        spiffe_id_from_der(svid.leaf_der()).as_deref(),
        Some(want.as_str())
    );
    assert_eq!(spiffe_id_from_der(b"not a certificate"), None);
    let addr = "127.0.0.1:4000".parse().unwrap();
    let peer = PeerIdentity::from_leaf(Some(svid.leaf_der()), Some(addr));
    assert_eq!(peer.spiffe_id.as_deref(), Some(want.as_str()));
    assert_eq!(peer.remote_addr, Some(addr));
    assert!(PeerIdentity::from_leaf(None, None).spiffe_id.is_none());
}
