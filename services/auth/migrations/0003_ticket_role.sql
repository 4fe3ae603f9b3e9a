-- The role a session opened with an MFA ticket carries, read from the user
-- service at the password step (while Argon2id runs) so the MFA step does not
-- call it. '' for a ticket written before this column: the MFA step then
-- asks the user service as it used to.
ALTER TABLE mfa_tickets ADD COLUMN role TEXT NOT NULL DEFAULT '';
