//! Secrets sealed at rest with AES-256-GCM under a versioned key ring.
//!
//! The auth service seals TOTP seeds with it, the file service file keys. A
//! [`KeyRing`] holds numbered 256-bit keys; one of them is *current* and seals
//! new values, the others are kept so that values sealed before a rotation can
//! still be opened (and re-sealed under the current key, see
//! [`KeyRing::needs_reseal`]).
//!
//! # Where the keys live
//!
//! - [`KeyRing::open`]: `<data-dir>/keyring.json`, created on first use (directory
//!   `0700` when it creates it, file `0600`, written atomically). An existing file
//!   readable by group or others is refused. Creation and rotation take an
//!   exclusive lock on `<data-dir>/keyring.lock`, so several services starting at
//!   once on the same data directory end up with one key ring, and two rotations
//!   never lose a key.
//! - [`KeyRing::from_env_or_dir`]: when `TRUSTMESH_KEYRING_FILE` names a file
//!   (a mounted secret), that file is used instead and is never written:
//!   it is rotated in the secret store, and [`KeyRing::rotate`] refuses.
//!
//! The file is JSON:
//!
//! ```json
//! {"format":"trustmesh-keyring-v1","current":2,
//!  "keys":[{"version":1,"key":"<base64 of 32 bytes>","created_at":1767225600},
//!          {"version":2,"key":"<base64 of 32 bytes>","created_at":1769904000}]}
//! ```
//!
//! # Sealed format
//!
//! `version (u32, big-endian) || nonce (12 random bytes) || ciphertext || tag (16 bytes)`.
//!
//! The associated data (AAD) is not stored: the caller passes the same bytes to
//! seal and to open. Use it to bind a sealed value to its owner (for example
//! `b"totp:" + user_id`), so that a sealed value copied into another row does
//! not open there.
//!
//! ```no_run
//! # fn demo() -> Result<(), trustmesh_keyring::KeyRingError> {
//! let ring = trustmesh_keyring::KeyRing::from_env_or_dir(std::path::Path::new(".trustmesh"))?;
//! let sealed = ring.seal(b"totp seed", b"totp:user-42")?;
//! let seed = ring.open_sealed(&sealed, b"totp:user-42")?;
//! assert_eq!(&seed[..], b"totp seed");
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use data_encoding::BASE64;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// The environment variable that may name a mounted key ring file.
pub const KEYRING_FILE_ENV: &str = "TRUSTMESH_KEYRING_FILE";
/// The key ring's file name inside the data directory.
pub const KEYRING_FILE_NAME: &str = "keyring.json";
/// The lock file taken while the key ring file is created or rotated.
pub const KEYRING_LOCK_NAME: &str = "keyring.lock";

/// The value of `format` in the key ring file.
const FORMAT: &str = "trustmesh-keyring-v1";
/// Length of a key in bytes (AES-256).
const KEY_LEN: usize = 32;
/// Length of the version prefix of a sealed value.
const VERSION_LEN: usize = 4;
/// Length of the AES-GCM nonce.
const NONCE_LEN: usize = 12;
/// Length of the AES-GCM tag.
const TAG_LEN: usize = 16;

/// Errors of the key ring.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRingError {
    /// Reading or writing the key ring (or its directory or lock) failed.
    #[error("key ring I/O on {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The key ring file is not a valid key ring.
    #[error("key ring file {path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key ring file in the data directory can be read by group or others.
    #[error(
        "key ring file {path} has mode {mode:o}; it must not be accessible by group or others (0600)"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key ring comes from a mounted secret (`TRUSTMESH_KEYRING_FILE`) and is
    /// not written by Trustmesh.
    #[error(
        "key ring {path} is managed outside Trustmesh ({KEYRING_FILE_ENV}); rotate it in the secret store"
    )]
    ExternallyManaged {
        /// The mounted file.
        path: PathBuf,
    },
    /// A sealed value is too short or otherwise not in the sealed format.
    #[error("sealed value is malformed: {0}")]
    MalformedSealed(&'static str),
    /// A sealed value names a key version the key ring does not hold.
    #[error("sealed value uses key version {0}, which the key ring does not hold")]
    UnknownVersion(u32),
    /// Authentication failed: wrong key, wrong associated data, or a tampered value.
    #[error("sealed value failed authentication (wrong associated data or tampered)")]
    Authentication,
    /// Encryption failed (the plaintext is too long for AES-GCM).
    #[error("encryption failed")]
    Encryption,
    /// No version number is left for a new key.
    #[error("key ring version numbers are exhausted")]
    VersionOverflow,
}

