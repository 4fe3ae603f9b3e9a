-- When all sessions of a user were last revoked (a role change). A password
-- step that began reading the user's role before that time may still be
-- writing its MFA ticket: such a ticket is stored without a role, so the MFA
-- step asks the user service for the current one instead of carrying the
-- old role into a new session.
CREATE TABLE session_revocations (
    user_id TEXT PRIMARY KEY,
    revoked_at BIGINT NOT NULL
);
