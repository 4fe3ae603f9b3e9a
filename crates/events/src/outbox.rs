//! The transactional outbox: a service writes its events into its own
//! `outbox` table in the same database transaction as the change they
//! describe, so an event exists if and only if the change committed. The
//! [`crate::relay`] later ships the rows, oldest first, and deletes each
//! once its destination confirmed it.
//!
//! Every service's migrations create the table with [`OUTBOX_COLUMNS`]:
//!
//! ```sql
//! CREATE TABLE outbox (
//!     id TEXT PRIMARY KEY, created_at TEXT NOT NULL, service TEXT NOT NULL,
//!     action TEXT NOT NULL, target TEXT NOT NULL, details TEXT NOT NULL,
//!     sent_at TEXT, status TEXT NOT NULL DEFAULT 'SUCCESS', actor_user TEXT,
//!     actor_spiffe TEXT, client_ip TEXT, user_agent TEXT, request_id TEXT
//! );
//! CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
//! ```
//!
//! `sent_at` is set only by versions before 2026-12-07, which marked
//! delivered rows instead of deleting them ([`Outbox::purge_sent`] clears
//! those). The partial index stays: it holds the same rows as the primary
//! key now, but on PostgreSQL it is what makes the relay's scan an index
//! scan whatever the table's statistics say (over the primary key the
//! planner chose a sequential scan of the deleted rows not yet vacuumed).

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::AnyConnection;
use tokio::sync::Notify;
use trustmesh_store::group_commit::Writer;
use trustmesh_store::{Backend, Db, StoreError};

use crate::event::{Actor, Event, Status};

/// The columns of the `outbox` table, in the order [`record`] binds them.
pub const OUTBOX_COLUMNS: &str = "id, created_at, service, action, status, actor_user, \
     actor_spiffe, target, client_ip, user_agent, request_id, details";

/// Appends `event` to the outbox inside `tx`: it is shipped if and only if
/// `tx` commits.
pub async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    event: &Event,
) -> Result<(), sqlx::Error> {
    record_on(tx, event).await
}

/// Appends `event` to the outbox on `conn`, which is inside a transaction
/// (a [`trustmesh_store::group_commit::Writer`] unit of work, say): it is
/// shipped if and only if that transaction commits.
pub async fn record_on(conn: &mut sqlx::AnyConnection, event: &Event) -> Result<(), sqlx::Error> {
    record_all_on(conn, std::slice::from_ref(event)).await
}

