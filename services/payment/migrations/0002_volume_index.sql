-- The payer's rolling 24 h volume (`PaymentStore::volume_24h`) read from
-- the index alone: status and amount are in it, so the sum over a payer's
-- day does not visit one table row per payment. It also serves everything
-- the index it replaces served (payer, then currency, then time).
DROP INDEX payments_payer;
CREATE INDEX payments_payer_volume ON payments (payer_id, currency, created_at, status, amount);
