# Policy of the auth service (trustmesh.auth.v1.Auth).
package trustmesh.auth

default decision := {"allow": false, "reason": "unknown_method"}

decision := data.trustmesh.lib.allowed if {
	data.trustmesh.lib.is_health_check
	data.trustmesh.lib.has_peer
}

# Before a session exists: only the gateway, on behalf of anonymous clients.
decision := data.trustmesh.lib.from_workload("gateway") if {
	input.rpc in {
		"/trustmesh.auth.v1.Auth/Register",
		"/trustmesh.auth.v1.Auth/ConfirmRegistration",
		"/trustmesh.auth.v1.Auth/Login",
		"/trustmesh.auth.v1.Auth/LoginMfa",
		"/trustmesh.auth.v1.Auth/Refresh",
	}
}

# A signed-in user's own sessions and password.
decision := data.trustmesh.lib.via_gateway([]) if {
	input.rpc in {
		"/trustmesh.auth.v1.Auth/Logout",
		"/trustmesh.auth.v1.Auth/ListSessions",
		"/trustmesh.auth.v1.Auth/RevokeSession",
		"/trustmesh.auth.v1.Auth/ChangePassword",
	}
}

# Token verification material: every workload of the mesh verifies tokens.
decision := data.trustmesh.lib.from_any_workload if {
	input.rpc in {"/trustmesh.auth.v1.Auth/GetJwks", "/trustmesh.auth.v1.Auth/CheckSession"}
}

# Password re-verification, email change, account deletion and ending a
# user's sessions when their role changes: the user service only.
decision := data.trustmesh.lib.from_workload("user") if {
	input.rpc in {
		"/trustmesh.auth.v1.Auth/VerifyPassword",
		"/trustmesh.auth.v1.Auth/DeleteAccount",
		"/trustmesh.auth.v1.Auth/ChangeEmail",
		"/trustmesh.auth.v1.Auth/RevokeUserSessions",
	}
}
