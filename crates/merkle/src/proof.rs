//! Inclusion (audit) and consistency proofs: RFC 6962 §2.1.1 and §2.1.2 for
//! generation, RFC 9162 §2.1.3.2 and §2.1.4.2 for verification.
//!
//! Generation first lists the leaf ranges whose Merkle Tree Hashes make up
//! the proof ([`inclusion_ranges`], [`consistency_ranges`]), then hashes
//! them, either from a slice of leaf hashes ([`inclusion_proof`],
//! [`consistency_proof`]) or in one streaming pass over the leaf hashes
//! after a known [`Frontier`] ([`inclusion_proof_from`],
//! [`consistency_proof_from`]), which needs O(log n) memory and works after
//! retention removed the leaves before the frontier.

use std::ops::Range;

use crate::frontier::Frontier;
use crate::hash::{EMPTY_ROOT, Hash, node_hash, root_of, split_point, to_hex};

/// Why a proof could not be generated or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not in the tree.
    #[error("leaf index {index} is out of range for a tree of {size} leaves")]
    IndexOutOfRange {
        /// The leaf index asked for.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof from a larger tree to a smaller one.
    #[error("consistency proof from size {old_size} to size {new_size}: the old size is larger")]
    SizesOutOfOrder {
        /// The earlier tree size.
        old_size: u64,
        /// The later tree size.
        new_size: u64,
    },
    /// Fewer leaf hashes than the proof needs.
    #[error(
        "the proof needs the hashes of leaves up to #{needed} but only {available} are available"
    )]
    NotEnoughLeaves {
        /// The number of leaves needed (the tree size).
        needed: u64,
        /// The number of leaves available.
        available: u64,
    },
    /// A range of the proof is neither a subtree of the starting frontier nor after it.
    #[error(
        "the proof needs the hash of leaves #{start}..#{end}, which the starting frontier (size {base}) \
         does not hold: start from an earlier frontier"
    )]
    NotDerivable {
        /// First leaf of the range.
        start: u64,
        /// One past the last leaf of the range.
        end: u64,
        /// The size of the starting frontier.
        base: u64,
    },
    /// The proof has the wrong number of hashes for the sizes.
    #[error("the proof has {got} hashes, a proof for these sizes has {expected}")]
    WrongLength {
        /// Hashes expected.
        expected: usize,
        /// Hashes in the proof.
        got: usize,
    },
    /// An inclusion proof that does not lead to the root.
    #[error(
        "inclusion proof of leaf #{index} in a tree of {size} leaves is invalid: it leads to root {computed}, not {expected}"
    )]
    InclusionMismatch {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
        /// The root the proof leads to (hex).
        computed: String,
        /// The root it should lead to (hex).
        expected: String,
    },
    /// A consistency proof that does not reproduce one of the two roots.
    #[error(
        "consistency proof from size {old_size} to {new_size} is invalid: it does not reproduce the {which} root \
         (computed {computed}, expected {expected}); the log was rewritten or truncated in between, or the proof is corrupt"
    )]
    ConsistencyMismatch {
        /// The earlier tree size.
        old_size: u64,
        /// The later tree size.
        new_size: u64,
        /// `"old"` or `"new"`.
        which: &'static str,
        /// The root the proof leads to (hex).
        computed: String,
        /// The root it should lead to (hex).
        expected: String,
    },
}

/// The leaf ranges whose Merkle Tree Hashes form the inclusion proof of leaf
/// `index` in a tree of `size` leaves (RFC 6962 §2.1.1 `PATH`), in proof order.
pub fn inclusion_ranges(index: u64, size: u64) -> Result<Vec<Range<u64>>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::with_capacity(64);
    path(index, 0, size, &mut out);
    Ok(out)
}

fn path(m: u64, lo: u64, hi: u64, out: &mut Vec<Range<u64>>) {
    let n = hi - lo;
    if n <= 1 {
        return;
    }
    let k = split_point(n);
    if m < k {
        path(m, lo, lo + k, out);
        out.push(lo + k..hi);
    } else {
        path(m - k, lo + k, hi, out);
        out.push(lo..lo + k);
    }
}

