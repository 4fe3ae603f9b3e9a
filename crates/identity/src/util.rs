//! Small internal helpers: file modes, atomic writes, SPIFFE ID checks, PEM.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use spiffe::{SpiffeId, TrustDomain};

use crate::IdentityError;

/// Creates `dir` (and its parents) and sets its mode to exactly `mode`.
pub(crate) fn ensure_dir(dir: &Path, mode: u32) -> Result<(), IdentityError> {
    fs::create_dir_all(dir)
        .map_err(|e| IdentityError::io(format!("cannot create directory {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(|e| {
        IdentityError::io(
            format!("cannot set mode {mode:o} on directory {}", dir.display()),
            e,
        )
    })
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory, created with `mode`, synced, then renamed over `path`.
pub(crate) fn atomic_write(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(
        ".{file_name}.tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have removed bits from `mode`; make it exact.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename durable.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        IdentityError::io(format!("cannot write {}", path.display()), e)
    })
}

/// Reads a whole file, with the path in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    fs::read(path).map_err(|e| IdentityError::io(format!("cannot read {}", path.display()), e))
}

/// Parses a trust domain name as given in a configuration (`example.org`,
/// not `spiffe://example.org`).
pub(crate) fn parse_trust_domain(name: &str) -> Result<TrustDomain, IdentityError> {
    if name.contains(':') || name.contains('/') {
        return Err(IdentityError::Config(format!(
            "trust domain {name:?} must be a bare name like \"example.org\", without scheme or path"
        )));
    }
    let td = TrustDomain::new(name)
        .map_err(|e| IdentityError::Config(format!("invalid trust domain {name:?}: {e}")))?;
    if td.as_str() != name {
        return Err(IdentityError::Config(format!(
            "invalid trust domain {name:?}: use lowercase letters, digits, '.', '-' and '_' only"
        )));
    }
    Ok(td)
}

/// Parses a workload SPIFFE ID and checks that it belongs to `td` and has a
/// non-empty path.
pub(crate) fn parse_workload_id(id: &str, td: &TrustDomain) -> Result<SpiffeId, IdentityError> {
    let parsed = SpiffeId::new(id).map_err(|e| IdentityError::spiffe_id(id, e))?;
    if parsed.trust_domain() != td {
        return Err(IdentityError::spiffe_id(
            id,
            format!(
                "it is not in the trust domain {:?} of this issuer",
                td.as_str()
            ),
        ));
    }
    if parsed.path().is_empty() {
        return Err(IdentityError::spiffe_id(
            id,
            "a workload SPIFFE ID needs a path, e.g. spiffe://<trust-domain>/svc/<name>",
        ));
    }
    Ok(parsed)
}

/// PEM-encodes DER blocks with `tag`, LF line endings.
pub(crate) fn pem_encode<'a>(tag: &str, ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    let blocks: Vec<pem::Pem> = ders
        .into_iter()
        .map(|der| pem::Pem::new(tag, der.to_vec()))
        .collect();
    pem::encode_many_config(
        &blocks,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The lowercase hex form of a byte string (serial numbers, key ids).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
