//! Known-answer tests (RFC 6962 / Certificate Transparency `merkle_tree_test`)
//! and the incremental builder against the reference MTH.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{ct_inputs, data, h, mth};
use trustmesh_merkle::{EMPTY_ROOT, Frontier, LogState, leaf_hash, node_hash, root_of, to_hex};

/// Roots of the first 1..=8 CT inputs (certificate-transparency `merkle_tree_test.cc`).
const CT_ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// Leaf hashes of the 8 CT inputs.
const CT_LEAVES: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
];

#[test]
fn empty_tree() {
    assert_eq!(
        to_hex(&EMPTY_ROOT),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(root_of(&[]), EMPTY_ROOT);
    assert_eq!(Frontier::new().root(), EMPTY_ROOT);
    assert_eq!(mth(&[]), EMPTY_ROOT);
}

#[test]
fn ct_leaf_hashes() {
    for (d, want) in ct_inputs().iter().zip(CT_LEAVES) {
        assert_eq!(to_hex(&leaf_hash(d)), want);
    }
}

#[test]
fn ct_roots() {
    let inputs = ct_inputs();
    let leaves: Vec<_> = inputs.iter().map(|d| leaf_hash(d)).collect();
    let mut f = Frontier::new();
    for (i, l) in leaves.iter().enumerate() {
        f.push(*l);
        let want = h(CT_ROOTS[i]);
        assert_eq!(f.root(), want, "incremental root at size {}", i + 1);
        assert_eq!(root_of(&leaves[..=i]), want, "root_of at size {}", i + 1);
        assert_eq!(mth(&inputs[..=i]), want, "reference at size {}", i + 1);
    }
}

#[test]
fn node_hash_is_rfc6962() {
    let a = leaf_hash(b"");
    let b = leaf_hash(&[0]);
    assert_eq!(node_hash(&a, &b), h(CT_ROOTS[1]));
}

#[test]
fn incremental_matches_reference_for_all_sizes_up_to_64() {
    let d = data(64);
    let mut f = Frontier::new();
    let mut log = LogState::new();
    assert_eq!(f.root(), mth(&[]));
    for n in 1..=64 {
        f.push(leaf_hash(&d[n - 1]));
        log.append(&d[n - 1]);
        let want = mth(&d[..n]);
        assert_eq!(f.size(), n as u64);
        assert_eq!(f.nodes().len(), n.count_ones() as usize);
        assert_eq!(f.root(), want, "size {n}");
        assert_eq!(log.root(), want, "size {n}");
        // Resuming from a serialized frontier gives the same roots afterwards.
        let json = serde_json::to_string(&f).unwrap();
        let mut g: Frontier = serde_json::from_str(&json).unwrap();
        assert_eq!(g, f);
        if n < 64 {
            g.push(leaf_hash(&d[n]));
            assert_eq!(g.root(), mth(&d[..=n]));
        }
    }
}

#[test]
fn frontier_serialization_is_validated() {
    let mut f = Frontier::new();
    for d in data(5) {
        f.push(leaf_hash(&d));
    }
    let json = serde_json::to_value(&f).unwrap();
    assert_eq!(json["size"], 5);
    assert_eq!(json["nodes"].as_array().unwrap().len(), 2);

    let mut wrong = json.clone();
    wrong["size"] = 7.into();
    let err = serde_json::from_value::<Frontier>(wrong)
        .unwrap_err()
        .to_string();
    assert!(err.contains("one per set bit"), "{err}");

    let mut bad = json.clone();
    bad["nodes"][0] = "AAAA".into();
    let err = serde_json::from_value::<Frontier>(bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("32 bytes"), "{err}");
}

#[test]
fn log_state_round_trip_and_resume() {
    let d = data(37);
    let mut a = LogState::new();
    let mut entries = Vec::new();
    for x in &d[..20] {
        entries.push(a.append(x));
    }
    let json = serde_json::to_string(&a).unwrap();
    let mut b: LogState = serde_json::from_str(&json).unwrap();
    assert_eq!(a, b);
    for x in &d[20..] {
        let ea = a.append(x);
        let eb = b.append(x);
        assert_eq!(ea, eb);
        entries.push(ea);
    }
    assert_eq!(b.root(), mth(&d));
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.index, i as u64);
        assert_eq!(e.leaf_hash, leaf_hash(&d[i]));
    }
    let entry_json = serde_json::to_string(&entries[3]).unwrap();
    assert_eq!(
        serde_json::from_str::<trustmesh_merkle::Entry>(&entry_json).unwrap(),
        entries[3]
    );
}
