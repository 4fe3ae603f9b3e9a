-- Suspicious-login detection and its mail. Portable SQL.

-- How far the detector has read the log (one row, id = 1).
CREATE TABLE alert_cursor (
    id       INTEGER PRIMARY KEY,
    next_idx BIGINT NOT NULL
);

-- What each user's successful logins came from: kind is `ip`, `device`
-- (user agent) or `country`.
CREATE TABLE login_seen (
    user_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    PRIMARY KEY (user_id, kind, value)
);

-- Each user's current run of failed logins, and the country of the last
-- successful one.
CREATE TABLE login_streak (
    user_id      TEXT PRIMARY KEY,
    failures     BIGINT NOT NULL,
    first_at     TEXT NOT NULL,
    last_country TEXT
);

-- Mail waiting to be sent: never dropped, retried with backoff.
CREATE TABLE mail_queue (
    id          TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL,
    recipients  TEXT NOT NULL,
    subject     TEXT NOT NULL,
    body        TEXT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    next_try_at TEXT NOT NULL,
    last_error  TEXT,
    sent_at     TEXT
);
CREATE INDEX mail_queue_due ON mail_queue (next_try_at) WHERE sent_at IS NULL;

-- When the last weekly report was queued (one row, id = 1).
CREATE TABLE report_state (
    id        INTEGER PRIMARY KEY,
    last_sent TEXT NOT NULL
);
