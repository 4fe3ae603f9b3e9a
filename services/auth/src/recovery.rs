//! Single-use recovery codes.
//!
//! [`generate`] makes ten codes of 80 random bits each, written as 16
//! characters of Crockford's base32 in groups of four (`7kq2-9xmd-r4tb-0hze`):
//! lowercase, no `i`, `l`, `o` or `u`, so they are easy to read back. They are
//! shown once; only their hashes are stored, and the caller deletes (or marks)
//! a hash when its code is used.
//!
//! A stored hash is `rc1$<hex of SHA-256("trustmesh-recovery-v1:" || code)>`
//! over the canonical code. It is deterministic, so the caller can find and
//! spend a code with one indexed `UPDATE … WHERE code_hash = $1 AND used_at IS
//! NULL`. A fast unsalted hash is enough for 80-bit random codes: there is no
//! dictionary to try, and even against a million stored codes at once an
//! offline search still needs about 2^60 SHA-256 computations, for a second
//! factor only.
//!
//! Input is normalised before it is compared: case, dashes and whitespace are
//! ignored, and `i`/`l` read as `1`, `o` as `0`.

use std::collections::HashSet;

use data_encoding::HEXLOWER;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Codes per set.
pub const COUNT: usize = 10;
/// Characters per code (5 bits each: 80 bits).
pub const CODE_CHARS: usize = 16;
/// Characters per dash-separated group in the displayed form.
const GROUP: usize = 4;
/// Crockford's base32 alphabet, lowercase.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Prefix of a stored hash (its format version).
const PREFIX: &str = "rc1";
/// Domain separation for the hash.
const DOMAIN: &[u8] = b"trustmesh-recovery-v1:";

/// Makes a new set of [`COUNT`] distinct codes; returns the codes to show the
/// user once, and their hashes to store, in the same order.
pub fn generate() -> (Vec<String>, Vec<String>) {
    let mut rng = rand::rng();
    let mut seen = HashSet::with_capacity(COUNT);
    let mut codes = Vec::with_capacity(COUNT);
    let mut hashes = Vec::with_capacity(COUNT);
    while codes.len() < COUNT {
        let canonical: String = (0..CODE_CHARS)
            .map(|_| char::from(ALPHABET[(rng.next_u32() % 32) as usize]))
            .collect();
        if !seen.insert(canonical.clone()) {
            continue;
        }
        hashes.push(hash_canonical(&canonical));
        codes.push(display(&canonical));
    }
    (codes, hashes)
}

/// The canonical form of a code as typed (16 alphabet characters, no dashes),
/// or `None` when it cannot be a recovery code.
pub fn normalize(code: &str) -> Option<Zeroizing<String>> {
    let folded = fold(code);
    let valid = folded.len() == CODE_CHARS && folded.bytes().all(|b| ALPHABET.contains(&b));
    valid.then_some(folded)
}

/// The stored hash of a code as typed. Total: input that cannot be a code
/// hashes to a value no generated code has, so a lookup by it finds nothing.
pub fn hash(code: &str) -> String {
    hash_canonical(&fold(code))
}

/// Whether `code` (as typed) is the code behind `hash`, compared in constant
/// time. A malformed code or hash never matches.
pub fn matches(code: &str, hash: &str) -> bool {
    let Some(canonical) = normalize(code) else {
        return false;
    };
    let actual = hash_canonical(&canonical);
    actual.as_bytes().ct_eq(hash.as_bytes()).into()
}

/// Drops dashes and whitespace, lowercases, reads `i`/`l` as `1` and `o` as `0`.
fn fold(code: &str) -> Zeroizing<String> {
    Zeroizing::new(
        code.chars()
            .filter(|c| *c != '-' && !c.is_whitespace())
            .map(|c| match c.to_ascii_lowercase() {
                'i' | 'l' => '1',
                'o' => '0',
                c => c,
            })
            .collect(),
    )
}

fn hash_canonical(canonical: &str) -> String {
    let mut sha = Sha256::new();
    sha.update(DOMAIN);
    sha.update(canonical.as_bytes());
    format!("{PREFIX}${}", HEXLOWER.encode(&sha.finalize()))
}

fn display(canonical: &str) -> String {
    canonical
        .as_bytes()
        .chunks(GROUP)
        .map(|group| String::from_utf8_lossy(group).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_distinct_codes_each_matching_its_own_hash() {
        let (codes, hashes) = generate();
        assert_eq!(codes.len(), COUNT);
        assert_eq!(hashes.len(), COUNT);
        assert_eq!(codes.iter().collect::<HashSet<_>>().len(), COUNT);
        assert_eq!(hashes.iter().collect::<HashSet<_>>().len(), COUNT);
        for (i, code) in codes.iter().enumerate() {
            assert_eq!(code.len(), 19, "{code}");
            assert_eq!(code.matches('-').count(), 3, "{code}");
            assert!(
                code.bytes().all(|b| b == b'-' || ALPHABET.contains(&b)),
                "{code}"
            );
            assert!(hashes[i].starts_with("rc1$"), "{}", hashes[i]);
            assert!(
                !hashes[i].contains(&code.replace('-', "")),
                "hash holds the code"
            );
            for (j, hash) in hashes.iter().enumerate() {
                assert_eq!(matches(code, hash), i == j, "code {i} against hash {j}");
            }
        }
    }

    #[test]
    fn typed_forms_are_normalised() {
        let (codes, hashes) = generate();
        let code = &codes[0];
        let hash = &hashes[0];
        let plain = code.replace('-', "");
        assert!(matches(&plain, hash));
        assert!(matches(&code.to_uppercase(), hash));
        assert!(matches(&format!("  {} ", code.replace('-', " ")), hash));
        // The lookup hash of every typed form is the stored hash.
        for typed in [
            code.clone(),
            plain.clone(),
            code.to_uppercase(),
            format!(" {plain}\n"),
        ] {
            assert_eq!(&super::hash(&typed), hash, "{typed:?}");
        }
        // Look-alikes are read as the digits they resemble.
        let canonical = "0123456789abcdef";
        let stored = super::hash(canonical);
        assert_eq!(stored, hash_canonical(canonical));
        assert!(matches("OI23-456789abcdef", &stored));
        assert!(matches("ol23-4567-89AB-CDEF", &stored));
    }

    #[test]
    fn wrong_or_malformed_codes_are_refused() {
        let (codes, hashes) = generate();
        let hash = &hashes[0];
        // One character changed.
        let mut wrong: Vec<char> = codes[0].chars().collect();
        wrong[0] = if wrong[0] == 'a' { 'b' } else { 'a' };
        let wrong: String = wrong.into_iter().collect();
        assert!(!matches(&wrong, hash));
        for bad in [
            "",
            "abcd",
            &codes[0][..18],
            &format!("{}a", codes[0]),
            "uuuu-uuuu-uuuu-uuuu",
            "ąbcd-efgh-jkmn-pqrs",
        ] {
            assert!(!matches(bad, hash), "{bad:?}");
            assert!(normalize(bad).is_none(), "{bad:?}");
            assert!(!hashes.contains(&super::hash(bad)), "{bad:?}");
        }
        // Malformed stored hashes never match.
        let code = &codes[0];
        for bad_hash in [
            "",
            "rc1",
            "rc1$$",
            "rc2$00$00",
            &hash.replace("rc1$", "rc2$"),
            &format!("{hash}$x"),
            &hash[..hash.len() - 2],
        ] {
            assert!(!matches(code, bad_hash), "{bad_hash:?}");
        }
    }
}
