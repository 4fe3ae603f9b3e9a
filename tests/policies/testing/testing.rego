# Policy of the end-to-end test service `trustmesh.testing.v1.Echo`.
package trustmesh.testing

default allow := false

allow if data.trustmesh.lib.is_health_check

# Only the gateway workload may call Say, and never with the word "forbidden"
# (a rule on a request field, to prove the layer decodes requests).
allow if {
	input.rpc == "/trustmesh.testing.v1.Echo/Say"
	input.peer.workload == "gateway"
	input.request.message != "forbidden"
}

reason := "allowed" if allow

else := "unknown_method" if not startswith(input.rpc, "/trustmesh.testing.v1.Echo/")

else := "message_forbidden" if input.request.message == "forbidden"

else := "workload_not_allowed"

decision := {"allow": allow, "reason": reason}
