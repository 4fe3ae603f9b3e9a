//! The checkpoint signing key: Ed25519, kept as PKCS#8 in
//! `<data-dir>/audit/checkpoint.key` (mode 0600), created on first start.
//! Its public half is written to `checkpoint.pub` as a signed-note verifier
//! key (`<name>+<key id>+<base64>`), for `trustmesh audit verify` and for
//! anyone who checks checkpoints elsewhere.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use trustmesh_merkle::{SigningKey, VerifyingKey};

/// The key name in checkpoint signatures.
pub const KEY_NAME: &str = "trustmesh-audit";

/// A key that cannot be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold a usable key.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit").join("checkpoint.key")
}

/// The file holding the verifying key.
pub fn public_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit").join("checkpoint.pub")
}

/// The signing key of `data_dir`, created (with its public file) if missing.
pub fn load_or_create(data_dir: &Path) -> Result<SigningKey, KeyError> {
    let path = key_path(data_dir);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyError::Io { path, source }
    };
    let key = match std::fs::read(&path) {
        Ok(pkcs8) => {
            let mode = std::fs::metadata(&path)
                .map_err(io(&path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(KeyError::Invalid {
                    path,
                    problem: format!("readable by others (mode {:o}); chmod 600 it", mode & 0o777),
                });
            }
            SigningKey::from_pkcs8(KEY_NAME, &pkcs8).map_err(|e| KeyError::Invalid {
                path: path.clone(),
                problem: e.to_string(),
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path.parent().unwrap_or(data_dir);
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let (key, pkcs8) = SigningKey::generate(KEY_NAME).map_err(|e| KeyError::Invalid {
                path: path.clone(),
                problem: e.to_string(),
            })?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io(&path))?;
            file.write_all(&pkcs8).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
            key
        }
        Err(e) => return Err(KeyError::Io { path, source: e }),
    };
    let public = public_key_path(data_dir);
    std::fs::write(&public, format!("{}\n", key.verifying_key())).map_err(io(&public))?;
    Ok(key)
}

/// The verifying key written by [`load_or_create`].
pub fn load_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.trim()
        .parse()
        .map_err(|e: trustmesh_merkle::CheckpointError| KeyError::Invalid {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })
}
