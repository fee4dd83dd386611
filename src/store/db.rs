//! The SQLite file behind the outbox: schema, pragmas, and the statements the
//! writer thread runs. Nothing here is shared between threads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Transaction};

use super::StoreError;
use crate::config::Synchronous;
use crate::record::{Record, RecordKind};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sink        TEXT    NOT NULL,
    device      TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    ts          INTEGER NOT NULL,
    topic       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    size        INTEGER NOT NULL,
    ingested_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_sink ON records (sink, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id        INTEGER PRIMARY KEY,
    sink      TEXT    NOT NULL,
    device    TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    ts        INTEGER NOT NULL,
    topic     TEXT    NOT NULL,
    payload   BLOB    NOT NULL,
    reason    TEXT    NOT NULL,
    moved_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS inbound_qos2 (
    client TEXT    NOT NULL,
    pkid   INTEGER NOT NULL,
    at     INTEGER NOT NULL,
    PRIMARY KEY (client, pkid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    sink  TEXT    NOT NULL,
    name  TEXT    NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (sink, name)
);
";

/// Queue depth of one sink, as kept in memory by the writer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    pub records: u64,
    pub bytes: u64,
}

pub struct Db {
    conn: Connection,
    path: PathBuf,
}

/// Maps a SQLite error to one that says which file and what to do.
pub fn explain(path: &Path, e: rusqlite::Error) -> StoreError {
    let code = e.sqlite_error_code();
    let p = path.to_path_buf();
    match code {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: p,
            detail: e.to_string(),
        },
        Some(ErrorCode::ReadOnly)
        | Some(ErrorCode::CannotOpen)
        | Some(ErrorCode::PermissionDenied) => StoreError::Unwritable {
            path: p,
            detail: e.to_string(),
        },
        Some(ErrorCode::DiskFull) => StoreError::DiskFull { path: p },
        _ => StoreError::Sqlite {
            path: p,
            detail: e.to_string(),
        },
    }
}

impl Db {
    pub fn open(path: &Path, sync: Synchronous) -> Result<Db, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unwritable {
                path: dir.to_path_buf(),
                detail: format!("cannot create the directory: {e}"),
            })?;
        }
        let conn = Connection::open(path).map_err(|e| explain(path, e))?;
        let db = Db {
            conn,
            path: path.to_path_buf(),
        };
        db.init(sync).map_err(|e| explain(path, e))?;
        Ok(db)
    }

    fn init(&self, sync: Synchronous) -> rusqlite::Result<()> {
        // Reading the schema validates the file header: a file that is not
        // a database fails here, at startup, with a clear error.
        self.conn
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?;
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("cannot switch to WAL mode (got `{mode}`)")),
            ));
        }
        let level = match sync {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        self.conn
            .execute_batch(&format!("PRAGMA synchronous = {level};"))?;
        self.conn.busy_timeout(std::time::Duration::from_secs(5))?;
        self.conn.execute_batch(SCHEMA)?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version == 0 {
            self.conn
                .execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
        }
        // Probe that the file is writable now, not at the first reading.
        self.conn.execute_batch("BEGIN IMMEDIATE; COMMIT;")?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn depths(&self) -> rusqlite::Result<HashMap<String, Depth>> {
        let mut stmt = self
            .conn
            .prepare("SELECT sink, COUNT(*), COALESCE(SUM(size), 0) FROM records GROUP BY sink")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Depth {
                    records: r.get::<_, i64>(1)? as u64,
                    bytes: r.get::<_, i64>(2)? as u64,
                },
            ))
        })?;
        rows.collect()
    }

    pub fn counters(&self) -> rusqlite::Result<HashMap<(String, String), u64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT sink, name, value FROM counters")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        rows.collect()
    }

    pub fn transaction(&mut self) -> rusqlite::Result<Transaction<'_>> {
        self.conn.transaction()
    }

    /// Rows of `sink` with `after < id < before`, oldest first.
    pub fn fetch(
        &self,
        sink: &str,
        after: i64,
        before: i64,
        limit: usize,
    ) -> rusqlite::Result<Vec<Record>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, device, kind, ts, topic, payload FROM records
             WHERE sink = ?1 AND id > ?2 AND id < ?3 ORDER BY id LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![sink, after, before, limit as i64], |r| {
            let kind: String = r.get(2)?;
            Ok(Record {
                id: r.get(0)?,
                sink: sink.to_string(),
                device: r.get(1)?,
                kind: RecordKind::parse(&kind).unwrap_or(RecordKind::Telemetry),
                ts: r.get(3)?,
                topic: r.get(4)?,
                payload: r.get(5)?,
            })
        })?;
        rows.collect()
    }
}

