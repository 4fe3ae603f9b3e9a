-- Rolling 24 h volumes in two index lookups instead of a sum over the window.
--
-- Each account keeps the running total of what it ever sent that counts
-- toward its daily limit (`out_total`: a user wallet's payments, an agent's
-- deposits; rollbacks never count), and each such transfer records the
-- total right after it (`out_total_after`). A sender's transfers are
-- serialised (its account row is locked, or SQLite has one writer) and
-- stamped after that lock, never before the sender's previous one
-- (`out_last_at`: a replica whose clock is behind, or a clock stepped back,
-- cannot stamp out of order), so along (created_at, out_total_after) the
-- totals rise by exactly each amount. The volume since T is then
--
--     out_total - (out_total_after of the sender's last counted transfer
--                  before T, or 0 when there is none)
--
-- `trustmesh wallet check` verifies both: each account's total is the sum
-- of its counted transfers, and each step of the chain is its amount.
ALTER TABLE accounts ADD COLUMN out_total BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN out_last_at TEXT;
ALTER TABLE transfers ADD COLUMN out_total_after BIGINT;

-- Backfill, in the same order the lookup walks (time, then id for equal
-- times).
UPDATE transfers SET out_total_after = chain.total
FROM (
    SELECT transfer_id,
           SUM(amount) OVER (
               PARTITION BY from_owner, currency, kind
               ORDER BY created_at, transfer_id
           ) AS total
    FROM transfers
    WHERE kind IN ('payment', 'deposit')
) AS chain
WHERE transfers.transfer_id = chain.transfer_id;

UPDATE accounts SET out_total = COALESCE((
    SELECT CAST(SUM(t.amount) AS BIGINT) FROM transfers t
    WHERE t.from_owner = accounts.owner
      AND t.currency = accounts.currency
      AND t.kind = CASE accounts.kind WHEN 'user' THEN 'payment' ELSE 'deposit' END
), 0),
out_last_at = (
    SELECT MAX(t.created_at) FROM transfers t
    WHERE t.from_owner = accounts.owner
      AND t.currency = accounts.currency
      AND t.kind = CASE accounts.kind WHEN 'user' THEN 'payment' ELSE 'deposit' END
);

-- The lookup of the last counted transfer before a time: an exact seek.
-- It replaces the index the sums over the window used.
DROP INDEX transfers_outgoing;
CREATE INDEX transfers_out_totals
    ON transfers (from_owner, currency, kind, created_at, out_total_after);
