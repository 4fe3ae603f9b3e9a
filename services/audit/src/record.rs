//! A stored event: its row, and the canonical bytes its Merkle leaf hashes.
//!
//! The canonical bytes are the JSON of [`Record`] with its fields in
//! declaration order and `details` as the exact stored text, so they can be
//! rebuilt from the row byte for byte. `idx` is part of them: moving a row
//! changes its leaf.

use serde::Serialize;
use sqlx::Row;
use trustmesh_events::{Actor, Event, Status};
use trustmesh_merkle::{Entry, Hash, from_hex, to_hex};

/// The columns of the `events` table, in the order [`Record::bind_row`] binds them.
pub const COLUMNS: &str = "idx, id, time, service, action, status, actor_user, actor_spiffe, \
     target, client_ip, user_agent, request_id, details, leaf_hash, chain";

/// One event as stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    /// The leaf index.
    pub idx: u64,
    /// The event id (UUID).
    pub id: String,
    /// RFC 3339 time of the event.
    pub time: String,
    /// Producing service.
    pub service: String,
    /// Action name.
    pub action: String,
    /// `SUCCESS` or `FAIL`.
    pub status: String,
    /// Acting end user.
    pub actor_user: Option<String>,
    /// Acting workload.
    pub actor_spiffe: Option<String>,
    /// Target of the action.
    pub target: String,
    /// Client IP address.
    pub client_ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Details, as JSON text.
    pub details: String,
}

