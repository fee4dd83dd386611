//! The outbox's reading side: the second connection the uplink fetches
//! through, and the dead letters as another process lists them. WAL
//! readers never wait for the writer, so nothing here queues behind a
//! commit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::db::{explain, kind_of, read_tables};
use super::StoreError;
use crate::clock;
use crate::record::{Record, TsSource};

/// The outbox's second connection: it reads what the writer committed
/// (WAL readers never wait for the writer), so a sink fetching its next
/// records never queues behind commits.
pub struct Reader {
    conn: Connection,
    path: PathBuf,
    tables: HashMap<String, String>,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| explain(path, e))?;
        conn.execute_batch("PRAGMA query_only = 1;")
            .map_err(|e| explain(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| explain(path, e))?;
        let tables = read_tables(&conn).map_err(|e| explain(path, e))?;
        Ok(Reader {
            conn,
            path: path.to_path_buf(),
            tables,
        })
    }

    fn table(&mut self, sink: &str) -> Result<Option<String>, StoreError> {
        if !self.tables.contains_key(sink) {
            // Made by the writer since (the first record of a new sink).
            self.tables = read_tables(&self.conn).map_err(|e| explain(&self.path, e))?;
        }
        Ok(self.tables.get(sink).cloned())
    }

    /// Rows of `sink` with `after < id < before`, oldest first. A
    /// provisional stamp is corrected here, once the wall clock is
    /// trusted: every reading leaves with the best time known when it
    /// leaves.
    pub fn fetch(
        &mut self,
        sink: &str,
        after: i64,
        before: i64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let Some(table) = self.table(sink)? else {
            return Ok(Vec::new());
        };
        let path = self.path.clone();
        let mut stmt = self
            .conn
            // No LIMIT parameter: SQLite (with STAT4, as bundled) makes a
            // plan depend on a bound LIMIT's value, so every fetch with
            // another limit prepared the statement again (perf at 200
            // readings/s: a tenth of the process's CPU in the parser).
            // Rows come one step at a time, so taking `limit` of them
            // below reads no more than that.
            .prepare_cached(&format!(
                "SELECT id, ts, kind, device, topic, payload, ts_offset, ingested_at FROM {table}
                 WHERE id > ?1 AND id < ?2 ORDER BY id"
            ))
            .map_err(|e| explain(&path, e))?;
        let now = clock::now();
        let run_began = clock::run_began_ms();
        let rows = stmt
            .query_map(params![after, before], |r| {
                let stamped: i64 = r.get(1)?;
                let (ts, ts_source) = stamp(stamped, r.get(6)?, r.get(7)?, &now, run_began);
                Ok(Record {
                    id: r.get(0)?,
                    sink: sink.to_string(),
                    ts,
                    kind: kind_of(r.get(2)?),
                    device: r.get(3)?,
                    topic: r.get(4)?,
                    payload: r.get(5)?,
                    ts_source,
                })
            })
            .map_err(|e| explain(&path, e))?;
        rows.take(limit)
            .collect::<Result<_, _>>()
            .map_err(|e| explain(&path, e))
    }

    /// When the oldest row of `sink` was stored (ms), if it has one.
    pub fn oldest_ingested(&mut self, sink: &str) -> Result<Option<i64>, StoreError> {
        let Some(table) = self.table(sink)? else {
            return Ok(None);
        };
        let path = self.path.clone();
        self.conn
            .prepare_cached(&format!(
                "SELECT ingested_at FROM {table} ORDER BY id LIMIT 1"
            ))
            .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
            .map_err(|e| explain(&path, e))
    }

    /// The newest row id of `sink`, or 0.
    pub fn last_id(&mut self, sink: &str) -> Result<i64, StoreError> {
        let Some(table) = self.table(sink)? else {
            return Ok(0);
        };
        self.conn
            .query_row(
                &format!("SELECT COALESCE(MAX(id), 0) FROM {table}"),
                [],
                |r| r.get(0),
            )
            .map_err(|e| explain(&self.path, e))
    }
}

/// A stored `ts` as it leaves: a provisional one (`offset` set) is
/// corrected by the wall clock's step once that clock is trusted; one
/// stored before this run began (`ingested_at` below `run_began`) can only
/// be estimated.
pub(super) fn stamp(
    ts: i64,
    offset: Option<i64>,
    ingested_at: i64,
    now: &clock::Now,
    run_began: i64,
) -> (i64, TsSource) {
    match offset {
        None => (ts, TsSource::Trusted),
        Some(offset) if !now.trusted => (ts, TsSource::Provisional { offset }),
        Some(offset) => {
            let fixed = clock::correct(ts, offset, now);
            if ingested_at < run_began {
                (fixed, TsSource::Estimated)
            } else {
                (fixed, TsSource::Corrected)
            }
        }
    }
}

/// A record moved aside because its platform can never take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: i64,
    pub sink: String,
    pub device: String,
    pub ts: i64,
    pub reason: String,
    pub moved_at: i64,
    pub payload: Vec<u8>,
}

/// Lists dead letters from a closed or running outbox (read-only).
pub fn dead_letters(path: &Path) -> Result<Vec<DeadLetter>, StoreError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| explain(path, e))?;
    let has_table: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'dead_letters'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| explain(path, e))?;
    if has_table == 0 {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare(
            "SELECT id, sink, device, ts, reason, moved_at, payload FROM dead_letters ORDER BY id",
        )
        .map_err(|e| explain(path, e))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(DeadLetter {
                id: r.get(0)?,
                sink: r.get(1)?,
                device: r.get(2)?,
                ts: r.get(3)?,
                reason: r.get(4)?,
                moved_at: r.get(5)?,
                payload: r.get(6)?,
            })
        })
        .map_err(|e| explain(path, e))?;
    rows.collect::<Result<_, _>>().map_err(|e| explain(path, e))
}
