//! Tests of the key ring: sealing, rotation, the file on disk, mounted secrets.

#![allow(clippy::unwrap_used)]

use super::*;

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn seal_open_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ring = KeyRing::open(dir.path()).unwrap();
    let sealed = ring.seal(b"JBSWY3DPEHPK3PXP seed", b"totp:user-1").unwrap();
    assert_eq!(sealed_version(&sealed).unwrap(), 1);
    assert_eq!(sealed.len(), 4 + 12 + b"JBSWY3DPEHPK3PXP seed".len() + 16);
    assert!(
        !sealed.windows(5).any(|w| w == b"JBSWY"),
        "plaintext visible"
    );
    let opened = ring.open_sealed(&sealed, b"totp:user-1").unwrap();
    assert_eq!(&opened[..], b"JBSWY3DPEHPK3PXP seed");

    // Empty plaintext and empty AAD work too.
    let sealed = ring.seal(b"", b"").unwrap();
    assert!(ring.open_sealed(&sealed, b"").unwrap().is_empty());
}

#[test]
fn fresh_nonce_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let ring = KeyRing::open(dir.path()).unwrap();
    let a = ring.seal(b"same", b"aad").unwrap();
    let b = ring.seal(b"same", b"aad").unwrap();
    assert_ne!(a[4..16], b[4..16], "nonce reused");
    assert_ne!(a, b);
}

#[test]
fn wrong_aad_is_refused_so_rows_cannot_be_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let ring = KeyRing::open(dir.path()).unwrap();
    let alice = ring.seal(b"alice's seed", b"totp:alice").unwrap();
    let bob = ring.seal(b"bob's seed", b"totp:bob").unwrap();
    // An attacker with write access to the table copies Alice's sealed seed into Bob's row.
    assert!(matches!(
        ring.open_sealed(&alice, b"totp:bob"),
        Err(KeyRingError::Authentication)
    ));
    assert!(matches!(
        ring.open_sealed(&bob, b"totp:alice"),
        Err(KeyRingError::Authentication)
    ));
    assert!(matches!(
        ring.open_sealed(&alice, b""),
        Err(KeyRingError::Authentication)
    ));
    assert_eq!(
        &ring.open_sealed(&alice, b"totp:alice").unwrap()[..],
        b"alice's seed"
    );
}

#[test]
fn every_tampered_byte_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ring = KeyRing::open(dir.path()).unwrap();
    let sealed = ring.seal(b"file key material", b"file:42").unwrap();
    for i in 0..sealed.len() {
        let mut tampered = sealed.clone();
        tampered[i] ^= 0x01;
        let result = ring.open_sealed(&tampered, b"file:42");
        match result {
            Err(KeyRingError::UnknownVersion(_)) => assert!(i < 4, "byte {i}"),
            Err(KeyRingError::Authentication) => assert!(i >= 4, "byte {i}"),
            other => panic!("byte {i} flipped: {other:?}"),
        }
    }
    // Truncation and extension are refused as well.
    for len in 0..sealed.len() {
        assert!(
            ring.open_sealed(&sealed[..len], b"file:42").is_err(),
            "len {len}"
        );
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert!(ring.open_sealed(&longer, b"file:42").is_err());
}

#[test]
fn rotation_keeps_old_versions_readable() {
    let dir = tempfile::tempdir().unwrap();
    let ring = KeyRing::open(dir.path()).unwrap();
    let v1 = ring.seal(b"old secret", b"row-1").unwrap();
    assert!(!ring.needs_reseal(&v1));

    assert_eq!(ring.rotate().unwrap(), 2);
    assert_eq!(ring.current_version(), 2);
    assert_eq!(ring.versions(), vec![1, 2]);
    assert!(ring.needs_reseal(&v1));
    assert_eq!(&ring.open_sealed(&v1, b"row-1").unwrap()[..], b"old secret");

    let v2 = ring.seal(b"new secret", b"row-2").unwrap();
    assert_eq!(sealed_version(&v2).unwrap(), 2);
    assert!(!ring.needs_reseal(&v2));

    // Re-sealing moves a value to the current key.
    let resealed = ring
        .seal(&ring.open_sealed(&v1, b"row-1").unwrap(), b"row-1")
        .unwrap();
    assert!(!ring.needs_reseal(&resealed));

    assert_eq!(ring.rotate().unwrap(), 3);
    assert!(ring.needs_reseal(&v2));
    assert_eq!(&ring.open_sealed(&v1, b"row-1").unwrap()[..], b"old secret");
    assert_eq!(&ring.open_sealed(&v2, b"row-2").unwrap()[..], b"new secret");

    // A malformed value never "needs a reseal".
    assert!(!ring.needs_reseal(b"\x00\x00"));
}

