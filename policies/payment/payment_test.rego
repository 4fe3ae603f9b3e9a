package trustmesh.payment_test

import data.trustmesh.payment

gateway := {"spiffe_id": "spiffe://trustmesh.local/svc/gateway", "workload": "gateway"}

wallet_peer := {"spiffe_id": "spiffe://trustmesh.local/svc/wallet", "workload": "wallet"}

no_peer := {"spiffe_id": null, "workload": null}

alice := "0190d5c2-0000-7000-8000-000000000001"

bob := "0190d5c2-0000-7000-8000-000000000002"

carol := "0190d5c2-0000-7000-8000-000000000003"

limits := {
	"payment": {"max_amount": {"default": 1000, "USD": 500}, "daily_volume": {"default": 3000}},
	"rollback": {"max_amount": {"default": 800}, "window_seconds": 86400},
}

subject(sub, role) := {"sub": sub, "role": role, "sid": "s1", "mfa": true}

call(method, peer, subj, request) := {
	"service": "payment",
	"method": method,
	"rpc": concat("", ["/trustmesh.payment.v1.Payment/", method]),
	"peer": peer,
	"subject": subj,
	"request": request,
	"context": {"time": "2026-01-01T00:00:00Z", "client_ip": null, "user_agent": null, "request_id": "t"},
}

deny(reason) := {"allow": false, "reason": reason}

allowed := {"allow": true, "reason": "allowed"}

pay(amount, currency) := {"receiver_id": bob, "amount": amount, "currency": currency, "idempotency_key": "k1"}

with_volume(request, volume) := object.union(request, {"payer_volume_24h": volume})

# Health and unknown methods

test_health_with_a_peer if {
	h := object.union(call("Check", gateway, null, {}), {"rpc": "/grpc.health.v1.Health/Check"})
	payment.decision.allow with input as h
}

test_health_without_a_peer_is_denied if {
	h := object.union(call("Check", no_peer, null, {}), {"rpc": "/grpc.health.v1.Health/Check"})
	payment.decision == deny("unknown_method") with input as h
}

test_unknown_method_is_denied if {
	payment.decision == deny("unknown_method") with input as call("Refund", gateway, subject(alice, "finance"), {})
}

# CreatePayment

test_payer_roles_may_pay if {
	every role in ["user", "manager", "admin", "finance"] {
		payment.decision == allowed with input as call("CreatePayment", gateway, subject(alice, role), pay(100, "EUR"))
			with data.limits as limits
	}
}

test_audit_role_may_not_pay if {
	d := payment.decision with input as call("CreatePayment", gateway, subject(alice, "audit"), pay(100, "EUR"))
		with data.limits as limits
	d == deny("role_required")
}

test_payment_needs_the_gateway if {
	d := payment.decision with input as call("CreatePayment", wallet_peer, subject(alice, "user"), pay(100, "EUR"))
		with data.limits as limits
	d == deny("workload_not_allowed")
}

test_payment_needs_a_subject if {
	d := payment.decision with input as call("CreatePayment", gateway, null, pay(100, "EUR"))
		with data.limits as limits
	d == deny("subject_required")
}

test_payment_needs_mfa if {
	s := {"sub": alice, "role": "user", "sid": "s1", "mfa": false}
	d := payment.decision with input as call("CreatePayment", gateway, s, pay(100, "EUR"))
		with data.limits as limits
	d == deny("mfa_required")
}

test_per_payment_maximum_default_currency if {
	payment.decision == allowed with input as call("CreatePayment", gateway, subject(alice, "user"), pay(1000, "EUR"))
		with data.limits as limits
	d := payment.decision with input as call("CreatePayment", gateway, subject(alice, "user"), pay(1001, "EUR"))
		with data.limits as limits
	d == deny("limit_exceeded")
}

test_per_payment_maximum_own_currency if {
	payment.decision == allowed with input as call("CreatePayment", gateway, subject(alice, "user"), pay(500, "USD"))
		with data.limits as limits
	d := payment.decision with input as call("CreatePayment", gateway, subject(alice, "user"), pay(501, "USD"))
		with data.limits as limits
	d == deny("limit_exceeded")
}

test_daily_volume if {
	ok := with_volume(pay(1000, "EUR"), 2000)
	payment.decision == allowed with input as call("CreatePayment", gateway, subject(alice, "user"), ok)
		with data.limits as limits
	over := with_volume(pay(1000, "EUR"), 2001)
	d := payment.decision with input as call("CreatePayment", gateway, subject(alice, "user"), over)
		with data.limits as limits
	d == deny("daily_limit_exceeded")
}

