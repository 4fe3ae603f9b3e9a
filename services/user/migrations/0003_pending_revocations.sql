-- The session revocations a role change owes. A role change writes its row
-- in the transaction that changes the role; the row is removed once the
-- auth service has ended the user's sessions. Should auth not answer, or
-- the service stop between the commit and the call, the service's revoker
-- (`services/user/src/revoker.rs`) finds the row and asks again until auth
-- answers: no session keeps a role its user no longer has for longer than
-- that.
CREATE TABLE pending_revocations (
    revocation_id TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    requested_at  TEXT NOT NULL
);
CREATE INDEX pending_revocations_due ON pending_revocations (requested_at);
