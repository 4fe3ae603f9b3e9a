//! The payers' rolling 24 h volumes, read in batches.
//!
//! Every `CreatePayment` reads its payer's volume before the policy decides
//! (the only statement of the payment path that runs once per payment; its
//! writes are set-based in [`crate::batch`]). [`VolumeRead`] is the
//! [`ReadHandler`] of the store's [`ReadBatcher`]: the (payer, currency)
//! pairs of the payments that arrived while the previous read was in
//! flight are read with one statement.
//!
//! A pair's volume comes from its running total (migration 0003): the
//! total, minus the total after the pair's last payment (stored or
//! refused) before the window, minus the FAILED and the refused payments of
//! the window — index seeks, never a sum over the window. Every term is part
//! of the total, so a chain that does not add up is an error
//! ([`StoreError::Inconsistent`]), never a volume lower than the truth.
//!
//! [`ReadBatcher`]: trustmesh_store::read_batch::ReadBatcher

use std::collections::HashMap;

use futures::future::BoxFuture;
use sqlx::{AnyPool, Row};
use time::OffsetDateTime;
use trustmesh_store::read_batch::ReadHandler;
use trustmesh_store::sql;
use trustmesh_store::{Backend, StoreError};

use crate::store::{VOLUME_WINDOW, timestamp};

/// A payer's volume in one currency.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PayerCurrency {
    /// The payer (canonical UUID).
    pub payer_id: String,
    /// The currency (ISO 4217 code).
    pub currency: String,
}

/// Reads the volumes of many pairs with one statement (see the module
/// documentation). Each pair's answer is its own: one inconsistent chain
/// does not fail the others.
#[derive(Clone, Copy, Debug, Default)]
pub struct VolumeRead;

impl ReadHandler for VolumeRead {
    type Key = PayerCurrency;
    type Output = Result<i64, StoreError>;

    fn read<'a>(
        &'a self,
        pool: &'a AnyPool,
        keys: &'a [PayerCurrency],
    ) -> BoxFuture<'a, Result<Vec<Self::Output>, StoreError>> {
        Box::pin(async move {
            let since = timestamp(OffsetDateTime::now_utc() - VOLUME_WINDOW);
            let mut unique: Vec<&PayerCurrency> = Vec::with_capacity(keys.len());
            for key in keys {
                if !unique.contains(&key) {
                    unique.push(key);
                }
            }
            // Padded to a power of two with the last pair again: at most
            // seven statement shapes (a batch has at most 64 pairs), each
            // prepared once per connection.
            let padded = sql::padded(&unique);
            let mut query = sqlx::query(sqlx::AssertSqlSafe(volume_sql(padded.len()))).bind(since);
            for pair in padded {
                query = query.bind(&pair.payer_id).bind(&pair.currency);
            }
            let rows = query.fetch_all(pool).await?;
            let mut volumes: HashMap<PayerCurrency, Result<i64, String>> =
                HashMap::with_capacity(rows.len());
            for row in rows {
                let pair = PayerCurrency {
                    payer_id: row.try_get("payer_id")?,
                    currency: row.try_get("currency")?,
                };
                let volume = volume_of(&pair, &row)?;
                volumes.insert(pair, volume);
            }
            Ok(keys
                .iter()
                .map(|key| {
                    // A pair without a total has never paid in that currency.
                    match volumes.get(key) {
                        None => Ok(0),
                        Some(Ok(volume)) => Ok(*volume),
                        Some(Err(why)) => Err(StoreError::Inconsistent(why.clone())),
                    }
                })
                .collect())
        })
    }
}

/// The volume statement for `pairs` pairs: `$1` is the window's start, then
/// each pair's payer and currency. Numbered placeholders on both back-ends
/// (`$1` appears five times; SQLite binds `$n` by number, and a statement of
/// at most [`MAX_KEYS`](trustmesh_store::read_batch::MAX_KEYS) pairs is far
/// from where looking them up costs).
fn volume_sql(pairs: usize) -> String {
    format!(
        "WITH k (payer_id, currency) AS (VALUES {values}) \
         SELECT k.payer_id, k.currency, t.total, \
           (SELECT p.payer_total_after FROM payments p \
            WHERE p.payer_id = k.payer_id AND p.currency = k.currency AND p.created_at < $1 \
            ORDER BY p.created_at DESC, p.payer_total_after DESC LIMIT 1) AS stored_before, \
           (SELECT r.payer_total_after FROM refused_payments r \
            WHERE r.payer_id = k.payer_id AND r.currency = k.currency AND r.created_at < $1 \
            ORDER BY r.created_at DESC, r.payer_total_after DESC LIMIT 1) AS refused_before, \
           (SELECT CAST(COALESCE(SUM(f.amount), 0) AS BIGINT) FROM payments f \
            WHERE f.payer_id = k.payer_id AND f.currency = k.currency AND f.created_at >= $1 \
              AND f.status = 'FAILED') AS failed, \
           (SELECT CAST(COALESCE(SUM(r.amount), 0) AS BIGINT) FROM refused_payments r \
            WHERE r.payer_id = k.payer_id AND r.currency = k.currency \
              AND r.created_at >= $1) AS refused \
         FROM k JOIN payer_totals t ON t.payer_id = k.payer_id AND t.currency = k.currency",
        values = sql::rows(Backend::Postgres, pairs, 2, 2),
    )
}

/// One pair's volume from its row of [`volume_sql`]; `Err` of the outer
/// result is a row that cannot be read, of the inner one a chain that does
/// not add up (what is wrong with it).
fn volume_of(
    PayerCurrency { payer_id, currency }: &PayerCurrency,
    row: &sqlx::any::AnyRow,
) -> Result<Result<i64, String>, StoreError> {
    let total: i64 = row.try_get("total")?;
    let stored_before: Option<i64> = row.try_get("stored_before")?;
    let refused_before: Option<i64> = row.try_get("refused_before")?;
    let failed: i64 = row.try_get("failed")?;
    let refused: i64 = row.try_get("refused")?;
    let before = stored_before.max(refused_before).unwrap_or(0);
    Ok(total
        .checked_sub(before)
        .and_then(|v| v.checked_sub(failed))
        .and_then(|v| v.checked_sub(refused))
        .filter(|v| *v >= 0)
        .ok_or_else(|| {
            format!(
                "the running total of payer {payer_id} in {currency} is inconsistent \
                 (total {total}, before the window {before}, failed {failed}, \
                 refused {refused})"
            )
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_numbers_the_pairs_after_the_window() {
        let sql = volume_sql(2);
        assert!(sql.contains("VALUES ($2, $3), ($4, $5))"), "{sql}");
        assert!(!sql.contains("$6"), "{sql}");
    }
}
