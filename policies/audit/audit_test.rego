package trustmesh.audit_test

import data.trustmesh.audit

gateway := {"spiffe_id": "spiffe://trustmesh.local/svc/gateway", "workload": "gateway"}

auth := {"spiffe_id": "spiffe://trustmesh.local/svc/auth", "workload": "auth"}

stranger := {"spiffe_id": "spiffe://trustmesh.local/svc/unknown", "workload": null}

subject(role) := {"sub": "0190d5c2-0000-7000-8000-000000000001", "role": role, "sid": "s1", "mfa": true}

call(method, peer, subj, request) := {
	"service": "audit",
	"method": method,
	"rpc": concat("", ["/trustmesh.audit.v1.Audit/", method]),
	"peer": peer,
	"subject": subj,
	"request": request,
	"context": {"time": "2026-01-01T00:00:00Z", "client_ip": null, "user_agent": null, "request_id": "t"},
}

events(services) := {"events": [{"service": s, "action": "LOGIN"} | some s in services]}

test_a_service_appends_its_own_events if {
	audit.decision.allow with input as call("Append", auth, null, events(["auth", "auth"]))
}

test_an_empty_append_is_harmless if {
	audit.decision.allow with input as call("Append", auth, null, {"events": []})
}

test_a_service_cannot_append_in_another_name if {
	audit.decision == {"allow": false, "reason": "event_service_mismatch"} with input as call("Append", auth, null, events(["auth", "wallet"]))
}

test_an_unknown_workload_cannot_append if {
	audit.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("Append", stranger, null, events(["unknown"]))
}

test_auditors_read_through_the_gateway if {
	audit.decision.allow with input as call("ListEvents", gateway, subject("audit"), {})
	audit.decision.allow with input as call("ListDecisions", gateway, subject("admin"), {})
	audit.decision.allow with input as call("Verify", gateway, subject("audit"), {})
}

test_users_and_finance_cannot_read if {
	audit.decision == {"allow": false, "reason": "role_required"} with input as call("ListEvents", gateway, subject("user"), {})
	audit.decision == {"allow": false, "reason": "role_required"} with input as call("Verify", gateway, subject("finance"), {})
}

test_reads_only_through_the_gateway if {
	audit.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("ListEvents", auth, subject("audit"), {})
}

test_unknown_methods_are_denied if {
	audit.decision == {"allow": false, "reason": "unknown_method"} with input as call("DeleteEvents", gateway, subject("admin"), {})
}
