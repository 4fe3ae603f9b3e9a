//! Full recomputation of a stored log: [`LogVerifier`].

use crate::checkpoint::Checkpoint;
use crate::hash::{Hash, leaf_hash, to_hex};
use crate::log::{Entry, LogState};

/// The first problem found while verifying a log. Every variant names the
/// first bad entry, or the narrowest range it is known to be in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A row is missing, duplicated or out of order.
    #[error(
        "entry #{expected}: expected entry #{expected} but found entry #{found} in its place \
         (rows deleted, duplicated or reordered)"
    )]
    OutOfOrder {
        /// The position the row is at.
        expected: u64,
        /// The index stored in the row.
        found: u64,
    },
    /// The event's content does not hash to its stored leaf hash.
    #[error(
        "entry #{index}: its content does not match its stored leaf hash (the event was edited): \
         content hashes to {computed}, stored {stored}"
    )]
    LeafHashMismatch {
        /// The entry.
        index: u64,
        /// `leaf_hash(content)` (hex).
        computed: String,
        /// The stored leaf hash (hex).
        stored: String,
    },
    /// The stored chain value differs from the recomputed one.
    #[error(
        "entry #{index}: its stored chain hash does not match the recomputed one (this row was edited, \
         or rows were deleted, inserted or reordered here): recomputed {computed}, stored {stored}"
    )]
    ChainMismatch {
        /// The entry.
        index: u64,
        /// The recomputed chain value (hex).
        computed: String,
        /// The stored chain value (hex).
        stored: String,
    },
    /// The log ends before a checkpoint's size: entries were removed from its end.
    #[error(
        "log truncated: the checkpoint of {origin} at size {checkpoint_size} covers entries #0..#{last}, \
         but the log ends after {log_size} entries; entry #{log_size} is the first missing one",
        last = checkpoint_size - 1
    )]
    Truncated {
        /// The log's origin.
        origin: String,
        /// The checkpoint's size.
        checkpoint_size: u64,
        /// The number of entries found.
        log_size: u64,
    },
    /// The recomputed root differs from a signed checkpoint's: history was
    /// rewritten (and the chain recomputed) after that checkpoint was signed.
    #[error(
        "the log does not match its checkpoint at size {size} (signed {time}): recomputed root {computed}, \
         signed root {signed}; an entry among #{first_suspect}..#{last} was rewritten after it was checkpointed",
        last = size.saturating_sub(1)
    )]
    RootMismatch {
        /// The checkpoint's size.
        size: u64,
        /// The checkpoint's time (RFC 3339).
        time: String,
        /// The first entry that may have been rewritten: the size of the last
        /// checkpoint that matched (or where verification started).
        first_suspect: u64,
        /// The recomputed root (hex).
        computed: String,
        /// The signed root (hex).
        signed: String,
    },
    /// A checkpoint of another log.
    #[error("checkpoint is for log {found:?}, not {expected:?}")]
    OriginMismatch {
        /// The log being verified.
        expected: String,
        /// The checkpoint's origin.
        found: String,
    },
    /// A checkpoint older than the retention anchor: the entries needed to
    /// check it were removed.
    #[error(
        "the checkpoint at size {size} predates the retention anchor at size {anchor}: entries #0..#{last} \
         were removed, so it cannot be checked; use a checkpoint of size {anchor} or more",
        last = anchor - 1
    )]
    BeforeAnchor {
        /// The checkpoint's size.
        size: u64,
        /// The anchor's size.
        anchor: u64,
    },
    /// A checkpoint declared after verification went past its size.
    #[error(
        "the checkpoint at size {size} was declared when verification was already at size {position}: \
         declare checkpoints before pushing the entries they cover"
    )]
    DeclaredTooLate {
        /// The checkpoint's size.
        size: u64,
        /// How many entries had been pushed.
        position: u64,
    },
    /// The retention anchor's state does not match its signed checkpoint.
    #[error(
        "the retention anchor (state at size {state_size}, root {state_root}) does not match its signed \
         checkpoint (size {checkpoint_size}, root {checkpoint_root}): the anchor was altered"
    )]
    AnchorMismatch {
        /// Size of the stored state.
        state_size: u64,
        /// Root of the stored state (hex).
        state_root: String,
        /// Size of the checkpoint.
        checkpoint_size: u64,
        /// Root of the checkpoint (hex).
        checkpoint_root: String,
    },
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The log's origin.
    pub origin: String,
    /// The first entry checked: 0, or the retention anchor's size.
    pub first_index: u64,
    /// The number of entries in the log (including removed ones).
    pub size: u64,
    /// The recomputed Merkle root of the whole log.
    pub root: Hash,
    /// The state after the last entry: equal to what the service persisted.
    pub state: LogState,
    /// The sizes of the checkpoints that were checked, in order.
    pub checkpoints: Vec<u64>,
}

