//! Shared fixtures: a test service package `trustmesh.demo` and inputs.

#![allow(dead_code)]

use trustmesh_policy::{Peer, PolicyEngine, PolicyInput, RequestContext, Subject};

/// A test service's package, exercising every helper of `trustmesh.lib`.
pub const DEMO_REGO: &str = r#"
package trustmesh.demo

default decision := {"allow": false, "reason": "unknown_method"}

decision := data.trustmesh.lib.allowed if {
	data.trustmesh.lib.is_health_check
	data.trustmesh.lib.has_peer
}

# Transfer: only through the gateway, for an end user with MFA, from their own account.
decision := transfer if input.method == "Transfer"

transfer := data.trustmesh.lib.deny("workload_not_allowed") if {
	not data.trustmesh.lib.workload_in({"gateway"})
} else := data.trustmesh.lib.deny("subject_required") if {
	not data.trustmesh.lib.has_subject
} else := data.trustmesh.lib.deny("mfa_required") if {
	not data.trustmesh.lib.mfa_verified
} else := data.trustmesh.lib.deny("not_owner") if {
	not data.trustmesh.lib.is_owner(input.request.from_user)
} else := data.trustmesh.lib.deny("limit_exceeded") if {
	input.request.amount > 1000
} else := data.trustmesh.lib.allowed

# Purge: admins only, from the ops workload or the gateway.
decision := purge if input.method == "Purge"

purge := data.trustmesh.lib.deny("workload_not_allowed") if {
	not data.trustmesh.lib.workload_in(["ops", "gateway"])
} else := data.trustmesh.lib.deny("role_required") if {
	not data.trustmesh.lib.is_admin
} else := data.trustmesh.lib.allowed

# ValidateJWTSVID (a real proto, for the layer tests): audience must be "trustmesh".
decision := validate if input.rpc == "/SpiffeWorkloadAPI/ValidateJWTSVID"

validate := data.trustmesh.lib.allowed if {
	input.request.audience == "trustmesh"
} else := data.trustmesh.lib.deny("audience_not_allowed")

# FetchJWTSVID: a repeated field decoded as an array.
decision := fetch if input.rpc == "/SpiffeWorkloadAPI/FetchJWTSVID"

fetch := data.trustmesh.lib.allowed if {
	"trustmesh" in input.request.audience
	input.request.spiffe_id == ""
} else := data.trustmesh.lib.deny("audience_not_allowed")
"#;

/// The embedded policies plus the demo package.
pub fn engine() -> PolicyEngine {
    PolicyEngine::embedded()
        .expect("embedded policies load")
        .with_extra_policies(&[("tests/demo.rego".to_owned(), DEMO_REGO.to_owned())])
        .expect("demo policy loads")
}

/// A realistic input: the gateway calling `Transfer` for user `u-1`.
pub fn transfer_input() -> PolicyInput {
    PolicyInput {
        service: "demo".into(),
        method: "Transfer".into(),
        rpc: "/trustmesh.demo.v1.Demo/Transfer".into(),
        peer: Peer {
            spiffe_id: Some("spiffe://trustmesh.local/svc/gateway".into()),
            workload: Some("gateway".into()),
        },
        subject: Some(Subject {
            sub: "u-1".into(),
            role: "user".into(),
            sid: "s-1".into(),
            mfa: true,
        }),
        request: serde_json::json!({"from_user": "u-1", "to_user": "u-2", "amount": 250, "memo": "rent"}),
        context: RequestContext {
            time: "2025-01-01T00:00:00Z".into(),
            client_ip: Some("203.0.113.7".into()),
            user_agent: Some("test".into()),
            request_id: "req-1".into(),
        },
    }
}