impl KeyRingError {
    fn io(path: &Path, source: io::Error) -> Self {
        KeyRingError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn malformed(path: &Path, reason: impl Into<String>) -> Self {
        KeyRingError::Malformed {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Where the key ring comes from.
#[derive(Debug, Clone)]
enum Source {
    /// `<dir>/keyring.json`, created and rotated by Trustmesh.
    Dir { dir: PathBuf, file: PathBuf },
    /// A file managed elsewhere (a mounted secret): read only.
    Mounted { file: PathBuf },
}

impl Source {
    fn file(&self) -> &Path {
        match self {
            Source::Dir { file, .. } | Source::Mounted { file } => file,
        }
    }
}

/// The keys held in memory (zeroed when dropped).
struct Keys {
    current: u32,
    keys: BTreeMap<u32, KeyEntry>,
}

/// One key and when it was made (Unix seconds, when known).
struct KeyEntry {
    key: Zeroizing<[u8; KEY_LEN]>,
    created_at: Option<u64>,
}

/// A versioned set of AES-256-GCM keys; see the [crate documentation](crate).
///
/// `KeyRing` is `Send + Sync`: share one per process (for example in an `Arc`).
pub struct KeyRing {
    source: Source,
    keys: RwLock<Keys>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.read();
        f.debug_struct("KeyRing")
            .field("file", &self.source.file())
            .field("current", &keys.current)
            .field("versions", &keys.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Loads `<dir>/keyring.json`, or creates it with one fresh key (version 1)
    /// when it does not exist. The directory is created with mode `0700` if
    /// missing; the file is written atomically with mode `0600`. An existing file
    /// accessible by group or others is refused.
    pub fn open(dir: &Path) -> Result<Self, KeyRingError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| KeyRingError::io(dir, e))?;
        let file = dir.join(KEYRING_FILE_NAME);
        let source = Source::Dir {
            dir: dir.to_path_buf(),
            file: file.clone(),
        };

        let keys = match read_file(&file, true)? {
            Some(keys) => keys,
            None => {
                let _lock = lock_dir(dir)?;
                // Another process may have created it while we waited for the lock.
                match read_file(&file, true)? {
                    Some(keys) => keys,
                    None => {
                        let keys = Keys {
                            current: 1,
                            keys: BTreeMap::from([(1, fresh_key())]),
                        };
                        write_file(dir, &file, &keys, false)?;
                        keys
                    }
                }
            }
        };
        Ok(KeyRing {
            source,
            keys: RwLock::new(keys),
        })
    }

    /// Loads a key ring file managed outside Trustmesh (a mounted secret). The
    /// file must exist; it is never written ([`KeyRing::rotate`] refuses) and its
    /// permissions are the secret store's business.
    pub fn open_mounted(file: &Path) -> Result<Self, KeyRingError> {
        let keys = read_file(file, false)?
            .ok_or_else(|| KeyRingError::io(file, io::Error::from(io::ErrorKind::NotFound)))?;
        Ok(KeyRing {
            source: Source::Mounted {
                file: file.to_path_buf(),
            },
            keys: RwLock::new(keys),
        })
    }

    /// [`KeyRing::open_mounted`] on the file named by `TRUSTMESH_KEYRING_FILE`
    /// when that variable is set and not empty, otherwise [`KeyRing::open`] on
    /// `dir` (the data directory).
    pub fn from_env_or_dir(dir: &Path) -> Result<Self, KeyRingError> {
        Self::from_env_value(std::env::var_os(KEYRING_FILE_ENV), dir)
    }

    /// [`KeyRing::from_env_or_dir`] with the variable's value passed in (testable
    /// without touching the process environment).
    fn from_env_value(value: Option<OsString>, dir: &Path) -> Result<Self, KeyRingError> {
        match value {
            Some(file) if !file.is_empty() => Self::open_mounted(Path::new(&file)),
            _ => Self::open(dir),
        }
    }

    /// The key ring file.
    pub fn path(&self) -> &Path {
        self.source.file()
    }

    /// The version that seals new values.
    pub fn current_version(&self) -> u32 {
        self.read().current
    }

    /// All versions held, ascending.
    pub fn versions(&self) -> Vec<u32> {
        self.read().keys.keys().copied().collect()
    }

    /// Seals `plaintext` under the current key, bound to `aad`:
    /// `version (u32 BE) || 12-byte random nonce || ciphertext+tag`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyRingError> {
        let keys = self.read();
        let version = keys.current;
        let key = keys
            .keys
            .get(&version)
            .ok_or(KeyRingError::UnknownVersion(version))?;
        let cipher = cipher_for(&key.key)?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| KeyRingError::Encryption)?;
        let mut sealed = Vec::with_capacity(VERSION_LEN + NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&version.to_be_bytes());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Opens a value sealed by [`KeyRing::seal`] under any version the ring holds,
    /// with the same `aad`. A version this process does not know yet (another
    /// process rotated the ring, or the mounted secret changed) makes it reload
    /// the key ring file once.
    pub fn open_sealed(
        &self,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyRingError> {
        let version = sealed_version(sealed)?;
        if sealed.len() < VERSION_LEN + NONCE_LEN + TAG_LEN {
            return Err(KeyRingError::MalformedSealed(
                "shorter than the header and tag",
            ));
        }
        if !self.read().keys.contains_key(&version) {
            self.reload()?;
        }
        let keys = self.read();
        let key = keys
            .keys
            .get(&version)
            .ok_or(KeyRingError::UnknownVersion(version))?;
        let cipher = cipher_for(&key.key)?;
        let nonce: [u8; NONCE_LEN] = sealed[VERSION_LEN..VERSION_LEN + NONCE_LEN]
            .try_into()
            .map_err(|_| KeyRingError::MalformedSealed("no nonce"))?;
        let plaintext = cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed[VERSION_LEN + NONCE_LEN..],
                    aad,
                },
            )
            .map_err(|_| KeyRingError::Authentication)?;
        Ok(Zeroizing::new(plaintext))
    }

    /// Adds a fresh key and makes it current; returns its version. Older
    /// versions stay in the ring so that their values still open. The file is
    /// re-read under the lock first, so a rotation made by another process is
    /// kept. Refused for a mounted key ring.
    pub fn rotate(&self) -> Result<u32, KeyRingError> {
        let (dir, file) = match &self.source {
            Source::Dir { dir, file } => (dir, file),
            Source::Mounted { file } => {
                return Err(KeyRingError::ExternallyManaged { path: file.clone() });
            }
        };
        let _lock = lock_dir(dir)?;
        let mut keys = read_file(file, true)?
            .ok_or_else(|| KeyRingError::io(file, io::Error::from(io::ErrorKind::NotFound)))?;
        let version = keys
            .keys
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or(KeyRingError::VersionOverflow)?;
        keys.keys.insert(version, fresh_key());
        keys.current = version;
        write_file(dir, file, &keys, true)?;
        *self.write() = keys;
        Ok(version)
    }

    /// Re-reads the key ring file (keys added by another process's rotation,
    /// or a changed mounted secret). Keys already held stay held.
    pub fn reload(&self) -> Result<(), KeyRingError> {
        let strict = matches!(self.source, Source::Dir { .. });
        let file = self.source.file();
        let loaded = read_file(file, strict)?
            .ok_or_else(|| KeyRingError::io(file, io::Error::from(io::ErrorKind::NotFound)))?;
        let mut keys = self.write();
        keys.current = loaded.current;
        for (version, key) in loaded.keys {
            keys.keys.entry(version).or_insert(key);
        }
        Ok(())
    }

    /// Whether `sealed` was sealed under an older version than the current one
    /// (open it and seal it again to move it to the current key). False for a
    /// malformed value.
    pub fn needs_reseal(&self, sealed: &[u8]) -> bool {
        match sealed_version(sealed) {
            Ok(version) => version < self.current_version(),
            Err(_) => false,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The key version a sealed value names (its first four bytes, big-endian).
pub fn sealed_version(sealed: &[u8]) -> Result<u32, KeyRingError> {
    let prefix: [u8; VERSION_LEN] = sealed
        .get(..VERSION_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or(KeyRingError::MalformedSealed(
            "shorter than the version prefix",
        ))?;
    Ok(u32::from_be_bytes(prefix))
}

fn cipher_for(key: &[u8; KEY_LEN]) -> Result<Aes256Gcm, KeyRingError> {
    // `new_from_slice` only fails on a wrong length, which the type rules out.
    Aes256Gcm::new_from_slice(key).map_err(|_| KeyRingError::Encryption)
}

fn fresh_key() -> KeyEntry {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.fill_bytes(&mut key[..]);
    let created_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .ok();
    KeyEntry { key, created_at }
}

/// The key ring file as stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKeyRing {
    format: String,
    current: u32,
    keys: Vec<FileKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    version: u32,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<u64>,
}

impl Drop for FileKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// Reads and validates a key ring file; `Ok(None)` when it does not exist.
/// `strict`: refuse a file accessible by group or others.
fn read_file(file: &Path, strict: bool) -> Result<Option<Keys>, KeyRingError> {
    let bytes = match fs::read(file) {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(KeyRingError::io(file, e)),
    };
    if strict {
        let mode = fs::metadata(file)
            .map_err(|e| KeyRingError::io(file, e))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyRingError::InsecurePermissions {
                path: file.to_path_buf(),
                mode,
            });
        }
    }
    let parsed: FileKeyRing = serde_json::from_slice(&bytes)
        .map_err(|e| KeyRingError::malformed(file, format!("not a key ring: {e}")))?;
    if parsed.format != FORMAT {
        return Err(KeyRingError::malformed(
            file,
            format!("format is {:?}, expected {FORMAT:?}", parsed.format),
        ));
    }
    let mut keys = BTreeMap::new();
    for entry in &parsed.keys {
        if entry.version == 0 {
            return Err(KeyRingError::malformed(
                file,
                "key version 0 (versions start at 1)",
            ));
        }
        let decoded = Zeroizing::new(BASE64.decode(entry.key.as_bytes()).map_err(|_| {
            KeyRingError::malformed(file, format!("key {} is not base64", entry.version))
        })?);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if decoded.len() != KEY_LEN {
            return Err(KeyRingError::malformed(
                file,
                format!(
                    "key {} is {} bytes, expected {KEY_LEN}",
                    entry.version,
                    decoded.len()
                ),
            ));
        }
        key.copy_from_slice(&decoded);
        let entry_in_memory = KeyEntry {
            key,
            created_at: entry.created_at,
        };
        if keys.insert(entry.version, entry_in_memory).is_some() {
            return Err(KeyRingError::malformed(
                file,
                format!("key version {} appears twice", entry.version),
            ));
        }
    }
    if !keys.contains_key(&parsed.current) {
        return Err(KeyRingError::malformed(
            file,
            format!("current version {} has no key", parsed.current),
        ));
    }
    Ok(Some(Keys {
        current: parsed.current,
        keys,
    }))
}

/// Writes the key ring atomically (temporary file `0600` in the same directory,
/// fsync, rename, fsync of the directory). `replace`: whether an existing file
/// may be replaced; when false and one exists, the write fails.
fn write_file(dir: &Path, file: &Path, keys: &Keys, replace: bool) -> Result<(), KeyRingError> {
    let stored = FileKeyRing {
        format: FORMAT.to_owned(),
        current: keys.current,
        keys: keys
            .keys
            .iter()
            .map(|(version, entry)| FileKey {
                version: *version,
                key: BASE64.encode(&entry.key[..]),
                created_at: entry.created_at,
            })
            .collect(),
    };
    let json = Zeroizing::new(
        serde_json::to_vec_pretty(&stored)
            .map_err(|e| KeyRingError::malformed(file, format!("cannot encode: {e}")))?,
    );
    drop(stored);

    let mut tmp = tempfile::Builder::new()
        .prefix(".keyring.")
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| KeyRingError::io(dir, e))?;
    tmp.write_all(&json)
        .and_then(|()| tmp.write_all(b"\n"))
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| KeyRingError::io(tmp.path(), e))?;
    if replace {
        tmp.persist(file)
            .map_err(|e| KeyRingError::io(file, e.error))?;
    } else {
        tmp.persist_noclobber(file)
            .map_err(|e| KeyRingError::io(file, e.error))?;
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| KeyRingError::io(dir, e))?;
    Ok(())
}

/// Takes the exclusive lock on `<dir>/keyring.lock` (released when dropped).
fn lock_dir(dir: &Path) -> Result<File, KeyRingError> {
    let path = dir.join(KEYRING_LOCK_NAME);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| KeyRingError::io(&path, e))?;
    lock.lock().map_err(|e| KeyRingError::io(&path, e))?;
    Ok(lock)
}

#[cfg(test)]
mod tests;
