//! The OpenAPI document at `GET /api/v1/openapi.json` against the router
//! that serves it: every operation it describes is routed, guarded as it
//! says (a token or none), allowed by the gateway's policy for some role,
//! and every schema it refers to is in it.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::Request;
use common::*;
use serde_json::Value;

/// The methods an OpenAPI path item may hold that the gateway uses.
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// The policy's refusals: an answer with one of these codes did not get
/// past the route's rule.
const POLICY_REFUSALS: [&str; 4] = [
    "unknown_method",
    "role_required",
    "mfa_required",
    "subject_required",
];

async fn served_document(h: &Harness) -> Value {
    let reply = h
        .send(
            Request::get("/api/v1/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.json()
}

/// `error.code` of an error answer; `None` for a success.
fn code_of(reply: &Reply) -> Option<String> {
    (reply.status >= 400).then(|| reply.error_code())
}

/// Every (method, path template, operation) of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                found.push((method.to_uppercase(), path.clone(), operation.clone()));
            }
        }
    }
    found
}

/// A request for `method path`, path parameters filled in, with a JSON
/// body of `{}` where the operation takes one.
fn request(method: &str, path: &str, operation: &Value, token: Option<&str>) -> Request<Body> {
    let uri = path
        .replace("{id}", "0190f7d4-1c2b-7000-8000-000000000001")
        .replace("{sid}", "0190f7d4-1c2b-7000-8000-000000000002");
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    if operation.get("requestBody").is_some() {
        builder
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap()
    } else {
        builder.body(Body::empty()).unwrap()
    }
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_served_to_anyone() {
    let h = Harness::unreachable().await;
    let doc = served_document(&h).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Trustmesh REST API");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["cookie"]["in"], "cookie");
    assert_eq!(schemes["cookie"]["name"], "tm_access");
    // The routes of the architecture map, each with its method.
    let described: BTreeSet<String> = operations(&doc)
        .into_iter()
        .map(|(method, path, _)| format!("{method} {path}"))
        .collect();
    for route in [
        "POST /api/v1/auth/register",
        "POST /api/v1/auth/login/mfa",
        "DELETE /api/v1/auth/sessions/{sid}",
        "GET /.well-known/jwks.json",
        "PATCH /api/v1/users/me",
        "DELETE /api/v1/users/me",
        "POST /api/v1/users/{id}/role",
        "GET /api/v1/wallet/transactions",
        "POST /api/v1/payments",
        "POST /api/v1/finance/transactions/{id}/rollback",
        "GET /api/v1/audit/verify",
        "GET /api/v1/openapi.json",
    ] {
        assert!(described.contains(route), "{route} is not described");
    }
    assert_eq!(described.len(), 27, "{described:#?}");
}

#[tokio::test]
async fn every_operation_is_routed_and_asks_for_a_token_exactly_when_it_says() {
    let h = Harness::unreachable().await;
    let doc = served_document(&h).await;
    let mut public = Vec::new();
    for (method, path, operation) in operations(&doc) {
        let route = format!("{method} {path}");
        let reply = h.send(request(&method, &path, &operation, None)).await;
        let code = code_of(&reply);
        assert!(
            !matches!(code.as_deref(), Some("not_found" | "method_not_allowed")),
            "{route} is described but not routed: {} {code:?}",
            reply.status
        );
        match operation.get("security") {
            Some(security) => {
                assert_eq!(
                    security,
                    &serde_json::json!([{"bearer": []}, {"cookie": []}]),
                    "{route}"
                );
                assert_eq!(
                    (reply.status, code.as_deref()),
                    (401, Some("token_missing")),
                    "{route} says it needs a token"
                );
                assert!(operation["responses"].get("401").is_some(), "{route}");
            }
            None => {
                assert_ne!(reply.status, 401, "{route} says it needs no token");
                public.push(route);
            }
        }
    }
    assert_eq!(
        public,
        [
            "GET /.well-known/jwks.json",
            "POST /api/v1/auth/login",
            "POST /api/v1/auth/login/mfa",
            "POST /api/v1/auth/refresh",
            "POST /api/v1/auth/register",
            "POST /api/v1/auth/register/confirm",
            "GET /api/v1/openapi.json",
        ]
    );
}

#[tokio::test]
async fn the_policy_lets_some_role_through_every_guarded_operation() {
    let h = Harness::unreachable().await;
    let doc = served_document(&h).await;
    let tokens: Vec<(&str, String)> = ["user", "admin", "finance", "audit"]
        .into_iter()
        .map(|role| (role, h.token(role, true)))
        .collect();
    for (method, path, operation) in operations(&doc) {
        if operation.get("security").is_none() {
            continue;
        }
        let mut admitted = Vec::new();
        for (role, token) in &tokens {
            let reply = h
                .send(request(&method, &path, &operation, Some(token)))
                .await;
            let code = code_of(&reply);
            let refused = reply.status == 403
                && code
                    .as_deref()
                    .is_some_and(|code| POLICY_REFUSALS.contains(&code));
            if !refused {
                admitted.push(*role);
            }
        }
        assert!(
            !admitted.is_empty(),
            "{method} {path}: the policy refuses every role"
        );
    }
}

#[tokio::test]
async fn every_operation_is_documented_and_every_reference_resolves() {
    let h = Harness::unreachable().await;
    let doc = served_document(&h).await;
    let mut ids = BTreeSet::new();
    for (method, path, operation) in operations(&doc) {
        let route = format!("{method} {path}");
        let summary = operation["summary"].as_str().unwrap_or_default();
        assert!(!summary.is_empty(), "{route} has no summary");
        assert_eq!(
            operation["tags"].as_array().map(Vec::len),
            Some(1),
            "{route}"
        );
        let id = operation["operationId"].as_str().unwrap().to_owned();
        assert!(ids.insert(id.clone()), "operationId {id} twice");
        let responses = operation["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|status| status.starts_with('2')),
            "{route} has no success answer"
        );
        assert!(responses.contains_key("default"), "{route}");
        if operation.get("requestBody").is_some() {
            for status in ["400", "413", "415"] {
                assert!(responses.contains_key(status), "{route} lacks {status}");
            }
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut references = Vec::new();
    collect_references(&doc, &mut references);
    assert!(references.len() > 30, "{}", references.len());
    for reference in references {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{reference} is not a schema reference"));
        assert!(schemas.contains_key(name), "{reference} does not resolve");
    }
    assert_eq!(
        schemas["ErrorBody"]["required"],
        serde_json::json!(["error"]),
        "the error shape"
    );
}

/// Every `$ref` in `value`.
fn collect_references(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(reference)) => into.push(reference.clone()),
                    _ => collect_references(value, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_references(item, into)),
        _ => {}
    }
}