/// Recomputes a stored log entry by entry and checks it against its stored
/// chain values and against trusted checkpoints; stops at the first problem.
///
/// Feed it the rows in index order with [`LogVerifier::push`]; declare the
/// checkpoints (after checking their signatures with
/// [`crate::SignedCheckpoint::open`]) with [`LogVerifier::expect_checkpoint`]
/// at any time before the log reaches their size; then call
/// [`LogVerifier::finish`]. Memory is O(log n + number of checkpoints).
///
/// ```
/// use trustmesh_merkle::{LogState, LogVerifier, VerifyError};
///
/// let mut log = LogState::new();
/// let rows: Vec<_> = (0..10u32).map(|i| {
///     let data = format!("event {i}").into_bytes();
///     let entry = log.append(&data);
///     (data, entry)
/// }).collect();
/// let checkpoint = log.checkpoint("example/log", 1_767_225_600)?;
///
/// let mut v = LogVerifier::new("example/log");
/// v.expect_checkpoint(&checkpoint)?;
/// for (data, entry) in &rows {
///     v.push(data, entry)?;
/// }
/// assert_eq!(v.finish()?.size, 10);
///
/// // An edited event is named.
/// let mut v = LogVerifier::new("example/log");
/// let err = rows.iter().enumerate().try_for_each(|(i, (data, entry))| {
///     if i == 4 { v.push(b"edited", entry) } else { v.push(data, entry) }
/// });
/// assert!(matches!(err, Err(VerifyError::LeafHashMismatch { index: 4, .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct LogVerifier {
    origin: String,
    start: u64,
    state: LogState,
    /// Checkpoints not yet reached, sorted by size, largest first.
    pending: Vec<Checkpoint>,
    last_good: u64,
    checked: Vec<u64>,
}

impl LogVerifier {
    /// Verifies the log named `origin` from its first entry.
    pub fn new(origin: &str) -> Self {
        LogVerifier {
            origin: origin.to_string(),
            start: 0,
            state: LogState::new(),
            pending: Vec::new(),
            last_good: 0,
            checked: Vec::new(),
        }
    }

    /// Verifies the log from a retention anchor: `anchor` is the state kept
    /// when the entries before `anchor.size()` were removed, and
    /// `anchor_checkpoint` the trusted (signature-checked) checkpoint at that
    /// size, which authenticates the anchor's frontier.
    pub fn resume(
        origin: &str,
        anchor: LogState,
        anchor_checkpoint: &Checkpoint,
    ) -> Result<Self, VerifyError> {
        if anchor_checkpoint.origin() != origin {
            return Err(VerifyError::OriginMismatch {
                expected: origin.to_string(),
                found: anchor_checkpoint.origin().to_string(),
            });
        }
        if anchor.size() != anchor_checkpoint.size() || &anchor.root() != anchor_checkpoint.root() {
            return Err(VerifyError::AnchorMismatch {
                state_size: anchor.size(),
                state_root: to_hex(&anchor.root()),
                checkpoint_size: anchor_checkpoint.size(),
                checkpoint_root: to_hex(anchor_checkpoint.root()),
            });
        }
        let start = anchor.size();
        Ok(LogVerifier {
            origin: origin.to_string(),
            start,
            state: anchor,
            pending: Vec::new(),
            last_good: start,
            checked: vec![start],
        })
    }

