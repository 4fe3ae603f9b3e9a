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
