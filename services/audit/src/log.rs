//! The tamper-evident log: appends events as Merkle leaves (with their hash
//! chain values) in one transaction with the log's state, signs
//! checkpoints, verifies the whole log, and applies retention.
//!
//! One process writes a log. The state row is updated with a
//! compare-and-swap, so a second writer by mistake fails loudly instead of
//! forking the log.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Mutex;
use trustmesh_events::Event;
use trustmesh_merkle::{
    Entry, LogState, LogVerifier, SignedCheckpoint, SigningKey, VerifyError, VerifyReport,
    VerifyingKey,
};
use trustmesh_store::{Backend, Db, StoreError, sql};

use crate::export::Exporter;
use crate::record::{COLUMN_COUNT, COLUMNS, Record, RowError};

/// Rows per multi-row `INSERT`.
const INSERT_CHUNK: usize = 60;

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored row or state cannot be read.
    #[error("the audit log is damaged: {0}")]
    Damaged(String),
    /// Another process changed the log's state under this one.
    #[error("the audit log was changed by another writer; restart the audit service")]
    ConcurrentWriter,
    /// Signing a checkpoint failed.
    #[error("cannot sign a checkpoint: {0}")]
    Checkpoint(#[from] trustmesh_merkle::CheckpointError),
    /// Retention refused to cut a log whose stored chain does not verify.
    #[error("retention stopped: {0}")]
    Tampered(#[from] VerifyError),
}

impl From<sqlx::Error> for LogError {
    fn from(e: sqlx::Error) -> Self {
        LogError::Store(StoreError::Query(e))
    }
}

impl From<RowError> for LogError {
    fn from(e: RowError) -> Self {
        LogError::Damaged(e.to_string())
    }
}

/// What an append did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// Events stored now.
    pub appended: u32,
    /// Events already in the log (redeliveries), skipped.
    pub duplicates: u32,
}

/// The audit log of one service instance.
#[derive(Debug)]
pub struct AuditLog {
    db: Db,
    origin: String,
    key: SigningKey,
    state: Mutex<LogState>,
    exporter: Option<Arc<Exporter>>,
    appended: tokio::sync::watch::Sender<u64>,
}

impl AuditLog {
    /// Opens the log in `db` (migrated), signing checkpoints as `origin`
    /// with `key`, copying events to daily files through `exporter`.
    pub async fn open(
        db: Db,
        origin: &str,
        key: SigningKey,
        exporter: Option<Arc<Exporter>>,
    ) -> Result<AuditLog, LogError> {
        let state = load_state(&db).await?;
        if let Some(exporter) = &exporter {
            exporter.catch_up(&db).await?;
        }
        let (appended, _) = tokio::sync::watch::channel(state.size());
        Ok(AuditLog {
            db,
            origin: origin.to_owned(),
            key,
            state: Mutex::new(state),
            exporter,
            appended,
        })
    }

    /// The log's origin (the name in its checkpoints).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The key that verifies this log's checkpoints.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The number of entries (including any removed by retention).
    pub async fn size(&self) -> u64 {
        self.state.lock().await.size()
    }

