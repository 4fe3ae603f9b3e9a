# Policy of the wallet service (trustmesh.wallet.v1.Wallet): the ledger.
#
# - GetBalance, ListTransactions: through the gateway for a signed-in user
#   (MFA done) who owns the wallet (`subject.sub == request.user_id`), or who
#   holds the `finance` or `audit` role. Otherwise `not_owner`.
# - Transfer, GetOutgoingVolume: only the `payment` workload (no user token,
#   no other workload, not even the gateway).
# - Deposit: only an agent listed in `data.agents`, in one of its currencies,
#   within its per-deposit maximum and its daily limit.
#
# `data.agents` is keyed by the agent's SPIFFE ID *path* (like
# `data.workloads`, so the data does not depend on the trust domain):
#
#     "agents": {
#       "/agent/acme-bank": {
#         "max_deposit": 1000000,      minor units, largest single deposit
#         "daily_limit": 5000000,      minor units, per currency, rolling 24 h
#         "currencies": ["EUR", "USD"] what the agent may deposit
#       }
#     }
#
# A missing or non-numeric limit refuses every deposit of that agent (fail
# closed). The daily limit needs the agent's deposits of the last 24 h, which
# the policy layer does not know: the layer evaluates Deposit with no volume
# (only a single deposit above the daily limit is refused then), and the
# wallet's handler evaluates it again inside the posting's transaction with
# `request.agent_volume_24h` (minor units, this currency, excluding this
# deposit). That field is not in the proto, so a caller cannot set it.
#
# Reason codes: allowed, unknown_method, peer_unauthenticated,
# workload_not_allowed, subject_required, mfa_required, not_owner,
# agent_not_allowed, currency_not_allowed, limit_exceeded (above
# max_deposit), daily_limit_exceeded.
package trustmesh.wallet

default decision := {"allow": false, "reason": "unknown_method"}

decision := data.trustmesh.lib.allowed if {
	data.trustmesh.lib.is_health_check
	data.trustmesh.lib.has_peer
}

decision := read if {
	input.rpc in {
		"/trustmesh.wallet.v1.Wallet/GetBalance",
		"/trustmesh.wallet.v1.Wallet/ListTransactions",
	}
}

decision := data.trustmesh.lib.from_workload("payment") if {
	input.rpc in {
		"/trustmesh.wallet.v1.Wallet/Transfer",
		"/trustmesh.wallet.v1.Wallet/GetOutgoingVolume",
	}
}

decision := deposit if input.rpc == "/trustmesh.wallet.v1.Wallet/Deposit"

# Roles that may read any wallet.
readers := {"finance", "audit"}

# Reading a wallet: the gateway's checks first, then ownership or role.
read := gate if {
	gate := data.trustmesh.lib.via_gateway([])
	gate.allow == false
} else := data.trustmesh.lib.allowed if {
	data.trustmesh.lib.is_owner(input.request.user_id)
} else := data.trustmesh.lib.allowed if {
	data.trustmesh.lib.has_any_role(readers)
} else := data.trustmesh.lib.deny("not_owner")

# The path of the caller's SPIFFE ID (`spiffe://td/agent/x` → `/agent/x`).
peer_path := path if {
	is_string(input.peer.spiffe_id)
	startswith(input.peer.spiffe_id, "spiffe://")
	rest := substring(input.peer.spiffe_id, 9, count(input.peer.spiffe_id) - 9)
	slash := indexof(rest, "/")
	slash > 0
	path := substring(rest, slash, count(rest) - slash)
}

# The calling agent's entry in data.agents (undefined if not listed).
agent := data.agents[peer_path]

# The agent's deposits of the last 24 h (0 in the policy layer's pass).
agent_volume := object.get(input.request, "agent_volume_24h", 0)

deposit := data.trustmesh.lib.deny("peer_unauthenticated") if {
	not data.trustmesh.lib.has_peer
} else := data.trustmesh.lib.deny("agent_not_allowed") if {
	not is_object(agent)
} else := data.trustmesh.lib.deny("currency_not_allowed") if {
	not input.request.currency in agent.currencies
} else := data.trustmesh.lib.deny("limit_exceeded") if {
	not input.request.amount <= agent.max_deposit
} else := data.trustmesh.lib.deny("daily_limit_exceeded") if {
	not agent_volume + input.request.amount <= agent.daily_limit
} else := data.trustmesh.lib.allowed
