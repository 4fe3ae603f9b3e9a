//! Checkpoints: text encoding, signing, verification, tampering, keys.

#![allow(clippy::unwrap_used, missing_docs)]

use trustmesh_merkle::{
    Checkpoint, CheckpointError, LogState, SignedCheckpoint, SigningKey, VerifyingKey,
};

const ORIGIN: &str = "trustmesh.local/audit";
const T: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn checkpoint(n: u32) -> Checkpoint {
    let mut log = LogState::new();
    for i in 0..n {
        log.append(format!("event {i}").as_bytes());
    }
    log.checkpoint(ORIGIN, T).unwrap()
}

fn key(name: &str, seed: u8) -> SigningKey {
    SigningKey::from_seed(name, &[seed; 32]).unwrap()
}

#[test]
fn body_format() {
    let cp = Checkpoint::new(ORIGIN, 5, [0xab; 32], T).unwrap();
    assert_eq!(
        cp.to_body(),
        "trustmesh.local/audit\n5\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\ntime 2026-01-01T00:00:00Z\n"
    );
    assert_eq!(Checkpoint::from_body(&cp.to_body()).unwrap(), cp);
    assert_eq!(cp.timestamp_rfc3339(), "2026-01-01T00:00:00Z");
}

#[test]
fn sign_open_round_trip() {
    let k = key("trustmesh-audit", 7);
    let cp = checkpoint(10);
    let signed = k.sign(&cp);
    let text = signed.to_text();
    assert!(text.starts_with(&cp.to_body()));
    assert!(text.contains("\n\n\u{2014} trustmesh-audit "));
    assert!(text.ends_with('\n'));

    let opened = SignedCheckpoint::open(&text, &[k.verifying_key()]).unwrap();
    assert_eq!(opened.checkpoint(), &cp);
    assert_eq!(opened, signed);
    assert_eq!(opened.to_text(), text);
    assert_eq!(
        opened.signers().collect::<Vec<_>>(),
        vec![("trustmesh-audit", k.key_id())]
    );
    assert_eq!(format!("{opened}"), text);
}

#[test]
fn generated_and_pkcs8_keys() {
    let (k, pkcs8) = SigningKey::generate("audit").unwrap();
    let again = SigningKey::from_pkcs8("audit", &pkcs8).unwrap();
    assert_eq!(k.verifying_key(), again.verifying_key());
    let text = k.sign(&checkpoint(3)).to_text();
    SignedCheckpoint::open(&text, &[again.verifying_key()]).unwrap();
    assert!(!format!("{k:?}").contains(&format!("{pkcs8:?}")));
    assert!(matches!(
        SigningKey::from_pkcs8("audit", b"not a key"),
        Err(CheckpointError::InvalidKey(_))
    ));
    assert!(matches!(
        SigningKey::from_seed("audit", &[1; 31]),
        Err(CheckpointError::InvalidKey(_))
    ));
}

#[test]
fn verifying_key_text() {
    let k = key("trustmesh-audit", 1);
    let vk = k.verifying_key();
    let text = vk.to_string();
    assert!(
        text.starts_with(&format!("trustmesh-audit+{:08x}+A", vk.key_id())),
        "{text}"
    );
    assert_eq!(text.parse::<VerifyingKey>().unwrap(), vk);
    assert_eq!(
        VerifyingKey::new("trustmesh-audit", vk.public_key()).unwrap(),
        vk
    );

    // Wrong id, wrong type byte, malformed.
    let wrong_id = format!(
        "trustmesh-audit+{:08x}+{}",
        vk.key_id() ^ 1,
        text.splitn(3, '+').nth(2).unwrap()
    );
    let err = wrong_id.parse::<VerifyingKey>().unwrap_err().to_string();
    assert!(err.contains("does not match"), "{err}");
    assert!("a+00000000+AgAA".parse::<VerifyingKey>().is_err());
    assert!("no-plus".parse::<VerifyingKey>().is_err());
    assert!(matches!(
        VerifyingKey::new("a b", &[0; 32]),
        Err(CheckpointError::InvalidKeyName(_))
    ));
}

/// The Go `sumdb/note` key id: SHA-256(name || "\n" || 0x01 || key)[:4], big-endian.
#[test]
fn key_id_is_the_signed_note_one() {
    use sha2::{Digest, Sha256};
    let k = key("example.com/log", 9);
    let vk = k.verifying_key();
    let d = Sha256::new()
        .chain_update(b"example.com/log\n\x01")
        .chain_update(vk.public_key())
        .finalize();
    assert_eq!(vk.key_id(), u32::from_be_bytes([d[0], d[1], d[2], d[3]]));
}

