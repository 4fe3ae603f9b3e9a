//! The math of Trustmesh's tamper-evident audit log: RFC 6962 Merkle trees,
//! a per-entry hash chain, signed checkpoints, proofs and full verification.
//! Pure: no I/O, no database, no async.
//!
//! # The scheme
//!
//! Every stored event is a leaf. Its *leaf hash* is `SHA-256(0x00 || bytes)`
//! over the event's canonical bytes, interior nodes are
//! `SHA-256(0x01 || left || right)`, and the root of `n` leaves is the Merkle
//! Tree Hash of RFC 6962 §2.1 ([`root_of`]). The log keeps only its
//! [`Frontier`] (one hash per set bit of `n`) to append and to compute the
//! root at any size, plus a *chain value* per entry:
//! `chain[i] = SHA-256(0x02 || i (u64 BE) || chain[i-1] || leaf_hash[i])`
//! with `chain[-1]` = 32 zero bytes ([`chain_hash`]). [`LogState`] holds both.
//!
//! Periodically the service signs a [`Checkpoint`] (origin, size, root,
//! time) with Ed25519 ([`SigningKey::sign`]); its text form is a C2SP
//! `tlog-checkpoint` in a C2SP signed note ([`SignedCheckpoint`]).
//!
//! ## What the audit service stores
//!
//! * per event row: `idx` (the [`Entry::index`], unique, 0, 1, 2, … without
//!   gaps), the event's canonical bytes (or the columns they are rebuilt
//!   from, deterministically), `leaf_hash` and `chain` (32 bytes each):
//!   everything [`LogState::append`] returns, in the same transaction;
//! * the current [`LogState`] (serde JSON, a few hundred bytes), updated in
//!   that same transaction, so a restart resumes without reading the log;
//! * signed checkpoints ([`SignedCheckpoint::to_text`]): every few thousand
//!   events or seconds, whichever comes first, and at each retention cut. Copy
//!   them outside the database too (daily files, an operator's
//!   `--checkpoint FILE`): the database alone cannot prove it was not
//!   rewritten by someone who can write to it.
//! * the retention anchor, when retention has run: the [`LogState`] at the
//!   cut and the signed checkpoint of that size.
//!
//! ## What verification detects, and how it names the first bad entry
//!
//! [`LogVerifier`] replays the rows in index order and recomputes everything:
//!
//! | tampering | detected by | reported as |
//! | --- | --- | --- |
//! | event content edited | leaf hash | [`VerifyError::LeafHashMismatch`] at that entry |
//! | content and `leaf_hash` edited | chain | [`VerifyError::ChainMismatch`] at that entry |
//! | row deleted, duplicated or moved | index | [`VerifyError::OutOfOrder`] at the first position affected |
//! | same with indexes renumbered | chain | [`VerifyError::ChainMismatch`] at the first position affected |
//! | newest rows deleted | a checkpoint beyond the end | [`VerifyError::Truncated`], first missing entry |
//! | history rewritten with every hash recomputed | signed root | [`VerifyError::RootMismatch`], between the last matching checkpoint and this one |
//!
//! The chain names the exact entry for anyone who edits rows without
//! recomputing the hash columns; it costs one hash per entry. Someone who
//! recomputes all hashes defeats the chain (it is not secret) but not the
//! signed checkpoints: the Merkle root at a checkpoint's size no longer
//! matches. Signing often narrows where such a rewrite can be; deleting the
//! newest rows is only detectable up to the newest checkpoint kept *outside*
//! the database.
//!
//! ## Proofs
//!
//! Clients that do not hold the leaves check a checkpoint against a later
//! one with a consistency proof ([`consistency_proof`],
//! [`consistency_proof_from`], [`verify_consistency`]), and an event's
//! presence with an inclusion proof ([`inclusion_proof`],
//! [`inclusion_proof_from`], [`verify_inclusion`]).
//!
//! ## Retention
//!
//! To remove entries `0..k`: compute the [`LogState`] at `k` (replay the
//! stored leaf hashes from the previous anchor), sign the checkpoint at size
//! `k`, store both as the new anchor, then delete the rows. Verification of
//! what remains starts with [`LogVerifier::resume`] from the anchor; the
//! signed checkpoint authenticates the anchor's frontier, so the roots at
//! later checkpoints (which cover the removed entries too) are still checked
//! exactly. Checkpoints older than the anchor can no longer be checked
//! against the entries ([`VerifyError::BeforeAnchor`]); to keep vouching for
//! them, store at each cut the consistency proof from the previous anchor
//! (and from each checkpoint signed since) to the new one, and chain
//! [`verify_consistency`] calls.
//!
//! # Example
//!
//! ```
//! use trustmesh_merkle::{
//!     LogState, LogVerifier, SignedCheckpoint, SigningKey, VerifyError, consistency_proof_from,
//!     verify_consistency, Frontier,
//! };
//!
//! // The audit service: append, store each Entry with its event, sign checkpoints.
//! let (key, _pkcs8) = SigningKey::generate("trustmesh-audit")?;
//! let mut log = LogState::new();
//! let mut rows = Vec::new();
//! for i in 0..100u32 {
//!     let event = format!(r#"{{"seq":{i},"action":"LOGIN"}}"#).into_bytes();
//!     let entry = log.append(&event);
//!     rows.push((event, entry));
//! }
//! let earlier = key.sign(&log.checkpoint("trustmesh.local/audit", 1_767_225_600)?);
//! let earlier_text = earlier.to_text(); // e.g. written to a file
//! let earlier_state = log.clone();
//! for i in 100..150u32 {
//!     let event = format!(r#"{{"seq":{i},"action":"PAYMENT"}}"#).into_bytes();
//!     let entry = log.append(&event);
//!     rows.push((event, entry));
//! }
//! let latest = key.sign(&log.checkpoint("trustmesh.local/audit", 1_767_225_660)?);
//!
//! // `trustmesh audit verify --checkpoint FILE`: check the signatures, then replay.
//! let trusted = [key.verifying_key()];
//! let from_file = SignedCheckpoint::open(&earlier_text, &trusted)?;
//! let mut v = LogVerifier::new("trustmesh.local/audit");
//! v.expect_checkpoint(from_file.checkpoint())?;
//! v.expect_checkpoint(latest.checkpoint())?;
//! for (event, entry) in &rows {
//!     v.push(event, entry)?;
//! }
//! let report = v.finish()?;
//! assert_eq!((report.size, report.checkpoints.clone()), (150, vec![100, 150]));
//!
//! // The newest rows deleted: the earlier checkpoint catches it.
//! let mut v = LogVerifier::new("trustmesh.local/audit");
//! v.expect_checkpoint(latest.checkpoint())?;
//! for (event, entry) in &rows[..120] {
//!     v.push(event, entry)?;
//! }
//! assert!(matches!(v.finish(), Err(VerifyError::Truncated { log_size: 120, .. })));
//!
//! // Retention removed entries 0..100 and kept the state and checkpoint at 100.
//! let mut v = LogVerifier::resume("trustmesh.local/audit", earlier_state.clone(), from_file.checkpoint())?;
//! v.expect_checkpoint(latest.checkpoint())?;
//! for (event, entry) in &rows[100..] {
//!     v.push(event, entry)?;
//! }
//! assert_eq!(v.finish()?.root, *latest.checkpoint().root());
//!
//! // A client holding only the two checkpoints: a consistency proof.
//! let leaf_hashes = rows.iter().map(|(_, e)| e.leaf_hash);
//! let proof = consistency_proof_from(&Frontier::new(), 100, 150, leaf_hashes)?;
//! verify_consistency(100, from_file.checkpoint().root(), 150, latest.checkpoint().root(), &proof)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod checkpoint;
mod frontier;
mod hash;
mod log;
mod proof;
mod serde_b64;
mod verify;

pub use checkpoint::{Checkpoint, CheckpointError, SignedCheckpoint, SigningKey, VerifyingKey};
pub use frontier::{Frontier, FrontierError};
pub use hash::{
    CHAIN_PREFIX, CHAIN_SEED, EMPTY_ROOT, Hash, LEAF_PREFIX, NODE_PREFIX, chain_hash, from_hex,
    leaf_hash, node_hash, root_of, to_hex,
};
pub use log::{Entry, LogState};
pub use proof::{
    ProofError, consistency_proof, consistency_proof_from, consistency_ranges, inclusion_proof,
    inclusion_proof_from, inclusion_ranges, verify_consistency, verify_inclusion,
};
pub use verify::{LogVerifier, VerifyError, VerifyReport};
