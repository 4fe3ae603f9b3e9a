package trustmesh.wallet_test

import data.trustmesh.wallet

gateway := {"spiffe_id": "spiffe://trustmesh.local/svc/gateway", "workload": "gateway"}

payment := {"spiffe_id": "spiffe://trustmesh.local/svc/payment", "workload": "payment"}

user_svc := {"spiffe_id": "spiffe://trustmesh.local/svc/user", "workload": "user"}

listed_agent := {"spiffe_id": "spiffe://trustmesh.local/agent/acme", "workload": null}

unlisted_agent := {"spiffe_id": "spiffe://trustmesh.local/agent/mallory", "workload": null}

no_peer := {"spiffe_id": null, "workload": null}

agents := {"/agent/acme": {"max_deposit": 1000, "daily_limit": 5000, "currencies": ["EUR", "USD"]}}

alice := "0190d5c2-0000-7000-8000-000000000001"

bob := "0190d5c2-0000-7000-8000-000000000002"

subject(sub, role) := {"sub": sub, "role": role, "sid": "s1", "mfa": true}

call(method, peer, subj, request) := {
	"service": "wallet",
	"method": method,
	"rpc": concat("", ["/trustmesh.wallet.v1.Wallet/", method]),
	"peer": peer,
	"subject": subj,
	"request": request,
	"context": {"time": "2026-01-01T00:00:00Z", "client_ip": null, "user_agent": null, "request_id": "t"},
}

deny(reason) := {"allow": false, "reason": reason}

deposit_of(amount, currency) := {"to_user_id": alice, "amount": amount, "currency": currency, "reference": "ext-1"}

with_volume(request, volume) := object.union(request, {"agent_volume_24h": volume})

# Health

test_health_with_a_peer if {
	h := object.union(call("Check", payment, null, {}), {"rpc": "/grpc.health.v1.Health/Check"})
	wallet.decision.allow with input as h
}

test_health_without_a_peer_is_denied if {
	h := object.union(call("Check", no_peer, null, {}), {"rpc": "/grpc.health.v1.Health/Check"})
	wallet.decision == deny("unknown_method") with input as h
}

test_unknown_method_is_denied if {
	wallet.decision == deny("unknown_method") with input as call("Mint", payment, null, {})
}

# Reading wallets

test_owner_reads_own_balance if {
	wallet.decision.allow with input as call("GetBalance", gateway, subject(alice, "user"), {"user_id": alice})
}

test_owner_lists_own_transactions if {
	req := {"user_id": alice, "page_size": 10, "page_token": ""}
	wallet.decision.allow with input as call("ListTransactions", gateway, subject(alice, "user"), req)
}

test_user_cannot_read_another_wallet if {
	wallet.decision == deny("not_owner") with input as call("GetBalance", gateway, subject(alice, "user"), {"user_id": bob})
	req := {"user_id": bob, "page_size": 10, "page_token": ""}
	wallet.decision == deny("not_owner") with input as call("ListTransactions", gateway, subject(alice, "user"), req)
}

test_admin_is_not_a_wallet_reader if {
	wallet.decision == deny("not_owner") with input as call("GetBalance", gateway, subject(alice, "admin"), {"user_id": bob})
}

test_finance_reads_any_wallet if {
	wallet.decision.allow with input as call("GetBalance", gateway, subject(alice, "finance"), {"user_id": bob})
}

test_audit_lists_any_wallet if {
	req := {"user_id": bob, "page_size": 10, "page_token": ""}
	wallet.decision.allow with input as call("ListTransactions", gateway, subject(alice, "audit"), req)
}

test_reading_needs_a_subject if {
	wallet.decision == deny("subject_required") with input as call("GetBalance", gateway, null, {"user_id": alice})
}

test_reading_needs_mfa if {
	no_mfa := object.union(subject(alice, "user"), {"mfa": false})
	wallet.decision == deny("mfa_required") with input as call("GetBalance", gateway, no_mfa, {"user_id": alice})
}

test_reading_only_through_the_gateway if {
	wallet.decision == deny("workload_not_allowed") with input as call("GetBalance", payment, subject(alice, "user"), {"user_id": alice})
	wallet.decision == deny("workload_not_allowed") with input as call("ListTransactions", user_svc, subject(alice, "finance"), {"user_id": alice})
}

test_empty_user_id_is_not_owned if {
	wallet.decision == deny("not_owner") with input as call("GetBalance", gateway, subject(alice, "user"), {"user_id": ""})
}

# Transfers

transfer_req := {"transfer_id": "t1", "from_user_id": alice, "to_user_id": bob, "amount": 100, "currency": "EUR", "kind": "payment", "reference": "p1", "outgoing_limit_24h": 0}

test_payment_transfers if {
	wallet.decision.allow with input as call("Transfer", payment, null, transfer_req)
}

test_gateway_cannot_transfer if {
	wallet.decision == deny("workload_not_allowed") with input as call("Transfer", gateway, subject(alice, "admin"), transfer_req)
}

test_other_workloads_cannot_transfer if {
	wallet.decision == deny("workload_not_allowed") with input as call("Transfer", user_svc, null, transfer_req)
}

