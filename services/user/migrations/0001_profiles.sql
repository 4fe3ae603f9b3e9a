-- Profiles, roles and teams. Portable SQL: the same file runs on SQLite and
-- PostgreSQL (ids are UUID text, times RFC 3339 UTC text).
CREATE TABLE profiles (
    user_id      TEXT PRIMARY KEY,
    email        TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    role         TEXT NOT NULL DEFAULT 'user',
    team_id      TEXT,
    created_at   TEXT NOT NULL
);

CREATE TABLE teams (
    team_id    TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    manager_id TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE INDEX profiles_team ON profiles (team_id);

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
