//! Checkpoints (C2SP `tlog-checkpoint`) signed as C2SP signed notes with Ed25519.
//!
//! A checkpoint body is four lines:
//!
//! ```text
//! trustmesh.local/audit                       <- origin: names the log
//! 1048576                                     <- tree size, decimal
//! 2Jo5GfPZb5Ea5Tnn6Afa2u5qrNfzwL3YqUNMbKTwv5k=  <- root hash, standard base64
//! time 2026-05-01T12:00:00Z                   <- extension line: when it was signed (UTC)
//! ```
//!
//! and the signed checkpoint is the body, a blank line, and one signature
//! line per signer: `— <key name> <base64(key id (4 bytes, big-endian) || Ed25519 signature)>`,
//! where the em dash is U+2014 and the signature covers the body bytes
//! (including its last newline). The key id is the first 4 bytes of
//! `SHA-256(key name || "\n" || 0x01 || public key)`, as in Go's
//! `golang.org/x/mod/sumdb/note`, which can verify these notes; a verifier key
//! is written `<name>+<key id, 8 hex digits>+<base64(0x01 || public key)>`.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::hash::Hash;

/// Signature type byte of Ed25519 in C2SP signed notes.
const ALG_ED25519: u8 = 0x01;
/// Start of a signature line: an em dash and a space.
const SIG_PREFIX: &str = "\u{2014} ";
/// Largest signed checkpoint accepted.
const MAX_NOTE_BYTES: usize = 1 << 20;
/// Most signature lines accepted (as Go's `note.Open`).
const MAX_SIGNATURES: usize = 100;
/// Largest timestamp that RFC 3339 can express with a 4-digit year: 9999-12-31T23:59:59Z.
const MAX_TIMESTAMP: u64 = 253_402_300_799;

/// What is wrong with a checkpoint, a key or a signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The origin is empty, has control characters or surrounding spaces.
    #[error(
        "invalid checkpoint origin {0:?}: it must be a non-empty line without control characters or surrounding spaces"
    )]
    InvalidOrigin(String),
    /// The timestamp cannot be written in RFC 3339.
    #[error("checkpoint timestamp {0} is after 9999-12-31T23:59:59Z")]
    InvalidTimestamp(u64),
    /// A key name that signed notes do not allow.
    #[error("invalid key name {0:?}: it must be non-empty, without spaces or '+'")]
    InvalidKeyName(String),
    /// Key material that ring refused, or of the wrong length.
    #[error("invalid Ed25519 key: {0}")]
    InvalidKey(String),
    /// A verifier key string that is not `<name>+<hex id>+<base64 key>`.
    #[error("invalid verifier key {text:?}: {reason}")]
    InvalidVerifierKey {
        /// The text given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The text is larger than any checkpoint could be.
    #[error("signed checkpoint is {0} bytes, more than the 1 MiB accepted")]
    TooLarge(usize),
    /// No blank line separating the body from the signatures.
    #[error(
        "not a signed checkpoint: expected the checkpoint lines, a blank line, then '— <key name> <signature>' lines"
    )]
    MissingSignatures,
    /// A line of the body is wrong.
    #[error("checkpoint line {line}: {reason}")]
    Body {
        /// Line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The body parses but is not written the way this crate writes it.
    #[error(
        "checkpoint is not in canonical form (expected {expected:?}): it was edited or written by another tool"
    )]
    NotCanonical {
        /// The canonical encoding of what was parsed.
        expected: String,
    },
    /// A signature line is malformed.
    #[error("signature line {line}: {reason}")]
    SignatureLine {
        /// Line number in the signature block, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A signature by a trusted key does not verify.
    #[error(
        "the signature by key {name} (id {key_id:08x}) is invalid: the checkpoint was altered after signing, or signed by another key with the same name and id"
    )]
    BadSignature {
        /// The key name.
        name: String,
        /// The key id.
        key_id: u32,
    },
    /// None of the signatures is by a trusted key.
    #[error(
        "the checkpoint is not signed by a trusted key (signed by: {found}; trusted: {trusted})"
    )]
    UntrustedSigners {
        /// The signers present, `name+id`.
        found: String,
        /// The trusted keys, `name+id`.
        trusted: String,
    },
}

