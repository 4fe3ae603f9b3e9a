//! [`KeyRing`]: the issuer's Ed25519 signing keys, persisted in a directory
//! and rotated with overlap.
//!
//! A ring always holds one *current* key (signs new tokens) and one *next*
//! key (already published in the JWKS, so that verifiers know it before it
//! signs anything), plus the *previous* keys that still have unexpired tokens
//! out there. Rotating promotes the next key to current, gives the old
//! current key a `retire_after` of `now + token_ttl + RETIRE_LEEWAY`, and
//! creates a new next key; a previous key is dropped (and unpublished) once
//! its `retire_after` has passed.
//!
//! On disk: `<dir>/signing-keys.json` (mode 0600, directory 0700), replaced
//! atomically, holding for each key its `kid` (RFC 7638 thumbprint), its
//! PKCS#8 v2 document (base64), `created_at`, `activated_at` and
//! `retire_after` (seconds since the Unix epoch).
//!
//! One process owns a key directory: two processes rotating the same
//! directory would overwrite each other's keys.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, EncodingKey};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::{TokenError, duration_seconds, unix_seconds};

/// The name of the key file inside the key ring's directory.
pub const KEY_FILE_NAME: &str = "signing-keys.json";

/// Added to the token lifetime before a rotated-out key is dropped: covers
/// the verifiers' leeway (at most [`MAX_LEEWAY`](crate::MAX_LEEWAY)) and
/// clock skew.
pub const RETIRE_LEEWAY: Duration = Duration::from_secs(60);

/// The version of the key file format.
const FILE_VERSION: u32 = 1;

/// When signing keys rotate, and how long their tokens live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// How long a key signs new tokens before the next key takes over
    /// (default 24 h).
    pub rotate_every: Duration,
    /// The lifetime of the tokens the keys sign (default 15 min): a
    /// rotated-out key stays published for this long plus [`RETIRE_LEEWAY`].
    /// [`TokenIssuer`](crate::TokenIssuer) never issues longer-lived tokens.
    pub token_ttl: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            rotate_every: Duration::from_secs(24 * 60 * 60),
            token_ttl: Duration::from_secs(15 * 60),
        }
    }
}

/// The key file.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    keys: Vec<StoredKey>,
}

/// One key in the key file.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// The PKCS#8 v2 document, base64 (standard alphabet).
    pkcs8: String,
    created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    activated_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retire_after: Option<i64>,
}

impl Drop for StoredKey {
    fn drop(&mut self) {
        self.pkcs8.zeroize();
    }
}

/// A signing key in memory.
#[derive(Clone)]
struct SigningKey {
    kid: String,
    pkcs8: Zeroizing<Vec<u8>>,
    public: [u8; 32],
    encoding: EncodingKey,
    created_at: i64,
    /// When it became the current key; `None` for the next key.
    activated_at: Option<i64>,
    /// When it may be dropped; `Some` once rotated out.
    retire_after: Option<i64>,
}

