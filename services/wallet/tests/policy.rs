//! The wallet's Rego package: its tests (`policies/wallet/wallet_test.rego`)
//! pass, it runs on the RVM without whole-package lookups (every helper is
//! named by its full path), and the shipped data lists the test agent.

#![allow(clippy::unwrap_used)]

mod common;

use trustmesh_policy::{TestSource, run_tests};

fn policies_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

#[test]
fn wallet_rego_tests_pass() {
    let outcomes = run_tests(TestSource::Dir(policies_dir())).unwrap();
    let wallet: Vec<_> = outcomes
        .iter()
        .filter(|o| o.name.starts_with("trustmesh.wallet_test."))
        .collect();
    assert!(wallet.len() >= 30, "{} wallet tests", wallet.len());
    let failed: Vec<_> = wallet.iter().filter(|o| !o.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn wallet_policy_is_a_fast_path() {
    let engine = common::policies();
    assert!(
        engine.services().contains(&("wallet".to_owned(), "rvm")),
        "{engine:?}"
    );
    let warnings: Vec<_> = engine
        .warnings()
        .into_iter()
        .filter(|w| w.contains("trustmesh.wallet"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}
