//! Decisions, loading errors and the Rego test runner.

mod common;

use std::path::{Path, PathBuf};

use common::{DEMO_REGO, engine, transfer_input};
use trustmesh_policy::{
    Decision, Peer, PolicyEngine, PolicyError, PolicyInput, RequestContext, TestSource, run_tests,
};

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn allowed() -> Decision {
    Decision {
        allow: true,
        reason: "allowed".into(),
    }
}

fn health(service: &str, spiffe_id: Option<&str>) -> PolicyInput {
    PolicyInput {
        service: service.into(),
        method: "Check".into(),
        rpc: "/grpc.health.v1.Health/Check".into(),
        peer: Peer {
            spiffe_id: spiffe_id.map(str::to_owned),
            workload: None,
        },
        subject: None,
        request: serde_json::json!({}),
        context: RequestContext::now(),
    }
}

#[test]
fn engine_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<PolicyEngine>();
    assert_send_sync::<trustmesh_policy::PolicyLayer>();
}

#[test]
fn gateway_allows_health_checks_from_the_trust_domain() {
    let engine = PolicyEngine::embedded().expect("embedded");
    let d = engine
        .authorize(&health(
            "gateway",
            Some("spiffe://trustmesh.local/svc/user"),
        ))
        .expect("eval");
    assert_eq!(d, allowed());
}

#[test]
fn gateway_denies_health_checks_without_peer() {
    let engine = PolicyEngine::embedded().expect("embedded");
    let d = engine.authorize(&health("gateway", None)).expect("eval");
    assert_eq!(d, Decision::deny("peer_unauthenticated"));
}

#[test]
fn gateway_denies_other_methods_as_unknown() {
    let engine = PolicyEngine::embedded().expect("embedded");
    let mut input = health("gateway", Some("spiffe://trustmesh.local/svc/user"));
    input.rpc = "/trustmesh.gateway.v1.Gateway/Anything".into();
    input.method = "Anything".into();
    let d = engine.authorize(&input).expect("eval");
    assert_eq!(d, Decision::deny("unknown_method"));
}

#[test]
fn service_without_package_is_denied_no_policy() {
    let engine = PolicyEngine::embedded().expect("embedded");
    let d = engine
        .authorize(&health(
            "nonexistent",
            Some("spiffe://trustmesh.local/svc/x"),
        ))
        .expect("eval");
    assert_eq!(d, Decision::deny("no_policy"));
    // `lib` is a helper package, never a service.
    let d = engine
        .authorize(&health("lib", Some("spiffe://trustmesh.local/svc/x")))
        .expect("eval");
    assert_eq!(d, Decision::deny("no_policy"));
}

#[test]
fn demo_transfer_decisions_with_reasons() {
    let engine = engine();
    assert_eq!(
        engine.authorize(&transfer_input()).expect("eval"),
        allowed()
    );

    let mut input = transfer_input();
    input.peer.workload = Some("wallet".into());
    assert_eq!(
        engine.authorize(&input).expect("eval"),
        Decision::deny("workload_not_allowed")
    );

    let mut input = transfer_input();
    input.peer = Peer::default();
    assert_eq!(
        engine.authorize(&input).expect("eval"),
        Decision::deny("workload_not_allowed")
    );

    let mut input = transfer_input();
    input.subject = None;
    assert_eq!(
        engine.authorize(&input).expect("eval"),
        Decision::deny("subject_required")
    );

    let mut input = transfer_input();
    if let Some(s) = input.subject.as_mut() {
        s.mfa = false;
    }
    assert_eq!(
        engine.authorize(&input).expect("eval"),
        Decision::deny("mfa_required")
    );

    let mut input = transfer_input();
    input.request["from_user"] = "u-2".into();
    assert_eq!(
        engine.authorize(&input).expect("eval"),
        Decision::deny("not_owner")
    );

    let mut input = transfer_input();
    input.request["amount"] = 5000.into();
    assert_eq!(
        engine.authorize(&input).expect("eval"),
        Decision::deny("limit_exceeded")
    );

    let mut input = transfer_input();
    input.method = "Nope".into();
    assert_eq!(
        engine.authorize(&input).expect("eval"),
        Decision::deny("unknown_method")
    );
}

#[test]
fn demo_role_required() {
    let engine = engine();
    let mut input = transfer_input();
    input.method = "Purge".into();
    assert_eq!(
        engine.authorize(&input).expect("eval"),
        Decision::deny("role_required")
    );
    if let Some(s) = input.subject.as_mut() {
        s.role = "admin".into();
    }
    assert_eq!(engine.authorize(&input).expect("eval"), allowed());
    input.peer.workload = Some("ops".into());
    assert_eq!(engine.authorize(&input).expect("eval"), allowed());
    input.peer.workload = Some("chat".into());
    assert_eq!(
        engine.authorize(&input).expect("eval"),
        Decision::deny("workload_not_allowed")
    );
}

