//! Audit-log verification cost: one million leaves of ~300 bytes.
//!
//! - `tree/push_root_1M`: leaf hashing (300-byte events) + frontier push for
//!   1,000,000 leaves, then the root: the Merkle part of `audit verify`.
//! - `verify/log_verifier_1M`: what `audit verify` does per row with
//!   [`LogVerifier`]: leaf hash check, chain, tree, 100 checkpoints.
//! - `proof/*`: generating (streaming, from a frontier) and verifying
//!   consistency and inclusion proofs in a tree of 1,000,000 leaves.
//!
//! After criterion, a plain timed run prints the 1M figures once more.
//!
//! `cargo bench -p trustmesh-merkle --bench merkle`

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use trustmesh_merkle::{
    Checkpoint, Entry, Frontier, Hash, LogState, LogVerifier, consistency_proof_from,
    inclusion_proof_from, leaf_hash, verify_consistency, verify_inclusion,
};

const N: u64 = 1_000_000;
const EVENT_BYTES: usize = 300;
const ORIGIN: &str = "trustmesh.local/audit";

/// A 300-byte event for index `i` (JSON-like; the index makes each one distinct).
fn event(buf: &mut Vec<u8>, i: u64) {
    buf.clear();
    buf.extend_from_slice(
        format!(
            r#"{{"seq":{i},"id":"0199a8f0-7c4e-7d2a-9b1e-{i:012}","service":"auth","action":"LOGIN","status":"SUCCESS","actor":"spiffe://trustmesh.local/ns/default/sa/gateway","ip":"10.0.0.1","ua":"Mozilla/5.0","details":{{"#
        )
        .as_bytes(),
    );
    buf.resize(EVENT_BYTES - 2, b'x');
    buf.extend_from_slice(b"}}");
}

struct Fixture {
    leaves: Vec<Hash>,
    entries: Vec<Entry>,
    checkpoints: Vec<Checkpoint>,
    root: Hash,
}

fn fixture() -> Fixture {
    let mut log = LogState::new();
    let mut buf = Vec::with_capacity(EVENT_BYTES);
    let mut entries = Vec::with_capacity(N as usize);
    let mut checkpoints = Vec::new();
    for i in 0..N {
        event(&mut buf, i);
        entries.push(log.append(&buf));
        if (i + 1) % 10_000 == 0 {
            checkpoints.push(log.checkpoint(ORIGIN, 1_767_225_600 + i).unwrap());
        }
    }
    Fixture {
        leaves: entries.iter().map(|e| e.leaf_hash).collect(),
        entries,
        checkpoints,
        root: log.root(),
    }
}

fn push_root() -> Hash {
    let mut f = Frontier::new();
    let mut buf = Vec::with_capacity(EVENT_BYTES);
    for i in 0..N {
        event(&mut buf, i);
        f.push(leaf_hash(&buf));
    }
    f.root()
}

fn log_verify(fx: &Fixture) -> Hash {
    let mut v = LogVerifier::new(ORIGIN);
    for c in &fx.checkpoints {
        v.expect_checkpoint(c).unwrap();
    }
    let mut buf = Vec::with_capacity(EVENT_BYTES);
    for (i, e) in fx.entries.iter().enumerate() {
        event(&mut buf, i as u64);
        v.push(&buf, e).unwrap();
    }
    v.finish().unwrap().root
}

fn bench(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("1M");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("tree/push_root_1M", |b| b.iter(|| black_box(push_root())));
    g.bench_function("verify/log_verifier_1M", |b| {
        b.iter(|| black_box(log_verify(fx)))
    });
    g.bench_function("proof/consistency_generate_500k_to_1M", |b| {
        b.iter(|| {
            black_box(
                consistency_proof_from(&Frontier::new(), 500_000, N, fx.leaves.iter().copied())
                    .unwrap(),
            )
        })
    });
    g.finish();

    let m = 617_423u64;
    let root_m = {
        let mut f = Frontier::new();
        for l in &fx.leaves[..m as usize] {
            f.push(*l);
        }
        f.root()
    };
    let proof = consistency_proof_from(&Frontier::new(), m, N, fx.leaves.iter().copied()).unwrap();
    c.bench_function("proof/consistency_verify_617423_to_1M", |b| {
        b.iter(|| {
            verify_consistency(
                m,
                black_box(&root_m),
                N,
                black_box(&fx.root),
                black_box(&proof),
            )
            .unwrap()
        })
    });
    let idx = 123_457u64;
    let incl = inclusion_proof_from(&Frontier::new(), idx, N, fx.leaves.iter().copied()).unwrap();
    c.bench_function("proof/inclusion_verify_in_1M", |b| {
        b.iter(|| {
            verify_inclusion(
                black_box(&fx.leaves[idx as usize]),
                idx,
                N,
                black_box(&incl),
                &fx.root,
            )
            .unwrap()
        })
    });
    let mut f = Frontier::new();
    for l in &fx.leaves[..(N as usize - 1)] {
        f.push(*l);
    }
    c.bench_function("tree/root_at_999999", |b| b.iter(|| black_box(&f).root()));
}

fn timed(label: &str, mut f: impl FnMut()) {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    println!(
        "{label:<44} best of 3: {:>8.1} ms",
        best.as_secs_f64() * 1e3
    );
}

fn main() {
    let t = Instant::now();
    let fx = fixture();
    let fixture_time = t.elapsed();

    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &fx);
    c.final_summary();

    // `cargo test --benches` runs this binary without `--bench`: keep it quick.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--profile-time") {
        return;
    }
    println!();
    println!(
        "{:<44} once:       {:>8.1} ms",
        "append 1M events (leaf+chain+tree, 100 cps)",
        fixture_time.as_secs_f64() * 1e3
    );
    timed("push+root, 1M leaves of 300 bytes", || {
        black_box(push_root());
    });
    timed("LogVerifier, 1M rows of 300 bytes", || {
        black_box(log_verify(&fx));
    });
    timed("push+root, 1M precomputed leaf hashes", || {
        let mut f = Frontier::new();
        for l in &fx.leaves {
            f.push(*l);
        }
        black_box(f.root());
    });
}
