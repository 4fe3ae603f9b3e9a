//! The payment service's tables (payments, rollbacks, outbox) and their
//! queries. Every state change that is audited writes its event to the
//! outbox in the same transaction (`trustmesh_events::outbox::record`).
//!
//! A payment row is written PENDING before the wallet is called (its id is
//! the wallet transfer id), then moved to COMPLETED or FAILED with its event;
//! a rollback likewise (PENDING, then COMPLETED with the payment moved to
//! ROLLED_BACK). Every transition is conditional on the current status, so
//! concurrent retries finishing the same payment record it once.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use trustmesh_events::Event;
use trustmesh_store::group_commit::{BatchWriter, Writer};
use trustmesh_store::read_batch::{ReadBatcher, ReadStats};
use trustmesh_store::{Db, StoreError};

use crate::batch::{PaymentBatch, PaymentWrite, Written};
use crate::volume::{PayerCurrency, VolumeRead};

/// The rolling window of the payer's volume.
pub const VOLUME_WINDOW: time::Duration = time::Duration::hours(24);

/// Volume reads running at a time: one statement in flight while the next
/// batch queues (a second keeps a slow read from holding up the others).
pub const VOLUME_READS_IN_FLIGHT: usize = 2;

/// The longest idempotency key accepted, in characters.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The longest rollback reason accepted, in characters.
pub const MAX_REASON: usize = 500;

const PAYMENT_COLUMNS: &str = "p.payment_id, p.payer_id, p.receiver_id, p.amount, p.currency, \
     p.idempotency_key, p.status, p.failure_reason, p.created_at, p.updated_at, \
     r.rollback_id, r.by_user_id, r.reason AS rollback_reason, r.status AS rollback_status, \
     r.created_at AS rollback_created_at";

const PAYMENT_FROM: &str = "FROM payments p LEFT JOIN rollbacks r ON r.payment_id = p.payment_id";

/// Where a payment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    /// Stored, the wallet's answer not yet recorded.
    Pending,
    /// The wallet moved the money.
    Completed,
    /// The wallet refused (see the failure reason).
    Failed,
    /// Completed, then undone by finance.
    RolledBack,
}

impl PaymentStatus {
    /// `PENDING`, `COMPLETED`, `FAILED` or `ROLLED_BACK`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::RolledBack => "ROLLED_BACK",
        }
    }

    /// The status named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PENDING" => Some(Self::Pending),
            "COMPLETED" => Some(Self::Completed),
            "FAILED" => Some(Self::Failed),
            "ROLLED_BACK" => Some(Self::RolledBack),
            _ => None,
        }
    }
}

/// A payment as the payer asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPayment {
    /// The paying user (canonical UUID).
    pub payer_id: String,
    /// The receiving user (canonical UUID).
    pub receiver_id: String,
    /// Minor units, > 0.
    pub amount: i64,
    /// Three uppercase letters.
    pub currency: String,
    /// The payer's idempotency key.
    pub idempotency_key: String,
}

/// The rollback of a payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollback {
    /// Its id (the compensating transfer's id).
    pub rollback_id: String,
    /// The payment it undoes.
    pub payment_id: String,
    /// The finance user who asked for it.
    pub by_user_id: String,
    /// Why.
    pub reason: String,
    /// `false` while the wallet's answer is not recorded.
    pub completed: bool,
    /// When it was asked for.
    pub created_at: String,
}

/// A stored payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    /// The payment id (the wallet transfer id).
    pub payment_id: String,
    /// The paying user.
    pub payer_id: String,
    /// The receiving user.
    pub receiver_id: String,
    /// Minor units.
    pub amount: i64,
    /// The currency.
    pub currency: String,
    /// The payer's idempotency key.
    pub idempotency_key: String,
    /// Where it stands.
    pub status: PaymentStatus,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// Its rollback, if one was asked for.
    pub rollback: Option<Rollback>,
    /// When it was created (RFC 3339 UTC).
    pub created_at: String,
    /// When its status last changed.
    pub updated_at: String,
}

impl Payment {
    /// Whether `new` asks for exactly this payment (the idempotency check).
    pub fn matches(&self, new: &NewPayment) -> bool {
        self.payer_id == new.payer_id
            && self.receiver_id == new.receiver_id
            && self.amount == new.amount
            && self.currency == new.currency
            && self.idempotency_key == new.idempotency_key
    }
}

