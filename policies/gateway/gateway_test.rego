package trustmesh.gateway_test

import data.trustmesh.gateway

peer := {"spiffe_id": "spiffe://trustmesh.local/svc/user", "workload": "user"}

call(rpc, p) := {
	"service": "gateway",
	"method": substring(rpc, indexof(rpc, "/") + 1, -1),
	"rpc": rpc,
	"peer": p,
	"subject": null,
	"request": {},
	"context": {"time": "2025-01-01T00:00:00Z", "client_ip": null, "user_agent": null, "request_id": "t"},
}

test_health_check_allowed_for_any_peer if {
	gateway.decision == {"allow": true, "reason": "allowed"} with input as call("/grpc.health.v1.Health/Check", peer)
}

test_health_watch_allowed if {
	gateway.decision.allow with input as call("/grpc.health.v1.Health/Watch", peer)
}

test_health_allowed_for_unknown_workload if {
	unknown := {"spiffe_id": "spiffe://trustmesh.local/svc/newcomer", "workload": null}
	gateway.decision.allow with input as call("/grpc.health.v1.Health/Check", unknown)
}

test_health_denied_without_peer if {
	d := gateway.decision with input as call("/grpc.health.v1.Health/Check", {"spiffe_id": null, "workload": null})
	d == {"allow": false, "reason": "peer_unauthenticated"}
}

test_other_method_denied if {
	d := gateway.decision with input as call("/trustmesh.gateway.v1.Gateway/Anything", peer)
	d == {"allow": false, "reason": "unknown_method"}
}

test_lookalike_health_path_denied if {
	d := gateway.decision with input as call("/grpc.health.v1.HealthX/Check", peer)
	d.reason == "unknown_method"
}

test_empty_input_denied if {
	d := gateway.decision with input as {}
	d == {"allow": false, "reason": "unknown_method"}
}

# --- REST routes -------------------------------------------------------------

client := {"spiffe_id": null, "workload": "client"}

subject(role, mfa) := {"sub": "u-1", "role": role, "sid": "s-1", "mfa": mfa}

rest(route, s) := {
	"service": "gateway",
	"method": route,
	"rpc": route,
	"peer": client,
	"subject": s,
	"request": {},
	"context": {"time": "2025-01-01T00:00:00Z", "client_ip": "203.0.113.7", "user_agent": "curl", "request_id": "t"},
}

allowed := {"allow": true, "reason": "allowed"}

test_rest_public_routes_allowed_without_subject if {
	every route in [
		"POST /api/v1/auth/register",
		"POST /api/v1/auth/register/confirm",
		"POST /api/v1/auth/login",
		"POST /api/v1/auth/login/mfa",
		"POST /api/v1/auth/refresh",
		"GET /.well-known/jwks.json",
		"GET /api/v1/openapi.json",
	] {
		gateway.decision == allowed with input as rest(route, null)
	}
}

test_rest_openapi_document_is_read_only if {
	d := gateway.decision with input as rest("POST /api/v1/openapi.json", null)
	d == {"allow": false, "reason": "unknown_method"}
}

test_rest_user_routes_allowed_with_mfa if {
	every route in [
		"POST /api/v1/auth/logout",
		"GET /api/v1/auth/sessions",
		"DELETE /api/v1/auth/sessions/{sid}",
		"POST /api/v1/auth/password",
		"GET /api/v1/users/me",
		"PATCH /api/v1/users/me",
		"DELETE /api/v1/users/me",
	] {
		gateway.decision == allowed with input as rest(route, subject("user", true))
	}
}

test_rest_user_route_denied_without_subject if {
	d := gateway.decision with input as rest("GET /api/v1/users/me", null)
	d == {"allow": false, "reason": "subject_required"}
}

test_rest_user_route_denied_without_mfa if {
	d := gateway.decision with input as rest("GET /api/v1/users/me", subject("user", false))
	d == {"allow": false, "reason": "mfa_required"}
}

test_rest_admin_routes_allowed_for_admin if {
	every route in ["GET /api/v1/users", "POST /api/v1/users/{id}/role", "POST /api/v1/teams"] {
		gateway.decision == allowed with input as rest(route, subject("admin", true))
	}
}

test_rest_admin_routes_denied_for_others if {
	every route in ["GET /api/v1/users", "POST /api/v1/users/{id}/role", "POST /api/v1/teams"] {
		every role in ["user", "manager", "finance", "audit"] {
			d := gateway.decision with input as rest(route, subject(role, true))
			d == {"allow": false, "reason": "role_required"}
		}
	}
}

