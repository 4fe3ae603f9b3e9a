//! The compact range `[0, n)` of a tree: an incremental, resumable builder.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::hash::{EMPTY_ROOT, Hash, node_hash};
use crate::serde_b64;

/// The right edge ("frontier", or compact range `[0, n)`) of an RFC 6962
/// tree of `n` leaves: one hash per set bit of `n`, the roots of the perfect
/// subtrees that `[0, n)` decomposes into, largest (leftmost) first.
///
/// It is all that is needed to append more leaves and to compute the root at
/// any later size, so the audit service persists it (serde: JSON-friendly,
/// hashes in base64) instead of re-reading every leaf after a restart.
///
/// [`Frontier::push`] is amortized O(1) and at worst O(log n) node hashes;
/// [`Frontier::root`] is O(log n); the state is at most 64 hashes.
///
/// ```
/// use trustmesh_merkle::{Frontier, leaf_hash, root_of};
///
/// let leaves: Vec<_> = (0..5u8).map(|i| leaf_hash(&[i])).collect();
/// let mut f = Frontier::new();
/// for l in &leaves {
///     f.push(*l);
/// }
/// assert_eq!(f.size(), 5);
/// assert_eq!(f.root(), root_of(&leaves));
///
/// // Persist and resume.
/// let json = serde_json::to_string(&f).unwrap();
/// let g: Frontier = serde_json::from_str(&json).unwrap();
/// assert_eq!(g, f);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "FrontierRepr", into = "FrontierRepr")]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

/// Serialized form of a [`Frontier`].
#[derive(Serialize, Deserialize)]
struct FrontierRepr {
    size: u64,
    #[serde(with = "serde_b64::vec")]
    nodes: Vec<Hash>,
}

impl From<Frontier> for FrontierRepr {
    fn from(f: Frontier) -> Self {
        FrontierRepr {
            size: f.size,
            nodes: f.nodes,
        }
    }
}

impl TryFrom<FrontierRepr> for Frontier {
    type Error = FrontierError;

    fn try_from(r: FrontierRepr) -> Result<Self, Self::Error> {
        Frontier::from_parts(r.size, r.nodes)
    }
}

/// A [`Frontier`] that cannot be rebuilt from its parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrontierError {
    /// The number of hashes is not the number of set bits of the size.
    #[error(
        "a frontier of size {size} has {expected} subtree hashes (one per set bit of the size), got {got}"
    )]
    WrongNodeCount {
        /// The tree size.
        size: u64,
        /// `size.count_ones()`.
        expected: u32,
        /// How many hashes were given.
        got: usize,
    },
    /// The tree is full: no leaf can be appended.
    #[error("the tree already has the maximum number of leaves (2^64 - 1)")]
    Full,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub const fn new() -> Self {
        Frontier {
            size: 0,
            nodes: Vec::new(),
        }
    }

    /// Rebuilds a frontier from its size and subtree hashes (largest first),
    /// as returned by [`Frontier::size`] and [`Frontier::nodes`].
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Result<Self, FrontierError> {
        if nodes.len() != size.count_ones() as usize {
            return Err(FrontierError::WrongNodeCount {
                size,
                expected: size.count_ones(),
                got: nodes.len(),
            });
        }
        Ok(Frontier { size, nodes })
    }

    /// The number of leaves.
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// Whether the tree has no leaves.
    pub const fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The subtree hashes, largest (leftmost) first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// The subtrees of the compact range: the leaf range each hash covers
    /// and the hash, largest (leftmost) first.
    pub fn subtrees(&self) -> impl Iterator<Item = (Range<u64>, &Hash)> + '_ {
        let mut start = 0u64;
        let mut bits = (0..64u32)
            .rev()
            .filter(|b| self.size & (1u64 << b) != 0)
            .map(|b| 1u64 << b);
        self.nodes.iter().map(move |h| {
            let len = bits.next().unwrap_or(0);
            let r = start..start + len;
            start += len;
            (r, h)
        })
    }

    /// Appends a leaf (its hash, see [`crate::leaf_hash`]).
    ///
    /// # Panics
    ///
    /// Never in practice: a tree cannot reach 2^64 - 1 leaves. Use
    /// [`Frontier::try_push`] to get an error instead.
    pub fn push(&mut self, leaf_hash: Hash) {
        if self.try_push(leaf_hash).is_err() {
            panic!("Merkle tree is full (2^64 - 1 leaves)");
        }
    }

    /// Appends a leaf, or fails if the tree already has 2^64 - 1 leaves.
    pub fn try_push(&mut self, leaf_hash: Hash) -> Result<(), FrontierError> {
        let new_size = self.size.checked_add(1).ok_or(FrontierError::Full)?;
        let mut carry = leaf_hash;
        let mut s = self.size;
        while s & 1 == 1 {
            // One node per set bit: the pop cannot fail while bits remain.
            let Some(left) = self.nodes.pop() else { break };
            carry = node_hash(&left, &carry);
            s >>= 1;
        }
        self.nodes.push(carry);
        self.size = new_size;
        Ok(())
    }

    /// The Merkle Tree Hash of the leaves so far ([`EMPTY_ROOT`] when empty).
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(last) = it.next() else {
            return EMPTY_ROOT;
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{leaf_hash, root_of};

    #[test]
    fn subtrees_cover_the_range() {
        let mut f = Frontier::new();
        for i in 0..13u8 {
            f.push(leaf_hash(&[i]));
        }
        let ranges: Vec<_> = f.subtrees().map(|(r, _)| r).collect();
        assert_eq!(ranges, vec![0..8, 8..12, 12..13]);
    }

    #[test]
    fn from_parts_checks_count() {
        assert!(Frontier::from_parts(3, vec![[0; 32]]).is_err());
        assert!(Frontier::from_parts(3, vec![[0; 32]; 2]).is_ok());
    }

    #[test]
    fn root_matches_reference() {
        let leaves: Vec<_> = (0..100u8).map(|i| leaf_hash(&[i])).collect();
        let mut f = Frontier::new();
        assert_eq!(f.root(), EMPTY_ROOT);
        for (i, l) in leaves.iter().enumerate() {
            f.push(*l);
            assert_eq!(f.root(), root_of(&leaves[..=i]));
        }
    }

    #[test]
    fn full_tree_refuses() {
        let mut f = Frontier::from_parts(u64::MAX, vec![[0; 32]; 64]).expect("parts");
        assert_eq!(f.try_push([1; 32]), Err(FrontierError::Full));
    }
}