fn check_key_name(name: &str) -> Result<(), CheckpointError> {
    if name.is_empty()
        || name.contains('+')
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(CheckpointError::InvalidKeyName(name.to_string()));
    }
    Ok(())
}

fn key_id(name: &str, public_key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// A statement that the log named `origin` had `size` entries with Merkle
/// root `root` at `timestamp`. Sign it with [`SigningKey::sign`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Checkpoint {
    origin: String,
    size: u64,
    root: Hash,
    timestamp: u64,
}

impl Checkpoint {
    /// A checkpoint; `timestamp` is in seconds since the Unix epoch (UTC).
    pub fn new(
        origin: &str,
        size: u64,
        root: Hash,
        timestamp: u64,
    ) -> Result<Self, CheckpointError> {
        if origin.is_empty()
            || origin.trim() != origin
            || origin.chars().any(char::is_control)
            || origin.starts_with(SIG_PREFIX)
        {
            return Err(CheckpointError::InvalidOrigin(origin.to_string()));
        }
        if timestamp > MAX_TIMESTAMP {
            return Err(CheckpointError::InvalidTimestamp(timestamp));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            timestamp,
        })
    }

    /// The name of the log.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The number of entries.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The Merkle root of the first `size` entries.
    pub fn root(&self) -> &Hash {
        &self.root
    }

    /// When it was made, in seconds since the Unix epoch (UTC).
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// The timestamp in RFC 3339, UTC, to the second (`2026-05-01T12:00:00Z`).
    pub fn timestamp_rfc3339(&self) -> String {
        rfc3339(self.timestamp)
    }

    /// The canonical text of the (unsigned) checkpoint: the four lines, each
    /// ending in a newline. This is what signatures cover.
    pub fn to_body(&self) -> String {
        format!(
            "{}\n{}\n{}\ntime {}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root),
            self.timestamp_rfc3339()
        )
    }

    /// Parses the canonical text written by [`Checkpoint::to_body`] (no signature).
    pub fn from_body(text: &str) -> Result<Self, CheckpointError> {
        let body_err = |line: usize, reason: String| CheckpointError::Body { line, reason };
        let Some(content) = text.strip_suffix('\n') else {
            return Err(body_err(
                text.split('\n').count(),
                "the last line does not end with a newline".into(),
            ));
        };
        let lines: Vec<&str> = content.split('\n').collect();
        let line = |i: usize, what: &str| -> Result<&str, CheckpointError> {
            lines.get(i).copied().ok_or_else(|| {
                body_err(
                    i + 1,
                    format!(
                        "missing {what}: a checkpoint has 4 lines (origin, size, root hash, time), this one has {}",
                        lines.len()
                    ),
                )
            })
        };
        let origin = line(0, "origin")?;
        if origin.is_empty() {
            return Err(body_err(1, "the origin (log name) is empty".into()));
        }
        let size_text = line(1, "tree size")?;
        if size_text.is_empty()
            || !size_text.bytes().all(|b| b.is_ascii_digit())
            || (size_text.len() > 1 && size_text.starts_with('0'))
        {
            return Err(body_err(
                2,
                format!(
                    "expected the tree size as a decimal number without leading zeros, got {size_text:?}"
                ),
            ));
        }
        let size: u64 = size_text
            .parse()
            .map_err(|e| body_err(2, format!("tree size {size_text:?}: {e}")))?;
        let root_text = line(2, "root hash")?;
        let root_bytes = STANDARD.decode(root_text).map_err(|e| {
            body_err(
                3,
                format!("root hash {root_text:?} is not standard base64: {e}"),
            )
        })?;
        let root = Hash::try_from(root_bytes.as_slice()).map_err(|_| {
            body_err(
                3,
                format!(
                    "root hash must be 32 bytes, {root_text:?} has {}",
                    root_bytes.len()
                ),
            )
        })?;
        let time_line = line(3, "time")?;
        let Some(time_text) = time_line.strip_prefix("time ") else {
            return Err(body_err(
                4,
                format!("expected 'time <RFC 3339 UTC timestamp>', got {time_line:?}"),
            ));
        };
        if let Some(extra) = lines.get(4) {
            return Err(body_err(
                5,
                format!("unexpected extension line {extra:?}: a checkpoint has 4 lines"),
            ));
        }
        let t = OffsetDateTime::parse(time_text, &Rfc3339)
            .map_err(|e| body_err(4, format!("timestamp {time_text:?} is not RFC 3339: {e}")))?;
        let timestamp = u64::try_from(t.unix_timestamp())
            .map_err(|_| body_err(4, format!("timestamp {time_text:?} is before 1970")))?;
        let cp = Checkpoint::new(origin, size, root, timestamp)
            .map_err(|e| body_err(1, e.to_string()))?;
        let canonical = cp.to_body();
        if canonical != text {
            return Err(CheckpointError::NotCanonical {
                expected: canonical,
            });
        }
        Ok(cp)
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_body())
    }
}

