-- Rolling 24 h volumes read from the index alone, over the window only.
-- The set-based posting reads the volumes of many payers at once
-- (`from_owner IN (…) AND created_at >= …`, every currency): with currency
-- second in the index, that read could not bound its scan by time and
-- visited every transfer each payer ever made, row by row. Time comes
-- second now, and kind, currency and amount are in the index.
DROP INDEX transfers_outgoing;
CREATE INDEX transfers_outgoing ON transfers (from_owner, created_at, kind, currency, amount);
