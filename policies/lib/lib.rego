# Shared helpers for every service package (`import data.trustmesh.lib`).
#
# Every helper reads the input document described in policies/README.md.
package trustmesh.lib

# The gRPC health service (`grpc.health.v1.Health`), served by every process.
health_prefix := "/grpc.health.v1.Health/"

# The decision every package returns on success.
allowed := {"allow": true, "reason": "allowed"}

# A deny decision with a stable reason code.
deny(reason) := {"allow": false, "reason": reason}

# True for a call to the standard gRPC health service.
is_health_check if startswith(input.rpc, health_prefix)

# True when the transport authenticated the peer (mTLS with an SVID of the
# local trust domain: the runtime only admits peers of the trust domain).
has_peer if {
	is_string(input.peer.spiffe_id)
	input.peer.spiffe_id != ""
}

# The caller's logical workload name (`gateway`, `ops`, ...), from data.workloads.
workload := input.peer.workload if is_string(input.peer.workload)

# True when the calling workload is one of `names` (a set or an array).
workload_in(names) if workload in names

# True when the call carries a verified end-user subject.
has_subject if is_object(input.subject)

# The end user's role, when there is a subject.
role := input.subject.role if has_subject

# True when the end user has exactly role `r`.
has_role(r) if role == r

# True when the end user has one of `roles` (a set or an array).
has_any_role(roles) if role in roles

# True when the end user is an administrator.
is_admin if has_role("admin")

# True when the end user completed multi-factor authentication.
mfa_verified if input.subject.mfa == true

# True when the end user is `owner` (a user id, compared with `sub`).
is_owner(owner) if {
	has_subject
	input.subject.sub == owner
}

# A call the gateway makes on behalf of a signed-in end user (MFA done), who
# must hold one of `roles` (any role when `roles` is empty). Reasons, in the
# order checked: workload_not_allowed, subject_required, mfa_required,
# role_required.
via_gateway(roles) := deny("workload_not_allowed") if {
	not workload == "gateway"
} else := deny("subject_required") if {
	not has_subject
} else := deny("mfa_required") if {
	not mfa_verified
} else := deny("role_required") if {
	count(roles) > 0
	not role in roles
} else := allowed

# A call only the workload `name` may make (no end user involved).
from_workload(name) := allowed if {
	workload == name
} else := deny("workload_not_allowed")

# A call any workload of the mesh may make (one listed in data.workloads).
from_any_workload := allowed if {
	is_string(workload)
} else := deny("workload_not_allowed")
