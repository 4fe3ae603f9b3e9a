//! The secondary copy: daily files `YYYY-MM-DD.log` (JSON lines, one event
//! per line with its index and chain fields, dated by the event's time)
//! under `<data-dir>/audit/log/`, for a SIEM or for an operator who wants a
//! copy of the log outside the database. Signed checkpoints go to
//! `checkpoints.log` beside them (one signed note per block, blank line
//! between) and the newest to `checkpoint.txt`.
//!
//! Lines are written after the database commit. `export.pos` remembers the
//! next index to export; at start the exporter writes what a crash left out,
//! so a line may appear twice (same `idx`), never be missing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::TryStreamExt;
use trustmesh_merkle::{Entry, SignedCheckpoint};
use trustmesh_store::Db;

use crate::log::LogError;
use crate::record::{COLUMNS, Record};

/// Writes the daily files.
#[derive(Debug)]
pub struct Exporter {
    dir: PathBuf,
    lock: Mutex<()>,
}

impl Exporter {
    /// An exporter writing under `dir` (created if missing).
    pub fn new(dir: &Path) -> std::io::Result<Exporter> {
        std::fs::create_dir_all(dir)?;
        Ok(Exporter {
            dir: dir.to_path_buf(),
            lock: Mutex::new(()),
        })
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn position_file(&self) -> PathBuf {
        self.dir.join("export.pos")
    }

    fn position(&self) -> u64 {
        std::fs::read_to_string(self.position_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Exports the rows a crash left out (from `export.pos` on).
    pub async fn catch_up(&self, db: &Db) -> Result<(), LogError> {
        let from = i64::try_from(self.position()).unwrap_or(i64::MAX);
        let sql = format!("SELECT {COLUMNS} FROM events WHERE idx >= $1 ORDER BY idx");
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(from)
            .fetch(db.pool());
        let mut batch = Vec::new();
        while let Some(row) = rows.try_next().await? {
            batch.push(Record::from_row(&row)?);
            if batch.len() == 1000 {
                self.write(&batch);
                batch.clear();
            }
        }
        self.write(&batch);
        Ok(())
    }

    /// Appends `rows` (committed, in index order) to their daily files.
    pub fn write(&self, rows: &[(Record, Entry)]) {
        let Some((last, _)) = rows.last() else {
            return;
        };
        let mut by_day: BTreeMap<&str, String> = BTreeMap::new();
        for (record, entry) in rows {
            let day = record.time.get(..10).unwrap_or("unknown");
            let text = by_day.entry(day).or_default();
            text.push_str(&record.export_line(entry));
            text.push('\n');
        }
        let _guard = self.lock.lock();
        for (day, text) in by_day {
            if let Err(e) = append(&self.dir.join(format!("{day}.log")), text.as_bytes()) {
                tracing::error!(error = %e, day, "cannot write the audit daily file");
                return;
            }
        }
        let next = (last.idx + 1).to_string();
        if let Err(e) = std::fs::write(self.position_file(), next) {
            tracing::error!(error = %e, "cannot record the audit export position");
        }
    }

    /// Records a signed checkpoint beside the daily files.
    pub fn write_checkpoint(&self, signed: &SignedCheckpoint) {
        let text = signed.to_text();
        let _guard = self.lock.lock();
        let result = append(
            &self.dir.join("checkpoints.log"),
            format!("{text}\n").as_bytes(),
        )
        .and_then(|()| {
            let tmp = self.dir.join("checkpoint.txt.tmp");
            std::fs::write(&tmp, &text)?;
            std::fs::rename(&tmp, self.dir.join("checkpoint.txt"))
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot write the audit checkpoint file");
        }
    }

    /// Deletes the daily files of days before `day`.
    pub fn remove_days_before(&self, day: time::Date) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let format = time::macros::format_description!("[year]-[month]-[day]");
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".log") else {
                continue;
            };
            if let Ok(date) = time::Date::parse(stem, &format)
                && date < day
                && let Err(e) = std::fs::remove_file(entry.path())
            {
                tracing::warn!(error = %e, file = %name, "cannot remove an old audit file");
            }
        }
    }
}

fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(bytes)
}
