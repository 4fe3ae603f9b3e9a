# Policy of the audit service (trustmesh.audit.v1.Audit): the log of every
# sensitive action.
#
# Any workload of the mesh appends, but only events it produced itself:
# every event's `service` must be the caller's workload name, so a
# compromised service cannot write events in another's name. Reading is for
# people with the `audit` or `admin` role, through the gateway; nobody
# changes or deletes events through the API.
package trustmesh.audit

default decision := {"allow": false, "reason": "unknown_method"}

decision := data.trustmesh.lib.allowed if {
	data.trustmesh.lib.is_health_check
	data.trustmesh.lib.has_peer
}

decision := data.trustmesh.lib.deny("workload_not_allowed") if {
	input.rpc == "/trustmesh.audit.v1.Audit/Append"
	not is_string(data.trustmesh.lib.workload)
}

decision := data.trustmesh.lib.deny("event_service_mismatch") if {
	input.rpc == "/trustmesh.audit.v1.Audit/Append"
	is_string(data.trustmesh.lib.workload)
	some event in input.request.events
	event.service != data.trustmesh.lib.workload
}

decision := data.trustmesh.lib.allowed if {
	input.rpc == "/trustmesh.audit.v1.Audit/Append"
	is_string(data.trustmesh.lib.workload)
	every event in input.request.events {
		event.service == data.trustmesh.lib.workload
	}
}

decision := data.trustmesh.lib.via_gateway(["audit", "admin"]) if {
	input.rpc in {
		"/trustmesh.audit.v1.Audit/ListEvents",
		"/trustmesh.audit.v1.Audit/ListDecisions",
		"/trustmesh.audit.v1.Audit/Verify",
	}
}