/// The leaf ranges whose Merkle Tree Hashes form the consistency proof
/// between sizes `old_size` and `new_size` (RFC 6962 §2.1.2 `PROOF`), in
/// proof order. Empty when `old_size` is 0 or equal to `new_size`.
pub fn consistency_ranges(old_size: u64, new_size: u64) -> Result<Vec<Range<u64>>, ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesOutOfOrder { old_size, new_size });
    }
    let mut out = Vec::with_capacity(64);
    if old_size > 0 {
        subproof(old_size, 0, new_size, true, &mut out);
    }
    Ok(out)
}

fn subproof(m: u64, lo: u64, hi: u64, complete: bool, out: &mut Vec<Range<u64>>) {
    let n = hi - lo;
    if m == n {
        if !complete {
            out.push(lo..hi);
        }
        return;
    }
    let k = split_point(n);
    if m <= k {
        subproof(m, lo, lo + k, complete, out);
        out.push(lo + k..hi);
    } else {
        subproof(m - k, lo + k, hi, false, out);
        out.push(lo..lo + k);
    }
}

fn slice_range(leaves: &[Hash], r: &Range<u64>) -> Result<Hash, ProofError> {
    let len = leaves.len() as u64;
    let (Ok(start), Ok(end)) = (usize::try_from(r.start), usize::try_from(r.end)) else {
        return Err(ProofError::NotEnoughLeaves {
            needed: r.end,
            available: len,
        });
    };
    leaves
        .get(start..end)
        .map(root_of)
        .ok_or(ProofError::NotEnoughLeaves {
            needed: r.end,
            available: len,
        })
}

/// The inclusion proof of leaf `index` in the tree of all `leaves` (its size
/// is `leaves.len()`; pass `&leaves[..size]` for an earlier size).
pub fn inclusion_proof(index: u64, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    inclusion_ranges(index, leaves.len() as u64)?
        .iter()
        .map(|r| slice_range(leaves, r))
        .collect()
}

/// The consistency proof from the tree of the first `old_size` leaves to the
/// tree of all `leaves`.
pub fn consistency_proof(old_size: u64, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    consistency_ranges(old_size, leaves.len() as u64)?
        .iter()
        .map(|r| slice_range(leaves, r))
        .collect()
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves, from the
/// frontier `base` (any earlier size `<= index`, for example the retention
/// anchor or [`Frontier::new`]) and the hashes of the leaves from
/// `base.size()` on, in order (at least up to `size`; later ones are not read).
///
/// One streaming pass, O(log n) memory.
pub fn inclusion_proof_from<I>(
    base: &Frontier,
    index: u64,
    size: u64,
    leaves_after_base: I,
) -> Result<Vec<Hash>, ProofError>
where
    I: IntoIterator<Item = Hash>,
{
    let ranges = inclusion_ranges(index, size)?;
    hash_ranges(&ranges, base, leaves_after_base)
}

/// The consistency proof from size `old_size` to size `new_size`, from the
/// frontier `base` (any size `<= old_size`, for example the retention anchor
/// or [`Frontier::new`]) and the hashes of the leaves from `base.size()` on,
/// in order (at least up to `new_size`; later ones are not read).
///
/// One streaming pass, O(log n) memory.
pub fn consistency_proof_from<I>(
    base: &Frontier,
    old_size: u64,
    new_size: u64,
    leaves_after_base: I,
) -> Result<Vec<Hash>, ProofError>
where
    I: IntoIterator<Item = Hash>,
{
    let ranges = consistency_ranges(old_size, new_size)?;
    hash_ranges(&ranges, base, leaves_after_base)
}

/// Hashes disjoint leaf ranges from the subtrees of `base` and a stream of
/// the leaves after it.
fn hash_ranges<I>(
    ranges: &[Range<u64>],
    base: &Frontier,
    leaves: I,
) -> Result<Vec<Hash>, ProofError>
where
    I: IntoIterator<Item = Hash>,
{
    let k = base.size();
    let subtrees: Vec<(Range<u64>, Hash)> = base.subtrees().map(|(r, h)| (r, *h)).collect();
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].start);

    let mut out = vec![EMPTY_ROOT; ranges.len()];
    let mut it = leaves.into_iter();
    let mut pos = k;
    for i in order {
        let r = &ranges[i];
        let not_derivable = ProofError::NotDerivable {
            start: r.start,
            end: r.end,
            base: k,
        };
        if r.end <= k {
            // Must be one of the frontier's subtrees.
            out[i] = subtrees
                .iter()
                .find(|(s, _)| s == r)
                .map(|(_, h)| *h)
                .ok_or(not_derivable)?;
            continue;
        }
        let mut acc = if r.start < k {
            // Straddles the frontier: seed with the frontier subtrees inside
            // [r.start, k), which must decompose k - r.start exactly.
            let inside: Vec<Hash> = subtrees
                .iter()
                .filter(|(s, _)| s.start >= r.start)
                .map(|(_, h)| *h)
                .collect();
            let sizes_ok = subtrees
                .iter()
                .filter(|(s, _)| s.start >= r.start)
                .map(|(s, _)| s.end - s.start)
                .eq((0..64u32)
                    .rev()
                    .map(|b| 1u64 << b)
                    .filter(|b| (k - r.start) & b != 0));
            if !sizes_ok {
                return Err(not_derivable);
            }
            Frontier::from_parts(k - r.start, inside).map_err(|_| not_derivable)?
        } else {
            Frontier::new()
        };
        while pos < r.start {
            it.next().ok_or(ProofError::NotEnoughLeaves {
                needed: r.end,
                available: pos,
            })?;
            pos += 1;
        }
        while pos < r.end {
            let h = it.next().ok_or(ProofError::NotEnoughLeaves {
                needed: r.end,
                available: pos,
            })?;
            acc.push(h);
            pos += 1;
        }
        out[i] = acc.root();
    }
    Ok(out)
}

