//! Independent, straightforward reference implementations of RFC 6962 §2.1.

#![allow(dead_code, clippy::unwrap_used)]

use sha2::{Digest, Sha256};

pub type H = [u8; 32];

pub fn sha(parts: &[&[u8]]) -> H {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn h(s: &str) -> H {
    unhex(s).try_into().unwrap()
}

/// The CT `merkle_tree_test` inputs.
pub fn ct_inputs() -> Vec<Vec<u8>> {
    [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
    .iter()
    .map(|s| unhex(s))
    .collect()
}

fn k_of(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]) over raw leaf data, literally as RFC 6962 writes it.
pub fn mth(d: &[Vec<u8>]) -> H {
    match d.len() {
        0 => sha(&[]),
        1 => sha(&[&[0u8], &d[0]]),
        n => {
            let k = k_of(n);
            sha(&[&[1u8], &mth(&d[..k]), &mth(&d[k..])])
        }
    }
}

/// PATH(m, D[n]).
pub fn path(m: usize, d: &[Vec<u8>]) -> Vec<H> {
    let n = d.len();
    if n <= 1 {
        return vec![];
    }
    let k = k_of(n);
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

/// SUBPROOF(m, D[n], b).
pub fn subproof(m: usize, d: &[Vec<u8>], b: bool) -> Vec<H> {
    let n = d.len();
    if m == n {
        return if b { vec![] } else { vec![mth(d)] };
    }
    let k = k_of(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

/// PROOF(m, D[n]), empty for m = 0.
pub fn proof(m: usize, d: &[Vec<u8>]) -> Vec<H> {
    if m == 0 { vec![] } else { subproof(m, d, true) }
}

/// Leaf data for tests beyond the CT inputs.
pub fn data(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("leaf {i}").into_bytes()).collect()
}