/// Appends every event of `events` to the outbox on `conn`, which is inside
/// a transaction, with as few multi-row `INSERT`s as the back-end's
/// parameter limit allows (one for up to 2,730 events): they are shipped
/// if and only if that transaction commits. The batch counterpart of
/// [`record_on`].
pub async fn record_all_on(
    conn: &mut sqlx::AnyConnection,
    events: &[Event],
) -> Result<(), sqlx::Error> {
    const COLUMNS: usize = 12;
    let backend = trustmesh_store::sql::backend_of(conn).unwrap_or(Backend::Postgres);
    for chunk in events.chunks(trustmesh_store::sql::max_rows(COLUMNS)) {
        let sql = format!(
            "INSERT INTO outbox ({OUTBOX_COLUMNS}) VALUES {}",
            trustmesh_store::sql::rows(backend, chunk.len(), COLUMNS, 1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for event in chunk {
            query = query
                .bind(&event.id)
                .bind(&event.time)
                .bind(&event.service)
                .bind(&event.action)
                .bind(event.status.as_str())
                .bind(event.actor.user_id.as_deref())
                .bind(event.actor.spiffe_id.as_deref())
                .bind(&event.target)
                .bind(event.client_ip.as_deref())
                .bind(event.user_agent.as_deref())
                .bind(event.request_id.as_deref())
                .bind(event.details.to_string());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A service's outbox: the table plus a wake-up for its relay.
#[derive(Clone, Debug)]
pub struct Outbox {
    db: Db,
    wake: Arc<Notify>,
    /// Where this outbox's own writes go, when the service has a writer.
    writer: Option<Writer>,
}

impl Outbox {
    /// The outbox in `db` (whose migrations created the table).
    pub fn new(db: Db) -> Outbox {
        Outbox {
            db,
            wake: Arc::new(Notify::new()),
            writer: None,
        }
    }

    /// The same outbox, with its own writes (rows marked sent, denies
    /// recorded, sent rows purged) made through `writer`, the service's
    /// group-commit writer over the same database. On SQLite, which has one
    /// writer at a time, a write of the relay on a connection of its own
    /// would otherwise meet the service's writer in SQLite's busy handler,
    /// which polls the lock with sleeps of 1, 2, 5, 10… ms: a stall of
    /// several milliseconds for whatever request the writer was serving.
    pub fn with_writer(mut self, writer: Writer) -> Outbox {
        self.writer = Some(writer);
        self
    }

    /// The database holding the table.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Tells the relay that rows are waiting (it also polls, so this only
    /// cuts latency).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits for [`Outbox::wake`].
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Records events that describe no change of this database (policy
    /// denies, reads), in one write transaction (see [`Outbox::with_writer`]),
    /// and wakes the relay.
    pub async fn record_now(&self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let events = events.to_vec();
        self.write(move |conn| Box::pin(async move { Ok(record_all_on(conn, &events).await?) }))
            .await?;
        self.wake();
        Ok(())
    }

    /// Runs `work` in a write transaction: a unit of the service's writer
    /// when it has one ([`Outbox::with_writer`]), else a transaction of its
    /// own on a pooled connection.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
        T: Send + 'static,
    {
        if let Some(writer) = &self.writer {
            return writer.run(work).await;
        }
        let mut tx = self.db.pool().begin().await?;
        let value = work(&mut tx).await?;
        tx.commit().await?;
        Ok(value)
    }

    /// Up to `limit` unsent events, oldest first (ids are UUID v7).
    pub async fn pending(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.pending_after(None, limit).await
    }

    /// Up to `limit` unsent events after `cursor` (from the oldest unsent
    /// one when `None`), oldest first (ids are UUID v7).
    ///
    /// The rows come as one JSON array built by the database: read row by
    /// row, value by value, through sqlx's `Any` driver they cost the relay
    /// more than publishing them.
    pub async fn pending_after(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let aggregate = match self.db.backend() {
            Backend::Sqlite => format!("json_group_array(json_array({OUTBOX_COLUMNS}))"),
            Backend::Postgres => {
                format!("json_agg(json_build_array({OUTBOX_COLUMNS}))::text")
            }
        };
        // Every id is after the empty string.
        let sql = format!(
            "SELECT {aggregate} FROM (SELECT {OUTBOX_COLUMNS} FROM outbox \
             WHERE sent_at IS NULL AND id > $1 ORDER BY id LIMIT $2) AS batch"
        );
        let json: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(cursor.unwrap_or(""))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_one(self.db.pool())
            .await?;
        let Some(json) = json else {
            return Ok(Vec::new());
        };
        let mut rows: Vec<OutboxRow> = serde_json::from_str(&json)
            .map_err(|e| StoreError::Query(sqlx::Error::Decode(Box::new(e))))?;
        if let (false, Some(writer)) = (rows.is_empty(), &self.writer) {
            // The rows were committed by the writer, maybe not yet synced
            // (`group_commit`, *The log's sync*): none leaves before it is
            // durable, so that no destination holds an event of a change
            // that a power cut took back.
            writer.barrier().await?;
        }
        // The aggregate leaves the order to the database.
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(rows.into_iter().map(row_event).collect())
    }

    /// Removes the delivered events `ids` from the outbox (through the
    /// writer, if it has one). Their destination holds them from then on
    /// (audit, or RabbitMQ's durable queue on the way to it); the outbox
    /// keeps only what waits. Deleting a row costs the database less than
    /// marking it: on PostgreSQL an `UPDATE` of `sent_at` writes a new
    /// version of the row and a new primary-key entry (the partial index
    /// on unsent rows names the column, so the update is never HOT), and
    /// the marked row still had to be deleted later.
    pub async fn remove_delivered(&self, ids: &[&str]) -> Result<(), StoreError> {
        let backend = self.db.backend();
        let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        self.write(move |conn| {
            Box::pin(async move {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                Ok(delete_on(conn, backend, &ids).await?)
            })
        })
        .await
    }

    /// How many events wait to be delivered.
    pub async fn depth(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
                .fetch_one(self.db.pool())
                .await?,
        )
    }

    /// Deletes rows marked delivered before `before` (RFC 3339); returns
    /// how many. Only versions before 2026-12-07 marked rows instead of
    /// removing them ([`Outbox::remove_delivered`]): this clears what they left.
    pub async fn purge_sent(&self, before: &str) -> Result<u64, StoreError> {
        let before = before.to_owned();
        self.write(move |conn| {
            Box::pin(async move {
                let done =
                    sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1")
                        .bind(&before)
                        .execute(&mut *conn)
                        .await?;
                Ok(done.rows_affected())
            })
        })
        .await
    }
}

/// Deletes the rows `ids` on `conn`, at most [`DELETE_CHUNK`] per
/// statement, each statement's id list padded to a power of two
/// ([`trustmesh_store::sql::padded`]: at most ten shapes of it).
async fn delete_on(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    ids: &[&str],
) -> Result<(), sqlx::Error> {
    for chunk in ids.chunks(DELETE_CHUNK) {
        let chunk = trustmesh_store::sql::padded(chunk);
        let sql = format!(
            "DELETE FROM outbox WHERE id IN ({})",
            trustmesh_store::sql::list(backend, chunk.len(), 1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(*id);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The most ids one `DELETE` of [`delete_on`] names (a power of two).
const DELETE_CHUNK: usize = 512;

/// An outbox row as a JSON array of [`OUTBOX_COLUMNS`].
type OutboxRow = (
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
);

/// The event of an outbox row.
fn row_event(row: OutboxRow) -> Event {
    let (
        id,
        time,
        service,
        action,
        status,
        user_id,
        spiffe_id,
        target,
        client_ip,
        user_agent,
        request_id,
        details,
    ) = row;
    Event {
        id,
        time,
        service,
        action,
        status: Status::parse(&status).unwrap_or(Status::Success),
        actor: Actor { user_id, spiffe_id },
        target,
        client_ip,
        user_agent,
        request_id,
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
    }
}