/// The RVM and the interpreter must agree on every decision.
#[test]
fn rvm_and_interpreter_agree() {
    let rvm = engine();
    assert!(
        rvm.services().contains(&("demo".to_owned(), "rvm")),
        "demo should run on the RVM: {rvm:?}"
    );
    let interp = rvm.clone().interpreter_only().expect("interpreter");
    assert!(interp.services().iter().all(|(_, b)| *b == "interpreter"));

    let mut inputs = Vec::new();
    for method in ["Transfer", "Purge", "Check", "Other"] {
        for workload in [Some("gateway"), Some("ops"), Some("wallet"), None] {
            for subject in [
                None,
                Some(("u-1", "user", true)),
                Some(("u-9", "admin", false)),
            ] {
                for amount in [10, 5000] {
                    let mut input = transfer_input();
                    input.method = method.into();
                    if method == "Check" {
                        input.rpc = "/grpc.health.v1.Health/Check".into();
                    }
                    input.peer.workload = workload.map(str::to_owned);
                    if workload.is_none() {
                        input.peer.spiffe_id = None;
                    }
                    input.subject = subject.map(|(sub, role, mfa)| trustmesh_policy::Subject {
                        sub: sub.into(),
                        role: role.into(),
                        sid: "s".into(),
                        mfa,
                    });
                    input.request["amount"] = amount.into();
                    inputs.push(input);
                }
            }
        }
    }
    for service in ["demo", "gateway"] {
        for input in &inputs {
            let mut input = input.clone();
            input.service = service.into();
            let a = rvm.authorize(&input).expect("rvm");
            let b = interp.authorize(&input).expect("interpreter");
            assert_eq!(a, b, "{input:?}");
        }
    }
}

#[test]
fn workload_lookup_by_path() {
    let engine = PolicyEngine::embedded().expect("embedded");
    assert_eq!(
        engine.workload_for("spiffe://trustmesh.local/svc/gateway"),
        Some("gateway".into())
    );
    assert_eq!(
        engine.workload_for("spiffe://example.org/ops/cli"),
        Some("ops".into())
    );
    assert_eq!(
        engine.workload_for("spiffe://trustmesh.local/svc/unknown"),
        None
    );
    assert_eq!(engine.workload_for("not a spiffe id"), None);
}

#[test]
fn malformed_decision_is_an_eval_error() {
    let engine = PolicyEngine::embedded()
        .expect("embedded")
        .with_extra_policies(&[(
            "bad.rego".into(),
            "package trustmesh.bad\n\ndecision := \"yes\"\n".into(),
        )])
        .expect("loads");
    let err = engine
        .authorize(&health("bad", Some("spiffe://trustmesh.local/svc/x")))
        .expect_err("not an object");
    assert!(matches!(err, PolicyError::Eval(_)), "{err}");
}

#[test]
fn undefined_decision_is_no_policy() {
    let engine = PolicyEngine::embedded()
        .expect("embedded")
        .with_extra_policies(&[(
            "partial.rego".into(),
            "package trustmesh.partial\n\ndecision := {\"allow\": true, \"reason\": \"allowed\"} if input.method == \"Only\"\n".into(),
        )])
        .expect("loads");
    let d = engine
        .authorize(&health("partial", Some("spiffe://trustmesh.local/svc/x")))
        .expect("eval");
    assert_eq!(d, Decision::deny("no_policy"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn from_dir_matches_embedded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&policies_dir(), tmp.path());
    let engine = PolicyEngine::from_dir(tmp.path()).expect("loads");
    assert!(engine.services().iter().any(|(s, _)| s == "gateway"));
    assert_eq!(
        engine
            .authorize(&health(
                "gateway",
                Some("spiffe://trustmesh.local/svc/user")
            ))
            .expect("eval"),
        allowed()
    );
}

#[test]
fn from_dir_with_malformed_rego_names_the_file_in_one_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&policies_dir(), tmp.path());
    let bad = tmp.path().join("broken").join("broken.rego");
    std::fs::create_dir_all(bad.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &bad,
        "package trustmesh.broken\n\ndecision := {\"allow\": true if {\n",
    )
    .expect("write");
    let err = PolicyEngine::from_dir(tmp.path()).expect_err("malformed");
    let text = err.to_string();
    assert!(matches!(err, PolicyError::Load { .. }), "{text}");
    assert!(text.contains(&bad.display().to_string()), "{text}");
    assert!(!text.contains('\n'), "{text:?}");
    eprintln!("{text}");
}

#[test]
fn from_dir_with_unsafe_rule_names_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&policies_dir(), tmp.path());
    let bad = tmp.path().join("unsafe.rego");
    std::fs::write(
        &bad,
        "package trustmesh.unsafe\n\ndecision := {\"allow\": x > 1, \"reason\": \"r\"} if {\n\ty := 2\n}\n",
    )
    .expect("write");
    let err = PolicyEngine::from_dir(tmp.path()).expect_err("unsafe var");
    let text = err.to_string();
    assert!(matches!(err, PolicyError::Load { .. }), "{text}");
    assert!(text.contains(&bad.display().to_string()), "{text}");
    assert!(!text.contains('\n'), "{text:?}");
    eprintln!("{text}");
}

