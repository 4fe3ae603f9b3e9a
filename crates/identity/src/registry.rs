//! Registration entries: which local process gets which SPIFFE ID.
//!
//! Two kinds of entries, as with SPIRE's unix workload attestor:
//!
//! * **PID entries**, kept in memory by the [`Registry`]: `trustmesh up`
//!   registers each child it launches with [`Registry::register_pid`].
//! * **Operator entries**, persisted by the [`EntryStore`] in
//!   `<data_dir>/identity/entries.json`, each a SPIFFE ID plus Unix
//!   [`Selector`]s that must *all* match the caller (`unix:uid:N`,
//!   `unix:gid:N`, `unix:path:/abs/path`). The CLI edits this file while the
//!   issuer runs; the running [`Registry`] notices changes by the file's
//!   identity (inode, size, mtime) at every attestation and on a short poll.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use spiffe::TrustDomain;
use tokio::sync::watch;

use crate::util::{atomic_write, ensure_dir, parse_trust_domain, parse_workload_id};
use crate::{DEFAULT_TRUST_DOMAIN, IdentityError};

/// A Unix workload selector of a registration entry.
///
/// Parses from and prints as `unix:uid:1000`, `unix:gid:0`,
/// `unix:path:/usr/bin/x`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// The caller's user ID.
    Uid(u32),
    /// The caller's primary group ID.
    Gid(u32),
    /// The absolute path of the caller's executable (`/proc/<pid>/exe`).
    Path(String),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uid(uid) => write!(f, "unix:uid:{uid}"),
            Self::Gid(gid) => write!(f, "unix:gid:{gid}"),
            Self::Path(path) => write!(f, "unix:path:{path}"),
        }
    }
}

impl FromStr for Selector {
    type Err = IdentityError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| IdentityError::InvalidSelector {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = input.splitn(3, ':');
        let (Some(kind), Some(name), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(err("not of the form unix:<type>:<value>"));
        };
        if kind != "unix" {
            return Err(err("only \"unix\" selectors are supported"));
        }
        let number = |what: &str| {
            value
                .parse::<u32>()
                .map_err(|_| err(&format!("{what} must be a non-negative integer")))
        };
        match name {
            "uid" => Ok(Self::Uid(number("uid")?)),
            "gid" => Ok(Self::Gid(number("gid")?)),
            "path" => {
                if !value.starts_with('/') {
                    return Err(err("the path must be absolute"));
                }
                if value.contains('\0') {
                    return Err(err("the path contains a NUL byte"));
                }
                Ok(Self::Path(value.to_owned()))
            }
            _ => Err(err("unknown selector type")),
        }
    }
}

