-- Accounts, enrolments, MFA tickets, sessions and refresh tokens. Portable
-- SQL: the same file runs on SQLite and PostgreSQL. Ids are UUID text,
-- instants are Unix seconds (BIGINT), secrets are stored only sealed or hashed.
CREATE TABLE accounts (
    user_id        TEXT PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    totp_sealed    TEXT NOT NULL,
    totp_last_step BIGINT NOT NULL DEFAULT -1,
    confirmed      BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL
);

CREATE TABLE enrollments (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    attempts   BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE recovery_codes (
    user_id   TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    used_at   BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE mfa_tickets (
    ticket_hash TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE sessions (
    session_id          TEXT PRIMARY KEY,
    user_id             TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    last_seen_at        BIGINT NOT NULL,
    absolute_expires_at BIGINT NOT NULL,
    revoked_at          BIGINT,
    revoked_reason      TEXT,
    client_ip           TEXT NOT NULL DEFAULT '',
    user_agent          TEXT NOT NULL DEFAULT '',
    amr                 TEXT NOT NULL DEFAULT ''
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    issued_at  BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE login_failures (
    id        TEXT PRIMARY KEY,
    user_id   TEXT,
    client_ip TEXT,
    at        BIGINT NOT NULL
);
CREATE INDEX login_failures_user ON login_failures (user_id, at);
CREATE INDEX login_failures_ip ON login_failures (client_ip, at);

CREATE TABLE lockouts (
    user_id      TEXT PRIMARY KEY,
    locked_until BIGINT NOT NULL
);

-- Events written in the same transaction as the change they describe; the
-- relay of the events crate ships them to audit (oldest first, by id: UUID v7).
CREATE TABLE outbox (
    id         TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    service    TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    details    TEXT NOT NULL,
    sent_at    TEXT
);