#[test]
fn file_is_0600_and_created_dir_is_0700() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("data").join("dir");
    let ring = KeyRing::open(&dir).unwrap();
    assert_eq!(ring.path(), dir.join(KEYRING_FILE_NAME));
    assert_eq!(mode_of(&dir.join(KEYRING_FILE_NAME)), 0o600);
    assert_eq!(mode_of(&dir), 0o700);
    assert_eq!(mode_of(&base.path().join("data")), 0o700);
    ring.rotate().unwrap();
    assert_eq!(mode_of(&dir.join(KEYRING_FILE_NAME)), 0o600);
    // No temporary files are left behind.
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec![KEYRING_FILE_NAME, KEYRING_LOCK_NAME]);
    assert_eq!(mode_of(&dir.join(KEYRING_LOCK_NAME)), 0o600);
}

#[test]
fn reopen_keeps_keys_and_current_version() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = {
        let ring = KeyRing::open(dir.path()).unwrap();
        let v1 = ring.seal(b"one", b"a").unwrap();
        ring.rotate().unwrap();
        (v1, ring.seal(b"two", b"b").unwrap())
    };
    let ring = KeyRing::open(dir.path()).unwrap();
    assert_eq!(ring.current_version(), 2);
    assert_eq!(&ring.open_sealed(&v1, b"a").unwrap()[..], b"one");
    assert_eq!(&ring.open_sealed(&v2, b"b").unwrap()[..], b"two");
    assert!(ring.needs_reseal(&v1));
}

#[test]
fn group_readable_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    KeyRing::open(dir.path()).unwrap();
    let file = dir.path().join(KEYRING_FILE_NAME);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    let err = KeyRing::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, KeyRingError::InsecurePermissions { mode: 0o640, .. }),
        "{err}"
    );
}

#[test]
fn another_process_rotation_is_seen_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let a = KeyRing::open(dir.path()).unwrap();
    let b = KeyRing::open(dir.path()).unwrap();
    assert_eq!(a.rotate().unwrap(), 2);
    // B has not seen version 2 yet; it reloads the file when it meets it.
    let sealed_by_a = a.seal(b"from a", b"x").unwrap();
    assert_eq!(b.current_version(), 1);
    assert_eq!(&b.open_sealed(&sealed_by_a, b"x").unwrap()[..], b"from a");
    assert_eq!(b.current_version(), 2);
    // B's rotation builds on A's: version 3, with 1 and 2 kept on disk.
    assert_eq!(b.rotate().unwrap(), 3);
    let reopened = KeyRing::open(dir.path()).unwrap();
    assert_eq!(reopened.versions(), vec![1, 2, 3]);
    assert_eq!(
        &reopened.open_sealed(&sealed_by_a, b"x").unwrap()[..],
        b"from a"
    );
}

#[test]
fn concurrent_first_opens_agree_on_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh");
    let rings: Vec<KeyRing> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| KeyRing::open(&path).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let sealed = rings[0].seal(b"shared", b"aad").unwrap();
    for ring in &rings {
        assert_eq!(ring.versions(), vec![1]);
        assert_eq!(&ring.open_sealed(&sealed, b"aad").unwrap()[..], b"shared");
    }
}

#[test]
fn unknown_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ring = KeyRing::open(dir.path()).unwrap();
    let mut sealed = ring.seal(b"x", b"").unwrap();
    sealed[..4].copy_from_slice(&7u32.to_be_bytes());
    assert!(matches!(
        ring.open_sealed(&sealed, b""),
        Err(KeyRingError::UnknownVersion(7))
    ));
}

