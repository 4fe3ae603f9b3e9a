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
