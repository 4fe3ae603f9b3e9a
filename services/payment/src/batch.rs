//! Set-based writes of the payment path: the PENDING rows and the outcomes
//! that queued up together for the payment store's writer are written with
//! a fixed, small number of statements for the whole batch instead of a
//! transaction (or a savepoint) and two or three statements each.
//!
//! [`PaymentBatch`] is the [`BatchHandler`] of the store's
//! [`BatchWriter`](trustmesh_store::group_commit::BatchWriter). Inside the
//! batch's transaction:
//!
//! 1. one upsert of the payers' running totals (`payer_totals`, migration
//!    0003): each (payer, currency) of the new payments gets its share of
//!    the batch added and answers with its total before the batch and the
//!    stamp of the batch's payments (never before the pair's last one);
//! 2. one multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING payment_id`
//!    of the new PENDING payments, each with its payer's total after it: a
//!    payment whose payer's idempotency key is already taken (a retry, or a
//!    concurrent request with the same key, in this batch or before it) is
//!    not returned, its caller hears [`Written::KeyTaken`], and only then
//!    are the totals of the rows after it (and its pair's total) corrected
//!    so that the chain has no gap;
//! 3. one `UPDATE … FROM (VALUES …) … WHERE status = 'PENDING' RETURNING
//!    payment_id` moving the settled payments to their outcome: a payment
//!    already finished (by a concurrent retry) is not returned, its caller
//!    hears [`Written::NotPending`] and no event is written for it. A
//!    payment finished twice in one batch is moved by its first request
//!    only;
//! 4. one multi-row `INSERT` of the outbox events of the payments moved.
//!
//! No caller hears back before the commit (the writer answers after it).
//! If the set-based attempt fails as a whole (a constraint, or on
//! PostgreSQL a deadlock with another replica's batch), the writer rolls it
//! back and runs each write alone ([`PaymentBatch::run_one`]) in its own
//! savepoint, so one bad request cannot fail the others.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::future::BoxFuture;
use sqlx::{AnyConnection, Row};
use trustmesh_events::Event;
use trustmesh_store::group_commit::{BatchHandler, BatchOutcome};
use trustmesh_store::sql::{self, backend_of};
use trustmesh_store::{Backend, StoreError};

use crate::store::{NewPayment, PaymentStatus, parse_time};

/// One write of the payment path.
#[derive(Clone, Debug)]
pub enum PaymentWrite {
    /// Store a new payment as PENDING; answered [`Written::Stored`] with
    /// its creation time, or [`Written::KeyTaken`].
    Pending {
        /// The payment's id (UUID v7, the wallet transfer id).
        payment_id: String,
        /// What the payer asked for.
        payment: NewPayment,
        /// The time it was asked for (stored form). It is stored as its
        /// creation time unless the payer's last payment was stamped later
        /// (another replica's clock): stamps never go back along a payer's
        /// running total.
        at: String,
    },
    /// Move a PENDING payment to its outcome and record its event; answered
    /// [`Written::Moved`], or [`Written::NotPending`] (no event is written
    /// then).
    Finish {
        /// The payment.
        payment_id: String,
        /// COMPLETED or FAILED.
        status: PaymentStatus,
        /// Why it failed.
        reason: Option<String>,
        /// The time of the change (stored form).
        at: String,
        /// The event of the outcome.
        event: Box<Event>,
    },
}

/// The answer to one [`PaymentWrite`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// The PENDING payment is stored, created at this time (stored form).
    Stored {
        /// Its creation time as stored.
        created_at: String,
    },
    /// The payer's idempotency key was already taken: nothing was stored.
    KeyTaken,
    /// The payment moved to its outcome and its event is recorded.
    Moved,
    /// The payment was no longer PENDING: nothing changed.
    NotPending,
}

impl Written {
    /// Whether the write changed something (stored or moved).
    pub fn done(&self) -> bool {
        matches!(self, Self::Stored { .. } | Self::Moved)
    }
}

/// Writes [`PaymentWrite`]s set-based (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct PaymentBatch;

impl BatchHandler for PaymentBatch {
    type Item = PaymentWrite;
    type Output = Written;
    type Error = StoreError;

    fn run_batch<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        items: &'a [PaymentWrite],
    ) -> BoxFuture<'a, BatchOutcome<Written, StoreError>> {
        Box::pin(async move { Ok(write_all(conn, items).await?.into_iter().map(Ok).collect()) })
    }

    fn run_one<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        item: &'a PaymentWrite,
    ) -> BoxFuture<'a, Result<Written, StoreError>> {
        Box::pin(async move {
            let mut answers = write_all(conn, std::slice::from_ref(item)).await?;
            answers
                .pop()
                .ok_or_else(|| StoreError::GroupCommit("a write went unanswered".to_owned()))
        })
    }
}