impl SigningKey {
    fn generate(now: i64) -> Result<Self, TokenError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| TokenError::Storage("cannot generate an Ed25519 key".to_owned()))?;
        Self::from_pkcs8(Zeroizing::new(doc.as_ref().to_vec()), now)
    }

    /// Parses a PKCS#8 v2 Ed25519 key and checks that `jsonwebtoken` signs
    /// with it what its public key verifies.
    fn from_pkcs8(pkcs8: Zeroizing<Vec<u8>>, created_at: i64) -> Result<Self, TokenError> {
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|e| TokenError::Storage(format!("invalid Ed25519 PKCS#8 key: {e}")))?;
        let public: [u8; 32] =
            pair.public_key().as_ref().try_into().map_err(|_| {
                TokenError::Storage("unexpected Ed25519 public key size".to_owned())
            })?;
        let encoding = EncodingKey::from_ed_der(&pkcs8);
        let probe = b"trustmesh signing key probe";
        let signature = jsonwebtoken::crypto::sign(probe, &encoding, Algorithm::EdDSA)
            .map_err(|e| TokenError::Storage(format!("unusable Ed25519 key: {e}")))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|e| TokenError::Storage(format!("unusable Ed25519 key: {e}")))?;
        UnparsedPublicKey::new(&ED25519, public)
            .verify(probe, &signature)
            .map_err(|_| {
                TokenError::Storage("Ed25519 key does not match its public key".to_owned())
            })?;
        Ok(Self {
            kid: thumbprint(&public),
            pkcs8,
            public,
            encoding,
            created_at,
            activated_at: None,
            retire_after: None,
        })
    }

    fn is_current(&self) -> bool {
        self.activated_at.is_some() && self.retire_after.is_none()
    }

    fn is_next(&self) -> bool {
        self.activated_at.is_none() && self.retire_after.is_none()
    }

    fn jwk(&self) -> Jwk {
        Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::EdDSA),
                key_id: Some(self.kid.clone()),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: URL_SAFE_NO_PAD.encode(self.public),
            }),
        }
    }

    fn to_stored(&self) -> StoredKey {
        StoredKey {
            kid: self.kid.clone(),
            pkcs8: STANDARD.encode(&*self.pkcs8),
            created_at: self.created_at,
            activated_at: self.activated_at,
            retire_after: self.retire_after,
        }
    }

    fn from_stored(stored: &StoredKey) -> Result<Self, TokenError> {
        let pkcs8 =
            Zeroizing::new(STANDARD.decode(&stored.pkcs8).map_err(|_| {
                TokenError::Storage(format!("key {:?}: invalid base64", stored.kid))
            })?);
        let mut key = Self::from_pkcs8(pkcs8, stored.created_at)
            .map_err(|e| TokenError::Storage(format!("key {:?}: {e}", stored.kid)))?;
        if key.kid != stored.kid {
            return Err(TokenError::Storage(format!(
                "key {:?}: the kid is not the thumbprint of the key ({})",
                stored.kid, key.kid
            )));
        }
        key.activated_at = stored.activated_at;
        key.retire_after = stored.retire_after;
        Ok(key)
    }
}

/// The RFC 7638 thumbprint (SHA-256, base64url) of an Ed25519 public key.
fn thumbprint(public: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ))
}

/// What identifies a ring's state, to know whether it changed.
fn summary(keys: &[SigningKey]) -> Vec<(&str, Option<i64>, Option<i64>)> {
    keys.iter()
        .map(|k| (k.kid.as_str(), k.activated_at, k.retire_after))
        .collect()
}

/// Applies the rotation rules at `now`: drops retired keys, repairs the
/// invariants (one current key, one next key), and rotates when the current
/// key is due (or when `force`). Returns the new keys and whether a new key
/// became current.
fn advance(
    keys: &[SigningKey],
    policy: &RotationPolicy,
    now: i64,
    force: bool,
) -> Result<(Vec<SigningKey>, bool), TokenError> {
    let retire_at = now
        .saturating_add(duration_seconds(policy.token_ttl))
        .saturating_add(duration_seconds(RETIRE_LEEWAY));
    let mut keys: Vec<SigningKey> = keys
        .iter()
        .filter(|k| k.retire_after.is_none_or(|r| r > now))
        .cloned()
        .collect();

    // Exactly one current key: the last activated one.
    let current = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| k.is_current())
        .max_by_key(|(_, k)| k.activated_at)
        .map(|(i, _)| i);
    for (i, key) in keys.iter_mut().enumerate() {
        if key.is_current() && Some(i) != current {
            key.retire_after = Some(retire_at);
        }
    }
    // At most one next key: the newest (the others never signed anything).
    let next_kid = keys
        .iter()
        .filter(|k| k.is_next())
        .max_by_key(|k| k.created_at)
        .map(|k| k.kid.clone());
    keys.retain(|k| !k.is_next() || Some(&k.kid) == next_kid.as_ref());

    let due = match current.and_then(|i| keys.get(i)) {
        None => true,
        Some(key) => {
            force
                || key
                    .activated_at
                    .unwrap_or(now)
                    .saturating_add(duration_seconds(policy.rotate_every))
                    <= now
        }
    };
    if due {
        if let Some(key) = current.and_then(|i| keys.get_mut(i)) {
            key.retire_after = Some(retire_at);
        }
        match keys.iter_mut().find(|k| k.is_next()) {
            Some(next) => next.activated_at = Some(now),
            None => {
                let mut key = SigningKey::generate(now)?;
                key.activated_at = Some(now);
                keys.push(key);
            }
        }
    }
    if !keys.iter().any(SigningKey::is_next) {
        keys.push(SigningKey::generate(now)?);
    }
    Ok((keys, due))
}