/// A row that cannot be read back (a damaged database).
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// The driver could not decode a column.
    #[error(transparent)]
    Column(#[from] sqlx::Error),
    /// A chunk of rows rendered as JSON by the database cannot be read.
    #[error("the entries near index {near} cannot be read: {source}")]
    Json {
        /// The index of one entry of the chunk.
        near: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A hash column is not 64 hex digits.
    #[error("entry {idx}: column {column} is not a SHA-256 hash in hex")]
    BadHash {
        /// The row's index.
        idx: u64,
        /// The column.
        column: &'static str,
    },
}

impl Record {
    /// The record of `event` at leaf index `idx`.
    pub fn of(idx: u64, event: &Event) -> Record {
        Record {
            idx,
            id: event.id.clone(),
            time: event.time.clone(),
            service: event.service.clone(),
            action: event.action.clone(),
            status: event.status.as_str().to_owned(),
            actor_user: event.actor.user_id.clone(),
            actor_spiffe: event.actor.spiffe_id.clone(),
            target: event.target.clone(),
            client_ip: event.client_ip.clone(),
            user_agent: event.user_agent.clone(),
            request_id: event.request_id.clone(),
            details: event.details.to_string(),
        }
    }

    /// The canonical bytes hashed into the Merkle leaf.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serializing plain strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The record and its stored entry from a row selected with
    /// [`COLUMNS`] (in that order), on any driver: `Any`, or the native
    /// SQLite or PostgreSQL one.
    pub fn from_row<R>(row: &R) -> Result<(Record, Entry), RowError>
    where
        R: Row,
        usize: sqlx::ColumnIndex<R>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let idx: i64 = row.try_get(0)?;
        let idx = u64::try_from(idx).unwrap_or(u64::MAX);
        let hash = |at: usize, column: &'static str| -> Result<Hash, RowError> {
            let text: String = row.try_get(at)?;
            from_hex(&text).ok_or(RowError::BadHash { idx, column })
        };
        let entry = Entry {
            index: idx,
            leaf_hash: hash(13, "leaf_hash")?,
            chain: hash(14, "chain")?,
        };
        let record = Record {
            idx,
            id: row.try_get(1)?,
            time: row.try_get(2)?,
            service: row.try_get(3)?,
            action: row.try_get(4)?,
            status: row.try_get(5)?,
            actor_user: row.try_get(6)?,
            actor_spiffe: row.try_get(7)?,
            target: row.try_get(8)?,
            client_ip: row.try_get(9)?,
            user_agent: row.try_get(10)?,
            request_id: row.try_get(11)?,
            details: row.try_get(12)?,
        };
        Ok((record, entry))
    }

    /// The records and entries, in index order, of a chunk of rows that
    /// the database rendered as one JSON array, each row the array of the
    /// values of [`COLUMNS`] in order (`json_group_array(json_array(...))`
    /// on SQLite, `json_agg(json_build_array(...))` on PostgreSQL). A
    /// string goes through JSON and back unchanged, so the records are
    /// exactly the stored ones; reading thousands of rows as one value
    /// avoids the driver's cost per row and per value.
    pub fn from_json_chunk(json: &str) -> Result<Vec<(Record, Entry)>, RowError> {
        let mut rows: Vec<JsonRow> =
            serde_json::from_str(json).map_err(|source| RowError::Json {
                near: first_index(json),
                source,
            })?;
        // Usually in order already, which the sort checks in linear time.
        rows.sort_by_key(|row| row.0);
        rows.into_iter()
            .map(|row| {
                let idx = u64::try_from(row.0).unwrap_or(u64::MAX);
                let hash = |text: &str, column: &'static str| {
                    from_hex(text).ok_or(RowError::BadHash { idx, column })
                };
                let entry = Entry {
                    index: idx,
                    leaf_hash: hash(&row.13, "leaf_hash")?,
                    chain: hash(&row.14, "chain")?,
                };
                let record = Record {
                    idx,
                    id: row.1,
                    time: row.2,
                    service: row.3,
                    action: row.4,
                    status: row.5,
                    actor_user: row.6,
                    actor_spiffe: row.7,
                    target: row.8,
                    client_ip: row.9,
                    user_agent: row.10,
                    request_id: row.11,
                    details: row.12,
                };
                Ok((record, entry))
            })
            .collect()
    }

    /// The event this record holds.
    pub fn event(&self) -> Event {
        Event {
            id: self.id.clone(),
            time: self.time.clone(),
            service: self.service.clone(),
            action: self.action.clone(),
            status: Status::parse(&self.status).unwrap_or(Status::Fail),
            actor: Actor {
                user_id: self.actor_user.clone(),
                spiffe_id: self.actor_spiffe.clone(),
            },
            target: self.target.clone(),
            client_ip: self.client_ip.clone(),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id.clone(),
            details: serde_json::from_str(&self.details)
                .unwrap_or_else(|_| serde_json::Value::String(self.details.clone())),
        }
    }

    /// The daily-file line: the record plus its chain fields, as JSON.
    pub fn export_line(&self, entry: &Entry) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            #[serde(flatten)]
            record: &'a Record,
            leaf_hash: String,
            chain: String,
        }
        serde_json::to_string(&Line {
            record: self,
            leaf_hash: to_hex(&entry.leaf_hash),
            chain: to_hex(&entry.chain),
        })
        .unwrap_or_default()
    }

    /// Binds the values of [`COLUMNS`] (with the entry's hashes) to `query`.
    pub fn bind_row<'q>(
        &'q self,
        entry: &Entry,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        query
            .bind(i64::try_from(self.idx).unwrap_or(i64::MAX))
            .bind(&self.id)
            .bind(&self.time)
            .bind(&self.service)
            .bind(&self.action)
            .bind(&self.status)
            .bind(self.actor_user.as_deref())
            .bind(self.actor_spiffe.as_deref())
            .bind(&self.target)
            .bind(self.client_ip.as_deref())
            .bind(self.user_agent.as_deref())
            .bind(self.request_id.as_deref())
            .bind(&self.details)
            .bind(to_hex(&entry.leaf_hash))
            .bind(to_hex(&entry.chain))
    }
}

/// One row of [`COLUMNS`] as a JSON array (see [`Record::from_json_chunk`]).
type JsonRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
);

/// The index at the start of a JSON chunk, for error messages.
fn first_index(json: &str) -> String {
    json.trim_start_matches(|c: char| c == '[' || c.is_whitespace())
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect()
}

/// How many columns [`Record::bind_row`] binds.
pub const COLUMN_COUNT: usize = 15;