/// Writes `items` with one statement of each kind (per chunk of the
/// back-end's parameter limit); one answer per item, in order.
async fn write_all(
    conn: &mut AnyConnection,
    items: &[PaymentWrite],
) -> Result<Vec<Written>, StoreError> {
    let backend = backend_of(conn).ok_or_else(|| {
        StoreError::GroupCommit(format!("unsupported back-end {}", conn.backend_name()))
    })?;
    let pending: Vec<NewRow<'_>> = items
        .iter()
        .filter_map(|item| match item {
            PaymentWrite::Pending {
                payment_id,
                payment,
                at,
            } => Some(NewRow {
                payment_id,
                payment,
                at,
                total_after: 0,
                created_at: String::new(),
            }),
            PaymentWrite::Finish { .. } => None,
        })
        .collect();
    let stored = insert_pending(conn, backend, pending).await?;

    // Which requests are the first to finish their payment; a later one in
    // the same batch finds it finished.
    let mut seen = HashSet::new();
    let first_finish: Vec<bool> = items
        .iter()
        .map(|item| match item {
            PaymentWrite::Finish { payment_id, .. } => seen.insert(payment_id.as_str()),
            PaymentWrite::Pending { .. } => false,
        })
        .collect();
    let finishes: Vec<&PaymentWrite> = items
        .iter()
        .zip(&first_finish)
        .filter_map(|(item, first)| first.then_some(item))
        .collect();
    let moved = finish(conn, backend, &finishes).await?;
    let events: Vec<Event> = finishes
        .iter()
        .filter_map(|item| match item {
            PaymentWrite::Finish {
                payment_id, event, ..
            } if moved.contains(payment_id) => Some((**event).clone()),
            _ => None,
        })
        .collect();
    trustmesh_events::outbox::record_all_on(conn, &events).await?;

    Ok(items
        .iter()
        .zip(first_finish)
        .map(|(item, first)| match item {
            PaymentWrite::Pending { payment_id, .. } => match stored.get(payment_id) {
                Some(created_at) => Written::Stored {
                    created_at: created_at.clone(),
                },
                None => Written::KeyTaken,
            },
            PaymentWrite::Finish { payment_id, .. } if first && moved.contains(payment_id) => {
                Written::Moved
            }
            PaymentWrite::Finish { .. } => Written::NotPending,
        })
        .collect())
}

/// A new PENDING row on its way in.
struct NewRow<'a> {
    payment_id: &'a str,
    payment: &'a NewPayment,
    at: &'a str,
    /// The payer's running total in the currency with this payment.
    total_after: i64,
    /// Its stamp, once the payer's total is reserved.
    created_at: String,
}

/// A payer's running total in one currency, as a batch sees it.
struct PairTotal {
    /// What this batch's payments of the pair add up to.
    batch_sum: i64,
    /// The latest time one of them was asked for.
    latest_at: String,
    /// The total before this batch (once reserved).
    before: i64,
    /// The stamp of this batch's payments of the pair (once reserved).
    stamp: String,
}

/// Bound values of one payer total.
const TOTAL_PARAMS: usize = 4;

/// Bound values of one PENDING row: every column, the creation time twice.
const PENDING_PARAMS: usize = 11;

