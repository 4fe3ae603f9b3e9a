//! `trustmesh policy test`: passes on the repository's policies and fails
//! (non-zero exit) as soon as one Rego test fails.

use trustmesh_tests::{copy_dir, repo_root, run_cli};

#[test]
fn repository_policies_pass() {
    let dir = repo_root().join("policies");
    let (code, out, err) = run_cli(
        &["policy", "test", "--dir", dir.to_str().unwrap_or_default()],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("PASS "), "{out}");
    assert!(out.contains(" 0 failed"), "{out}");
}

#[test]
fn embedded_policies_pass() {
    let (code, out, err) = run_cli(&["policy", "test"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" 0 failed"), "{out}");
}

#[test]
fn a_failing_rego_test_fails_the_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&repo_root().join("policies"), dir.path());
    std::fs::write(
        dir.path().join("gateway/broken_test.rego"),
        "package trustmesh.gateway_broken_test\n\nimport data.trustmesh.gateway\n\n\
         test_wrongly_expects_allow if {\n\tgateway.decision.allow with input as {\"rpc\": \"/x.Y/Z\", \"peer\": {}}\n}\n",
    )
    .expect("write failing test");
    let (code, out, err) = run_cli(
        &[
            "policy",
            "test",
            "--dir",
            dir.path().to_str().unwrap_or_default(),
        ],
        &[],
    );
    assert_ne!(code, 0, "a failing test must fail the command: {out}{err}");
    assert!(
        out.contains("FAIL trustmesh.gateway_broken_test.test_wrongly_expects_allow"),
        "{out}"
    );
    assert!(out.contains(" 1 failed"), "{out}");
}