fn rfc3339(timestamp: u64) -> String {
    i64::try_from(timestamp)
        .ok()
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{timestamp}"))
}

/// An Ed25519 key that signs checkpoints, with its signed-note key name.
pub struct SigningKey {
    name: String,
    key_id: u32,
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a new key; returns it and its PKCS#8 document, to store
    /// (secretly) and load later with [`SigningKey::from_pkcs8`].
    pub fn generate(name: &str) -> Result<(Self, Vec<u8>), CheckpointError> {
        check_key_name(name)?;
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| {
            CheckpointError::InvalidKey("the system random generator failed".into())
        })?;
        let pkcs8 = doc.as_ref().to_vec();
        let key = Self::from_pkcs8(name, &pkcs8)?;
        Ok((key, pkcs8))
    }

    /// Loads a key from a PKCS#8 document (v1 or v2).
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Self, CheckpointError> {
        check_key_name(name)?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| CheckpointError::InvalidKey(format!("PKCS#8 document rejected: {e}")))?;
        Ok(Self::with_pair(name, pair))
    }

    /// Loads a key from its 32-byte seed (the private key proper).
    pub fn from_seed(name: &str, seed: &[u8]) -> Result<Self, CheckpointError> {
        check_key_name(name)?;
        if seed.len() != 32 {
            return Err(CheckpointError::InvalidKey(format!(
                "an Ed25519 seed is 32 bytes, got {}",
                seed.len()
            )));
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| CheckpointError::InvalidKey(format!("seed rejected: {e}")))?;
        Ok(Self::with_pair(name, pair))
    }

    fn with_pair(name: &str, pair: Ed25519KeyPair) -> Self {
        SigningKey {
            name: name.to_string(),
            key_id: key_id(name, pair.public_key().as_ref()),
            pair,
        }
    }

    /// The key name that appears in signature lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 32-bit key id (see the module documentation).
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The matching public key, to give to verifiers.
    pub fn verifying_key(&self) -> VerifyingKey {
        let mut pk = [0u8; 32];
        pk.copy_from_slice(self.pair.public_key().as_ref());
        VerifyingKey {
            name: self.name.clone(),
            key_id: self.key_id,
            public_key: pk,
        }
    }

    /// Signs a checkpoint.
    pub fn sign(&self, checkpoint: &Checkpoint) -> SignedCheckpoint {
        let body = checkpoint.to_body();
        let sig = self.pair.sign(body.as_bytes());
        SignedCheckpoint {
            checkpoint: checkpoint.clone(),
            body,
            signatures: vec![NoteSignature {
                name: self.name.clone(),
                key_id: self.key_id,
                signature: sig.as_ref().to_vec(),
            }],
        }
    }
}