#[test]
fn mounted_file_is_used_from_the_environment_and_never_written() {
    let data = tempfile::tempdir().unwrap();
    let secret = tempfile::tempdir().unwrap();
    // The operator made the secret from a key ring generated elsewhere; mounted
    // secrets are often 0644, which is the secret store's business.
    let origin = KeyRing::open(secret.path()).unwrap();
    let sealed = origin.seal(b"seed", b"u").unwrap();
    let mounted = secret.path().join("mounted.json");
    fs::copy(origin.path(), &mounted).unwrap();
    fs::set_permissions(&mounted, fs::Permissions::from_mode(0o644)).unwrap();
    let before = fs::read(&mounted).unwrap();

    let ring =
        KeyRing::from_env_value(Some(mounted.clone().into_os_string()), data.path()).unwrap();
    assert_eq!(ring.path(), mounted);
    assert_eq!(&ring.open_sealed(&sealed, b"u").unwrap()[..], b"seed");
    assert!(matches!(
        ring.rotate(),
        Err(KeyRingError::ExternallyManaged { .. })
    ));
    assert_eq!(fs::read(&mounted).unwrap(), before);
    assert!(!data.path().join(KEYRING_FILE_NAME).exists());

    // Missing mounted file: an error, not a silently generated key ring.
    let missing = secret.path().join("missing.json");
    let err = KeyRing::from_env_value(Some(missing.into_os_string()), data.path()).unwrap_err();
    assert!(matches!(err, KeyRingError::Io { .. }), "{err}");

    // Unset or empty: the data directory.
    for value in [None, Some(OsString::new())] {
        let ring = KeyRing::from_env_value(value, data.path()).unwrap();
        assert_eq!(ring.path(), data.path().join(KEYRING_FILE_NAME));
    }
}

#[test]
fn malformed_files_are_refused_with_a_reason() {
    let cases: &[(&str, &str)] = &[
        ("not json", "not a key ring"),
        (r#"{"format":"other","current":1,"keys":[]}"#, "format"),
        (
            r#"{"format":"trustmesh-keyring-v1","current":2,"keys":[{"version":1,"key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]}"#,
            "current version 2 has no key",
        ),
        (
            r#"{"format":"trustmesh-keyring-v1","current":1,"keys":[{"version":1,"key":"AAAA"}]}"#,
            "3 bytes",
        ),
        (
            r#"{"format":"trustmesh-keyring-v1","current":1,"keys":[{"version":1,"key":"!!"}]}"#,
            "not base64",
        ),
        (
            r#"{"format":"trustmesh-keyring-v1","current":0,"keys":[{"version":0,"key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]}"#,
            "version 0",
        ),
    ];
    for (text, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(KEYRING_FILE_NAME);
        fs::write(&file, text).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let err = KeyRing::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, KeyRingError::Malformed { .. }) && err.to_string().contains(reason),
            "{text}: {err}"
        );
    }
}

#[test]
fn debug_output_holds_no_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let ring = KeyRing::open(dir.path()).unwrap();
    let text = fs::read_to_string(ring.path()).unwrap();
    let stored: FileKeyRing = serde_json::from_str(&text).unwrap();
    let debug = format!("{ring:?}");
    assert!(debug.contains("current: 1"), "{debug}");
    assert!(!debug.contains(&stored.keys[0].key), "{debug}");
}

#[test]
fn key_ring_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<KeyRing>();
}

#[test]
fn rotation_keeps_the_creation_time_of_older_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ring = KeyRing::open(dir.path()).unwrap();
    // Pretend version 1 was made long ago.
    let text = fs::read_to_string(ring.path()).unwrap();
    let mut stored: serde_json::Value = serde_json::from_str(&text).unwrap();
    stored["keys"][0]["created_at"] = serde_json::json!(1_000);
    fs::write(ring.path(), stored.to_string()).unwrap();
    ring.rotate().unwrap();
    let after: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(ring.path()).unwrap()).unwrap();
    assert_eq!(after["keys"][0]["version"], 1);
    assert_eq!(after["keys"][0]["created_at"], 1_000);
    assert_eq!(after["keys"][1]["version"], 2);
    assert!(after["keys"][1]["created_at"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(after["current"], 2);
}
