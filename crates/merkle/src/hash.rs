//! RFC 6962 hashing: leaves, interior nodes, the Merkle Tree Hash of a slice.

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, an interior node hash, a tree root or a chain value.
pub type Hash = [u8; 32];

/// Domain-separation prefix of a leaf hash (RFC 6962 §2.1).
pub const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an interior node hash (RFC 6962 §2.1).
pub const NODE_PREFIX: u8 = 0x01;
/// Domain-separation prefix of a chain value (see [`chain_hash`]); not part of RFC 6962.
pub const CHAIN_PREFIX: u8 = 0x02;

/// The root of the empty tree: `SHA-256("")` (RFC 6962 §2.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// The chain value "before the first entry" that [`chain_hash`] starts from: 32 zero bytes.
pub const CHAIN_SEED: Hash = [0; 32];

/// The hash of a leaf: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    h.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The chain value of entry `index`:
/// `SHA-256(0x02 || index as u64 big-endian || previous chain value || leaf hash)`.
///
/// The chain value of entry 0 uses [`CHAIN_SEED`] as `previous`. It commits
/// to every entry up to and including `index`, in order; storing it with each
/// row lets a verifier name the first row that was edited, deleted, inserted
/// or moved (see the crate documentation).
pub fn chain_hash(previous: &Hash, index: u64, leaf_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([CHAIN_PREFIX]);
    h.update(index.to_be_bytes());
    h.update(previous);
    h.update(leaf_hash);
    h.finalize().into()
}

/// The Merkle Tree Hash (RFC 6962 §2.1) of a list of leaf hashes, in O(n).
///
/// `root_of(&[])` is [`EMPTY_ROOT`].
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => EMPTY_ROOT,
        1 => leaves[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// The largest power of two strictly smaller than `n` (`n >= 2`): where
/// RFC 6962 splits a tree of `n` leaves.
pub(crate) fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Lower-case hexadecimal of a hash (for messages and logs).
pub fn to_hex(hash: &Hash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in hash {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Parses 64 hexadecimal digits (either case) into a hash.
pub fn from_hex(text: &str) -> Option<Hash> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_points() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(8), 4);
        assert_eq!(split_point(9), 8);
        assert_eq!(split_point(u64::MAX), 1 << 63);
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        let h: Hash = Sha256::digest([]).into();
        assert_eq!(h, EMPTY_ROOT);
    }

    #[test]
    fn hex_round_trip() {
        let h = leaf_hash(b"x");
        assert_eq!(from_hex(&to_hex(&h)), Some(h));
        assert_eq!(from_hex(&to_hex(&h).to_uppercase()), Some(h));
        assert_eq!(from_hex("00"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
    }
}