test_rest_admin_route_checks_mfa_before_role if {
	d := gateway.decision with input as rest("POST /api/v1/users/{id}/role", subject("admin", false))
	d.reason == "mfa_required"
}

test_rest_admin_route_denied_without_subject if {
	d := gateway.decision with input as rest("GET /api/v1/users", null)
	d.reason == "subject_required"
}

test_rest_team_members_allowed_for_admin_and_manager if {
	gateway.decision == allowed with input as rest("POST /api/v1/teams/{id}/members", subject("admin", true))
	gateway.decision == allowed with input as rest("POST /api/v1/teams/{id}/members", subject("manager", true))
}

test_rest_team_members_denied_for_user if {
	d := gateway.decision with input as rest("POST /api/v1/teams/{id}/members", subject("user", true))
	d == {"allow": false, "reason": "role_required"}
}

test_rest_unknown_route_denied if {
	d := gateway.decision with input as rest("GET /api/v1/chat/keys/{user_id}", subject("admin", true))
	d == {"allow": false, "reason": "unknown_method"}
}

test_rest_route_with_other_method_denied if {
	d := gateway.decision with input as rest("GET /api/v1/auth/register", null)
	d.reason == "unknown_method"
}

test_rest_route_not_matched_for_mesh_peer if {
	# A workload of the mesh is not a REST client: the REST rules do not apply.
	i := object.union(rest("POST /api/v1/auth/register", null), {"peer": peer})
	d := gateway.decision with input as i
	d.reason == "unknown_method"
}

test_rest_route_not_matched_with_spiffe_id if {
	p := {"spiffe_id": "spiffe://trustmesh.local/svc/user", "workload": "client"}
	i := object.union(rest("POST /api/v1/auth/register", null), {"peer": p})
	d := gateway.decision with input as i
	d.reason == "unknown_method"
}

audit_routes := ["GET /api/v1/audit/events", "GET /api/v1/audit/decisions", "GET /api/v1/audit/verify"]

test_rest_audit_routes_allowed_for_auditors_and_admins if {
	every route in audit_routes {
		every role in ["audit", "admin"] {
			gateway.decision == allowed with input as rest(route, subject(role, true))
		}
	}
}

test_rest_audit_routes_denied_for_others if {
	every route in audit_routes {
		every role in ["user", "manager", "finance"] {
			d := gateway.decision with input as rest(route, subject(role, true))
			d == {"allow": false, "reason": "role_required"}
		}
	}
}

test_rest_audit_routes_denied_without_subject if {
	every route in audit_routes {
		d := gateway.decision with input as rest(route, null)
		d == {"allow": false, "reason": "subject_required"}
	}
}

# --- Wallet, payments, finance ------------------------------------------------

test_rest_wallet_routes_for_every_signed_in_role if {
	every route in ["GET /api/v1/wallet", "GET /api/v1/wallet/transactions", "GET /api/v1/payments/{id}"] {
		every role in ["user", "manager", "admin", "finance", "audit"] {
			gateway.decision == allowed with input as rest(route, subject(role, true))
		}
	}
}

test_rest_wallet_routes_need_a_session_and_mfa if {
	every route in [
		"GET /api/v1/wallet", "GET /api/v1/wallet/transactions", "GET /api/v1/payments/{id}",
		"POST /api/v1/payments", "GET /api/v1/finance/transactions",
		"POST /api/v1/finance/transactions/{id}/rollback",
	] {
		d := gateway.decision with input as rest(route, null)
		d == {"allow": false, "reason": "subject_required"}
		d2 := gateway.decision with input as rest(route, subject("finance", false))
		d2 == {"allow": false, "reason": "mfa_required"}
	}
}

test_rest_paying_roles if {
	every role in ["user", "manager", "admin", "finance"] {
		gateway.decision == allowed with input as rest("POST /api/v1/payments", subject(role, true))
	}
	d := gateway.decision with input as rest("POST /api/v1/payments", subject("audit", true))
	d == {"allow": false, "reason": "role_required"}
}

test_rest_finance_routes_for_finance_only if {
	every route in ["GET /api/v1/finance/transactions", "POST /api/v1/finance/transactions/{id}/rollback"] {
		gateway.decision == allowed with input as rest(route, subject("finance", true))
		every role in ["user", "manager", "admin", "audit"] {
			d := gateway.decision with input as rest(route, subject(role, true))
			d == {"allow": false, "reason": "role_required"}
		}
	}
}