#[test]
fn from_dir_with_malformed_data_names_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&policies_dir(), tmp.path());
    let data = tmp.path().join("data.json");
    std::fs::write(&data, "{\"workloads\": ").expect("write");
    let err = PolicyEngine::from_dir(tmp.path()).expect_err("bad json");
    let text = err.to_string();
    assert!(text.contains(&data.display().to_string()), "{text}");
    assert!(!text.contains('\n'), "{text:?}");
    eprintln!("{text}");
}

#[test]
fn from_dir_missing_directory_is_a_load_error() {
    let err = PolicyEngine::from_dir(Path::new("/nonexistent/policies")).expect_err("missing");
    assert!(err.to_string().contains("/nonexistent/policies"), "{err}");
}

#[test]
fn from_env_without_variable_is_embedded() {
    // Setting the variable needs `unsafe` in edition 2024 (forbidden here):
    // without it, from_env must give the embedded policies.
    if std::env::var_os(trustmesh_policy::POLICY_DIR_ENV).is_none() {
        let engine = PolicyEngine::from_env().expect("loads");
        assert!(engine.services().iter().any(|(s, _)| s == "gateway"));
    }
}

#[test]
fn extra_policy_dir_file_adds_a_service() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&policies_dir(), tmp.path());
    std::fs::write(tmp.path().join("demo.rego"), DEMO_REGO).expect("write");
    let engine = PolicyEngine::from_dir(tmp.path()).expect("loads");
    assert!(engine.services().iter().any(|(s, _)| s == "demo"));
    assert_eq!(
        engine.authorize(&transfer_input()).expect("eval"),
        allowed()
    );
}

#[test]
fn rego_tests_pass_on_a_copy_of_policies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&policies_dir(), tmp.path());
    let outcomes = run_tests(TestSource::Dir(tmp.path().to_owned())).expect("runs");
    assert!(outcomes.len() >= 10, "{outcomes:?}");
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(
        outcomes
            .iter()
            .any(|o| o.name == "trustmesh.gateway_test.test_other_method_denied")
    );
}

#[test]
fn embedded_rego_tests_pass() {
    let outcomes = run_tests(TestSource::Embedded).expect("runs");
    assert!(!outcomes.is_empty());
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn a_failing_rego_test_is_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&policies_dir(), tmp.path());
    let file = tmp.path().join("gateway").join("extra_test.rego");
    std::fs::write(
        &file,
        r#"package trustmesh.extra_test

import data.trustmesh.gateway

test_passes if {
	gateway.decision.reason == "unknown_method" with input as {"rpc": "/x/Y"}
}

test_fails if {
	gateway.decision.allow with input as {"rpc": "/x/Y"}
}

test_errors if {
	x := 1 / 0
	x == 1
}

test_not_boolean := 7
"#,
    )
    .expect("write");
    let outcomes = run_tests(TestSource::Dir(tmp.path().to_owned())).expect("runs");
    let get = |name: &str| {
        outcomes
            .iter()
            .find(|o| o.name == format!("trustmesh.extra_test.{name}"))
            .unwrap_or_else(|| panic!("{name} missing from {outcomes:#?}"))
    };
    assert!(get("test_passes").passed);
    let fails = get("test_fails");
    assert!(!fails.passed);
    assert!(fails.error.is_some());
    assert_eq!(fails.file, file.display().to_string());
    assert!(!get("test_errors").passed);
    assert!(!get("test_not_boolean").passed);
    eprintln!(
        "{:#?}",
        outcomes.iter().filter(|o| !o.passed).collect::<Vec<_>>()
    );
}

#[test]
fn run_tests_reports_load_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&policies_dir(), tmp.path());
    let file = tmp.path().join("gateway").join("broken_test.rego");
    std::fs::write(&file, "package trustmesh.broken_test\n\ntest_x if {\n").expect("write");
    let err = run_tests(TestSource::Dir(tmp.path().to_owned())).expect_err("parse error");
    assert!(matches!(err, PolicyError::Load { .. }));
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[test]
fn run_tests_rejects_a_service_that_does_not_compile() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&policies_dir(), tmp.path());
    let file = tmp.path().join("nocall.rego");
    std::fs::write(
        &file,
        "package trustmesh.nocall\n\ndecision := {\"allow\": true, \"reason\": \"allowed\"} if {\n\tnet.cidr_contains(\"10.0.0.0/8\", input.context.client_ip)\n}\n",
    )
    .expect("write");
    let err = run_tests(TestSource::Dir(tmp.path().to_owned())).expect_err("unknown function");
    let text = err.to_string();
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains("net.cidr_contains"), "{text}");
}

#[test]
fn concurrent_decisions_share_one_engine() {
    let engine = engine();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let mut input = transfer_input();
                    let deny = (i + t) % 3 == 0;
                    if deny {
                        input.request["amount"] = 5000.into();
                    }
                    let d = engine.authorize(&input).expect("eval");
                    if deny {
                        assert_eq!(d, Decision::deny("limit_exceeded"));
                    } else {
                        assert_eq!(d, allowed());
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}
