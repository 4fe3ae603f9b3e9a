-- How many times every session of a user was ended at once (a role
-- change). A password step reads the count with the account, before it asks
-- the user service for the role; when the count has grown by the time it
-- writes its MFA ticket, the role it read may be the old one, and the ticket
-- is stored without it: the MFA step then asks for the current role. (A
-- count, not a time: replicas' clocks need not agree.)
CREATE TABLE session_revocations (
    user_id TEXT PRIMARY KEY,
    revocations BIGINT NOT NULL
);
