-- The outbox table as every service's migrations create it.
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
