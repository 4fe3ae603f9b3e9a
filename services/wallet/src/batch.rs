//! Set-based posting of transfers, TigerBeetle style: the transfers that
//! queued up together for the wallet's writer are posted with a fixed,
//! small number of statements for the whole batch instead of nine per
//! transfer.
//!
//! [`TransferBatch`] is the [`BatchHandler`] of the wallet's
//! [`BatchWriter`](trustmesh_store::group_commit::BatchWriter). Inside the
//! batch's transaction, for a run of transfers with distinct ids (a batch
//! holding the same id twice — two simultaneous retries — is cut into runs,
//! posted one after the other in the same transaction):
//!
//! 1. one `SELECT` of the transfers that already exist with these ids: a
//!    retry with the same content is answered with the original record
//!    (`replayed`), one with other content with [`LedgerError::Conflict`];
//! 2. one `SELECT` of every touched user wallet with its balance (on
//!    PostgreSQL `FOR UPDATE`, in `account_id` order, so batches of several
//!    replicas and single postings lock in one order and cannot deadlock);
//! 3. where a transfer carries a 24 h limit, one `SELECT` of the running
//!    total of each such payer's last payment before the window: its volume
//!    is its wallet's running total minus that (migration 0003), two index
//!    lookups instead of a sum over every payment of the window;
//! 4. in memory, in arrival order, each transfer is applied or refused on
//!    its own: an overdraw ([`LedgerError::InsufficientFunds`]), a balance
//!    leaving the `i64` range ([`LedgerError::Overflow`]) or a volume above
//!    the limit ([`LedgerError::LimitExceeded`]) refuses it and it changes
//!    nothing, not even the running balances; a later transfer of the batch
//!    sees the balances and volumes the earlier accepted ones left (a
//!    payment covered only by a credit earlier in the same batch goes
//!    through);
//! 5. the accepted transfers are written with multi-row `INSERT`s: new
//!    wallets (created with their final balance and running total),
//!    transfers (each payment with its payer's running total after it),
//!    entries, and outbox events; and one `UPDATE … FROM (VALUES …)` sets
//!    every other touched wallet to its final balance and running total,
//!    guarded by what step 2 read (a wallet changed under the batch fails
//!    it instead of losing an update).
//!
//! The batch's transfers are stamped after step 2, when every payer's
//! wallet is locked (or, on SQLite, the batch holds the write lock), and
//! never before one of its payers' last payment (`out_last_at`: a replica
//! whose clock is behind cannot stamp out of order): a payer's payments are
//! in time order along its running total, which the volume lookup relies
//! on. (A batch is stamped once: every payment of it gets the latest of its
//! payers' last stamps when that is later than now.)
//!
//! A refused transfer writes nothing. Every event is in the same
//! transaction as its change, and no caller hears back before the commit
//! (the writer answers after it). If the set-based attempt fails as a whole
//! (a constraint, a concurrent replica taking the same id or creating the
//! same wallet on PostgreSQL), the writer rolls it back and posts each
//! transfer alone through the per-posting path ([`TransferBatch::run_one`]),
//! each in its own savepoint, so one bad transfer cannot fail the others.
//!
//! Statements are built with `?` placeholders on SQLite (numbered ones bind
//! in quadratic time there) and never carry more rows than the back-end's
//! parameter limit allows ([`trustmesh_store::sql::max_rows`]).

use std::collections::{BTreeSet, HashMap, HashSet};

use futures::future::BoxFuture;
use sqlx::{AnyConnection, Row};
use time::OffsetDateTime;
use trustmesh_events::Event;
use trustmesh_store::group_commit::{BatchHandler, BatchOutcome};
use trustmesh_store::sql::{self, backend_of};
use trustmesh_store::{Backend, StoreError};

use crate::ledger::{LedgerError, NewTransfer, Posted, TransferRecord, VOLUME_WINDOW, timestamp};
use crate::store::{
    TRANSFER_COLUMNS, not_before, post_in, posting_event, total_before_sql, transfer_on,
    transfer_posting, transfer_record, volume_check,
};

/// The most transfers one run posts: every statement of a run stays far
/// below SQLite's parameter limit (entries: 14 parameters per transfer).
pub const MAX_RUN: usize = 512;

/// Posts validated [`NewTransfer`]s set-based (see the module
/// documentation); the per-posting path is its fallback.
#[derive(Clone, Copy, Debug, Default)]
pub struct TransferBatch;