test_missing_limits_fail_closed if {
	d := payment.decision with input as call("CreatePayment", gateway, subject(alice, "user"), pay(1, "EUR"))
		with data.limits as {}
	d == deny("limit_exceeded")
	d2 := payment.decision with input as call("CreatePayment", gateway, subject(alice, "user"), pay(1, "EUR"))
		with data.limits as {"payment": {"max_amount": {"default": 10}, "daily_volume": {"default": "many"}}}
	d2 == deny("daily_limit_exceeded")
}

test_non_numeric_amount_is_refused if {
	d := payment.decision with input as call("CreatePayment", gateway, subject(alice, "user"), pay("1", "EUR"))
		with data.limits as limits
	d == deny("limit_exceeded")
}

test_shipped_limits_are_numbers if {
	is_number(data.limits.payment.max_amount["default"])
	is_number(data.limits.payment.daily_volume["default"])
	is_number(data.limits.rollback.max_amount["default"])
	is_number(data.limits.rollback.window_seconds)
}

# GetPayment

parties := {"payment_id": "p1", "payer_id": alice, "receiver_id": bob}

test_layer_pass_lets_signed_in_users_through if {
	payment.decision == allowed with input as call("GetPayment", gateway, subject(carol, "user"), {"payment_id": "p1"})
}

test_payer_and_receiver_read_the_payment if {
	payment.decision == allowed with input as call("GetPayment", gateway, subject(alice, "user"), parties)
	payment.decision == allowed with input as call("GetPayment", gateway, subject(bob, "user"), parties)
}

test_others_may_not_read_the_payment if {
	every role in ["user", "manager", "admin"] {
		d := payment.decision with input as call("GetPayment", gateway, subject(carol, role), parties)
		d == deny("not_party")
	}
}

test_finance_and_audit_read_any_payment if {
	every role in ["finance", "audit"] {
		payment.decision == allowed with input as call("GetPayment", gateway, subject(carol, role), parties)
	}
}

test_get_payment_needs_the_gateway if {
	d := payment.decision with input as call("GetPayment", wallet_peer, subject(alice, "user"), parties)
	d == deny("workload_not_allowed")
}

# ListTransactions

test_finance_lists_transactions if {
	payment.decision == allowed with input as call("ListTransactions", gateway, subject(carol, "finance"), {})
}

test_others_may_not_list_transactions if {
	every role in ["user", "manager", "admin", "audit"] {
		d := payment.decision with input as call("ListTransactions", gateway, subject(carol, role), {})
		d == deny("role_required")
	}
}

# Rollback

facts(amount, age) := {
	"payment_id": "p1", "reason": "fraud", "payment_amount": amount,
	"payment_currency": "EUR", "payment_age_seconds": age,
}

test_layer_pass_checks_the_role_only if {
	payment.decision == allowed with input as call("Rollback", gateway, subject(carol, "finance"), {"payment_id": "p1", "reason": "x"})
		with data.limits as limits
}

test_finance_rolls_back_within_window_and_maximum if {
	payment.decision == allowed with input as call("Rollback", gateway, subject(carol, "finance"), facts(800, 86400))
		with data.limits as limits
}

test_rollback_after_the_window_is_refused if {
	d := payment.decision with input as call("Rollback", gateway, subject(carol, "finance"), facts(100, 86401))
		with data.limits as limits
	d == deny("rollback_window_expired")
}

test_rollback_above_the_maximum_is_refused if {
	d := payment.decision with input as call("Rollback", gateway, subject(carol, "finance"), facts(801, 10))
		with data.limits as limits
	d == deny("rollback_limit_exceeded")
}

test_rollback_without_limits_fails_closed if {
	d := payment.decision with input as call("Rollback", gateway, subject(carol, "finance"), facts(1, 10))
		with data.limits as {}
	d == deny("rollback_window_expired")
}

test_only_finance_rolls_back if {
	every role in ["user", "manager", "admin", "audit"] {
		d := payment.decision with input as call("Rollback", gateway, subject(carol, role), facts(1, 1))
			with data.limits as limits
		d == deny("role_required")
	}
}

test_rollback_needs_the_gateway if {
	d := payment.decision with input as call("Rollback", wallet_peer, subject(carol, "finance"), facts(1, 1))
		with data.limits as limits
	d == deny("workload_not_allowed")
}