/// The issuer's Ed25519 signing keys, persisted in a directory (see the
/// module documentation). Cheap to clone: clones share the same keys.
#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    path: PathBuf,
    policy: RotationPolicy,
    keys: RwLock<Vec<SigningKey>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("dir", &self.inner.dir)
            .field("policy", &self.inner.policy)
            .field("current_kid", &self.current_kid())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Opens the key ring in `dir`, creating the directory (mode 0700) and
    /// its key file (mode 0600) with a current and a next key if there is
    /// none. An existing key file is loaded (it must not be readable by group
    /// or others); retired keys are dropped and the current key is rotated
    /// if it is due.
    pub fn open(dir: &Path, policy: RotationPolicy) -> Result<Self, TokenError> {
        Self::open_at(dir, policy, SystemTime::now())
    }

    /// [`open`](Self::open) as if the time were `now`.
    pub fn open_at(
        dir: &Path,
        policy: RotationPolicy,
        now: SystemTime,
    ) -> Result<Self, TokenError> {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| storage(format!("cannot create {}", dir.display()), &e))?;
        }
        if !dir.is_dir() {
            return Err(TokenError::Storage(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        let path = dir.join(KEY_FILE_NAME);
        let loaded = load(&path)?;
        let ring = Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                path,
                policy,
                keys: RwLock::new(loaded),
            }),
        };
        let created = ring.current_kid().is_empty();
        ring.update(now, false)?;
        if created {
            tracing::info!(
                path = %ring.inner.path.display(),
                kid = %ring.current_kid(),
                "created the token signing keys"
            );
        }
        Ok(ring)
    }

    /// Rotates if the current key is older than
    /// [`rotate_every`](RotationPolicy::rotate_every), and drops the keys
    /// whose tokens have all expired. Returns whether a new key became
    /// current. Call it periodically (every minute, say).
    pub fn rotate_if_due(&self) -> Result<bool, TokenError> {
        self.rotate_if_due_at(SystemTime::now())
    }

    /// [`rotate_if_due`](Self::rotate_if_due) as if the time were `now`.
    pub fn rotate_if_due_at(&self, now: SystemTime) -> Result<bool, TokenError> {
        self.update(now, false)
    }

    /// Rotates now: the next key becomes current, the current key stays
    /// published until its tokens have expired.
    pub fn rotate_now(&self) -> Result<(), TokenError> {
        self.rotate_now_at(SystemTime::now())
    }

    /// [`rotate_now`](Self::rotate_now) as if the time were `now`.
    pub fn rotate_now_at(&self, now: SystemTime) -> Result<(), TokenError> {
        self.update(now, true).map(|_| ())
    }

    /// The JWKS: every published public key (the current, the next and the
    /// not yet retired previous ones) as `kty: OKP, crv: Ed25519, alg: EdDSA,
    /// use: sig` with its `kid`.
    pub fn jwks(&self) -> JwkSet {
        let keys = self.read();
        JwkSet {
            keys: keys.iter().map(SigningKey::jwk).collect(),
        }
    }

    /// [`jwks`](Self::jwks) as JSON: the body of `/.well-known/jwks.json`.
    pub fn jwks_json(&self) -> String {
        serde_json::to_string(&self.jwks()).unwrap_or_else(|_| r#"{"keys":[]}"#.to_owned())
    }

    /// The `kid` of the key that signs new tokens.
    pub fn current_kid(&self) -> String {
        self.read()
            .iter()
            .find(|k| k.is_current())
            .map(|k| k.kid.clone())
            .unwrap_or_default()
    }

    /// The rotation policy.
    pub fn policy(&self) -> RotationPolicy {
        self.inner.policy
    }

    /// The key file (`<dir>/signing-keys.json`).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The current key's `kid` and signing key.
    pub(crate) fn signing_key(&self) -> Result<(String, EncodingKey), TokenError> {
        self.read()
            .iter()
            .find(|k| k.is_current())
            .map(|k| (k.kid.clone(), k.encoding.clone()))
            .ok_or_else(|| TokenError::Signing("the key ring has no current key".to_owned()))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<SigningKey>> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies [`advance`] and persists the result if anything changed.
    fn update(&self, now: SystemTime, force: bool) -> Result<bool, TokenError> {
        let now = unix_seconds(now);
        let mut keys = self
            .inner
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let (new_keys, rotated) = advance(&keys, &self.inner.policy, now, force)?;
        if summary(&new_keys) != summary(&keys) {
            save(&self.inner.dir, &self.inner.path, &new_keys)?;
            for old in keys.iter() {
                if !new_keys.iter().any(|k| k.kid == old.kid) {
                    tracing::info!(kid = %old.kid, "dropped a retired token signing key");
                }
            }
            if rotated
                && !keys.is_empty()
                && let Some(current) = new_keys.iter().find(|k| k.is_current())
            {
                tracing::info!(kid = %current.kid, "rotated the token signing key");
            }
            *keys = new_keys;
        }
        Ok(rotated)
    }
}

fn storage(what: String, e: &std::io::Error) -> TokenError {
    TokenError::Storage(format!("{what}: {e}"))
}

/// Loads the key file, or nothing if there is none.
fn load(path: &Path) -> Result<Vec<SigningKey>, TokenError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(storage(format!("cannot read {}", path.display()), &e)),
    };
    if !meta.is_file() {
        return Err(TokenError::Storage(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Storage(format!(
            "{} is accessible by group or others (mode {mode:o}); it must be 0600",
            path.display()
        )));
    }
    let bytes = Zeroizing::new(
        fs::read(path).map_err(|e| storage(format!("cannot read {}", path.display()), &e))?,
    );
    let file: KeyFile = serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::Storage(format!("cannot parse {}: {e}", path.display())))?;
    if file.version != FILE_VERSION {
        return Err(TokenError::Storage(format!(
            "{}: unsupported version {}",
            path.display(),
            file.version
        )));
    }
    file.keys
        .iter()
        .map(SigningKey::from_stored)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TokenError::Storage(format!("{}: {e}", path.display())))
}

/// Writes the key file atomically (mode 0600).
fn save(dir: &Path, path: &Path, keys: &[SigningKey]) -> Result<(), TokenError> {
    let file = KeyFile {
        version: FILE_VERSION,
        keys: keys.iter().map(SigningKey::to_stored).collect(),
    };
    let bytes = Zeroizing::new(
        serde_json::to_vec_pretty(&file)
            .map_err(|e| TokenError::Storage(format!("cannot encode the key file: {e}")))?,
    );
    let tmp = dir.join(format!(
        ".{KEY_FILE_NAME}.tmp-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let write = || -> std::io::Result<()> {
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        out.set_permissions(fs::Permissions::from_mode(0o600))?;
        out.write_all(&bytes)?;
        out.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename durable (best effort: the new file is in place).
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        storage(format!("cannot write {}", path.display()), &e)
    })
}