impl BatchHandler for TransferBatch {
    type Item = NewTransfer;
    type Output = Posted;
    type Error = LedgerError;

    fn run_batch<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        items: &'a [NewTransfer],
    ) -> BoxFuture<'a, BatchOutcome<Posted, LedgerError>> {
        Box::pin(async move {
            let backend = backend_of(conn).ok_or_else(|| {
                StoreError::GroupCommit("set-based posting needs SQLite or PostgreSQL".into())
            })?;
            let mut outcomes = Vec::with_capacity(items.len());
            let mut start = 0;
            while start < items.len() {
                let end = run_end(items, start);
                let run = items.get(start..end).unwrap_or_default();
                outcomes.extend(post_run(conn, backend, run).await?);
                start = end;
            }
            Ok(outcomes)
        })
    }

    fn run_one<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        t: &'a NewTransfer,
    ) -> BoxFuture<'a, Result<Posted, LedgerError>> {
        Box::pin(async move {
            let (posting, check) = transfer_posting(t);
            if let Some(record) = post_in(conn, &posting, check).await? {
                return Ok(Posted {
                    record,
                    replayed: false,
                });
            }
            // The id was taken: a replay or a conflict.
            match transfer_on(conn, &t.transfer_id).await? {
                Some(record) if record.matches_transfer(t) => Ok(Posted {
                    record,
                    replayed: true,
                }),
                Some(_) => Err(LedgerError::Conflict),
                // Taken by a transaction that then rolled back: transient.
                None => Err(sqlx::Error::RowNotFound.into()),
            }
        })
    }
}

/// The end of the run starting at `start`: at most [`MAX_RUN`] transfers,
/// no id twice.
fn run_end(items: &[NewTransfer], start: usize) -> usize {
    let mut seen = HashSet::new();
    let mut end = start;
    for t in items.iter().skip(start).take(MAX_RUN) {
        if !seen.insert(t.transfer_id.as_str()) {
            break;
        }
        end += 1;
    }
    end
}

/// A user wallet as the run sees it.
struct Wallet {
    account_id: String,
    /// The balance after the transfers applied so far.
    balance: i64,
    /// The running total of its payments after the transfers applied so far.
    out_total: i64,
    /// The stamp of its last payment.
    out_last_at: Option<String>,
    /// The balance and running total read from the database; `None`:
    /// created by this run.
    read: Option<Totals>,
}

/// A transfer the run accepted.
struct Accepted {
    record: TransferRecord,
    /// A payment: its payer's running total after it.
    out_total_after: Option<i64>,
    debit: Leg,
    credit: Leg,
}

/// One entry of an accepted transfer.
struct Leg {
    entry_id: String,
    account_id: String,
    balance_after: i64,
}

/// (owner, currency): a user wallet's key.
type Key = (String, String);

/// (balance, running total of payments): what a wallet row holds that a
/// run changes.
type Totals = (i64, i64);