/// Verifies that `leaf_hash` is leaf `index` of the tree of `size` leaves
/// whose root is `root`, given its inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let expected = inclusion_ranges(index, size)?.len();
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = *leaf_hash;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength {
                expected,
                got: proof.len(),
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    if &r != root {
        return Err(ProofError::InclusionMismatch {
            index,
            size,
            computed: to_hex(&r),
            expected: to_hex(root),
        });
    }
    Ok(())
}

/// Verifies that the tree of `new_size` leaves with root `new_root` extends
/// the tree of `old_size` leaves with root `old_root`, given the consistency
/// proof (RFC 9162 §2.1.4.2): the log was only appended to in between.
///
/// Equal sizes need an empty proof and equal roots; an old size of 0 needs
/// an empty proof and the empty root.
pub fn verify_consistency(
    old_size: u64,
    old_root: &Hash,
    new_size: u64,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    let expected = consistency_ranges(old_size, new_size)?.len();
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    let mismatch = |which, computed: &Hash, expected: &Hash| ProofError::ConsistencyMismatch {
        old_size,
        new_size,
        which,
        computed: to_hex(computed),
        expected: to_hex(expected),
    };
    if old_size == 0 {
        return if old_root == &EMPTY_ROOT {
            Ok(())
        } else {
            Err(mismatch("old", &EMPTY_ROOT, old_root))
        };
    }
    if old_size == new_size {
        return if old_root == new_root {
            Ok(())
        } else {
            Err(mismatch("new", old_root, new_root))
        };
    }
    let (first, rest) = if old_size.is_power_of_two() {
        (*old_root, proof)
    } else {
        match proof.split_first() {
            Some((f, rest)) => (*f, rest),
            None => {
                return Err(ProofError::WrongLength {
                    expected,
                    got: proof.len(),
                });
            }
        }
    };
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = first;
    let mut sr = first;
    for c in rest {
        if snode == 0 {
            return Err(ProofError::WrongLength {
                expected,
                got: proof.len(),
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    if &fr != old_root {
        return Err(mismatch("old", &fr, old_root));
    }
    if &sr != new_root {
        return Err(mismatch("new", &sr, new_root));
    }
    Ok(())
}