/// An Ed25519 public key that verifies checkpoints, with its key name.
///
/// Written and parsed (`Display`/`FromStr`) as a signed-note verifier key:
/// `<name>+<key id, 8 hex digits>+<base64(0x01 || public key)>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VerifyingKey {
    name: String,
    key_id: u32,
    public_key: [u8; 32],
}

impl VerifyingKey {
    /// A verifying key from its name and 32-byte public key.
    pub fn new(name: &str, public_key: &[u8]) -> Result<Self, CheckpointError> {
        check_key_name(name)?;
        let pk: [u8; 32] = public_key.try_into().map_err(|_| {
            CheckpointError::InvalidKey(format!(
                "an Ed25519 public key is 32 bytes, got {}",
                public_key.len()
            ))
        })?;
        Ok(VerifyingKey {
            name: name.to_string(),
            key_id: key_id(name, &pk),
            public_key: pk,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 32-bit key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The raw public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(&self.public_key);
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            STANDARD.encode(raw)
        )
    }
}

impl FromStr for VerifyingKey {
    type Err = CheckpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| CheckpointError::InvalidVerifierKey {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        // The name has no '+' and the id is hex; the base64 key may contain '+'.
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected <name>+<key id>+<base64 key>"));
        };
        if id.len() != 8 {
            return Err(bad("the key id must be 8 hexadecimal digits"));
        }
        let id = u32::from_str_radix(id, 16)
            .map_err(|_| bad("the key id must be 8 hexadecimal digits"))?;
        let raw = STANDARD
            .decode(key)
            .map_err(|_| bad("the key is not standard base64"))?;
        let Some((&ALG_ED25519, pk)) = raw.split_first() else {
            return Err(bad(
                "not an Ed25519 key (the key must start with the type byte 0x01)",
            ));
        };
        let vk = VerifyingKey::new(name, pk).map_err(|e| bad(&e.to_string()))?;
        if vk.key_id != id {
            return Err(bad(&format!(
                "the key id {id:08x} does not match the name and key (expected {:08x})",
                vk.key_id
            )));
        }
        Ok(vk)
    }
}

/// One signature line of a signed note.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct NoteSignature {
    name: String,
    key_id: u32,
    signature: Vec<u8>,
}

/// A checkpoint with its signatures, verified: it is only made by
/// [`SigningKey::sign`] or by [`SignedCheckpoint::open`] with trusted keys.
///
/// Its text form ([`SignedCheckpoint::to_text`], `Display`) is what the
/// audit service stores and what `trustmesh audit verify --checkpoint FILE` reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SignedCheckpoint {
    checkpoint: Checkpoint,
    body: String,
    signatures: Vec<NoteSignature>,
}