impl Db {
    /// The newest row id of `sink`, or 0.
    pub fn last_id(&self, sink: &str) -> rusqlite::Result<i64> {
        self.conn.query_row(
            "SELECT COALESCE(MAX(id), 0) FROM records WHERE sink = ?1",
            params![sink],
            |r| r.get(0),
        )
    }
}

pub fn insert(tx: &Transaction<'_>, r: &Record, size: u64, now: i64) -> rusqlite::Result<i64> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO records (sink, device, kind, ts, topic, payload, size, ingested_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    stmt.execute(params![
        r.sink,
        r.device,
        r.kind.as_str(),
        r.ts,
        r.topic,
        r.payload,
        size as i64,
        now
    ])?;
    Ok(tx.last_insert_rowid())
}

/// Deletes one row; returns its sink and size if it was there.
pub fn delete(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<Option<(String, u64)>> {
    let mut stmt = tx.prepare_cached("DELETE FROM records WHERE id = ?1 RETURNING sink, size")?;
    stmt.query_row(params![id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })
    .optional()
}

/// The oldest rows (across all sinks): id, sink, size, ingested_at.
pub fn oldest(
    tx: &Transaction<'_>,
    limit: usize,
) -> rusqlite::Result<Vec<(i64, String, u64, i64)>> {
    let mut stmt =
        tx.prepare_cached("SELECT id, sink, size, ingested_at FROM records ORDER BY id LIMIT ?1")?;
    let rows = stmt.query_map(params![limit as i64], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?))
    })?;
    rows.collect()
}

pub fn add_counter(tx: &Transaction<'_>, sink: &str, name: &str, by: u64) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO counters (sink, name, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (sink, name) DO UPDATE SET value = value + excluded.value",
    )?;
    stmt.execute(params![sink, name, by as i64])?;
    Ok(())
}

/// Moves one row to the dead-letter table; returns its sink and size.
pub fn dead_letter(
    tx: &Transaction<'_>,
    id: i64,
    reason: &str,
    now: i64,
) -> rusqlite::Result<Option<(String, u64)>> {
    let mut copy = tx.prepare_cached(
        "INSERT OR REPLACE INTO dead_letters (id, sink, device, kind, ts, topic, payload, reason, moved_at)
         SELECT id, sink, device, kind, ts, topic, payload, ?2, ?3 FROM records WHERE id = ?1",
    )?;
    copy.execute(params![id, reason, now])?;
    delete(tx, id)
}

pub fn qos2_mark(tx: &Transaction<'_>, client: &str, pkid: u16, now: i64) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO inbound_qos2 (client, pkid, at) VALUES (?1, ?2, ?3)",
    )?;
    stmt.execute(params![client, pkid, now])?;
    Ok(())
}

pub fn qos2_release(tx: &Transaction<'_>, client: &str, pkid: u16) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached("DELETE FROM inbound_qos2 WHERE client = ?1 AND pkid = ?2")?;
    stmt.execute(params![client, pkid])?;
    Ok(())
}

pub fn qos2_forget(tx: &Transaction<'_>, client: &str) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached("DELETE FROM inbound_qos2 WHERE client = ?1")?;
    stmt.execute(params![client])?;
    Ok(())
}

impl Db {
    pub fn qos2_pending(&self, client: &str) -> rusqlite::Result<Vec<u16>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT pkid FROM inbound_qos2 WHERE client = ?1 ORDER BY pkid")?;
        let rows = stmt.query_map(params![client], |r| r.get::<_, u16>(0))?;
        rows.collect()
    }
}

impl Db {
    /// (count, bytes) of the dead letters.
    pub fn dead_size(&self) -> rusqlite::Result<(u64, u64)> {
        self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload) + LENGTH(device) + LENGTH(topic) + 48), 0) FROM dead_letters",
            [],
            |r| Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, i64>(1)?.max(0) as u64)),
        )
    }
}

/// Removes the oldest dead letter; returns its size if there was one.
pub fn drop_oldest_dead(tx: &Transaction<'_>) -> rusqlite::Result<Option<u64>> {
    let mut stmt = tx.prepare_cached(
        "DELETE FROM dead_letters WHERE id = (SELECT MIN(id) FROM dead_letters)
         RETURNING LENGTH(payload) + LENGTH(device) + LENGTH(topic) + 48",
    )?;
    stmt.query_row([], |r| r.get::<_, i64>(0).map(|n| n.max(0) as u64))
        .optional()
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