/// Posts `run` (distinct ids, at most [`MAX_RUN`]) with a fixed number of
/// statements; one outcome per transfer, in order.
async fn post_run(
    conn: &mut AnyConnection,
    backend: Backend,
    run: &[NewTransfer],
) -> Result<Vec<Result<Posted, LedgerError>>, LedgerError> {
    // 1. Retries: the transfers that already exist.
    let existing = existing_transfers(conn, backend, run).await?;
    let mut outcomes: Vec<Option<Result<Posted, LedgerError>>> = run
        .iter()
        .map(|t| {
            existing.get(&t.transfer_id).map(|record| {
                if record.matches_transfer(t) {
                    Ok(Posted {
                        record: record.clone(),
                        replayed: true,
                    })
                } else {
                    Err(LedgerError::Conflict)
                }
            })
        })
        .collect();
    let fresh: Vec<usize> = (0..run.len())
        .filter(|&i| outcomes.get(i).is_some_and(Option::is_none))
        .collect();

    if !fresh.is_empty() {
        // 2. Every wallet the fresh transfers touch.
        let owners: BTreeSet<&str> = fresh
            .iter()
            .filter_map(|&i| run.get(i))
            .flat_map(|t| [t.from_user.as_str(), t.to_user.as_str()])
            .collect();
        let mut wallets = read_wallets(conn, backend, &owners).await?;
        // Stamped now that the wallets are locked, and never before a
        // payer's last payment (see the module docs).
        let now = OffsetDateTime::now_utc();
        let last = fresh
            .iter()
            .filter_map(|&i| run.get(i))
            .filter(|t| t.kind.counts_toward_volume())
            .filter_map(|t| wallets.get(&(t.from_user.clone(), t.currency.clone())))
            .filter_map(|w| w.out_last_at.as_deref())
            .max();
        let created_at = not_before(timestamp(now), last);

        // 3. Where the 24 h volume is limited: each payer's running total
        // before the window (a payer without a wallet holds nothing, and
        // is refused before its volume matters).
        let limited: BTreeSet<Key> = fresh
            .iter()
            .filter_map(|&i| run.get(i))
            .filter(|t| t.outgoing_limit_24h.is_some())
            .map(|t| (t.from_user.clone(), t.currency.clone()))
            .filter(|key| wallets.contains_key(key))
            .collect();
        let before =
            read_totals_before(conn, backend, &limited, &timestamp(now - VOLUME_WINDOW)).await?;

        // 4. Apply in arrival order.
        let mut accepted = Vec::with_capacity(fresh.len());
        for &i in &fresh {
            let Some(t) = run.get(i) else { continue };
            let outcome = apply(t, &created_at, &mut wallets, &before);
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = Some(match outcome {
                    Ok(a) => {
                        let posted = Posted {
                            record: a.record.clone(),
                            replayed: false,
                        };
                        accepted.push(a);
                        Ok(posted)
                    }
                    Err(e) => Err(e),
                });
            }
        }

        // 5. Write what was accepted.
        if !accepted.is_empty() {
            write(conn, backend, &created_at, &wallets, &accepted).await?;
        }
    }
    outcomes
        .into_iter()
        .map(|o| {
            o.ok_or_else(|| {
                LedgerError::Store(StoreError::GroupCommit(
                    "a transfer was left unposted".into(),
                ))
            })
        })
        .collect()
}

/// Applies `t` to the running `wallets`, or refuses it without changing
/// them. `before`: the running totals before the window of the payers whose
/// volume is limited.
fn apply(
    t: &NewTransfer,
    created_at: &str,
    wallets: &mut HashMap<Key, Wallet>,
    before: &HashMap<Key, i64>,
) -> Result<Accepted, LedgerError> {
    let from_key = (t.from_user.clone(), t.currency.clone());
    let to_key = (t.to_user.clone(), t.currency.clone());
    // A user without a wallet in this currency holds nothing.
    let (from_balance, from_total) = wallets
        .get(&from_key)
        .map(|w| (w.balance, w.out_total))
        .ok_or(LedgerError::InsufficientFunds)?;
    if from_balance < t.amount {
        return Err(LedgerError::InsufficientFunds);
    }
    let to_balance = wallets.get(&to_key).map_or(0, |w| w.balance);
    let to_after = to_balance
        .checked_add(t.amount)
        .ok_or(LedgerError::Overflow)?;
    let out_total_after = if t.kind.counts_toward_volume() {
        Some(
            from_total
                .checked_add(t.amount)
                .ok_or(LedgerError::Overflow)?,
        )
    } else {
        None
    };
    if let Some(limit) = t.outgoing_limit_24h {
        let volume = from_total - before.get(&from_key).copied().unwrap_or_default();
        volume_check(volume, t.amount, limit)?;
    }

    // Accepted: from here on nothing fails.
    let from_after = from_balance - t.amount;
    let debit_id = uuid::Uuid::now_v7().to_string();
    let credit_id = uuid::Uuid::now_v7().to_string();
    let from_account = match wallets.get_mut(&from_key) {
        Some(w) => {
            w.balance = from_after;
            if let Some(total) = out_total_after {
                w.out_total = total;
                w.out_last_at = Some(created_at.to_owned());
            }
            w.account_id.clone()
        }
        None => return Err(LedgerError::InsufficientFunds),
    };
    let to_wallet = wallets.entry(to_key).or_insert_with(|| Wallet {
        account_id: uuid::Uuid::now_v7().to_string(),
        balance: 0,
        out_total: 0,
        out_last_at: None,
        read: None,
    });
    to_wallet.balance = to_after;
    let to_account = to_wallet.account_id.clone();
    Ok(Accepted {
        record: TransferRecord {
            transfer_id: t.transfer_id.clone(),
            kind: t.kind,
            from_user: Some(t.from_user.clone()),
            to_user: t.to_user.clone(),
            agent: None,
            amount: t.amount,
            currency: t.currency.clone(),
            reference: t.reference.clone(),
            created_at: created_at.to_owned(),
        },
        out_total_after,
        debit: Leg {
            entry_id: debit_id,
            account_id: from_account,
            balance_after: from_after,
        },
        credit: Leg {
            entry_id: credit_id,
            account_id: to_account,
            balance_after: to_after,
        },
    })
}

