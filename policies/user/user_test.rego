package trustmesh.user_test

import data.trustmesh.user

gateway := {"spiffe_id": "spiffe://trustmesh.local/svc/gateway", "workload": "gateway"}

auth := {"spiffe_id": "spiffe://trustmesh.local/svc/auth", "workload": "auth"}

ops := {"spiffe_id": "spiffe://trustmesh.local/ops/cli", "workload": "ops"}

wallet := {"spiffe_id": "spiffe://trustmesh.local/svc/wallet", "workload": "wallet"}

payment := {"spiffe_id": "spiffe://trustmesh.local/svc/payment", "workload": "payment"}

subject(role) := {"sub": "0190d5c2-0000-7000-8000-000000000001", "role": role, "sid": "s1", "mfa": true}

call(method, peer, subj) := {
	"service": "user",
	"method": method,
	"rpc": concat("", ["/trustmesh.user.v1.User/", method]),
	"peer": peer,
	"subject": subj,
	"request": {},
	"context": {"time": "2026-01-01T00:00:00Z", "client_ip": null, "user_agent": null, "request_id": "t"},
}

test_user_reads_own_profile if {
	user.decision.allow with input as call("GetMe", gateway, subject("user"))
}

test_profile_needs_a_subject if {
	user.decision == {"allow": false, "reason": "subject_required"} with input as call("GetMe", gateway, null)
}

test_profile_needs_mfa if {
	no_mfa := object.union(subject("user"), {"mfa": false})
	user.decision == {"allow": false, "reason": "mfa_required"} with input as call("UpdateMe", gateway, no_mfa)
}

test_profile_only_through_the_gateway if {
	user.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("GetMe", wallet, subject("user"))
}

test_admin_changes_roles if {
	user.decision.allow with input as call("SetRole", gateway, subject("admin"))
}

test_non_admin_cannot_change_roles if {
	user.decision == {"allow": false, "reason": "role_required"} with input as call("SetRole", gateway, subject("manager"))
}

test_ops_grants_roles_without_a_user if {
	user.decision.allow with input as call("SetRole", ops, null)
}

test_other_workloads_cannot_grant_roles if {
	user.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("SetRole", wallet, null)
}

test_list_users_is_admin_only if {
	user.decision.allow with input as call("ListUsers", gateway, subject("admin"))
	user.decision == {"allow": false, "reason": "role_required"} with input as call("ListUsers", gateway, subject("finance"))
}

test_managers_add_team_members if {
	user.decision.allow with input as call("AddTeamMember", gateway, subject("manager"))
	user.decision == {"allow": false, "reason": "role_required"} with input as call("AddTeamMember", gateway, subject("user"))
}

test_create_team_is_admin_only if {
	user.decision == {"allow": false, "reason": "role_required"} with input as call("CreateTeam", gateway, subject("manager"))
}

test_profiles_are_created_by_auth_only if {
	user.decision.allow with input as call("EnsureProfile", auth, null)
	user.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("EnsureProfile", gateway, subject("admin"))
	user.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("GetRole", gateway, subject("admin"))
}

test_roles_are_read_by_auth_and_payment_only if {
	user.decision.allow with input as call("GetRole", auth, null)
	user.decision.allow with input as call("GetRole", payment, null)
	user.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("GetRole", wallet, null)
	user.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("EnsureProfile", payment, null)
}

test_unknown_method_denied if {
	user.decision == {"allow": false, "reason": "unknown_method"} with input as call("DropTables", gateway, subject("admin"))
}

test_health_for_any_peer if {
	health := object.union(call("x", wallet, null), {"rpc": "/grpc.health.v1.Health/Check"})
	user.decision.allow with input as health
}
