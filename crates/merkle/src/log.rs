//! The appending side: [`LogState`] turns events into stored [`Entry`] rows.

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::frontier::{Frontier, FrontierError};
use crate::hash::{CHAIN_SEED, Hash, chain_hash, leaf_hash};
use crate::serde_b64;

/// What the audit service stores with each event row, as produced by
/// [`LogState::append`]: the position, the leaf hash and the chain value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 0, without gaps.
    pub index: u64,
    /// `leaf_hash(event bytes)`: `SHA-256(0x00 || bytes)`.
    #[serde(with = "serde_b64")]
    pub leaf_hash: Hash,
    /// `chain_hash(previous chain, index, leaf_hash)`, see [`crate::chain_hash`].
    #[serde(with = "serde_b64")]
    pub chain: Hash,
}

/// The state of a log after some number of entries: the tree's [`Frontier`]
/// and the chain value of the last entry.
///
/// The audit service keeps one in memory, appends every event through it,
/// and persists it (serde) in the same transaction as the rows, so that
/// after a restart it resumes without reading the log. Retention keeps the
/// state at the cut as the *anchor* that verification of the remaining
/// entries starts from (see [`crate::LogVerifier::resume`]).
///
/// ```
/// use trustmesh_merkle::LogState;
///
/// let mut log = LogState::new();
/// let e0 = log.append(b"event 0");
/// let e1 = log.append(b"event 1");
/// assert_eq!((e0.index, e1.index), (0, 1));
/// assert_eq!(log.size(), 2);
/// assert_eq!(log.chain(), e1.chain);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogState {
    /// The tree's compact range.
    frontier: Frontier,
    /// The chain value of the last entry ([`CHAIN_SEED`] when empty).
    #[serde(with = "serde_b64")]
    chain: Hash,
}

impl LogState {
    /// The state of an empty log.
    pub const fn new() -> Self {
        LogState {
            frontier: Frontier::new(),
            chain: CHAIN_SEED,
        }
    }

    /// Rebuilds a state from its parts.
    pub fn from_parts(frontier: Frontier, chain: Hash) -> Self {
        LogState { frontier, chain }
    }

    /// The number of entries.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The Merkle root of the entries so far.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The chain value of the last entry ([`CHAIN_SEED`] when empty).
    pub fn chain(&self) -> Hash {
        self.chain
    }

    /// The tree's frontier.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// Appends an event (its canonical bytes) and returns what to store with it.
    pub fn append(&mut self, data: &[u8]) -> Entry {
        self.append_leaf_hash(leaf_hash(data))
    }

    /// Appends an event given its leaf hash and returns what to store with it.
    ///
    /// # Panics
    ///
    /// Never in practice: only at 2^64 - 1 entries (see [`LogState::try_append_leaf_hash`]).
    pub fn append_leaf_hash(&mut self, leaf_hash: Hash) -> Entry {
        match self.try_append_leaf_hash(leaf_hash) {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        }
    }

    /// Appends an event given its leaf hash; fails only when the log is full.
    pub fn try_append_leaf_hash(&mut self, leaf_hash: Hash) -> Result<Entry, FrontierError> {
        let index = self.frontier.size();
        self.frontier.try_push(leaf_hash)?;
        self.chain = chain_hash(&self.chain, index, &leaf_hash);
        Ok(Entry {
            index,
            leaf_hash,
            chain: self.chain,
        })
    }

    /// The (unsigned) checkpoint of the log at its current size, to sign with
    /// [`crate::SigningKey::sign`]. `timestamp` is in seconds since the Unix epoch (UTC).
    pub fn checkpoint(&self, origin: &str, timestamp: u64) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::new(origin, self.size(), self.root(), timestamp)
    }
}