test_agents_cannot_transfer if {
	wallet.decision == deny("workload_not_allowed") with input as call("Transfer", listed_agent, null, transfer_req) with data.agents as agents
}

test_transfer_needs_a_peer if {
	wallet.decision == deny("workload_not_allowed") with input as call("Transfer", no_peer, null, transfer_req)
}

test_payment_reads_outgoing_volume if {
	wallet.decision.allow with input as call("GetOutgoingVolume", payment, null, {"user_id": alice, "currency": "EUR"})
}

test_gateway_cannot_read_outgoing_volume if {
	wallet.decision == deny("workload_not_allowed") with input as call("GetOutgoingVolume", gateway, subject(alice, "finance"), {"user_id": alice, "currency": "EUR"})
}

# Deposits

test_listed_agent_deposits if {
	wallet.decision.allow with input as call("Deposit", listed_agent, null, deposit_of(1000, "EUR")) with data.agents as agents
}

test_agents_are_keyed_by_path_not_trust_domain if {
	# Keyed by path: the same agent path under another trust domain name
	# resolves the same way (the transport admits only the local domain).
	other := {"spiffe_id": "spiffe://example.org/agent/acme", "workload": null}
	wallet.decision.allow with input as call("Deposit", other, null, deposit_of(1, "USD")) with data.agents as agents
}

test_unlisted_agent_cannot_deposit if {
	wallet.decision == deny("agent_not_allowed") with input as call("Deposit", unlisted_agent, null, deposit_of(1, "EUR")) with data.agents as agents
}

test_service_svid_cannot_deposit if {
	wallet.decision == deny("agent_not_allowed") with input as call("Deposit", payment, null, deposit_of(1, "EUR")) with data.agents as agents
	wallet.decision == deny("agent_not_allowed") with input as call("Deposit", gateway, subject(alice, "admin"), deposit_of(1, "EUR")) with data.agents as agents
}

test_deposit_needs_a_peer if {
	wallet.decision == deny("peer_unauthenticated") with input as call("Deposit", no_peer, null, deposit_of(1, "EUR")) with data.agents as agents
}

test_agent_prefix_is_not_enough if {
	# `/agent/acme/extra` is another identity than `/agent/acme`.
	longer := {"spiffe_id": "spiffe://trustmesh.local/agent/acme/extra", "workload": null}
	wallet.decision == deny("agent_not_allowed") with input as call("Deposit", longer, null, deposit_of(1, "EUR")) with data.agents as agents
}

test_deposit_in_unlisted_currency_is_denied if {
	wallet.decision == deny("currency_not_allowed") with input as call("Deposit", listed_agent, null, deposit_of(1, "GBP")) with data.agents as agents
}

test_deposit_above_max_is_denied if {
	wallet.decision == deny("limit_exceeded") with input as call("Deposit", listed_agent, null, deposit_of(1001, "EUR")) with data.agents as agents
}

test_deposit_within_daily_limit if {
	req := with_volume(deposit_of(1000, "EUR"), 4000)
	wallet.decision.allow with input as call("Deposit", listed_agent, null, req) with data.agents as agents
}

test_deposit_over_daily_limit_is_denied if {
	req := with_volume(deposit_of(1000, "EUR"), 4001)
	wallet.decision == deny("daily_limit_exceeded") with input as call("Deposit", listed_agent, null, req) with data.agents as agents
}

test_daily_limit_alone_refuses_in_the_layer_pass if {
	# Without a volume (the policy layer's pass) a deposit above the daily
	# limit itself is still refused.
	small_daily := {"/agent/acme": {"max_deposit": 1000, "daily_limit": 500, "currencies": ["EUR"]}}
	wallet.decision == deny("daily_limit_exceeded") with input as call("Deposit", listed_agent, null, deposit_of(600, "EUR")) with data.agents as small_daily
}

test_agent_without_limits_fails_closed if {
	broken := {"/agent/acme": {"currencies": ["EUR"]}}
	wallet.decision == deny("limit_exceeded") with input as call("Deposit", listed_agent, null, deposit_of(1, "EUR")) with data.agents as broken
	no_daily := {"/agent/acme": {"max_deposit": 10, "currencies": ["EUR"]}}
	wallet.decision == deny("daily_limit_exceeded") with input as call("Deposit", listed_agent, null, deposit_of(1, "EUR")) with data.agents as no_daily
}

test_agent_without_currencies_fails_closed if {
	broken := {"/agent/acme": {"max_deposit": 10, "daily_limit": 10}}
	wallet.decision == deny("currency_not_allowed") with input as call("Deposit", listed_agent, null, deposit_of(1, "EUR")) with data.agents as broken
}

# No agent ships in the default data: an operator lists each one.
test_no_agent_is_listed_by_default if {
	count(data.agents) == 0
	some_agent := {"spiffe_id": "spiffe://trustmesh.local/agent/test-agent", "workload": null}
	wallet.decision == deny("agent_not_allowed") with input as call("Deposit", some_agent, null, deposit_of(1, "EUR"))
}
