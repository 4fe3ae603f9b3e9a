# Policy of the user service (trustmesh.user.v1.User): profiles, roles, teams.
#
# Profiles are self-service: GetMe/UpdateMe/DeleteMe act on the caller's own
# account (the subject), so a user can only read and change their own.
package trustmesh.user

default decision := {"allow": false, "reason": "unknown_method"}

decision := data.trustmesh.lib.allowed if {
	data.trustmesh.lib.is_health_check
	data.trustmesh.lib.has_peer
}

decision := data.trustmesh.lib.via_gateway([]) if {
	input.rpc in {
		"/trustmesh.user.v1.User/GetMe",
		"/trustmesh.user.v1.User/UpdateMe",
		"/trustmesh.user.v1.User/DeleteMe",
	}
}

decision := data.trustmesh.lib.via_gateway(["admin"]) if {
	input.rpc in {"/trustmesh.user.v1.User/ListUsers", "/trustmesh.user.v1.User/CreateTeam"}
}

# Managers add members to their own team (the service checks the team).
decision := data.trustmesh.lib.via_gateway(["admin", "manager"]) if {
	input.rpc == "/trustmesh.user.v1.User/AddTeamMember"
}

# Role changes: an admin through the gateway, or the operator's `ops`
# workload (`trustmesh user grant-role`, the first admin).
decision := data.trustmesh.lib.allowed if {
	input.rpc == "/trustmesh.user.v1.User/SetRole"
	data.trustmesh.lib.workload == "ops"
}

decision := data.trustmesh.lib.via_gateway(["admin"]) if {
	input.rpc == "/trustmesh.user.v1.User/SetRole"
	not data.trustmesh.lib.workload == "ops"
}

decision := data.trustmesh.lib.from_workload("auth") if {
	input.rpc == "/trustmesh.user.v1.User/EnsureProfile"
}

# A user's role: auth asks at login, payment to learn that a payment's
# receiver is a user (it never pays a wallet nobody owns).
decision := role_reader if {
	input.rpc == "/trustmesh.user.v1.User/GetRole"
}

role_reader := data.trustmesh.lib.allowed if {
	data.trustmesh.lib.workload in {"auth", "payment"}
} else := data.trustmesh.lib.deny("workload_not_allowed")