    /// A receiver of the log size after every append (for waiting in tests
    /// and for the checkpointer).
    pub fn watch_size(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Appends `events` in order, skipping those already stored (same id),
    /// in one transaction; nothing is stored if it fails.
    pub async fn append(&self, events: &[Event]) -> Result<Appended, LogError> {
        if events.is_empty() {
            return Ok(Appended::default());
        }
        let mut state = self.state.lock().await;
        let existing = self.existing_ids(events).await?;
        let mut seen = HashSet::new();
        let mut working = state.clone();
        let mut rows = Vec::with_capacity(events.len());
        let mut outcome = Appended::default();
        for event in events {
            if existing.contains(&event.id) || !seen.insert(event.id.as_str()) {
                outcome.duplicates += 1;
                continue;
            }
            let record = Record::of(working.size(), event);
            let entry = working.append(&record.canonical_bytes());
            rows.push((record, entry));
            outcome.appended += 1;
        }
        if rows.is_empty() {
            return Ok(outcome);
        }
        let mut tx = self.db.pool().begin().await?;
        // The state first: a compare-and-swap that also takes the write lock.
        let old = state_json(&state)?;
        let new = state_json(&working)?;
        let updated = sqlx::query("UPDATE log_state SET state = $1 WHERE id = 1 AND state = $2")
            .bind(&new)
            .bind(&old)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() != 1 {
            return Err(LogError::ConcurrentWriter);
        }
        let backend = self.db.backend();
        for chunk in rows.chunks(INSERT_CHUNK) {
            let statement = format!(
                "{} INTO events ({COLUMNS}) VALUES {}",
                insert(backend),
                sql::rows(backend, chunk.len(), COLUMN_COUNT, 1)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(statement));
            for (record, entry) in chunk {
                query = record.bind_row(entry, query);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        *state = working;
        if let Some(exporter) = &self.exporter {
            exporter.write(&rows);
        }
        self.appended.send_replace(state.size());
        Ok(outcome)
    }

    /// The ids of `events` the log holds already; each statement's id list
    /// is padded to a power of two ([`sql::padded`]: at most ten shapes).
    async fn existing_ids(&self, events: &[Event]) -> Result<HashSet<String>, LogError> {
        let mut existing = HashSet::new();
        let backend = self.db.backend();
        for chunk in events.chunks(512) {
            let chunk = sql::padded(chunk);
            let statement = format!(
                "SELECT id FROM events WHERE id IN ({})",
                sql::list(backend, chunk.len(), 1)
            );
            let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(statement));
            for event in chunk {
                query = query.bind(event.id.as_str());
            }
            existing.extend(query.fetch_all(self.db.pool()).await?);
        }
        Ok(existing)
    }

    /// Signs and stores a checkpoint of the current size, unless one
    /// exists already; returns it when it signed one.
    pub async fn sign_checkpoint(&self) -> Result<Option<SignedCheckpoint>, LogError> {
        let state = self.state.lock().await;
        let size = state.size();
        if size == 0 {
            return Ok(None);
        }
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT size FROM checkpoints WHERE size = $1")
                .bind(i64::try_from(size).unwrap_or(i64::MAX))
                .fetch_optional(self.db.pool())
                .await?;
        if exists.is_some() {
            return Ok(None);
        }
        let signed = self.key.sign(&state.checkpoint(&self.origin, unix_now())?);
        store_checkpoint(&mut *self.db.pool().acquire().await?, size, &signed).await?;
        drop(state);
        if let Some(exporter) = &self.exporter {
            exporter.write_checkpoint(&signed);
        }
        Ok(Some(signed))
    }

    /// Removes the entries whose time is before `cutoff` from the start of
    /// the log, keeping the state and a signed checkpoint at the cut (the
    /// anchor), so verification of what remains still passes. Returns how
    /// many entries were removed.
    pub async fn apply_retention(&self, cutoff: OffsetDateTime) -> Result<u64, LogError> {
        let cutoff_text = cutoff.format(&Rfc3339).unwrap_or_default();
        let _state = self.state.lock().await;
        let (anchor_size, anchor_state, _) = load_anchor(&self.db).await?;
        // The cut: the first entry still within retention (or the end).
        let first_kept: Option<i64> =
            sqlx::query_scalar("SELECT MIN(idx) FROM events WHERE time >= $1")
                .bind(&cutoff_text)
                .fetch_one(self.db.pool())
                .await?;
        let end: Option<i64> = sqlx::query_scalar("SELECT MAX(idx) FROM events")
            .fetch_one(self.db.pool())
            .await?;
        let cut = match (first_kept, end) {
            (Some(first), _) => u64::try_from(first).unwrap_or(0),
            (None, Some(last)) => u64::try_from(last).unwrap_or(0) + 1,
            (None, None) => return Ok(0),
        };
        if cut <= anchor_size {
            return Ok(0);
        }
        // Replay the stored hashes up to the cut, checking the chain: a
        // tampered log is not cut (that would erase the evidence).
        let mut at_cut = anchor_state;
        for_each_entry(
            &self.db,
            i64::try_from(cut).unwrap_or(i64::MAX),
            |record, stored| {
                let entry = at_cut.append(&record.canonical_bytes());
                if entry != stored {
                    return Err(LogError::Tampered(VerifyError::ChainMismatch {
                        index: stored.index,
                        computed: trustmesh_merkle::to_hex(&entry.chain),
                        stored: trustmesh_merkle::to_hex(&stored.chain),
                    }));
                }
                Ok(())
            },
        )
        .await?;
        if at_cut.size() != cut {
            return Err(LogError::Damaged(format!(
                "entries before {cut} are missing (only {} found)",
                at_cut.size()
            )));
        }
        let signed = self.key.sign(&at_cut.checkpoint(&self.origin, unix_now())?);
        let mut tx = self.db.pool().begin().await?;
        store_checkpoint(&mut tx, cut, &signed).await?;
        sqlx::query("DELETE FROM anchor WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO anchor (id, size, state, checkpoint) VALUES (1, $1, $2, $3)")
            .bind(i64::try_from(cut).unwrap_or(i64::MAX))
            .bind(state_json(&at_cut)?)
            .bind(signed.to_text())
            .execute(&mut *tx)
            .await?;
        let removed = sqlx::query("DELETE FROM events WHERE idx < $1")
            .bind(i64::try_from(cut).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        if let Some(exporter) = &self.exporter {
            exporter.write_checkpoint(&signed);
            exporter.remove_days_before(cutoff.date());
        }
        tracing::info!(removed, cut, "audit retention applied");
        Ok(removed)
    }
}

/// Why verification failed: the first problem found.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFailure {
    /// The log does not verify.
    #[error(transparent)]
    Log(#[from] VerifyError),
    /// A checkpoint's signature or text is bad.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] trustmesh_merkle::CheckpointError),
    /// The log could not be read.
    #[error(transparent)]
    Read(#[from] LogError),
}

impl From<sqlx::Error> for VerifyFailure {
    fn from(e: sqlx::Error) -> Self {
        VerifyFailure::Read(e.into())
    }
}

/// Recomputes the whole log in `db` (named `origin`) and checks it against
/// every stored checkpoint signed by one of `trusted`, plus `extra` (the
/// text of an earlier checkpoint kept elsewhere, e.g. `--checkpoint FILE`).
pub async fn verify(
    db: &Db,
    origin: &str,
    trusted: &[VerifyingKey],
    extra: Option<&str>,
) -> Result<VerifyReport, VerifyFailure> {
    // The state first: rows and checkpoints beyond it are appends that
    // committed after it was read (the service may be running).
    let persisted = load_state(db).await?;
    let size = i64::try_from(persisted.size()).unwrap_or(i64::MAX);
    let (anchor_size, anchor_state, anchor_checkpoint) = load_anchor(db).await?;
    let mut verifier = match &anchor_checkpoint {
        Some(text) => {
            let checkpoint = SignedCheckpoint::open(text, trusted)?;
            LogVerifier::resume(origin, anchor_state, checkpoint.checkpoint())?
        }
        None => LogVerifier::new(origin),
    };
    let mut checkpoints = Vec::new();
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT signed FROM checkpoints WHERE size > $1 AND size <= $2 ORDER BY size",
    )
    .bind(i64::try_from(anchor_size).unwrap_or(i64::MAX))
    .bind(size)
    .fetch_all(db.pool())
    .await?;
    for text in &stored {
        checkpoints.push(SignedCheckpoint::open(text, trusted)?);
    }
    if let Some(text) = extra {
        let given = SignedCheckpoint::open(text, trusted)?;
        if given.checkpoint().size() < anchor_size {
            return Err(VerifyError::BeforeAnchor {
                size: given.checkpoint().size(),
                anchor: anchor_size,
            }
            .into());
        }
        if given.checkpoint().size() > anchor_size {
            checkpoints.push(given);
        }
    }
    checkpoints.sort_by_key(|c| c.checkpoint().size());
    for checkpoint in &checkpoints {
        verifier.expect_checkpoint(checkpoint.checkpoint())?;
    }
    for_each_entry(db, size, |record, entry| {
        verifier
            .push(&record.canonical_bytes(), &entry)
            .map_err(VerifyFailure::from)
    })
    .await?;
    let report = verifier.finish()?;
    // The persisted state must be the recomputed one (else rows were
    // appended or removed behind the service's back).
    if persisted.size() > report.size {
        return Err(VerifyError::Truncated {
            origin: origin.to_owned(),
            checkpoint_size: persisted.size(),
            log_size: report.size,
        }
        .into());
    }
    if persisted != report.state {
        return Err(LogError::Damaged(format!(
            "the stored log state (size {}) is not the state the entries produce (size {})",
            persisted.size(),
            report.size
        ))
        .into());
    }
    Ok(report)
}

/// Entries fetched by one query when the whole log is read.
const CHUNK: i64 = 4096;

/// Calls `each` with every entry whose index is below `below`, in index
/// order; stops at the first error.
///
/// The entries are fetched in chunks of [`CHUNK`], each chunk as one JSON
/// array built by the database (see [`Record::from_json_chunk`]): going
/// through the driver row by row, value by value, was 95 % of the time
/// of `verify`, hashing the rest. A task of its own fetches the next chunks
/// while this one hashes.
async fn for_each_entry<E>(
    db: &Db,
    below: i64,
    mut each: impl FnMut(Record, Entry) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<LogError>,
{
    // The order of the rows in the array is left to the database (an
    // `ORDER BY` in the aggregate makes SQLite sort what is sorted already);
    // `from_json_chunk` puts them back in index order.
    let aggregate = match db.backend() {
        Backend::Sqlite => format!("json_group_array(json_array({COLUMNS}))"),
        Backend::Postgres => format!("json_agg(json_build_array({COLUMNS}))::text"),
    };
    let sql = format!(
        "SELECT {aggregate}, COUNT(*), MAX(idx) FROM \
         (SELECT {COLUMNS} FROM events WHERE idx >= $1 AND idx < $2 ORDER BY idx LIMIT $3) AS chunk"
    );
    let (chunks, mut next) = tokio::sync::mpsc::channel::<Result<String, LogError>>(2);
    let pool = db.pool().clone();
    let backend = db.backend();
    let reader = tokio::spawn(async move {
        // One read transaction, so the chunks are one snapshot of the log,
        // as a single query's rows would be.
        let begun = async {
            let mut tx = pool.begin().await?;
            if backend == Backend::Postgres {
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *tx)
                    .await?;
            }
            Ok::<_, sqlx::Error>(tx)
        };
        let mut tx = match begun.await {
            Ok(tx) => tx,
            Err(e) => {
                let _ = chunks.send(Err(e.into())).await;
                return;
            }
        };
        let mut from = i64::MIN;
        loop {
            let fetched: Result<(Option<String>, i64, Option<i64>), sqlx::Error> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(from)
                    .bind(below)
                    .bind(CHUNK)
                    .fetch_one(&mut *tx)
                    .await;
            let (json, count, last) = match fetched {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = chunks.send(Err(e.into())).await;
                    return;
                }
            };
            if count > 0
                && let Some(json) = json
                && chunks.send(Ok(json)).await.is_err()
            {
                return;
            }
            match last {
                Some(last) if count == CHUNK && last < i64::MAX => from = last + 1,
                _ => return,
            }
        }
    });
    let result = async {
        while let Some(chunk) = next.recv().await {
            let entries = Record::from_json_chunk(&chunk?).map_err(LogError::from)?;
            for (record, entry) in entries {
                each(record, entry)?;
            }
        }
        Ok(())
    }
    .await;
    reader.abort();
    result
}

/// How a multi-row insert starts. On SQLite, `INSERT OR FAIL`: a row that
/// breaks a constraint stops the statement without undoing its earlier rows,
/// so SQLite keeps no statement journal (a copy of every page the statement
/// changes, needed to undo only the statement); the whole transaction is
/// rolled back on any error anyway.
fn insert(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "INSERT OR FAIL",
        Backend::Postgres => "INSERT",
    }
}

fn state_json(state: &LogState) -> Result<String, LogError> {
    serde_json::to_string(state).map_err(|e| LogError::Damaged(e.to_string()))
}

/// The persisted state (creating the row for a new log).
async fn load_state(db: &Db) -> Result<LogState, LogError> {
    let text: Option<String> = sqlx::query_scalar("SELECT state FROM log_state WHERE id = 1")
        .fetch_optional(db.pool())
        .await?;
    match text {
        Some(text) => {
            serde_json::from_str(&text).map_err(|e| LogError::Damaged(format!("log state: {e}")))
        }
        None => {
            let state = LogState::new();
            sqlx::query("INSERT INTO log_state (id, state) VALUES (1, $1)")
                .bind(state_json(&state)?)
                .execute(db.pool())
                .await?;
            Ok(state)
        }
    }
}

/// The retention anchor: its size, state and signed checkpoint (size 0,
/// the empty state and none when retention never ran).
async fn load_anchor(db: &Db) -> Result<(u64, LogState, Option<String>), LogError> {
    let row = sqlx::query("SELECT size, state, checkpoint FROM anchor WHERE id = 1")
        .fetch_optional(db.pool())
        .await?;
    match row {
        None => Ok((0, LogState::new(), None)),
        Some(row) => {
            let size: i64 = row.try_get("size")?;
            let state: String = row.try_get("state")?;
            let state: LogState = serde_json::from_str(&state)
                .map_err(|e| LogError::Damaged(format!("anchor state: {e}")))?;
            Ok((
                u64::try_from(size).unwrap_or(0),
                state,
                Some(row.try_get("checkpoint")?),
            ))
        }
    }
}

async fn store_checkpoint(
    conn: &mut sqlx::AnyConnection,
    size: u64,
    signed: &SignedCheckpoint,
) -> Result<(), LogError> {
    sqlx::query("DELETE FROM checkpoints WHERE size = $1")
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO checkpoints (size, signed, created_at) VALUES ($1, $2, $3)")
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .bind(signed.to_text())
        .bind(trustmesh_events::event::now_rfc3339())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn unix_now() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
}

/// Signs a checkpoint every `every` while the log grows, until `shutdown`.
pub fn spawn_checkpointer(
    log: Arc<AuditLog>,
    every: Duration,
    shutdown: trustmesh_runtime::Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.wait() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = log.sign_checkpoint().await {
                tracing::error!(error = %e, "cannot sign an audit checkpoint");
            }
        }
        // A last checkpoint covering everything appended before the stop.
        if let Err(e) = log.sign_checkpoint().await {
            tracing::error!(error = %e, "cannot sign the final audit checkpoint");
        }
    })
}
