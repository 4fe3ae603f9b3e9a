package trustmesh.auth_test

import data.trustmesh.auth

gateway := {"spiffe_id": "spiffe://trustmesh.local/svc/gateway", "workload": "gateway"}

user_svc := {"spiffe_id": "spiffe://trustmesh.local/svc/user", "workload": "user"}

wallet := {"spiffe_id": "spiffe://trustmesh.local/svc/wallet", "workload": "wallet"}

stranger := {"spiffe_id": "spiffe://trustmesh.local/svc/stranger", "workload": null}

subject := {"sub": "0190d5c2-0000-7000-8000-000000000001", "role": "user", "sid": "s1", "mfa": true}

call(method, peer, subj) := {
	"service": "auth",
	"method": method,
	"rpc": concat("", ["/trustmesh.auth.v1.Auth/", method]),
	"peer": peer,
	"subject": subj,
	"request": {},
	"context": {"time": "2026-01-01T00:00:00Z", "client_ip": null, "user_agent": null, "request_id": "t"},
}

test_gateway_registers_and_logs_in if {
	every method in ["Register", "ConfirmRegistration", "Login", "LoginMfa", "Refresh"] {
		auth.decision.allow with input as call(method, gateway, null)
	}
}

test_only_the_gateway_logs_in if {
	auth.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("Login", wallet, null)
}

test_session_calls_need_a_subject if {
	auth.decision == {"allow": false, "reason": "subject_required"} with input as call("Logout", gateway, null)
	auth.decision.allow with input as call("ListSessions", gateway, subject)
	auth.decision.allow with input as call("ChangePassword", gateway, subject)
}

test_every_workload_reads_the_jwks if {
	auth.decision.allow with input as call("GetJwks", wallet, null)
	auth.decision.allow with input as call("CheckSession", user_svc, null)
}

test_unknown_workloads_do_not_read_the_jwks if {
	auth.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("GetJwks", stranger, null)
}

test_password_checks_only_from_the_user_service if {
	auth.decision.allow with input as call("VerifyPassword", user_svc, null)
	auth.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("VerifyPassword", gateway, subject)
	auth.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("DeleteAccount", gateway, subject)
	auth.decision.allow with input as call("ChangeEmail", user_svc, null)
	auth.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("ChangeEmail", gateway, subject)
}

test_only_the_user_service_ends_a_users_sessions if {
	auth.decision.allow with input as call("RevokeUserSessions", user_svc, null)
	auth.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("RevokeUserSessions", gateway, subject)
	auth.decision == {"allow": false, "reason": "workload_not_allowed"} with input as call("RevokeUserSessions", wallet, null)
}

test_unknown_method_denied if {
	auth.decision == {"allow": false, "reason": "unknown_method"} with input as call("Impersonate", gateway, subject)
}