/// Filters of the finance listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaymentFilter {
    /// Payments where this user pays or receives.
    pub user_id: Option<String>,
    /// `created_at >= since` (normalized timestamp).
    pub since: Option<String>,
    /// `created_at < until` (normalized timestamp).
    pub until: Option<String>,
    /// `amount >= min_amount`.
    pub min_amount: Option<i64>,
    /// `amount <= max_amount`.
    pub max_amount: Option<i64>,
    /// Only this status.
    pub status: Option<PaymentStatus>,
    /// Older than this payment id (the page token).
    pub before: Option<String>,
}

/// The fixed-width UTC timestamp stored in every time column (see
/// [`trustmesh_store::timestamp`]).
pub use trustmesh_store::timestamp;

/// Parses an RFC 3339 time (any offset) into the stored form.
pub fn normalize_time(text: &str) -> Option<String> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(timestamp)
}

/// Parses a stored (or any RFC 3339) time.
pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// The prefix of page tokens (versioned).
const PAGE_TOKEN_PREFIX: &str = "p1:";

/// The opaque token naming the page after `payment_id`.
pub fn page_token(payment_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_PREFIX}{payment_id}"))
}

/// The payment id a page token continues after (`None`: not one of ours).
pub fn parse_page_token(token: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let id = text.strip_prefix(PAGE_TOKEN_PREFIX)?;
    uuid::Uuid::parse_str(id).ok()?;
    Some(id.to_owned())
}

/// Queries over a payment database.
#[derive(Debug, Clone)]
pub struct PaymentStore {
    db: Db,
    /// Runs the writes of the payment path, set-based
    /// ([`crate::batch`]).
    writer: BatchWriter<PaymentBatch>,
    /// Reads the payers' volumes in batches ([`crate::volume`]).
    volumes: ReadBatcher<VolumeRead>,
}

