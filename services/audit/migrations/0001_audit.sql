-- The audit log. Portable SQL: the same file runs on SQLite and PostgreSQL.
--
-- Every event is a leaf of an RFC 6962 Merkle tree (crates/merkle): `idx` is
-- its leaf index (0, 1, 2, ... without gaps), `leaf_hash` the hash of its
-- canonical bytes (rebuilt from the columns), `chain` the hash chain value
-- that lets verification name the first altered row. Hashes are hex.
CREATE TABLE events (
    idx          BIGINT PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    time         TEXT NOT NULL,
    service      TEXT NOT NULL,
    action       TEXT NOT NULL,
    status       TEXT NOT NULL,
    actor_user   TEXT,
    actor_spiffe TEXT,
    target       TEXT NOT NULL,
    client_ip    TEXT,
    user_agent   TEXT,
    request_id   TEXT,
    details      TEXT NOT NULL,
    leaf_hash    TEXT NOT NULL,
    chain        TEXT NOT NULL
);
CREATE INDEX events_actor ON events (actor_user, idx);
CREATE INDEX events_target ON events (target, idx);
CREATE INDEX events_action ON events (action, idx);
CREATE INDEX events_time ON events (time);

-- The log's state (Merkle frontier and last chain value) after the last
-- row, updated in the same transaction as the rows: one row, id = 1.
CREATE TABLE log_state (
    id    INTEGER PRIMARY KEY,
    state TEXT NOT NULL
);

-- Signed checkpoints (C2SP signed notes), one per size.
CREATE TABLE checkpoints (
    size       BIGINT PRIMARY KEY,
    signed     TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- The retention anchor: the log state at the cut and the signed checkpoint
-- of that size; rows below `size` were removed. One row, id = 1.
CREATE TABLE anchor (
    id         INTEGER PRIMARY KEY,
    size       BIGINT NOT NULL,
    state      TEXT NOT NULL,
    checkpoint TEXT NOT NULL
);
