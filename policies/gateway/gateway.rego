# Authorization of the gateway's own gRPC surface.
#
# The gateway serves REST to browsers and API clients (authorized in its HTTP
# handlers); over mTLS gRPC it serves only the standard health service.
package trustmesh.gateway

default decision := {"allow": false, "reason": "unknown_method"}

# Health checks: any authenticated peer of the trust domain.
decision := data.trustmesh.lib.allowed if {
	data.trustmesh.lib.is_health_check
	data.trustmesh.lib.has_peer
}

decision := data.trustmesh.lib.deny("peer_unauthenticated") if {
	data.trustmesh.lib.is_health_check
	not data.trustmesh.lib.has_peer
}

# ---------------------------------------------------------------------------
# REST routes. The gateway's HTTP layer asks this package about every route it
# serves, with input.method == input.rpc == "<METHOD> <route template>"
# (`POST /api/v1/users/{id}/role`), peer {"spiffe_id": null, "workload":
# "client"}, the subject of the access token the gateway verified (null on
# public routes) and the path parameters as input.request. gRPC paths start
# with "/", so no gRPC call can match these rules.

# Before a session exists: anyone.
rest_public_routes := {
	"POST /api/v1/auth/register",
	"POST /api/v1/auth/register/confirm",
	"POST /api/v1/auth/login",
	"POST /api/v1/auth/login/mfa",
	"POST /api/v1/auth/refresh",
	"GET /.well-known/jwks.json",
	"GET /api/v1/openapi.json",
}

# A signed-in user's own account and sessions.
rest_user_routes := {
	"POST /api/v1/auth/logout",
	"GET /api/v1/auth/sessions",
	"DELETE /api/v1/auth/sessions/{sid}",
	"POST /api/v1/auth/password",
	"GET /api/v1/users/me",
	"PATCH /api/v1/users/me",
	"DELETE /api/v1/users/me",
}

# Administration.
rest_admin_routes := {
	"GET /api/v1/users",
	"POST /api/v1/users/{id}/role",
	"POST /api/v1/teams",
}

# The audit log, read-only: auditors and admins.
rest_audit_routes := {
	"GET /api/v1/audit/events",
	"GET /api/v1/audit/decisions",
	"GET /api/v1/audit/verify",
}

decision := rest_signed_in(["audit", "admin"]) if {
	rest_call
	input.rpc in rest_audit_routes
}

# Wallets: any signed-in user; the wallet service checks that the caller
# owns the wallet (or is finance or audit, who may pass `?user=`).
rest_wallet_routes := {
	"GET /api/v1/wallet",
	"GET /api/v1/wallet/transactions",
}

decision := rest_signed_in([]) if {
	rest_call
	input.rpc in rest_wallet_routes
}

# Paying: every role that acts (not the read-only `audit`); the payment
# service applies the limits.
decision := rest_signed_in(["user", "manager", "admin", "finance"]) if {
	rest_call
	input.rpc == "POST /api/v1/payments"
}

# One payment: any signed-in user; the payment service lets only its payer,
# its receiver, finance and audit read it.
decision := rest_signed_in([]) if {
	rest_call
	input.rpc == "GET /api/v1/payments/{id}"
}

# Finance: every payment, and rollbacks.
rest_finance_routes := {
	"GET /api/v1/finance/transactions",
	"POST /api/v1/finance/transactions/{id}/rollback",
}

decision := rest_signed_in(["finance"]) if {
	rest_call
	input.rpc in rest_finance_routes
}

# Team membership: admins, and managers (the user service checks that a
# manager manages that team).
rest_team_routes := {"POST /api/v1/teams/{id}/members"}

rest_call if {
	input.peer.workload == "client"
	not data.trustmesh.lib.has_peer
}

decision := data.trustmesh.lib.allowed if {
	rest_call
	input.rpc in rest_public_routes
}

decision := rest_signed_in([]) if {
	rest_call
	input.rpc in rest_user_routes
}

decision := rest_signed_in(["admin"]) if {
	rest_call
	input.rpc in rest_admin_routes
}

decision := rest_signed_in(["admin", "manager"]) if {
	rest_call
	input.rpc in rest_team_routes
}

# An end user who passed MFA and holds one of `roles` (any role when empty).
rest_signed_in(roles) := data.trustmesh.lib.deny("subject_required") if {
	not data.trustmesh.lib.has_subject
} else := data.trustmesh.lib.deny("mfa_required") if {
	not data.trustmesh.lib.mfa_verified
} else := data.trustmesh.lib.deny("role_required") if {
	count(roles) > 0
	not data.trustmesh.lib.role in roles
} else := data.trustmesh.lib.allowed
