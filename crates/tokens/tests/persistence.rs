//! The key ring on disk: modes, reopening, atomic rewrite, refusing bad files.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::{AUD, ISS};
use serde_json::Value;
use trustmesh_tokens::{KEY_FILE_NAME, KeyRing, RotationPolicy, TokenError, TokenIssuer, Verifier};

fn kids(ring: &KeyRing) -> BTreeSet<String> {
    ring.jwks()
        .keys
        .iter()
        .map(|k| k.common.key_id.clone().unwrap())
        .collect()
}

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn creates_private_directory_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("auth").join("keys");
    let ring = KeyRing::open(&dir, RotationPolicy::default()).unwrap();
    assert_eq!(ring.path(), dir.join(KEY_FILE_NAME));
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(ring.path()), 0o600);

    let file: Value = serde_json::from_slice(&fs::read(ring.path()).unwrap()).unwrap();
    assert_eq!(file["version"], 1);
    let keys = file["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    for key in keys {
        assert!(key["kid"].is_string());
        assert!(key["pkcs8"].is_string());
        assert!(key["created_at"].is_i64());
    }
    // No temporary files left behind.
    let entries: Vec<_> = fs::read_dir(&dir).unwrap().collect();
    assert_eq!(entries.len(), 1);
}

#[tokio::test]
async fn reopening_keeps_the_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let policy = RotationPolicy::default();
    let ring = KeyRing::open(&dir, policy).unwrap();
    let issuer = TokenIssuer::new(ring.clone(), ISS, AUD, policy.token_ttl);
    let (before_rotation, _) = issuer.issue("u", "user", "s", &[]).unwrap();
    ring.rotate_now().unwrap();
    let current = ring.current_kid();
    let published = kids(&ring);
    assert_eq!(published.len(), 3);
    let (after_rotation, _) = issuer.issue("u", "user", "s", &[]).unwrap();
    drop(issuer);
    drop(ring);

    let reopened = KeyRing::open(&dir, policy).unwrap();
    assert_eq!(reopened.current_kid(), current);
    assert_eq!(kids(&reopened), published);
    assert_eq!(mode(reopened.path()), 0o600);

    // Tokens signed before the restart still verify against the reopened ring,
    // and the reopened ring signs with the same current key.
    let verifier = Verifier::new(ISS, AUD, Arc::new(reopened.clone()));
    verifier.verify(&before_rotation).await.unwrap();
    verifier.verify(&after_rotation).await.unwrap();
    let issuer = TokenIssuer::new(reopened, ISS, AUD, policy.token_ttl);
    let (token, _) = issuer.issue("u", "user", "s", &[]).unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&token).unwrap().kid.unwrap(),
        current
    );
}

#[test]
fn reopening_after_downtime_rotates_and_drops_retired_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let policy = RotationPolicy {
        rotate_every: Duration::from_secs(3600),
        token_ttl: Duration::from_secs(600),
    };
    let ring = KeyRing::open(&dir, policy).unwrap();
    let first = ring.current_kid();
    drop(ring);
    let later = common::after(Duration::from_secs(2 * 3600));
    let reopened = KeyRing::open_at(&dir, policy, later).unwrap();
    assert_ne!(reopened.current_kid(), first);
    assert!(
        kids(&reopened).contains(&first),
        "first key still in its overlap"
    );
    let much_later = common::after(Duration::from_secs(3 * 3600));
    let reopened = KeyRing::open_at(&dir, policy, much_later).unwrap();
    assert!(!kids(&reopened).contains(&first));
}

#[test]
fn refuses_a_key_file_readable_by_others() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let ring = KeyRing::open(&dir, RotationPolicy::default()).unwrap();
    let path = ring.path().to_path_buf();
    drop(ring);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let error = KeyRing::open(&dir, RotationPolicy::default()).unwrap_err();
    assert!(
        matches!(error, TokenError::Storage(ref m) if m.contains("0600")),
        "{error}"
    );
    assert_eq!(error.code(), "key_storage");
}

#[test]
fn refuses_corrupt_or_tampered_key_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let ring = KeyRing::open(&dir, RotationPolicy::default()).unwrap();
    let path = ring.path().to_path_buf();
    drop(ring);
    let original = fs::read(&path).unwrap();

    let write = |bytes: &[u8]| {
        fs::write(&path, bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    };
    let open = || KeyRing::open(&dir, RotationPolicy::default());

    write(b"{not json");
    assert!(matches!(open(), Err(TokenError::Storage(_))));

    // A kid that does not match its key.
    let mut file: Value = serde_json::from_slice(&original).unwrap();
    file["keys"][0]["kid"] = Value::String("forged-kid".to_owned());
    write(&serde_json::to_vec(&file).unwrap());
    assert!(matches!(open(), Err(TokenError::Storage(m)) if m.contains("thumbprint")));

    // A damaged private key.
    let mut file: Value = serde_json::from_slice(&original).unwrap();
    file["keys"][0]["pkcs8"] = Value::String("AAAA".to_owned());
    write(&serde_json::to_vec(&file).unwrap());
    assert!(matches!(open(), Err(TokenError::Storage(_))));

    // An unknown format version.
    let mut file: Value = serde_json::from_slice(&original).unwrap();
    file["version"] = Value::from(99);
    write(&serde_json::to_vec(&file).unwrap());
    assert!(matches!(open(), Err(TokenError::Storage(m)) if m.contains("version")));

    // The original still opens.
    write(&original);
    open().unwrap();
}
