//! Set-based writes of the payment path: the PENDING rows and the outcomes
//! that queued up together for the payment store's writer are written with
//! a fixed, small number of statements for the whole batch instead of a
//! transaction (or a savepoint) and two or three statements each.
//!
//! [`PaymentBatch`] is the [`BatchHandler`] of the store's
//! [`BatchWriter`](trustmesh_store::group_commit::BatchWriter). Inside the
//! batch's transaction:
//!
//! 1. one multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING payment_id`
//!    of the new PENDING payments: a payment whose payer's idempotency key
//!    is already taken (a retry, or a concurrent request with the same key,
//!    in this batch or before it) is not returned, and its caller hears
//!    `false`;
//! 2. one `UPDATE … FROM (VALUES …) … WHERE status = 'PENDING' RETURNING
//!    payment_id` moving the settled payments to their outcome: a payment
//!    already finished (by a concurrent retry) is not returned, its caller
//!    hears `false` and no event is written for it. A payment finished twice
//!    in one batch is moved by its first request only;
//! 3. one multi-row `INSERT` of the outbox events of the payments moved.
//!
//! No caller hears back before the commit (the writer answers after it).
//! If the set-based attempt fails as a whole (a constraint, or on
//! PostgreSQL a deadlock with another replica's batch), the writer rolls it
//! back and runs each write alone ([`PaymentBatch::run_one`]) in its own
//! savepoint, so one bad request cannot fail the others.

use std::collections::HashSet;

use futures::future::BoxFuture;
use sqlx::{AnyConnection, Row};
use trustmesh_events::Event;
use trustmesh_store::group_commit::{BatchHandler, BatchOutcome};
use trustmesh_store::sql::{self, backend_of};
use trustmesh_store::{Backend, StoreError};

use crate::store::{NewPayment, PaymentStatus};

/// One write of the payment path.
#[derive(Clone, Debug)]
pub enum PaymentWrite {
    /// Store a new payment as PENDING; answered `true` when stored, `false`
    /// when the payer's idempotency key is already taken.
    Pending {
        /// The payment's id (UUID v7, the wallet transfer id).
        payment_id: String,
        /// What the payer asked for.
        payment: NewPayment,
        /// Its creation time (stored form).
        at: String,
    },
    /// Move a PENDING payment to its outcome and record its event; answered
    /// `true` when moved, `false` when it was no longer PENDING (no event is
    /// written then).
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

/// Writes [`PaymentWrite`]s set-based (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct PaymentBatch;

impl BatchHandler for PaymentBatch {
    type Item = PaymentWrite;
    type Output = bool;
    type Error = StoreError;

    fn run_batch<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        items: &'a [PaymentWrite],
    ) -> BoxFuture<'a, BatchOutcome<bool, StoreError>> {
        Box::pin(async move { Ok(write_all(conn, items).await?.into_iter().map(Ok).collect()) })
    }

    fn run_one<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        item: &'a PaymentWrite,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let answers = write_all(conn, std::slice::from_ref(item)).await?;
            Ok(answers.first().copied().unwrap_or(false))
        })
    }
}

/// Writes `items` with one statement of each kind (per chunk of the
/// back-end's parameter limit); one answer per item, in order.
async fn write_all(
    conn: &mut AnyConnection,
    items: &[PaymentWrite],
) -> Result<Vec<bool>, StoreError> {
    let backend = backend_of(conn).ok_or_else(|| {
        StoreError::GroupCommit(format!("unsupported back-end {}", conn.backend_name()))
    })?;
    let pending: Vec<&PaymentWrite> = items
        .iter()
        .filter(|item| matches!(item, PaymentWrite::Pending { .. }))
        .collect();
    let inserted = insert_pending(conn, backend, &pending).await?;

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
            PaymentWrite::Pending { payment_id, .. } => inserted.contains(payment_id),
            PaymentWrite::Finish { payment_id, .. } => first && moved.contains(payment_id),
        })
        .collect())
}

/// Bound values of one PENDING row: every column, the creation time twice.
const PENDING_PARAMS: usize = 10;

/// Inserts the PENDING rows; the ids of those stored.
async fn insert_pending(
    conn: &mut AnyConnection,
    backend: Backend,
    rows: &[&PaymentWrite],
) -> Result<HashSet<String>, StoreError> {
    let mut inserted = HashSet::new();
    for chunk in rows.chunks(sql::max_rows(PENDING_PARAMS)) {
        let statement = format!(
            "INSERT INTO payments (payment_id, payer_id, receiver_id, amount, currency, \
             idempotency_key, status, failure_reason, created_at, updated_at) VALUES {} \
             ON CONFLICT DO NOTHING RETURNING payment_id",
            sql::rows(backend, chunk.len(), PENDING_PARAMS, 1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(statement));
        for row in chunk {
            if let PaymentWrite::Pending {
                payment_id,
                payment,
                at,
            } = row
            {
                query = query
                    .bind(payment_id)
                    .bind(&payment.payer_id)
                    .bind(&payment.receiver_id)
                    .bind(payment.amount)
                    .bind(&payment.currency)
                    .bind(&payment.idempotency_key)
                    .bind(PaymentStatus::Pending.as_str())
                    .bind(None::<&str>)
                    .bind(at)
                    .bind(at);
            }
        }
        for row in query.fetch_all(&mut *conn).await? {
            inserted.insert(row.try_get::<String, _>("payment_id")?);
        }
    }
    Ok(inserted)
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