impl TryFrom<&str> for Selector {
    type Error = IdentityError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl TryFrom<&&str> for Selector {
    type Error = IdentityError;
    fn try_from(value: &&str) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl TryFrom<String> for Selector {
    type Error = IdentityError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl TryFrom<&String> for Selector {
    type Error = IdentityError;
    fn try_from(value: &String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<&Selector> for Selector {
    fn from(value: &Selector) -> Self {
        value.clone()
    }
}

impl Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An operator registration entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique ID of the entry (a UUID).
    pub id: String,
    /// The SPIFFE ID issued to matching callers.
    pub spiffe_id: String,
    /// Selectors that must all match the caller.
    pub selectors: Vec<Selector>,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

impl Entry {
    fn matches(&self, caller: &Caller) -> bool {
        !self.selectors.is_empty() && self.selectors.iter().all(|s| caller.matches(s))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct EntriesFile {
    version: u32,
    entries: Vec<Entry>,
}

const ENTRIES_FILE_VERSION: u32 = 1;

/// The persistent store of operator registration entries
/// (`<data_dir>/identity/entries.json`).
///
/// Safe to use from several processes at once: writers take an exclusive lock
/// on `entries.lock` and replace the file atomically (temporary file + rename,
/// mode 0600); readers never see a partial file.
#[derive(Clone, Debug)]
pub struct EntryStore {
    path: PathBuf,
    lock_path: PathBuf,
    trust_domain: TrustDomain,
}

impl EntryStore {
    /// Opens the store of the data directory `data_dir`.
    ///
    /// The trust domain used to validate new entries is the one of the CA in
    /// `<data_dir>/ca/ca.pem` if it exists, [`DEFAULT_TRUST_DOMAIN`] otherwise.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let data_dir = data_dir.as_ref();
        let td = match crate::ca::trust_domain_of_ca_file(&crate::ca::ca_cert_path(data_dir))? {
            Some(td) => td,
            None => parse_trust_domain(DEFAULT_TRUST_DOMAIN)?,
        };
        Self::open_in(data_dir, td)
    }

    /// Opens the store of `data_dir` for the trust domain `trust_domain`.
    pub fn open_with_trust_domain(
        data_dir: impl AsRef<Path>,
        trust_domain: &str,
    ) -> Result<Self, IdentityError> {
        Self::open_in(data_dir.as_ref(), parse_trust_domain(trust_domain)?)
    }

    pub(crate) fn open_in(
        data_dir: &Path,
        trust_domain: TrustDomain,
    ) -> Result<Self, IdentityError> {
        let dir = data_dir.join("identity");
        ensure_dir(&dir, 0o700)?;
        Ok(Self {
            path: dir.join("entries.json"),
            lock_path: dir.join("entries.lock"),
            trust_domain,
        })
    }

    /// The path of `entries.json`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The trust domain new entries must belong to.
    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_str()
    }

    /// Creates an entry: validates the SPIFFE ID (this trust domain, non-empty
    /// path) and the selectors (at least one; each parsed), refuses an exact
    /// duplicate (same SPIFFE ID and same selector set), and persists it.
    pub fn create<I, S>(&self, spiffe_id: &str, selectors: I) -> Result<Entry, IdentityError>
    where
        I: IntoIterator<Item = S>,
        S: TryInto<Selector>,
        IdentityError: From<S::Error>,
    {
        let id = parse_workload_id(spiffe_id, &self.trust_domain)?;
        let mut parsed = Vec::new();
        for s in selectors {
            let s: Selector = s.try_into()?;
            if !parsed.contains(&s) {
                parsed.push(s);
            }
        }
        if parsed.is_empty() {
            return Err(IdentityError::InvalidEntry(
                "at least one selector is required (e.g. unix:uid:1000)".to_owned(),
            ));
        }
        let mut sorted = parsed.clone();
        sorted.sort();
        let entry = Entry {
            id: uuid::Uuid::new_v4().to_string(),
            spiffe_id: id.to_string(),
            selectors: parsed,
            created_at: now_rfc3339(),
        };
        let _lock = self.lock()?;
        let mut file = self.read_file()?;
        if let Some(existing) = file.entries.iter().find(|e| {
            let mut s = e.selectors.clone();
            s.sort();
            e.spiffe_id == entry.spiffe_id && s == sorted
        }) {
            return Err(IdentityError::InvalidEntry(format!(
                "an entry with the same SPIFFE ID and selectors already exists ({})",
                existing.id
            )));
        }
        file.entries.push(entry.clone());
        self.write_file(&file)?;
        tracing::info!(entry = %entry.id, spiffe_id = %entry.spiffe_id, "registration entry created");
        Ok(entry)
    }

    /// All entries, in creation order.
    pub fn list(&self) -> Result<Vec<Entry>, IdentityError> {
        Ok(self.read_file()?.entries)
    }

    /// Deletes the entry with this ID; `false` if there is none.
    pub fn delete(&self, id: &str) -> Result<bool, IdentityError> {
        let _lock = self.lock()?;
        let mut file = self.read_file()?;
        let before = file.entries.len();
        file.entries.retain(|e| e.id != id);
        if file.entries.len() == before {
            return Ok(false);
        }
        self.write_file(&file)?;
        tracing::info!(entry = %id, "registration entry deleted");
        Ok(true)
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<fs::File>, IdentityError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(|e| {
                IdentityError::io(format!("cannot open {}", self.lock_path.display()), e)
            })?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| {
            IdentityError::io(
                format!("cannot lock {}", self.lock_path.display()),
                std::io::Error::from(errno),
            )
        })
    }

    fn read_file(&self) -> Result<EntriesFile, IdentityError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(EntriesFile {
                    version: ENTRIES_FILE_VERSION,
                    entries: Vec::new(),
                });
            }
            Err(e) => {
                return Err(IdentityError::io(
                    format!("cannot read {}", self.path.display()),
                    e,
                ));
            }
        };
        let file: EntriesFile =
            serde_json::from_slice(&bytes).map_err(|e| IdentityError::Corrupt {
                path: self.path.clone(),
                reason: format!("not a valid registration entry file: {e}"),
            })?;
        if file.version != ENTRIES_FILE_VERSION {
            return Err(IdentityError::Corrupt {
                path: self.path.clone(),
                reason: format!("unsupported version {}", file.version),
            });
        }
        Ok(file)
    }

    fn write_file(&self, file: &EntriesFile) -> Result<(), IdentityError> {
        let mut json = serde_json::to_vec_pretty(file)
            .map_err(|e| IdentityError::InvalidEntry(format!("cannot encode entries: {e}")))?;
        json.push(b'\n');
        atomic_write(&self.path, &json, 0o600)
    }

    fn stamp(&self) -> Option<FileStamp> {
        fs::metadata(&self.path).ok().map(|md| FileStamp {
            dev: md.dev(),
            ino: md.ino(),
            len: md.len(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
        })
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Identifies one version of the entries file: a rename creates a new inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// The caller of a Workload API RPC, from its Unix peer credentials.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) pid: Option<u32>,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    exe: std::sync::OnceLock<Option<String>>,
}

impl Caller {
    pub(crate) fn new(pid: Option<u32>, uid: u32, gid: u32) -> Self {
        Self {
            pid,
            uid,
            gid,
            exe: std::sync::OnceLock::new(),
        }
    }

    fn exe(&self) -> Option<&str> {
        self.exe
            .get_or_init(|| {
                let pid = self.pid?;
                fs::read_link(format!("/proc/{pid}/exe"))
                    .ok()
                    .and_then(|p| p.to_str().map(str::to_owned))
            })
            .as_deref()
    }

    fn matches(&self, selector: &Selector) -> bool {
        match selector {
            Selector::Uid(uid) => *uid == self.uid,
            Selector::Gid(gid) => *gid == self.gid,
            Selector::Path(path) => self.exe() == Some(path.as_str()),
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid={pid} uid={} gid={}", self.uid, self.gid),
            None => write!(f, "pid=? uid={} gid={}", self.uid, self.gid),
        }
    }
}

/// The start time of a process (field 22 of `/proc/<pid>/stat`), used to
/// notice that a registered PID has been reused by another process.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[derive(Clone, Debug)]
struct PidEntry {
    spiffe_id: String,
    start_time: Option<u64>,
}

#[derive(Debug, Default)]
struct EntryCache {
    loaded: bool,
    stamp: Option<FileStamp>,
    entries: Arc<Vec<Entry>>,
}

struct RegistryInner {
    trust_domain: TrustDomain,
    store: EntryStore,
    pids: Mutex<HashMap<u32, PidEntry>>,
    cache: Mutex<EntryCache>,
    changes: watch::Sender<u64>,
}

/// The issuer's view of all registration entries (PID entries in memory plus
/// the operator entries of the [`EntryStore`]); a cheap clone handle.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("trust_domain", &self.inner.trust_domain.as_str())
            .field("entries_file", &self.inner.store.path)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    pub(crate) fn new(store: EntryStore) -> Self {
        let (changes, _) = watch::channel(0);
        let registry = Self {
            inner: Arc::new(RegistryInner {
                trust_domain: store.trust_domain.clone(),
                store,
                pids: Mutex::new(HashMap::new()),
                cache: Mutex::new(EntryCache::default()),
                changes,
            }),
        };
        registry.refresh();
        registry
    }

    /// Issues `spiffe_id` to the process `pid` (for the children that
    /// `trustmesh up` launches) until [`Registry::unregister_pid`].
    ///
    /// An invalid SPIFFE ID (wrong trust domain, no path...) is logged and
    /// ignored; use [`Registry::try_register_pid`] to get the error.
    pub fn register_pid(&self, pid: u32, spiffe_id: String) {
        if let Err(e) = self.try_register_pid(pid, spiffe_id) {
            tracing::error!(pid, error = %e, "PID not registered");
        }
    }

    /// Like [`Registry::register_pid`], but returns an error for an invalid
    /// SPIFFE ID.
    pub fn try_register_pid(&self, pid: u32, spiffe_id: String) -> Result<(), IdentityError> {
        let id = parse_workload_id(&spiffe_id, &self.inner.trust_domain)?;
        let entry = PidEntry {
            spiffe_id: id.to_string(),
            start_time: process_start_time(pid),
        };
        tracing::info!(pid, spiffe_id = %entry.spiffe_id, "PID registered");
        lock(&self.inner.pids).insert(pid, entry);
        self.notify();
        Ok(())
    }

    /// Forgets the PID entry of `pid` (the process exited).
    pub fn unregister_pid(&self, pid: u32) {
        if lock(&self.inner.pids).remove(&pid).is_some() {
            tracing::info!(pid, "PID unregistered");
            self.notify();
        }
    }

    /// The SPIFFE ID registered for `pid`, if any.
    pub fn pid_spiffe_id(&self, pid: u32) -> Option<String> {
        lock(&self.inner.pids)
            .get(&pid)
            .map(|e| e.spiffe_id.clone())
    }

    /// The store of operator entries.
    pub fn store(&self) -> &EntryStore {
        &self.inner.store
    }

    /// The trust domain of the issuer.
    pub fn trust_domain(&self) -> &str {
        self.inner.trust_domain.as_str()
    }

    fn notify(&self) {
        self.inner.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// How many Workload API streams are open (each follows the entries).
    pub fn open_streams(&self) -> usize {
        self.inner.changes.receiver_count()
    }

    /// A receiver that changes whenever the entries may have changed.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Re-reads `entries.json` if it changed since the last read; notifies
    /// subscribers when the set of entries changed.
    pub(crate) fn refresh(&self) {
        let store = &self.inner.store;
        let stamp = store.stamp();
        let mut cache = lock(&self.inner.cache);
        if cache.loaded && cache.stamp == stamp {
            return;
        }
        cache.loaded = true;
        cache.stamp = stamp;
        match store.read_file() {
            Ok(file) => {
                let entries: Vec<Entry> = file
                    .entries
                    .into_iter()
                    .filter(|e| {
                        let ok = parse_workload_id(&e.spiffe_id, &self.inner.trust_domain).is_ok();
                        if !ok {
                            tracing::warn!(entry = %e.id, spiffe_id = %e.spiffe_id,
                                "ignoring registration entry outside this trust domain");
                        }
                        ok
                    })
                    .collect();
                if *cache.entries != entries {
                    tracing::debug!(count = entries.len(), "registration entries reloaded");
                    cache.entries = Arc::new(entries);
                    drop(cache);
                    self.notify();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "keeping the previous registration entries");
            }
        }
    }

    /// The SPIFFE IDs the caller is entitled to: its PID entry first, then
    /// every operator entry whose selectors all match, without duplicates.
    pub(crate) fn identities(&self, caller: &Caller) -> Vec<String> {
        self.refresh();
        let mut ids: Vec<String> = Vec::new();
        if let Some(pid) = caller.pid {
            let mut pids = lock(&self.inner.pids);
            if let Some(entry) = pids.get(&pid) {
                let same_process = match entry.start_time {
                    Some(start) => process_start_time(pid) == Some(start),
                    None => true,
                };
                if same_process {
                    ids.push(entry.spiffe_id.clone());
                } else {
                    tracing::warn!(pid, spiffe_id = %entry.spiffe_id,
                        "registered PID now belongs to another process; dropping its entry");
                    pids.remove(&pid);
                }
            }
        }
        let entries = Arc::clone(&lock(&self.inner.cache).entries);
        for entry in entries.iter() {
            if entry.matches(caller) && !ids.contains(&entry.spiffe_id) {
                ids.push(entry.spiffe_id.clone());
            }
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn selectors_round_trip() {
        for s in ["unix:uid:1000", "unix:gid:0", "unix:path:/usr/bin/x:y"] {
            let sel: Selector = s.parse().unwrap();
            assert_eq!(sel.to_string(), s);
        }
        assert_eq!(
            "unix:path:/a".parse::<Selector>().unwrap(),
            Selector::Path("/a".into())
        );
    }

    #[test]
    fn bad_selectors_are_rejected() {
        for s in [
            "",
            "unix",
            "unix:uid",
            "unix:uid:-1",
            "unix:uid:abc",
            "unix:path:relative",
            "k8s:ns:default",
            "unix:pid:1",
        ] {
            let err = s.parse::<Selector>().unwrap_err();
            assert!(err.to_string().contains("invalid selector"), "{s}: {err}");
        }
    }

    #[test]
    fn start_time_of_self() {
        assert!(process_start_time(std::process::id()).is_some());
    }
}
