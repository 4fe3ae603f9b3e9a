//! The REST API fuzzed through `trustmesh up` against its own OpenAPI
//! document with schemathesis (installed by `scripts/services.sh` in
//! `~/.cache/trustmesh-schemathesis`; the test fails if it is missing).
//!
//! Signed in as an admin, schemathesis sends every documented operation
//! requests made from its schemas, valid and invalid, and checks what must
//! hold for any of them: no 5xx, a status the document lists, the declared
//! content type, headers and body schema, 405 with `Allow` for other
//! methods, a missing required header refused, and a route that needs a
//! token refusing a request without one. The operations that would end the
//! admin's session (logout, session revocation, password change, account
//! deletion, role changes) are left out.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use trustmesh_tests::rest::{Api, signed_in};
use trustmesh_tests::{Mesh, run_cli};

/// The checks schemathesis runs: the properties every answer must have,
/// whatever the request (its heuristics about which made-up values a
/// service should take or refuse are left out).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
    response_headers_conformance,response_schema_conformance,missing_required_header,\
    unsupported_method,allow_header_conformance,ignored_auth";

/// Operations that end the session the fuzzer uses.
const SESSION_ENDING: [&str; 5] = [
    "logout",
    "revoke_session",
    "change_password",
    "delete_me",
    "set_role",
];

fn schemathesis() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let path = PathBuf::from(home).join(".cache/trustmesh-schemathesis/bin/schemathesis");
    assert!(
        path.exists(),
        "{} is missing: run scripts/services.sh (it installs schemathesis)",
        path.display()
    );
    path
}

#[test]
fn generated_requests_get_no_server_error_and_answers_match_the_document() {
    let schemathesis = schemathesis();
    let mesh = Mesh::start(&[]);
    let api = Api::new(&mesh);

    let admin = signed_in(&api, &mesh, "fuzzer", Some("admin"));

    let (code, document, err) = run_cli(&["openapi"], &[]);
    assert_eq!(code, 0, "{err}");
    let document_path = mesh.dir.path().join("openapi.json");
    std::fs::write(&document_path, document).unwrap();

    let mut command = Command::new(&schemathesis);
    command
        .arg("run")
        .arg(&document_path)
        .args(["--url", &format!("https://localhost:{}", api.addr().port())])
        .arg("--tls-verify")
        .arg(mesh.gateway_ca())
        .args([
            "--header",
            &format!("Authorization: Bearer {}", admin.token),
        ])
        .args(["--checks", CHECKS])
        .args(["--max-examples", "25", "--seed", "20261208"])
        .args(["--generation-database", "none"])
        .args(["--generation-with-security-parameters", "false"])
        .args(["--workers", "1", "--request-timeout", "30"])
        // A kept-alive connection the gateway closes as idle just as the
        // client sends on it is a network error, not an answer: sent again.
        .args(["--request-retries", "2"])
        .args(["--no-color", "--output-truncate", "false"]);
    for operation in SESSION_ENDING {
        command.args(["--exclude-operation-id", operation]);
    }
    let output = command.output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}"
    );
    // It did test: every operation that was not left out.
    assert!(report.contains("Tested: 22"), "{report}");
}
