//! Inclusion and consistency proofs: CT vectors, the RFC 6962 reference for
//! every (m, n) up to 32, streaming generation, tampering.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{ct_inputs, data, h, mth, path, proof};
use trustmesh_merkle::{
    Frontier, Hash, ProofError, consistency_proof, consistency_proof_from, inclusion_proof,
    inclusion_proof_from, leaf_hash, verify_consistency, verify_inclusion,
};

fn leaves(d: &[Vec<u8>]) -> Vec<Hash> {
    d.iter().map(|x| leaf_hash(x)).collect()
}

#[test]
fn ct_consistency_vectors() {
    let d = ct_inputs();
    let l = leaves(&d);
    let cases: [(u64, u64, &[&str]); 4] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (m, n, want) in cases {
        let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
        let got = consistency_proof(m, &l[..n as usize]).unwrap();
        assert_eq!(got, want, "PROOF({m}, D[{n}])");
        verify_consistency(m, &mth(&d[..m as usize]), n, &mth(&d[..n as usize]), &got).unwrap();
    }
}

#[test]
fn ct_inclusion_vectors() {
    let d = ct_inputs();
    let l = leaves(&d);
    let cases: [(u64, u64, &[&str]); 3] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    for (i, n, want) in cases {
        let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
        let got = inclusion_proof(i, &l[..n as usize]).unwrap();
        assert_eq!(got, want, "PATH({i}, D[{n}])");
        verify_inclusion(&l[i as usize], i, n, &got, &mth(&d[..n as usize])).unwrap();
    }
}

#[test]
fn inclusion_all_pairs_up_to_32() {
    let d = data(32);
    let l = leaves(&d);
    for n in 1..=32usize {
        let root = mth(&d[..n]);
        for i in 0..n {
            let p = inclusion_proof(i as u64, &l[..n]).unwrap();
            assert_eq!(p, path(i, &d[..n]), "PATH({i}, D[{n}])");
            verify_inclusion(&l[i], i as u64, n as u64, &p, &root).unwrap();

            // Streaming from every frontier at or before the leaf.
            for k in 0..=i {
                let mut base = Frontier::new();
                for x in &l[..k] {
                    base.push(*x);
                }
                let s = inclusion_proof_from(&base, i as u64, n as u64, l[k..].iter().copied())
                    .unwrap();
                assert_eq!(s, p, "streaming PATH({i}, D[{n}]) from {k}");
            }

            // Tampering: every hash, the leaf, the index, the size, the length.
            for j in 0..p.len() {
                let mut t = p.clone();
                t[j][0] ^= 1;
                assert!(verify_inclusion(&l[i], i as u64, n as u64, &t, &root).is_err());
            }
            let mut wrong_leaf = l[i];
            wrong_leaf[31] ^= 0x80;
            assert!(verify_inclusion(&wrong_leaf, i as u64, n as u64, &p, &root).is_err());
            if n > 1 {
                let other = (i + 1) % n;
                if l[other] != l[i] {
                    assert!(verify_inclusion(&l[i], other as u64, n as u64, &p, &root).is_err());
                }
            }
            // (The size is not authenticated by the path alone, e.g. leaf 0 has the
            // same path shape in trees of 3 and 4 leaves: it comes from the checkpoint.)
            let mut longer = p.clone();
            longer.push(root);
            assert!(matches!(
                verify_inclusion(&l[i], i as u64, n as u64, &longer, &root),
                Err(ProofError::WrongLength { .. })
            ));
            if !p.is_empty() {
                assert!(matches!(
                    verify_inclusion(&l[i], i as u64, n as u64, &p[1..], &root),
                    Err(ProofError::WrongLength { .. })
                ));
            }
        }
        assert!(matches!(
            inclusion_proof(n as u64, &l[..n]),
            Err(ProofError::IndexOutOfRange { .. })
        ));
    }
}

#[test]
fn consistency_all_pairs_up_to_32() {
    let d = data(32);
    let l = leaves(&d);
    for n in 0..=32usize {
        let root_n = mth(&d[..n]);
        for m in 0..=n {
            let root_m = mth(&d[..m]);
            let p = consistency_proof(m as u64, &l[..n]).unwrap();
            assert_eq!(p, proof(m, &d[..n]), "PROOF({m}, D[{n}])");
            verify_consistency(m as u64, &root_m, n as u64, &root_n, &p).unwrap();

            // Streaming from every frontier at or before m.
            for k in 0..=m {
                let mut base = Frontier::new();
                for x in &l[..k] {
                    base.push(*x);
                }
                let s = consistency_proof_from(&base, m as u64, n as u64, l[k..].iter().copied())
                    .unwrap();
                assert_eq!(s, p, "streaming PROOF({m}, D[{n}]) from {k}");
            }

            // Tampered proofs and roots are rejected.
            for j in 0..p.len() {
                let mut t = p.clone();
                t[j][5] ^= 4;
                assert!(
                    verify_consistency(m as u64, &root_m, n as u64, &root_n, &t).is_err(),
                    "tampered hash {j} of PROOF({m}, D[{n}])"
                );
            }
            let mut bad_old = root_m;
            bad_old[0] ^= 1;
            assert!(verify_consistency(m as u64, &bad_old, n as u64, &root_n, &p).is_err());
            // (Every tree extends the empty one.)
            if m > 0 {
                let mut bad_new = root_n;
                bad_new[0] ^= 1;
                assert!(verify_consistency(m as u64, &root_m, n as u64, &bad_new, &p).is_err());
            }
            let mut longer = p.clone();
            longer.push(root_n);
            assert!(verify_consistency(m as u64, &root_m, n as u64, &root_n, &longer).is_err());
            if !p.is_empty() {
                assert!(verify_consistency(m as u64, &root_m, n as u64, &root_n, &p[1..]).is_err());
            }
            // A rewritten history: same sizes, one old leaf changed.
            if m > 0 {
                let mut rewritten = d[..n].to_vec();
                rewritten[m - 1] = b"rewritten".to_vec();
                let rl = leaves(&rewritten);
                let rp = consistency_proof(m as u64, &rl).unwrap();
                assert!(
                    verify_consistency(m as u64, &root_m, n as u64, &mth(&rewritten), &rp).is_err()
                );
            }
        }
    }
}

#[test]
fn proof_errors_say_what_is_wrong() {
    let l = leaves(&data(10));
    assert_eq!(
        consistency_proof(11, &l).unwrap_err().to_string(),
        "consistency proof from size 11 to size 10: the old size is larger"
    );
    let err = consistency_proof_from(&Frontier::new(), 3, 10, l[..5].iter().copied()).unwrap_err();
    assert!(matches!(err, ProofError::NotEnoughLeaves { .. }), "{err}");
    let mut base = Frontier::new();
    for x in &l[..6] {
        base.push(*x);
    }
    let err = consistency_proof_from(&base, 3, 10, l[6..].iter().copied()).unwrap_err();
    assert!(matches!(err, ProofError::NotDerivable { .. }), "{err}");
    let err = verify_inclusion(&l[0], 0, 10, &[], &mth(&data(10))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the proof has 0 hashes, a proof for these sizes has 4"
    );
}