/// The transfers of `run` that already exist, by id.
async fn existing_transfers(
    conn: &mut AnyConnection,
    backend: Backend,
    run: &[NewTransfer],
) -> Result<HashMap<String, TransferRecord>, LedgerError> {
    let sql = format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE transfer_id IN ({})",
        sql::list(backend, run.len(), 1)
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for t in run {
        query = query.bind(&t.transfer_id);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    let mut existing = HashMap::with_capacity(rows.len());
    for row in &rows {
        let record = transfer_record(row)?;
        existing.insert(record.transfer_id.clone(), record);
    }
    Ok(existing)
}

/// Every user wallet of `owners` (all currencies), locked on PostgreSQL
/// in `account_id` order.
async fn read_wallets(
    conn: &mut AnyConnection,
    backend: Backend,
    owners: &BTreeSet<&str>,
) -> Result<HashMap<Key, Wallet>, LedgerError> {
    let mut wallets = HashMap::with_capacity(owners.len());
    let owners: Vec<&str> = owners.iter().copied().collect();
    for chunk in owners.chunks(sql::max_rows(1)) {
        let lock = match backend {
            Backend::Postgres => " ORDER BY account_id FOR UPDATE",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT account_id, owner, currency, balance, out_total, out_last_at FROM accounts \
             WHERE kind = 'user' AND owner IN ({}){lock}",
            sql::list(backend, chunk.len(), 1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for owner in chunk {
            query = query.bind(*owner);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let balance: i64 = row.try_get("balance")?;
            let out_total: i64 = row.try_get("out_total")?;
            wallets.insert(
                (row.try_get("owner")?, row.try_get("currency")?),
                Wallet {
                    account_id: row.try_get("account_id")?,
                    balance,
                    out_total,
                    out_last_at: row.try_get("out_last_at")?,
                    read: Some((balance, out_total)),
                },
            );
        }
    }
    Ok(wallets)
}

/// The running total of each payer's last payment before `since`, by
/// (payer, currency); a payer with no payment before then is absent (0).
async fn read_totals_before(
    conn: &mut AnyConnection,
    backend: Backend,
    keys: &BTreeSet<Key>,
    since: &str,
) -> Result<HashMap<Key, i64>, LedgerError> {
    let mut totals = HashMap::with_capacity(keys.len());
    let keys: Vec<&Key> = keys.iter().collect();
    for chunk in keys.chunks(sql::max_rows(2) - 1) {
        // `since` comes first in the text (SQLite binds `?` in order).
        let sql = format!(
            "SELECT v.column1 AS owner, v.column2 AS currency, ({}) AS total \
             FROM (VALUES {}) AS v",
            total_before_sql(
                "v.column1",
                "v.column2",
                "'payment'",
                &sql::list(backend, 1, 1)
            ),
            sql::rows(backend, chunk.len(), 2, 2)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(since);
        for (owner, currency) in chunk {
            query = query.bind(owner).bind(currency);
        }
        for row in query.fetch_all(&mut *conn).await? {
            if let Some(total) = row.try_get::<Option<i64>, _>("total")? {
                totals.insert((row.try_get("owner")?, row.try_get("currency")?), total);
            }
        }
    }
    Ok(totals)
}

/// Writes the accepted transfers: new wallets, transfers, entries, the
/// other wallets' balances, events.
async fn write(
    conn: &mut AnyConnection,
    backend: Backend,
    created_at: &str,
    wallets: &HashMap<Key, Wallet>,
    accepted: &[Accepted],
) -> Result<(), LedgerError> {
    // New wallets, with their final balance (before the entries that
    // reference them).
    let mut created: Vec<(&Key, &Wallet)> =
        wallets.iter().filter(|(_, w)| w.read.is_none()).collect();
    created.sort_unstable_by(|a, b| a.1.account_id.cmp(&b.1.account_id));
    for chunk in created.chunks(sql::max_rows(USER_ROW_PARAMS)) {
        let sql = format!(
            "INSERT INTO accounts (account_id, kind, owner, currency, balance, out_total, \
             out_last_at, created_at) VALUES {}",
            user_rows(backend, chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ((owner, currency), wallet) in chunk {
            query = query
                .bind(&wallet.account_id)
                .bind(owner)
                .bind(currency)
                .bind(wallet.balance)
                .bind(wallet.out_total)
                .bind(wallet.out_last_at.as_deref())
                .bind(created_at);
        }
        query.execute(&mut *conn).await?;
    }

    // The transfers. A concurrent replica that took one of these ids
    // since step 1 (PostgreSQL) fails the run: the fallback sorts it out.
    const TRANSFER_PARAMS: usize = 11;
    for chunk in accepted.chunks(sql::max_rows(TRANSFER_PARAMS)) {
        let sql = format!(
            "INSERT INTO transfers ({TRANSFER_COLUMNS}, out_total_after) VALUES {}",
            sql::rows(backend, chunk.len(), TRANSFER_PARAMS, 1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in chunk {
            let r = &a.record;
            query = query
                .bind(&r.transfer_id)
                .bind(r.kind.as_str())
                .bind("user")
                .bind(r.from_user.as_deref())
                .bind(&r.to_user)
                .bind(r.amount)
                .bind(&r.currency)
                .bind(&r.reference)
                .bind(None::<String>)
                .bind(&r.created_at)
                .bind(a.out_total_after);
        }
        query.execute(&mut *conn).await?;
    }

    // Both entries of each (debit first: its v7 id is older).
    const ENTRY_PARAMS: usize = 7;
    for chunk in accepted.chunks(sql::max_rows(2 * ENTRY_PARAMS)) {
        let sql = format!(
            "INSERT INTO entries (entry_id, transfer_id, account_id, owner, amount, \
             balance_after, created_at) VALUES {}",
            sql::rows(backend, 2 * chunk.len(), ENTRY_PARAMS, 1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in chunk {
            let r = &a.record;
            for (leg, owner, amount) in [
                (
                    &a.debit,
                    r.from_user.as_deref().unwrap_or_default(),
                    -r.amount,
                ),
                (&a.credit, r.to_user.as_str(), r.amount),
            ] {
                query = query
                    .bind(&leg.entry_id)
                    .bind(&r.transfer_id)
                    .bind(&leg.account_id)
                    .bind(owner)
                    .bind(amount)
                    .bind(leg.balance_after)
                    .bind(&r.created_at);
            }
        }
        query.execute(&mut *conn).await?;
    }

    // Every other touched wallet's final balance and running total,
    // guarded by the one read.
    let mut changed: Vec<&Wallet> = wallets
        .values()
        .filter(|w| w.read.is_some_and(|read| read != (w.balance, w.out_total)))
        .collect();
    changed.sort_unstable_by(|a, b| a.account_id.cmp(&b.account_id));
    for chunk in changed.chunks(sql::max_rows(6)) {
        let sql = format!(
            "UPDATE accounts SET balance = v.column2, out_total = v.column3, \
             out_last_at = v.column4 FROM (VALUES {}) AS v \
             WHERE accounts.account_id = v.column1 \
             AND accounts.balance = v.column5 AND accounts.out_total = v.column6",
            sql::rows(backend, chunk.len(), 6, 1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for w in chunk {
            let (read_balance, read_total) = w.read.unwrap_or_default();
            query = query
                .bind(&w.account_id)
                .bind(w.balance)
                .bind(w.out_total)
                .bind(w.out_last_at.as_deref())
                .bind(read_balance)
                .bind(read_total);
        }
        let updated = query.execute(&mut *conn).await?;
        if updated.rows_affected() != chunk.len() as u64 {
            return Err(
                StoreError::GroupCommit("a wallet changed under a set-based batch".into()).into(),
            );
        }
    }

    // The events, in the same transaction.
    let events: Vec<Event> = accepted.iter().map(|a| posting_event(&a.record)).collect();
    trustmesh_events::outbox::record_all_on(conn, &events).await?;
    Ok(())
}

/// The bound parameters of one row of [`user_rows`].
const USER_ROW_PARAMS: usize = 7;

/// `rows` rows of `(account_id, 'user', owner, currency, balance,
/// out_total, out_last_at, created_at)` with [`USER_ROW_PARAMS`] bound
/// parameters each.
fn user_rows(backend: Backend, rows: usize) -> String {
    let mut out = String::new();
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        let first = 1 + row * USER_ROW_PARAMS;
        out.push('(');
        out.push_str(&sql::list(backend, 1, first));
        out.push_str(", 'user', ");
        out.push_str(&sql::list(backend, USER_ROW_PARAMS - 1, first + 1));
        out.push(')');
    }
    out
}
