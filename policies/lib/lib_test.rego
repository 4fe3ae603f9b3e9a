package trustmesh.lib_test

import data.trustmesh.lib

gateway_peer := {"spiffe_id": "spiffe://trustmesh.local/svc/gateway", "workload": "gateway"}

user := {"sub": "u-1", "role": "user", "sid": "s-1", "mfa": false}

admin := {"sub": "u-2", "role": "admin", "sid": "s-2", "mfa": true}

test_allowed_decision if {
	lib.allowed == {"allow": true, "reason": "allowed"}
}

test_deny_decision if {
	lib.deny("role_required") == {"allow": false, "reason": "role_required"}
}

test_is_health_check if {
	lib.is_health_check with input as {"rpc": "/grpc.health.v1.Health/Check"}
}

test_is_not_health_check if {
	not lib.is_health_check with input as {"rpc": "/trustmesh.wallet.v1.Wallet/Transfer"}
	not lib.is_health_check with input as {"rpc": "/grpc.health.v1.HealthCheck/Check"}
	not lib.is_health_check with input as {}
}

test_has_peer if {
	lib.has_peer with input as {"peer": gateway_peer}
}

test_has_no_peer if {
	not lib.has_peer with input as {"peer": {"spiffe_id": null, "workload": null}}
	not lib.has_peer with input as {"peer": {"spiffe_id": "", "workload": null}}
	not lib.has_peer with input as {}
}

test_workload if {
	lib.workload == "gateway" with input as {"peer": gateway_peer}
}

test_workload_unknown if {
	not lib.workload with input as {"peer": {"spiffe_id": "spiffe://trustmesh.local/x", "workload": null}}
}

test_workload_in if {
	lib.workload_in({"gateway", "ops"}) with input as {"peer": gateway_peer}
	lib.workload_in(["ops", "gateway"]) with input as {"peer": gateway_peer}
	not lib.workload_in({"ops"}) with input as {"peer": gateway_peer}
	not lib.workload_in({"ops"}) with input as {"peer": {"spiffe_id": null, "workload": null}}
}

test_has_subject if {
	lib.has_subject with input as {"subject": user}
	not lib.has_subject with input as {"subject": null}
	not lib.has_subject with input as {}
}

test_role if {
	lib.role == "user" with input as {"subject": user}
	not lib.role with input as {"subject": null}
}

test_has_role if {
	lib.has_role("admin") with input as {"subject": admin}
	not lib.has_role("admin") with input as {"subject": user}
	not lib.has_role("admin") with input as {"subject": null}
}

test_has_any_role if {
	lib.has_any_role({"finance", "admin"}) with input as {"subject": admin}
	not lib.has_any_role({"finance", "audit"}) with input as {"subject": admin}
}

test_is_admin if {
	lib.is_admin with input as {"subject": admin}
	not lib.is_admin with input as {"subject": user}
}

test_mfa_verified if {
	lib.mfa_verified with input as {"subject": admin}
	not lib.mfa_verified with input as {"subject": user}
	not lib.mfa_verified with input as {"subject": null}
}

test_is_owner if {
	lib.is_owner("u-1") with input as {"subject": user}
	not lib.is_owner("u-2") with input as {"subject": user}
	not lib.is_owner("u-1") with input as {"subject": null}
}

test_workloads_data_keyed_by_path if {
	data.workloads["/svc/gateway"] == "gateway"
	data.workloads["/ops/cli"] == "ops"
}