    /// The number of entries so far (including those before the anchor).
    pub fn size(&self) -> u64 {
        self.state.size()
    }

    /// Declares a trusted checkpoint of this log: the recomputed root at its
    /// size must equal its root, and the log must reach its size. Checked at
    /// once if the log is already at that size.
    pub fn expect_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), VerifyError> {
        if checkpoint.origin() != self.origin {
            return Err(VerifyError::OriginMismatch {
                expected: self.origin.clone(),
                found: checkpoint.origin().to_string(),
            });
        }
        let size = checkpoint.size();
        if size < self.start {
            return Err(VerifyError::BeforeAnchor {
                size,
                anchor: self.start,
            });
        }
        if size < self.state.size() {
            return Err(VerifyError::DeclaredTooLate {
                size,
                position: self.state.size(),
            });
        }
        let at = self.pending.partition_point(|c| c.size() > size);
        self.pending.insert(at, checkpoint.clone());
        self.check_reached()
    }

    /// Checks the next row: its stored index, that `data` hashes to its
    /// stored leaf hash, and its stored chain value.
    pub fn push(&mut self, data: &[u8], stored: &Entry) -> Result<(), VerifyError> {
        let computed = leaf_hash(data);
        if computed != stored.leaf_hash {
            self.check_index(stored)?;
            return Err(VerifyError::LeafHashMismatch {
                index: stored.index,
                computed: to_hex(&computed),
                stored: to_hex(&stored.leaf_hash),
            });
        }
        self.push_leaf_hash(stored)
    }

    /// Checks the next row when only its hashes are available (for example
    /// a hash-only export): its stored index and chain value.
    pub fn push_leaf_hash(&mut self, stored: &Entry) -> Result<(), VerifyError> {
        self.check_index(stored)?;
        let index = self.state.size();
        let computed = self.state.append_leaf_hash(stored.leaf_hash);
        if computed.chain != stored.chain {
            return Err(VerifyError::ChainMismatch {
                index,
                computed: to_hex(&computed.chain),
                stored: to_hex(&stored.chain),
            });
        }
        self.check_reached()
    }

    fn check_index(&self, stored: &Entry) -> Result<(), VerifyError> {
        let expected = self.state.size();
        if stored.index != expected {
            return Err(VerifyError::OutOfOrder {
                expected,
                found: stored.index,
            });
        }
        Ok(())
    }

    fn check_reached(&mut self) -> Result<(), VerifyError> {
        let size = self.state.size();
        if self.pending.last().is_none_or(|c| c.size() != size) {
            return Ok(());
        }
        let root = self.state.root();
        while let Some(cp) = self.pending.pop_if(|c| c.size() == size) {
            if cp.root() != &root {
                return Err(VerifyError::RootMismatch {
                    size,
                    time: cp.timestamp_rfc3339(),
                    first_suspect: self.last_good,
                    computed: to_hex(&root),
                    signed: to_hex(cp.root()),
                });
            }
            if self.checked.last() != Some(&size) {
                self.checked.push(size);
            }
        }
        self.last_good = size;
        Ok(())
    }

    /// Ends verification: fails if a declared checkpoint is beyond the end of
    /// the log (truncation), otherwise reports what was verified.
    pub fn finish(self) -> Result<VerifyReport, VerifyError> {
        if let Some(cp) = self.pending.first() {
            return Err(VerifyError::Truncated {
                origin: self.origin,
                checkpoint_size: cp.size(),
                log_size: self.state.size(),
            });
        }
        Ok(VerifyReport {
            origin: self.origin,
            first_index: self.start,
            size: self.state.size(),
            root: self.state.root(),
            state: self.state,
            checkpoints: self.checked,
        })
    }
}