#[test]
fn tampered_text_is_rejected() {
    let k = key("trustmesh-audit", 7);
    let trusted = [k.verifying_key()];
    let text = k.sign(&checkpoint(10)).to_text();

    // Size changed (truncation hidden): signature fails.
    let t = text.replacen("\n10\n", "\n9\n", 1);
    assert!(matches!(
        SignedCheckpoint::open(&t, &trusted),
        Err(CheckpointError::BadSignature { .. })
    ));
    // Root changed.
    let lines: Vec<&str> = text.split('\n').collect();
    let mut root = lines[2].to_string();
    root.replace_range(0..1, if root.starts_with('A') { "B" } else { "A" });
    let t = text.replacen(lines[2], &root, 1);
    assert!(matches!(
        SignedCheckpoint::open(&t, &trusted),
        Err(CheckpointError::BadSignature { .. })
    ));
    // Time changed.
    let t = text.replacen("2026-01-01", "2026-01-02", 1);
    assert!(matches!(
        SignedCheckpoint::open(&t, &trusted),
        Err(CheckpointError::BadSignature { .. })
    ));
    // Signature bytes changed.
    let sig_line = lines[5];
    let mut sig: Vec<char> = sig_line.chars().collect();
    let last = sig.len() - 3;
    sig[last] = if sig[last] == 'A' { 'B' } else { 'A' };
    let t = text.replacen(sig_line, &sig.into_iter().collect::<String>(), 1);
    assert!(SignedCheckpoint::open(&t, &trusted).is_err());
    // Non-canonical but same meaning: leading zero.
    let t = text.replacen("\n10\n", "\n010\n", 1);
    let err = SignedCheckpoint::open(&t, &trusted)
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2"), "{err}");
    // Signature block removed.
    let body_only = text.split("\n\n").next().unwrap().to_string() + "\n";
    assert_eq!(
        SignedCheckpoint::open(&body_only, &trusted),
        Err(CheckpointError::MissingSignatures)
    );
}

#[test]
fn wrong_key_is_rejected() {
    let k = key("trustmesh-audit", 7);
    let other = key("trustmesh-audit", 8);
    let text = k.sign(&checkpoint(4)).to_text();
    let err = SignedCheckpoint::open(&text, &[other.verifying_key()]).unwrap_err();
    assert!(
        matches!(err, CheckpointError::UntrustedSigners { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("trustmesh-audit+"), "{err}");
    assert!(matches!(
        SignedCheckpoint::open(&text, &[]),
        Err(CheckpointError::UntrustedSigners { .. })
    ));
    // A different key forged under the same name and id: the signature fails.
    let forged = VerifyingKey::new("trustmesh-audit", other.verifying_key().public_key()).unwrap();
    assert_ne!(forged.key_id(), k.key_id());
    // Key rotation: any trusted key suffices.
    SignedCheckpoint::open(&text, &[other.verifying_key(), k.verifying_key()]).unwrap();
}

#[test]
fn cosignatures() {
    let k = key("trustmesh-audit", 7);
    let w = key("witness", 3);
    let mut signed = k.sign(&checkpoint(4));
    signed.add_signature(&w);
    let text = signed.to_text();
    assert_eq!(text.matches('\u{2014}').count(), 2);
    // Unknown cosigner ignored; either key opens it.
    SignedCheckpoint::open(&text, &[k.verifying_key()]).unwrap();
    SignedCheckpoint::open(&text, &[w.verifying_key()]).unwrap();
    // A bad signature by a trusted key is an error even if another one verifies.
    let lines: Vec<&str> = text.split('\n').collect();
    let wline = lines.iter().find(|l| l.contains("witness")).unwrap();
    let mut c: Vec<char> = wline.chars().collect();
    let i = c.len() - 4;
    c[i] = if c[i] == 'x' { 'y' } else { 'x' };
    let t = text.replacen(wline, &c.into_iter().collect::<String>(), 1);
    assert!(matches!(
        SignedCheckpoint::open(&t, &[k.verifying_key(), w.verifying_key()]),
        Err(CheckpointError::BadSignature { .. })
    ));
}

#[test]
fn parse_errors_say_what_is_wrong() {
    let cases: [(&str, &str); 9] = [
        (
            "log\n5\nAAAA\ntime 2026-01-01T00:00:00Z\n",
            "line 3: root hash must be 32 bytes",
        ),
        ("log\nfive\n", "line 2: expected the tree size"),
        ("log\n5\n", "line 3: missing"),
        (
            "log\n5\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\nwhen 1\n",
            "line 4: expected 'time",
        ),
        (
            "log\n5\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\ntime yesterday\n",
            "line 4: timestamp \"yesterday\" is not RFC 3339",
        ),
        (
            "log\n5\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\ntime 2026-01-01T01:00:00+01:00\n",
            "not in canonical form",
        ),
        (
            "log\n5\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\ntime 2026-01-01T00:00:00Z\nextra\n",
            "line 5: unexpected extension line",
        ),
        (
            "log\n5\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\ntime 2026-01-01T00:00:00Z",
            "newline",
        ),
        (
            "\n5\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\ntime 2026-01-01T00:00:00Z\n",
            "line 1",
        ),
    ];
    for (body, want) in cases {
        let err = Checkpoint::from_body(body).unwrap_err().to_string();
        assert!(err.contains(want), "{body:?}: {err}");
    }
    let k = key("a", 1);
    let body = checkpoint(2).to_body();
    let err = SignedCheckpoint::open(&format!("{body}\n- a AAAA\n"), &[k.verifying_key()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("signature line 1") && err.contains("em dash"),
        "{err}"
    );
    let err = SignedCheckpoint::open(&format!("{body}\n\u{2014} a !!!\n"), &[k.verifying_key()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not standard base64"), "{err}");
    assert!(matches!(
        Checkpoint::new("", 1, [0; 32], T),
        Err(CheckpointError::InvalidOrigin(_))
    ));
    assert!(matches!(
        Checkpoint::new("a\nb", 1, [0; 32], T),
        Err(CheckpointError::InvalidOrigin(_))
    ));
    assert!(matches!(
        Checkpoint::new("a", 1, [0; 32], u64::MAX),
        Err(CheckpointError::InvalidTimestamp(_))
    ));
}
