-- The wallet's double-entry ledger. Portable SQL: the same file runs on SQLite
-- and PostgreSQL (ids are UUID text, times RFC 3339 UTC text with a fixed
-- number of fractional digits so that text order is time order, money BIGINT
-- minor units).

-- One account per (kind, owner, currency): a user's wallet (`user`, owner =
-- user id), never negative, or an agent's clearing account (`agent`, owner =
-- the agent's SPIFFE ID), which goes negative as the agent brings money in.
-- `balance` is a cache of the sum of the account's entries, kept in the same
-- transaction as every entry.
CREATE TABLE accounts (
    account_id TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('user', 'agent')),
    owner      TEXT NOT NULL,
    currency   TEXT NOT NULL,
    balance    BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    UNIQUE (kind, owner, currency),
    CHECK (kind = 'agent' OR balance >= 0)
);

-- Every movement of money. `transfer_id` is the caller's idempotency key for
-- payments and rollbacks, generated for deposits, which are idempotent on
-- (agent, reference) instead (`agent` is NULL for every other kind).
CREATE TABLE transfers (
    transfer_id TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('payment', 'rollback', 'deposit')),
    from_kind   TEXT NOT NULL CHECK (from_kind IN ('user', 'agent')),
    from_owner  TEXT NOT NULL,
    to_owner    TEXT NOT NULL,
    amount      BIGINT NOT NULL CHECK (amount > 0),
    currency    TEXT NOT NULL,
    reference   TEXT NOT NULL,
    agent       TEXT,
    created_at  TEXT NOT NULL,
    UNIQUE (agent, reference)
);

-- Rolling 24 h volumes: a user's outgoing payments, an agent's deposits.
CREATE INDEX transfers_outgoing ON transfers (from_owner, currency, created_at);

-- The two legs of each transfer: a debit (negative) and a credit (positive).
-- `entry_id` is a UUID v7, so a wallet's history sorts newest first by it.
CREATE TABLE entries (
    entry_id      TEXT PRIMARY KEY,
    transfer_id   TEXT NOT NULL REFERENCES transfers (transfer_id),
    account_id    TEXT NOT NULL REFERENCES accounts (account_id),
    owner         TEXT NOT NULL,
    amount        BIGINT NOT NULL CHECK (amount <> 0),
    balance_after BIGINT NOT NULL,
    created_at    TEXT NOT NULL,
    UNIQUE (transfer_id, account_id)
);

CREATE INDEX entries_owner ON entries (owner, entry_id);
CREATE INDEX entries_account ON entries (account_id);

-- Events written in the same transaction as the change they describe
-- (`trustmesh_events::outbox::record`); the events relay ships them to audit,
-- oldest first (by id: UUID v7). The nullable columns after `sent_at` are
-- filled by the events pipeline (who acted, from where, for which request).
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

-- The relay's scan of unsent rows.
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
