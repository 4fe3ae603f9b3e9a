//! Read-only queries over the stored events: filters, newest first, pages
//! keyed by leaf index.

use sqlx::any::AnyArguments;
use trustmesh_store::Db;

use crate::log::LogError;
use crate::record::{COLUMNS, Record};

/// The most events one page returns.
pub const MAX_PAGE: u32 = 200;
/// The page size when none is asked for.
pub const DEFAULT_PAGE: u32 = 50;

/// What to select (as JSON, the filters given, in the `AUDIT_READ` event
/// that records the read).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Filter {
    /// Events by or about this user (actor or target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// This action only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// This status only (`SUCCESS`, `FAIL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// From this client IP only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// At or after this time (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// At or before this time (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Only entries with an index below this one (the page token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// Page size (at most [`MAX_PAGE`]).
    pub limit: u32,
}

/// One page of events, newest first, and the token of the next page.
pub async fn list(db: &Db, filter: &Filter) -> Result<(Vec<Record>, Option<u64>), LogError> {
    let mut conditions: Vec<String> = Vec::new();
    let mut values: Vec<String> = Vec::new();
    let next = |values: &mut Vec<String>, value: &str| {
        values.push(value.to_owned());
        format!("${}", values.len())
    };
    if let Some(user) = &filter.user_id {
        let p = next(&mut values, user);
        let q = next(&mut values, user);
        conditions.push(format!("(actor_user = {p} OR target = {q})"));
    }
    for (column, value) in [
        ("action", &filter.action),
        ("status", &filter.status),
        ("client_ip", &filter.client_ip),
    ] {
        if let Some(value) = value {
            let p = next(&mut values, value);
            conditions.push(format!("{column} = {p}"));
        }
    }
    if let Some(since) = &filter.since {
        let p = next(&mut values, since);
        conditions.push(format!("time >= {p}"));
    }
    if let Some(until) = &filter.until {
        let p = next(&mut values, until);
        conditions.push(format!("time <= {p}"));
    }
    let limit = filter.limit.clamp(1, MAX_PAGE);
    let mut sql = format!("SELECT {COLUMNS} FROM events");
    let before_index = values.len() + 1;
    if filter.before.is_some() {
        conditions.push(format!("idx < ${before_index}"));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    let limit_index = before_index + usize::from(filter.before.is_some());
    sql.push_str(&format!(" ORDER BY idx DESC LIMIT ${limit_index}"));
    let mut query = sqlx::query::<sqlx::Any>(sqlx::AssertSqlSafe(sql));
    for value in &values {
        query = query.bind(value.clone());
    }
    if let Some(before) = filter.before {
        query = query.bind(i64::try_from(before).unwrap_or(i64::MAX));
    }
    let query: sqlx::query::Query<'_, sqlx::Any, AnyArguments> = query.bind(i64::from(limit) + 1);
    let rows = query.fetch_all(db.pool()).await?;
    let mut records = Vec::with_capacity(rows.len());
    for row in &rows {
        records.push(Record::from_row(row)?.0);
    }
    let next_page = if records.len() > limit as usize {
        records.truncate(limit as usize);
        records.last().map(|r| r.idx)
    } else {
        None
    };
    Ok((records, next_page))
}
