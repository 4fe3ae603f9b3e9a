-- `entries_account` (entries by account) is read by no query: a wallet's
-- history reads `entries_owner`, `trustmesh wallet check` scans the whole
-- table, and accounts are never deleted, so no foreign-key check looks
-- for an account's entries either. Each entry still paid for it: two
-- inserts per transfer into leaves spread over every account, the pages
-- of which each batch then journals, logs and checkpoints.
DROP INDEX entries_account;
