# Policy of the payment service (trustmesh.payment.v1.Payment).
#
# Every method is called by the gateway on behalf of a signed-in end user who
# completed MFA (data.trustmesh.lib.via_gateway); then:
#
# - CreatePayment: the payer's role is one of `payer_roles` (user, manager,
#   admin, finance: everyone who owns a wallet and acts; `audit` is a
#   read-only role and may not move money). The amount is at most the
#   per-payment maximum of its currency (`limit_exceeded`), and the payer's
#   outgoing volume of the last 24 h in that currency plus the amount is at
#   most the daily volume (`daily_limit_exceeded`).
# - GetPayment: the payer or the receiver of the payment, or the finance and
#   audit roles (`not_party`).
# - ListTransactions: finance only (`role_required`).
# - Rollback: finance only, within the rollback window after the payment
#   (`rollback_window_expired`) and up to the rollback maximum of its
#   currency (`rollback_limit_exceeded`).
#
# Facts the policy layer cannot know are added by the service's handler in a
# second evaluation (they are not proto fields, so no caller can set them):
#
# - CreatePayment: `request.payer_volume_24h` (minor units, this currency,
#   the payer's pending, completed and rolled back payments of the last 24 h).
#   The layer's pass has no volume (0), so only the per-payment maximum and a
#   single payment above the daily volume are refused there.
# - GetPayment: `request.payer_id` and `request.receiver_id` of the loaded
#   payment. Without them (the layer's pass) any signed-in user passes; the
#   handler always decides again with them.
# - Rollback: `request.payment_amount`, `request.payment_currency` and
#   `request.payment_age_seconds` of the loaded payment (the layer's pass
#   checks the role only).
#
# Limits, in minor units, from data.limits (per currency, "default" for the
# others):
#
#     "limits": {
#       "payment": {"max_amount": {"default": 1000000, "EUR": 500000},
#                   "daily_volume": {"default": 5000000}},
#       "rollback": {"max_amount": {"default": 1000000},
#                    "window_seconds": 86400}
#     }
#
# A missing or non-numeric limit refuses (fail closed). The daily volume is
# also given to wallet.Transfer as `outgoing_limit_24h`, which enforces it
# atomically with the debit.
#
# Reason codes: allowed, unknown_method, workload_not_allowed,
# subject_required, mfa_required, role_required, limit_exceeded,
# daily_limit_exceeded, not_party, rollback_window_expired,
# rollback_limit_exceeded.
package trustmesh.payment

default decision := {"allow": false, "reason": "unknown_method"}

decision := data.trustmesh.lib.allowed if {
	data.trustmesh.lib.is_health_check
	data.trustmesh.lib.has_peer
}

decision := create if input.rpc == "/trustmesh.payment.v1.Payment/CreatePayment"

decision := get if input.rpc == "/trustmesh.payment.v1.Payment/GetPayment"

decision := data.trustmesh.lib.via_gateway(finance_roles) if {
	input.rpc == "/trustmesh.payment.v1.Payment/ListTransactions"
}

decision := rollback if input.rpc == "/trustmesh.payment.v1.Payment/Rollback"

# Roles that may pay: everyone who acts, not the read-only `audit` role.
payer_roles := {"user", "manager", "admin", "finance"}

# Roles that may read any payment.
reader_roles := {"finance", "audit"}

# Roles that may list all payments and roll them back.
finance_roles := {"finance"}

# The limit of `currency` in `table` (its own entry, else "default").
limit_for(table, currency) := object.get(table, currency, object.get(table, "default", null))

payment_limits := object.get(data.limits, "payment", {})

rollback_limits := object.get(data.limits, "rollback", {})

max_amount := limit_for(object.get(payment_limits, "max_amount", {}), input.request.currency)

daily_volume := limit_for(object.get(payment_limits, "daily_volume", {}), input.request.currency)

# The payer's volume of the last 24 h (0 in the policy layer's pass).
payer_volume := object.get(input.request, "payer_volume_24h", 0)

within(amount, limit) if {
	is_number(amount)
	is_number(limit)
	amount <= limit
}

create := gate if {
	gate := data.trustmesh.lib.via_gateway(payer_roles)
	gate.allow == false
} else := data.trustmesh.lib.deny("limit_exceeded") if {
	not within(input.request.amount, max_amount)
} else := data.trustmesh.lib.deny("daily_limit_exceeded") if {
	not within(payer_volume + input.request.amount, daily_volume)
} else := data.trustmesh.lib.allowed

# The handler's pass carries the parties of the loaded payment.
has_parties if {
	is_string(input.request.payer_id)
	is_string(input.request.receiver_id)
}

get := gate if {
	gate := data.trustmesh.lib.via_gateway([])
	gate.allow == false
} else := data.trustmesh.lib.allowed if {
	data.trustmesh.lib.has_any_role(reader_roles)
} else := data.trustmesh.lib.allowed if {
	not has_parties
} else := data.trustmesh.lib.allowed if {
	data.trustmesh.lib.is_owner(input.request.payer_id)
} else := data.trustmesh.lib.allowed if {
	data.trustmesh.lib.is_owner(input.request.receiver_id)
} else := data.trustmesh.lib.deny("not_party")

# The handler's pass carries the facts of the loaded payment.
has_payment_facts if {
	is_number(input.request.payment_amount)
	is_string(input.request.payment_currency)
	is_number(input.request.payment_age_seconds)
}

rollback_max := limit_for(object.get(rollback_limits, "max_amount", {}), input.request.payment_currency)

rollback := gate if {
	gate := data.trustmesh.lib.via_gateway(finance_roles)
	gate.allow == false
} else := data.trustmesh.lib.allowed if {
	not has_payment_facts
} else := data.trustmesh.lib.deny("rollback_window_expired") if {
	not within(input.request.payment_age_seconds, object.get(rollback_limits, "window_seconds", null))
} else := data.trustmesh.lib.deny("rollback_limit_exceeded") if {
	not within(input.request.payment_amount, rollback_max)
} else := data.trustmesh.lib.allowed