impl PaymentStore {
    /// Wraps an open (migrated) database.
    pub fn new(db: Db) -> Self {
        let writer = BatchWriter::new(&db, PaymentBatch);
        let volumes = ReadBatcher::new(&db, VolumeRead, VOLUME_READS_IN_FLIGHT);
        Self {
            db,
            writer,
            volumes,
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The writer every write of the payment path goes through (its
    /// plain units share the queue and transactions of the set-based
    /// writes).
    pub fn writer(&self) -> &Writer {
        self.writer.writer()
    }

    /// Set-based writes and units committed so far.
    pub fn writer_stats(&self) -> trustmesh_store::group_commit::WriterStats {
        self.writer.stats()
    }

    /// The payment with this id.
    pub async fn get(&self, payment_id: &str) -> Result<Option<Payment>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PAYMENT_COLUMNS} {PAYMENT_FROM} WHERE p.payment_id = $1"
        )))
        .bind(payment_id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.as_ref().map(payment_of).transpose()?)
    }

    /// The payment `payer_id` made with `key`.
    pub async fn by_key(&self, payer_id: &str, key: &str) -> Result<Option<Payment>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PAYMENT_COLUMNS} {PAYMENT_FROM} \
             WHERE p.payer_id = $1 AND p.idempotency_key = $2"
        )))
        .bind(payer_id)
        .bind(key)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.as_ref().map(payment_of).transpose()?)
    }

    /// The payer's volume in `currency` over the last 24 h: pending,
    /// completed and rolled back payments (what the wallet counts, plus
    /// the ones in flight).
    ///
    /// Read from the payer's running total with the volumes of the other
    /// payments asking at the same time ([`crate::volume`]).
    pub async fn volume_24h(&self, payer_id: &str, currency: &str) -> Result<i64, StoreError> {
        self.volumes
            .read(PayerCurrency {
                payer_id: payer_id.to_owned(),
                currency: currency.to_owned(),
            })
            .await?
    }

    /// Volume reads so far and the statements that served them.
    pub fn volume_stats(&self) -> ReadStats {
        self.volumes.stats()
    }

    /// Where the running totals disagree with the payments: each pair's
    /// total against the sum of its stored and refused payments, and each
    /// link of each chain against its amount. Empty when they agree.
    pub async fn check_totals(&self) -> Result<Vec<String>, StoreError> {
        let mut problems = Vec::new();
        // Every pair with a payment, stored or refused, and its total (0
        // when it has no total row: a payment written around the totals).
        let totals = sqlx::query(
            "SELECT k.payer_id, k.currency, \
               COALESCE((SELECT t.total FROM payer_totals t \
                 WHERE t.payer_id = k.payer_id AND t.currency = k.currency), 0) AS total, \
               CAST(COALESCE((SELECT SUM(p.amount) FROM payments p \
                 WHERE p.payer_id = k.payer_id AND p.currency = k.currency), 0) \
               + COALESCE((SELECT SUM(r.amount) FROM refused_payments r \
                 WHERE r.payer_id = k.payer_id AND r.currency = k.currency), 0) AS BIGINT) AS summed \
             FROM (SELECT payer_id, currency FROM payer_totals \
                   UNION SELECT payer_id, currency FROM payments \
                   UNION SELECT payer_id, currency FROM refused_payments) AS k \
             ORDER BY k.payer_id, k.currency",
        )
        .fetch_all(self.db.pool())
        .await?;
        for row in totals {
            let (total, summed): (i64, i64) = (row.try_get("total")?, row.try_get("summed")?);
            if total != summed {
                problems.push(format!(
                    "payer {} in {}: total {total}, payments add up to {summed}",
                    row.try_get::<String, _>("payer_id")?,
                    row.try_get::<String, _>("currency")?,
                ));
            }
        }
        let links = sqlx::query(
            "SELECT payment_id, payer_id, currency, amount, payer_total_after, previous FROM ( \
               SELECT payment_id, payer_id, currency, amount, payer_total_after, \
                 LAG(payer_total_after, 1, 0) OVER ( \
                   PARTITION BY payer_id, currency \
                   ORDER BY created_at, payer_total_after) AS previous \
               FROM (SELECT payment_id, payer_id, currency, amount, created_at, payer_total_after \
                     FROM payments \
                     UNION ALL \
                     SELECT payment_id, payer_id, currency, amount, created_at, payer_total_after \
                     FROM refused_payments) AS chain \
             ) AS links \
             WHERE payer_total_after IS NULL OR payer_total_after <> previous + amount \
             ORDER BY payer_id, currency, payment_id",
        )
        .fetch_all(self.db.pool())
        .await?;
        for row in links {
            problems.push(format!(
                "payment {} of payer {} in {}: total after {:?}, the one before {:?} plus {}",
                row.try_get::<String, _>("payment_id")?,
                row.try_get::<String, _>("payer_id")?,
                row.try_get::<String, _>("currency")?,
                row.try_get::<Option<i64>, _>("payer_total_after")?,
                row.try_get::<Option<i64>, _>("previous")?,
                row.try_get::<i64, _>("amount")?,
            ));
        }
        Ok(problems)
    }

    /// Stores `new` as PENDING under a fresh UUID v7. `None` when the
    /// payer's key is already taken (a concurrent retry).
    pub async fn insert_pending(&self, new: &NewPayment) -> Result<Option<Payment>, StoreError> {
        let payment_id = uuid::Uuid::now_v7().to_string();
        let now = timestamp(OffsetDateTime::now_utc());
        let written = self
            .writer
            .submit(PaymentWrite::Pending {
                payment_id: payment_id.clone(),
                payment: new.clone(),
                at: now,
            })
            .await?;
        let Written::Stored { created_at } = written else {
            return Ok(None);
        };
        Ok(Some(Payment {
            payment_id,
            payer_id: new.payer_id.clone(),
            receiver_id: new.receiver_id.clone(),
            amount: new.amount,
            currency: new.currency.clone(),
            idempotency_key: new.idempotency_key.clone(),
            status: PaymentStatus::Pending,
            failure_reason: None,
            rollback: None,
            created_at: created_at.clone(),
            updated_at: created_at,
        }))
    }

    /// Moves the PENDING `payment` to `status` (COMPLETED or FAILED with
    /// `reason`) and records `event` in the same transaction; a payment
    /// already finished (by a concurrent retry) is left as it is and no
    /// event is written. Returns the payment as stored afterwards.
    pub async fn finish(
        &self,
        payment: &Payment,
        status: PaymentStatus,
        reason: Option<&str>,
        event: &Event,
    ) -> Result<Payment, StoreError> {
        let now = timestamp(OffsetDateTime::now_utc());
        let written = self
            .writer
            .submit(PaymentWrite::Finish {
                payment_id: payment.payment_id.clone(),
                status,
                reason: reason.map(str::to_owned),
                at: now.clone(),
                event: Box::new(event.clone()),
            })
            .await?;
        if written == Written::Moved {
            return Ok(Payment {
                status,
                failure_reason: reason.map(str::to_owned),
                updated_at: now,
                ..payment.clone()
            });
        }
        self.get(&payment.payment_id)
            .await?
            .ok_or(StoreError::Query(sqlx::Error::RowNotFound))
    }

    /// Removes a PENDING payment the wallet refused for a reason that is
    /// not a payment outcome (a limit, an invalid field): its key may be
    /// used again. It keeps its place in the payer's running total in
    /// `refused_payments`.
    pub async fn delete_pending(&self, payment_id: &str) -> Result<(), StoreError> {
        let now = timestamp(OffsetDateTime::now_utc());
        let mut tx = self.db.pool().begin().await?;
        // The DELETE takes the row (and on PostgreSQL re-checks its status
        // after a concurrent `finish`): only a payment still PENDING moves,
        // and only once.
        let removed = sqlx::query(
            "DELETE FROM payments WHERE payment_id = $1 AND status = 'PENDING' \
             RETURNING payer_id, currency, amount, created_at, payer_total_after",
        )
        .bind(payment_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = removed {
            sqlx::query(
                "INSERT INTO refused_payments (payment_id, payer_id, currency, amount, \
                 created_at, payer_total_after, refused_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(payment_id)
            .bind(row.try_get::<String, _>("payer_id")?)
            .bind(row.try_get::<String, _>("currency")?)
            .bind(row.try_get::<i64, _>("amount")?)
            .bind(row.try_get::<String, _>("created_at")?)
            .bind(row.try_get::<Option<i64>, _>("payer_total_after")?)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Up to `limit` payments matching `filter`, newest first.
    pub async fn list(
        &self,
        filter: &PaymentFilter,
        limit: u32,
    ) -> Result<Vec<Payment>, StoreError> {
        let mut clauses: Vec<String> = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        let mut numbers: Vec<i64> = Vec::new();
        // Placeholders are numbered in bind order: texts first, then numbers.
        let mut text_clause = |template: &str, value: &str, clauses: &mut Vec<String>| {
            texts.push(value.to_owned());
            clauses.push(template.replace("?", &format!("${}", texts.len())));
        };
        if let Some(user) = &filter.user_id {
            text_clause("(p.payer_id = ? OR p.receiver_id = ?)", user, &mut clauses);
        }
        if let Some(since) = &filter.since {
            text_clause("p.created_at >= ?", since, &mut clauses);
        }
        if let Some(until) = &filter.until {
            text_clause("p.created_at < ?", until, &mut clauses);
        }
        if let Some(status) = filter.status {
            text_clause("p.status = ?", status.as_str(), &mut clauses);
        }
        if let Some(before) = &filter.before {
            text_clause("p.payment_id < ?", before, &mut clauses);
        }
        let mut number_clauses = Vec::new();
        if let Some(min) = filter.min_amount {
            numbers.push(min);
            number_clauses.push(("p.amount >= ", numbers.len()));
        }
        if let Some(max) = filter.max_amount {
            numbers.push(max);
            number_clauses.push(("p.amount <= ", numbers.len()));
        }
        let offset = texts.len();
        for (clause, n) in number_clauses {
            clauses.push(format!("{clause}${}", offset + n));
        }
        let where_clause = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT {PAYMENT_COLUMNS} {PAYMENT_FROM} {where_clause} \
             ORDER BY p.payment_id DESC LIMIT ${}",
            offset + numbers.len() + 1
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for text in &texts {
            query = query.bind(text);
        }
        for number in &numbers {
            query = query.bind(*number);
        }
        let rows = query
            .bind(i64::from(limit))
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows
            .iter()
            .map(payment_of)
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Claims the rollback of `payment_id` as PENDING under a fresh UUID
    /// v7. `Err(existing)` when the payment already has one.
    pub async fn begin_rollback(
        &self,
        payment_id: &str,
        by_user_id: &str,
        reason: &str,
    ) -> Result<Result<Rollback, Rollback>, StoreError> {
        let rollback = Rollback {
            rollback_id: uuid::Uuid::now_v7().to_string(),
            payment_id: payment_id.to_owned(),
            by_user_id: by_user_id.to_owned(),
            reason: reason.to_owned(),
            completed: false,
            created_at: timestamp(OffsetDateTime::now_utc()),
        };
        let inserted = sqlx::query(
            "INSERT INTO rollbacks (rollback_id, payment_id, by_user_id, reason, status, \
             created_at) VALUES ($1, $2, $3, $4, 'PENDING', $5) ON CONFLICT DO NOTHING",
        )
        .bind(&rollback.rollback_id)
        .bind(&rollback.payment_id)
        .bind(&rollback.by_user_id)
        .bind(&rollback.reason)
        .bind(&rollback.created_at)
        .execute(self.db.pool())
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Ok(rollback));
        }
        let existing = self
            .get(payment_id)
            .await?
            .and_then(|p| p.rollback)
            .ok_or(StoreError::Query(sqlx::Error::RowNotFound))?;
        Ok(Err(existing))
    }

    /// Records a rollback the wallet posted: the rollback COMPLETED, the
    /// payment ROLLED_BACK and `event`, in one transaction (once).
    pub async fn complete_rollback(
        &self,
        rollback: &Rollback,
        event: &Event,
    ) -> Result<Payment, StoreError> {
        let now = timestamp(OffsetDateTime::now_utc());
        let mut tx = self.db.pool().begin().await?;
        let updated = sqlx::query(
            "UPDATE rollbacks SET status = 'COMPLETED' WHERE rollback_id = $1 AND status = 'PENDING'",
        )
        .bind(&rollback.rollback_id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 1 {
            sqlx::query(
                "UPDATE payments SET status = 'ROLLED_BACK', updated_at = $1 \
                 WHERE payment_id = $2 AND status = 'COMPLETED'",
            )
            .bind(&now)
            .bind(&rollback.payment_id)
            .execute(&mut *tx)
            .await?;
            trustmesh_events::outbox::record(&mut tx, event).await?;
        }
        tx.commit().await?;
        self.get(&rollback.payment_id)
            .await?
            .ok_or(StoreError::Query(sqlx::Error::RowNotFound))
    }

    /// Drops a PENDING rollback the wallet refused (the receiver cannot
    /// cover it) and records `event` (the refused attempt) with it: finance
    /// may try again later.
    pub async fn abandon_rollback(
        &self,
        rollback: &Rollback,
        event: &Event,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.pool().begin().await?;
        let deleted =
            sqlx::query("DELETE FROM rollbacks WHERE rollback_id = $1 AND status = 'PENDING'")
                .bind(&rollback.rollback_id)
                .execute(&mut *tx)
                .await?;
        if deleted.rows_affected() == 1 {
            trustmesh_events::outbox::record(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Moves `payment_id`'s creation time back by `by` (tests of the
    /// rolling window and the rollback window). Moving each of a payer's
    /// payments back by the same span keeps the order of its running
    /// total.
    #[doc(hidden)]
    pub async fn backdate(&self, payment_id: &str, by: time::Duration) -> Result<(), StoreError> {
        let created: String =
            sqlx::query_scalar("SELECT created_at FROM payments WHERE payment_id = $1")
                .bind(payment_id)
                .fetch_one(self.db.pool())
                .await?;
        let created = parse_time(&created).ok_or_else(|| {
            StoreError::Inconsistent(format!("unreadable created_at {created:?}"))
        })?;
        sqlx::query("UPDATE payments SET created_at = $1 WHERE payment_id = $2")
            .bind(timestamp(created - by))
            .bind(payment_id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }
}

fn payment_of(row: &AnyRow) -> Result<Payment, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let status = PaymentStatus::parse(&status).ok_or_else(|| {
        sqlx::Error::Decode(format!("unexpected payments.status value {status:?}").into())
    })?;
    let rollback_id: Option<String> = row.try_get("rollback_id")?;
    let rollback = match rollback_id {
        Some(rollback_id) => {
            let state: String = row.try_get("rollback_status")?;
            Some(Rollback {
                rollback_id,
                payment_id: row.try_get("payment_id")?,
                by_user_id: row.try_get("by_user_id")?,
                reason: row.try_get("rollback_reason")?,
                completed: state == "COMPLETED",
                created_at: row.try_get("rollback_created_at")?,
            })
        }
        None => None,
    };
    Ok(Payment {
        payment_id: row.try_get("payment_id")?,
        payer_id: row.try_get("payer_id")?,
        receiver_id: row.try_get("receiver_id")?,
        amount: row.try_get("amount")?,
        currency: row.try_get("currency")?,
        idempotency_key: row.try_get("idempotency_key")?,
        status,
        failure_reason: row.try_get("failure_reason")?,
        rollback,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_forgeries() {
        let id = uuid::Uuid::now_v7().to_string();
        assert_eq!(parse_page_token(&page_token(&id)), Some(id.clone()));
        for bad in [
            "",
            "!!",
            &URL_SAFE_NO_PAD.encode(&id),
            &URL_SAFE_NO_PAD.encode("p1:x"),
        ] {
            assert_eq!(parse_page_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_normalize_to_fixed_width_utc() {
        assert_eq!(
            normalize_time("2026-01-02T03:04:05+01:00").as_deref(),
            Some("2026-01-02T02:04:05.000000Z")
        );
        assert_eq!(normalize_time("yesterday"), None);
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            PaymentStatus::Pending,
            PaymentStatus::Completed,
            PaymentStatus::Failed,
            PaymentStatus::RolledBack,
        ] {
            assert_eq!(PaymentStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(PaymentStatus::parse("pending"), None);
    }
}
