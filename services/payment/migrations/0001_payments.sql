-- The payment service's tables. Portable SQL: the same file runs on SQLite
-- and PostgreSQL (ids are UUID text, v7 so that text order is creation
-- order; times RFC 3339 UTC text with a fixed number of fractional digits so
-- that text order is time order; money BIGINT minor units).

-- One payment. `payment_id` is also the wallet transfer id of the payment
-- (chosen before the wallet is called and stored first as PENDING, so a
-- retry after a crash reuses it). Idempotent per (payer, idempotency key).
CREATE TABLE payments (
    payment_id      TEXT PRIMARY KEY,
    payer_id        TEXT NOT NULL,
    receiver_id     TEXT NOT NULL,
    amount          BIGINT NOT NULL CHECK (amount > 0),
    currency        TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    status          TEXT NOT NULL
                    CHECK (status IN ('PENDING', 'COMPLETED', 'FAILED', 'ROLLED_BACK')),
    failure_reason  TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (payer_id, idempotency_key)
);

-- The payer's rolling 24 h volume.
CREATE INDEX payments_payer ON payments (payer_id, currency, created_at);
-- Finance's filter by user (as receiver; as payer the index above serves).
CREATE INDEX payments_receiver ON payments (receiver_id, payment_id);

-- At most one rollback per payment. `rollback_id` is the wallet transfer id
-- of the compensating transfer (stored first as PENDING, like payments).
CREATE TABLE rollbacks (
    rollback_id TEXT PRIMARY KEY,
    payment_id  TEXT NOT NULL UNIQUE REFERENCES payments (payment_id),
    by_user_id  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('PENDING', 'COMPLETED')),
    created_at  TEXT NOT NULL
);

-- Events written in the same transaction as the change they describe
-- (`trustmesh_events::outbox::record`); the events relay ships them to audit.
CREATE TABLE outbox (
    id           TEXT PRIMARY KEY,
    created_at   TEXT NOT NULL,
    service      TEXT NOT NULL,
    action       TEXT NOT NULL,
    target       TEXT NOT NULL,
    details      TEXT NOT NULL,
    sent_at      TEXT,
    status       TEXT NOT NULL DEFAULT 'SUCCESS',
    actor_user   TEXT,
    actor_spiffe TEXT,
    client_ip    TEXT,
    user_agent   TEXT,
    request_id   TEXT
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