/// Stores the PENDING rows with their payers' running totals; the creation
/// time of each one stored, by payment id.
///
/// 1. One upsert adds each (payer, currency)'s share of the batch to
///    `payer_totals` and returns the new total and the pair's stamp: the
///    later of the time asked for and the pair's previous stamp. On
///    PostgreSQL the upsert locks the pair's row until the commit, so two
///    replicas' batches of one payer follow each other. A total that would
///    leave `i64` is not updated (and not returned): the write fails.
/// 2. One `INSERT … ON CONFLICT DO NOTHING RETURNING` of the rows, each
///    with the total right after it.
/// 3. Only when a row was not stored (its key was taken): the totals of
///    the rows after it in its pair, and the pair's total, are corrected,
///    so the chain holds no gap.
async fn insert_pending(
    conn: &mut AnyConnection,
    backend: Backend,
    mut rows: Vec<NewRow<'_>>,
) -> Result<HashMap<String, String>, StoreError> {
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let mut pairs: BTreeMap<(&str, &str), PairTotal> = BTreeMap::new();
    for row in &rows {
        let pair = pairs
            .entry((&row.payment.payer_id, &row.payment.currency))
            .or_insert_with(|| PairTotal {
                batch_sum: 0,
                latest_at: String::new(),
                before: 0,
                stamp: String::new(),
            });
        pair.batch_sum = pair
            .batch_sum
            .checked_add(row.payment.amount)
            .ok_or_else(|| total_overflow(&row.payment.currency))?;
        if row.at > pair.latest_at.as_str() {
            row.at.clone_into(&mut pair.latest_at);
        }
    }
    reserve_totals(conn, backend, &mut pairs).await?;
    for ((payer, currency), pair) in &pairs {
        if pair.stamp != pair.latest_at {
            warn_if_far_behind(payer, currency, pair);
        }
    }

    // Each row's total, in arrival order within its pair.
    let mut running: HashMap<(&str, &str), i64> = HashMap::new();
    for row in &mut rows {
        let key = (row.payment.payer_id.as_str(), row.payment.currency.as_str());
        let Some(pair) = pairs.get(&key) else {
            return Err(StoreError::Inconsistent(
                "a payer total went missing".to_owned(),
            ));
        };
        let total = running.entry(key).or_insert(pair.before);
        *total += row.payment.amount;
        row.total_after = *total;
        row.created_at.clone_from(&pair.stamp);
    }

    let mut stored = HashSet::new();
    for chunk in rows.chunks(sql::max_rows(PENDING_PARAMS)) {
        let statement = format!(
            "INSERT INTO payments (payment_id, payer_id, receiver_id, amount, currency, \
             idempotency_key, status, failure_reason, created_at, updated_at, \
             payer_total_after) VALUES {} \
             ON CONFLICT DO NOTHING RETURNING payment_id",
            sql::rows(backend, chunk.len(), PENDING_PARAMS, 1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(statement));
        for row in chunk {
            query = query
                .bind(row.payment_id)
                .bind(&row.payment.payer_id)
                .bind(&row.payment.receiver_id)
                .bind(row.payment.amount)
                .bind(&row.payment.currency)
                .bind(&row.payment.idempotency_key)
                .bind(PaymentStatus::Pending.as_str())
                .bind(None::<&str>)
                .bind(&row.created_at)
                .bind(&row.created_at)
                .bind(row.total_after);
        }
        for found in query.fetch_all(&mut *conn).await? {
            stored.insert(found.try_get::<String, _>("payment_id")?);
        }
    }
    if stored.len() < rows.len() {
        close_gaps(conn, backend, &rows, &pairs, &stored).await?;
    }
    Ok(rows
        .into_iter()
        .filter(|row| stored.contains(row.payment_id))
        .map(|row| (row.payment_id.to_owned(), row.created_at))
        .collect())
}

/// How far a pair's last stamp may be ahead of this replica's clock before
/// it is worth a warning.
const CLOCK_SKEW_WARNING: time::Duration = time::Duration::minutes(1);

/// Logs a pair whose stamps were clamped far ahead of this replica's clock:
/// a replica's clock is far ahead (or this one's far behind), and every
/// later payment of the pair carries that replica's time until the clocks
/// meet again.
fn warn_if_far_behind(payer: &str, currency: &str, pair: &PairTotal) {
    let (Some(asked), Some(stamped)) = (parse_time(&pair.latest_at), parse_time(&pair.stamp))
    else {
        return;
    };
    if stamped - asked > CLOCK_SKEW_WARNING {
        tracing::warn!(
            payer_id = payer,
            currency,
            asked_at = %pair.latest_at,
            stamped_at = %pair.stamp,
            "a payment was stamped after this replica's clock: the payer's last payment was \
             stamped later (another replica's clock is ahead, or this one is behind)"
        );
    }
}

/// The error of a running total that would leave `i64`.
fn total_overflow(currency: &str) -> StoreError {
    StoreError::Overflow(format!(
        "the payer's running total of payments in {currency} would exceed the largest amount"
    ))
}

/// Adds each pair's share of the batch to `payer_totals`, filling in each
/// pair's total before the batch and its stamp.
async fn reserve_totals(
    conn: &mut AnyConnection,
    backend: Backend,
    pairs: &mut BTreeMap<(&str, &str), PairTotal>,
) -> Result<(), StoreError> {
    let keys: Vec<(&str, &str)> = pairs.keys().copied().collect();
    for chunk in keys.chunks(sql::max_rows(TOTAL_PARAMS)) {
        let statement = format!(
            "INSERT INTO payer_totals AS t (payer_id, currency, total, last_at) VALUES {} \
             ON CONFLICT (payer_id, currency) DO UPDATE \
             SET total = t.total + excluded.total, \
                 last_at = CASE WHEN t.last_at > excluded.last_at \
                           THEN t.last_at ELSE excluded.last_at END \
             WHERE t.total <= 9223372036854775807 - excluded.total \
             RETURNING payer_id, currency, total, last_at",
            sql::rows(backend, chunk.len(), TOTAL_PARAMS, 1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(statement));
        for key in chunk {
            let pair = &pairs[key];
            query = query
                .bind(key.0)
                .bind(key.1)
                .bind(pair.batch_sum)
                .bind(&pair.latest_at);
        }
        let mut answers: HashMap<(String, String), (i64, String)> = HashMap::new();
        for found in query.fetch_all(&mut *conn).await? {
            answers.insert(
                (found.try_get("payer_id")?, found.try_get("currency")?),
                (found.try_get("total")?, found.try_get("last_at")?),
            );
        }
        for key in chunk {
            let Some((total, stamp)) = answers.remove(&(key.0.to_owned(), key.1.to_owned())) else {
                return Err(total_overflow(key.1));
            };
            if let Some(pair) = pairs.get_mut(key) {
                pair.before = total - pair.batch_sum;
                pair.stamp = stamp;
            }
        }
    }
    Ok(())
}

/// Bound values of one corrected row total, and of one corrected pair.
const ROW_FIX_PARAMS: usize = 2;
const PAIR_FIX_PARAMS: usize = 3;

/// Takes the rows that were not stored out of their pairs' chains: the
/// stored rows after them get their true totals, and each pair's total
/// drops by what was not stored.
async fn close_gaps(
    conn: &mut AnyConnection,
    backend: Backend,
    rows: &[NewRow<'_>],
    pairs: &BTreeMap<(&str, &str), PairTotal>,
    stored: &HashSet<String>,
) -> Result<(), StoreError> {
    let mut running: HashMap<(&str, &str), i64> = HashMap::new();
    let mut row_fixes: Vec<(&str, i64)> = Vec::new();
    for row in rows {
        if !stored.contains(row.payment_id) {
            continue;
        }
        let key = (row.payment.payer_id.as_str(), row.payment.currency.as_str());
        let total = running
            .entry(key)
            .or_insert_with(|| pairs.get(&key).map_or(0, |pair| pair.before));
        *total += row.payment.amount;
        if *total != row.total_after {
            row_fixes.push((row.payment_id, *total));
        }
    }
    let pair_fixes: Vec<(&(&str, &str), i64)> = pairs
        .iter()
        .map(|(key, pair)| {
            let kept = running.get(key).copied().unwrap_or(pair.before) - pair.before;
            (key, pair.batch_sum - kept)
        })
        .filter(|(_, dropped)| *dropped > 0)
        .collect();

    for chunk in row_fixes.chunks(sql::max_rows(ROW_FIX_PARAMS)) {
        let statement = format!(
            "UPDATE payments SET payer_total_after = v.column2 FROM (VALUES {}) AS v \
             WHERE payments.payment_id = v.column1",
            sql::rows(backend, chunk.len(), ROW_FIX_PARAMS, 1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(statement));
        for (payment_id, total) in chunk {
            query = query.bind(*payment_id).bind(*total);
        }
        query.execute(&mut *conn).await?;
    }
    for chunk in pair_fixes.chunks(sql::max_rows(PAIR_FIX_PARAMS)) {
        let statement = format!(
            "UPDATE payer_totals SET total = payer_totals.total - v.column3 \
             FROM (VALUES {}) AS v \
             WHERE payer_totals.payer_id = v.column1 AND payer_totals.currency = v.column2",
            sql::rows(backend, chunk.len(), PAIR_FIX_PARAMS, 1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(statement));
        for ((payer, currency), dropped) in chunk {
            query = query.bind(*payer).bind(*currency).bind(*dropped);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Bound values of one outcome.
const FINISH_PARAMS: usize = 4;

/// Moves the PENDING payments to their outcomes; the ids of those moved.
async fn finish(
    conn: &mut AnyConnection,
    backend: Backend,
    rows: &[&PaymentWrite],
) -> Result<HashSet<String>, StoreError> {
    let mut moved = HashSet::new();
    for chunk in rows.chunks(sql::max_rows(FINISH_PARAMS)) {
        let statement = format!(
            "UPDATE payments SET status = v.column2, failure_reason = v.column3, \
             updated_at = v.column4 FROM (VALUES {}) AS v \
             WHERE payments.payment_id = v.column1 AND payments.status = 'PENDING' \
             RETURNING payment_id",
            sql::rows(backend, chunk.len(), FINISH_PARAMS, 1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(statement));
        for row in chunk {
            if let PaymentWrite::Finish {
                payment_id,
                status,
                reason,
                at,
                ..
            } = row
            {
                query = query
                    .bind(payment_id)
                    .bind(status.as_str())
                    .bind(reason.as_deref())
                    .bind(at);
            }
        }
        for row in query.fetch_all(&mut *conn).await? {
            moved.insert(row.try_get::<String, _>("payment_id")?);
        }
    }
    Ok(moved)
}
