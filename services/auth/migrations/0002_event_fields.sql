-- The full event of the events pipeline (crates/events): status, actor and
-- client facts beside the columns of 0001, and an index for the relay's scan
-- of unsent rows.
ALTER TABLE outbox ADD COLUMN status TEXT NOT NULL DEFAULT 'SUCCESS';
ALTER TABLE outbox ADD COLUMN actor_user TEXT;
ALTER TABLE outbox ADD COLUMN actor_spiffe TEXT;
ALTER TABLE outbox ADD COLUMN client_ip TEXT;
ALTER TABLE outbox ADD COLUMN user_agent TEXT;
ALTER TABLE outbox ADD COLUMN request_id TEXT;
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