impl SignedCheckpoint {
    /// Parses a signed checkpoint and verifies it: at least one signature must
    /// be by one of the `trusted` keys (same name and key id) and valid, and
    /// every signature by a trusted key must be valid. Signatures by other
    /// keys (cosigners) are kept but not checked.
    pub fn open(text: &str, trusted: &[VerifyingKey]) -> Result<Self, CheckpointError> {
        if text.len() > MAX_NOTE_BYTES {
            return Err(CheckpointError::TooLarge(text.len()));
        }
        let split = text
            .rfind("\n\n")
            .ok_or(CheckpointError::MissingSignatures)?;
        let body = &text[..split + 1];
        let sig_block = &text[split + 2..];
        let checkpoint = Checkpoint::from_body(body)?;

        if sig_block.is_empty() {
            return Err(CheckpointError::MissingSignatures);
        }
        let Some(sig_block) = sig_block.strip_suffix('\n') else {
            return Err(CheckpointError::SignatureLine {
                line: sig_block.split('\n').count(),
                reason: "the last signature line does not end with a newline".into(),
            });
        };
        let mut signatures = Vec::new();
        for (i, line) in sig_block.split('\n').enumerate() {
            let line_no = i + 1;
            if line_no > MAX_SIGNATURES {
                return Err(CheckpointError::SignatureLine {
                    line: line_no,
                    reason: format!("more than {MAX_SIGNATURES} signatures"),
                });
            }
            signatures.push(parse_signature_line(line_no, line)?);
        }

        let mut verified = false;
        for sig in &signatures {
            for key in trusted
                .iter()
                .filter(|k| k.name == sig.name && k.key_id == sig.key_id)
            {
                if key.verify(body.as_bytes(), &sig.signature) {
                    verified = true;
                } else {
                    return Err(CheckpointError::BadSignature {
                        name: sig.name.clone(),
                        key_id: sig.key_id,
                    });
                }
            }
        }
        if !verified {
            let list = |it: &mut dyn Iterator<Item = String>| {
                let v: Vec<String> = it.collect();
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(", ")
                }
            };
            return Err(CheckpointError::UntrustedSigners {
                found: list(
                    &mut signatures
                        .iter()
                        .map(|s| format!("{}+{:08x}", s.name, s.key_id)),
                ),
                trusted: list(
                    &mut trusted
                        .iter()
                        .map(|k| format!("{}+{:08x}", k.name, k.key_id)),
                ),
            });
        }
        Ok(SignedCheckpoint {
            checkpoint,
            body: body.to_string(),
            signatures,
        })
    }

    /// The verified checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The signers, as (key name, key id), in order.
    pub fn signers(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.signatures.iter().map(|s| (s.name.as_str(), s.key_id))
    }

    /// Adds the signature of another key (a cosigner, or the next key during a rotation).
    pub fn add_signature(&mut self, key: &SigningKey) {
        let sig = key.pair.sign(self.body.as_bytes());
        self.signatures.push(NoteSignature {
            name: key.name.clone(),
            key_id: key.key_id,
            signature: sig.as_ref().to_vec(),
        });
    }

    /// The text form: the checkpoint body, a blank line, the signature lines.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.body.len() + 1 + 120 * self.signatures.len());
        out.push_str(&self.body);
        out.push('\n');
        for s in &self.signatures {
            let mut raw = Vec::with_capacity(4 + s.signature.len());
            raw.extend_from_slice(&s.key_id.to_be_bytes());
            raw.extend_from_slice(&s.signature);
            out.push_str(SIG_PREFIX);
            out.push_str(&s.name);
            out.push(' ');
            out.push_str(&STANDARD.encode(raw));
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for SignedCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

fn parse_signature_line(line_no: usize, line: &str) -> Result<NoteSignature, CheckpointError> {
    let bad = |reason: String| CheckpointError::SignatureLine {
        line: line_no,
        reason,
    };
    let Some(rest) = line.strip_prefix(SIG_PREFIX) else {
        return Err(bad(format!(
            "expected '— <key name> <base64 signature>' (starting with an em dash U+2014 and a space), got {line:?}"
        )));
    };
    let Some((name, b64)) = rest.split_once(' ') else {
        return Err(bad(
            "expected a key name and a signature separated by a space".into(),
        ));
    };
    check_key_name(name).map_err(|e| bad(e.to_string()))?;
    let raw = STANDARD.decode(b64).map_err(|e| {
        bad(format!(
            "the signature of {name} is not standard base64: {e}"
        ))
    })?;
    if raw.len() <= 4 {
        return Err(bad(format!(
            "the signature of {name} is too short ({} bytes)",
            raw.len()
        )));
    }
    let key_id = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    Ok(NoteSignature {
        name: name.to_string(),
        key_id,
        signature: raw[4..].to_vec(),
    })
}
