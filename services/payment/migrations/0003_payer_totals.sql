-- The payer's rolling 24 h volume from a running total instead of a sum
-- over the payer's window (the technique of the wallet's migration 0003).
--
-- `payer_totals` keeps, per (payer, currency), the total of every payment
-- the payer ever asked for that was stored (whatever became of it), and
-- each payment records the total right after it (`payer_total_after`). A
-- pair's payments are serialised (the upsert of its total locks the row on
-- PostgreSQL; SQLite has one writer) and stamped after that, never before
-- the pair's previous stamp (`last_at`), so along (created_at,
-- payer_total_after) the totals rise by exactly each amount. A payment the
-- wallet refused for a reason that is not a payment outcome (a limit, an
-- invalid field) leaves `payments` so that its key can be used again; it
-- keeps its place in the chain in `refused_payments`. The volume since T
-- is then
--
--     total
--     - the total after the pair's last payment (stored or refused) before T
--     - the FAILED payments since T (they never count)
--     - the refused payments since T
--
-- four index seeks, whatever the payer's volume.
--
-- Stop every replica of the payment service before this migration runs: a
-- replica still running the code before it writes payments without totals
-- (`trustmesh payment check` reports them).
CREATE TABLE payer_totals (
    payer_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    total    BIGINT NOT NULL CHECK (total >= 0),
    last_at  TEXT NOT NULL,
    PRIMARY KEY (payer_id, currency)
);

CREATE TABLE refused_payments (
    payment_id        TEXT PRIMARY KEY,
    payer_id          TEXT NOT NULL,
    currency          TEXT NOT NULL,
    amount            BIGINT NOT NULL CHECK (amount > 0),
    created_at        TEXT NOT NULL,
    payer_total_after BIGINT NOT NULL,
    refused_at        TEXT NOT NULL
);
CREATE INDEX refused_payments_chain
    ON refused_payments (payer_id, currency, created_at, payer_total_after, amount);

ALTER TABLE payments ADD COLUMN payer_total_after BIGINT;

-- Backfill, in the order the lookup walks (time, then id for equal times).
UPDATE payments SET payer_total_after = chain.total
FROM (
    SELECT payment_id,
           SUM(amount) OVER (
               PARTITION BY payer_id, currency
               ORDER BY created_at, payment_id
           ) AS total
    FROM payments
) AS chain
WHERE payments.payment_id = chain.payment_id;

INSERT INTO payer_totals (payer_id, currency, total, last_at)
SELECT payer_id, currency, CAST(SUM(amount) AS BIGINT), MAX(created_at)
FROM payments
GROUP BY payer_id, currency;

-- The seek of the last payment before a time, and the FAILED payments of
-- the window. They replace the index the sum over the window used.
DROP INDEX payments_payer_volume;
CREATE INDEX payments_payer_chain ON payments (payer_id, currency, created_at, payer_total_after);
CREATE INDEX payments_payer_failed ON payments (payer_id, currency, created_at, amount)
    WHERE status = 'FAILED';
