//! The SQLite file behind the outbox: schema, pragmas, and the statements
//! the writer thread runs (what earlier versions left is `migrate`'s).
//!
//! Each sink's queue is a table of its own (`q1`, `q2`, ...; the `sinks`
//! table names them), keyed by the record id alone: an insert touches one
//! B-tree and no index, a fetch is a range scan of one table, a delete one
//! row lookup. Ids come from the writer (one counter for every queue, so
//! "oldest" means the same across sinks) and are never reused: the counter
//! starts above every id in the queues and the dead letters. That is what
//! `AUTOINCREMENT` did, without its extra page written per insert.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Transaction};

use super::dead::DEAD_SIZE;
use super::disk::Fault;
use super::migrate;
use super::StoreError;
use crate::config::Synchronous;
use crate::record::{Record, RecordKind, TsSource};

/// 1: one `records` table with text sink names and an index (to 0.1);
/// 2: a table per sink; 3: `ingested_at` on outpost's clock, `ts_offset`.
const SCHEMA_VERSION: i64 = 3;

/// The `counters` row that keeps outpost's clock across restarts.
const CLOCK: (&str, &str) = ("", "clock_ms");

/// The `counters` row that keeps the next record id, so ids are not
/// reused after a queue empties (and a file that lost commits shows it).
const NEXT_ID: (&str, &str) = ("", "next_id");

/// Pages of 1 KiB. A commit appends each page it changed to the WAL as a
/// frame of 24 bytes plus the page, and the kernel writes back every 4 KiB
/// page-cache page a commit dirtied: a 4 KiB page's frame always straddles
/// two of them. A commit of one small reading (one leaf page, its delete
/// riding along) is a 1,048-byte frame instead, most often inside one
/// page-cache page. Measured with the bench, 20 readings/s spread evenly:
/// 8,492 bytes written per reading with 4 KiB pages, 5,284 with 1 KiB.
/// A row up to ~990 bytes still fits in a leaf page.
pub(super) const PAGE_SIZE: i64 = 1024;

/// The writer never checkpoints: a thread of its own does (see
/// `checkpoint`), so no commit waits for one.
const WAL_AUTOCHECKPOINT: i64 = 0;

/// The WAL is truncated to this after a checkpoint, so it does not stay at
/// its largest size.
const JOURNAL_SIZE_LIMIT: i64 = 4 << 20;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sinks (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);
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

/// A queue table's columns (`id` is the row id). `ingested_at` is
/// outpost's clock ([`crate::clock::mono_ms`]), never the wall clock, so
/// ages survive clock steps; `ts_offset` is set only for a provisional
/// stamp ([`TsSource::Provisional`]).
fn queue_table(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            id          INTEGER PRIMARY KEY,
            ts          INTEGER NOT NULL,
            ingested_at INTEGER NOT NULL,
            kind        INTEGER NOT NULL,
            device      TEXT    NOT NULL,
            topic       TEXT    NOT NULL,
            payload     BLOB    NOT NULL,
            ts_offset   INTEGER
        )"
    )
}

/// What a row occupies for the `max_bytes` bound (as [`Record::stored_size`]).
fn size_expr(sink: &str) -> String {
    format!(
        "LENGTH(payload) + LENGTH(CAST(device AS BLOB)) + LENGTH(CAST(topic AS BLOB)) + {}",
        sink.len().saturating_add(48)
    )
}

fn kind_code(k: RecordKind) -> i64 {
    match k {
        RecordKind::Telemetry => 0,
        RecordKind::Attributes => 1,
        RecordKind::Claim => 2,
        RecordKind::Rpc => 3,
        RecordKind::AttributesRequest => 4,
    }
}

pub(super) fn kind_of(code: i64) -> RecordKind {
    match code {
        1 => RecordKind::Attributes,
        2 => RecordKind::Claim,
        3 => RecordKind::Rpc,
        4 => RecordKind::AttributesRequest,
        _ => RecordKind::Telemetry,
    }
}

/// Queue depth of one sink, as kept in memory by the writer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    pub records: u64,
    pub bytes: u64,
}

pub struct Db {
    conn: Connection,
    path: PathBuf,
    /// sink name → its queue table.
    tables: HashMap<String, String>,
    sync: Synchronous,
    /// The `synchronous` level set last, so a commit at the same level
    /// runs no PRAGMA.
    level: std::cell::Cell<Option<&'static str>>,
    /// Bytes of pages in the WAL after the last commit (SQLite's WAL hook
    /// counts frames).
    wal_bytes: Arc<AtomicI64>,
}

/// WAL size after which the writer checkpoints on its own connection,
/// right after its commit: the checkpoint thread has not caught up, or
/// cannot finish while commits keep coming. This bounds the WAL under a
/// flood of large readings.
const WAL_MAX_BYTES: i64 = 6 << 20;

/// Maps a SQLite error to one that says which file and what to do.
pub fn explain(path: &Path, e: rusqlite::Error) -> StoreError {
    let code = e.sqlite_error_code();
    let p = path.to_path_buf();
    match (code, super::space::classify(path, &e)) {
        (_, Fault::Full) => StoreError::DiskFull { path: p },
        (_, Fault::ReadOnly) => StoreError::ReadOnly { path: p },
        (_, Fault::Io(detail)) => StoreError::Io { path: p, detail },
        (Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt), _) => {
            StoreError::Corrupt {
                path: p,
                detail: e.to_string(),
            }
        }
        (
            Some(ErrorCode::ReadOnly)
            | Some(ErrorCode::CannotOpen)
            | Some(ErrorCode::PermissionDenied),
            _,
        ) => StoreError::Unwritable {
            path: p,
            detail: e.to_string(),
        },
        _ => StoreError::Sqlite {
            path: p,
            detail: e.to_string(),
        },
    }
}

/// The sink → queue table map as the file has it.
pub(super) fn read_tables(conn: &Connection) -> rusqlite::Result<HashMap<String, String>> {
    let mut stmt = conn.prepare("SELECT id, name FROM sinks")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(1)?, format!("q{}", r.get::<_, i64>(0)?)))
    })?;
    rows.collect()
}

impl Db {
    pub fn open(path: &Path, sync: Synchronous) -> Result<Db, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unwritable {
                path: dir.to_path_buf(),
                detail: format!("cannot create the directory: {e}"),
            })?;
        }
        Db::connect(path, sync, Connection::open(path))
    }

    /// Opens the outbox again, never creating it: a filesystem unmounted
    /// underneath outpost leaves the bare mount point, where a new empty
    /// outbox must not appear.
    pub fn reopen(path: &Path, sync: Synchronous) -> Result<Db, StoreError> {
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Db::connect(path, sync, Connection::open_with_flags(path, flags))
    }

    fn connect(
        path: &Path,
        sync: Synchronous,
        conn: rusqlite::Result<Connection>,
    ) -> Result<Db, StoreError> {
        let conn = conn.map_err(|e| explain(path, e))?;
        let mut db = Db {
            conn,
            path: path.to_path_buf(),
            tables: HashMap::new(),
            sync,
            level: std::cell::Cell::new(None),
            wal_bytes: Arc::new(AtomicI64::new(0)),
        };
        db.init().map_err(|e| explain(path, e))?;
        Ok(db)
    }

    fn init(&mut self) -> rusqlite::Result<()> {
        // Reading the schema validates the file header: a file that is not
        // a database fails here, at startup, with a clear error.
        let objects: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
        if objects == 0 {
            // A new file: the page size holds only before the first table.
            self.conn
                .execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE};"))?;
        } else {
            migrate::repage(&self.conn, &self.path)?;
        }
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("cannot switch to WAL mode (got `{mode}`)")),
            ));
        }
        self.conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT};
             PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT};"
        ))?;
        // After the pragma: setting wal_autocheckpoint replaces the hook.
        let bytes = self.wal_bytes.clone();
        let page = self.page_size()?;
        self.conn.wal_hook(Some(move |wal: &mut Wal, pages: i32| {
            let now = i64::from(pages).saturating_mul(page);
            bytes.store(now, Ordering::Relaxed);
            if now >= WAL_MAX_BYTES {
                // Busy when the checkpoint thread is at it: fine, one of
                // the two copies the WAL.
                let _ = wal.checkpoint_v2(CheckpointMode::PASSIVE);
            }
            Ok(())
        }))?;
        self.set_durable(true)?;
        self.conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let tx = self.conn.transaction()?;
        tx.execute_batch(SCHEMA)?;
        if version < 2 && migrate::has_table(&tx, "records")? {
            migrate::v1(&tx)?;
        }
        // outpost's clock goes on from where this file last saw it.
        crate::clock::resume(saved_clock(&tx)?);
        if version < 3 {
            let tables = read_tables(&tx)?;
            let now = crate::clock::now();
            migrate::v3(&tx, &tables, now.wall, now.mono)?;
        }
        tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
        tx.commit()?;
        self.tables = read_tables(&self.conn)?;
        // Rows stored after the last save of the clock (a crash) are
        // younger than anything from now on.
        crate::clock::resume(self.newest_ingested()?.saturating_add(1));
        Ok(())
    }

    /// The newest `ingested_at` in any queue (`i64::MIN` if none).
    fn newest_ingested(&self) -> rusqlite::Result<i64> {
        let mut newest = i64::MIN;
        for table in self.tables.values() {
            let n: Option<i64> =
                self.conn
                    .query_row(&format!("SELECT MAX(ingested_at) FROM {table}"), [], |r| {
                        r.get(0)
                    })?;
            newest = newest.max(n.unwrap_or(i64::MIN));
        }
        Ok(newest)
    }

    /// Commits that must survive a power cut (`synchronous` as configured)
    /// or that may be lost to one (`NORMAL`: deletes of delivered records,
    /// which a later durable commit makes durable too, and whose loss only
    /// sends a record again).
    pub fn set_durable(&self, durable: bool) -> rusqlite::Result<()> {
        let level = match (durable, self.sync) {
            (true, Synchronous::Full) => "FULL",
            _ => "NORMAL",
        };
        if self.level.get() == Some(level) {
            return Ok(());
        }
        self.conn
            .execute_batch(&format!("PRAGMA synchronous = {level};"))?;
        self.level.set(Some(level));
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows changed through this connection so far.
    pub fn total_changes(&self) -> u64 {
        self.conn.total_changes()
    }

    pub fn sync(&self) -> Synchronous {
        self.sync
    }

    /// `store.synchronous` changed while running: from the next commit.
    pub fn set_sync(&mut self, sync: Synchronous) {
        if self.sync != sync {
            self.sync = sync;
            self.level.set(None);
        }
    }

    /// (page size, pages in the file, pages on the freelist).
    pub fn pages(&self) -> rusqlite::Result<(u64, u64, u64)> {
        let get = |pragma: &str| -> rusqlite::Result<u64> {
            self.conn
                .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get::<_, i64>(0))
                .map(|n| u64::try_from(n).unwrap_or(0))
        };
        Ok((
            get("page_size")?,
            get("page_count")?,
            get("freelist_count")?,
        ))
    }

    /// Rewrites the file without its free pages and copies the result
    /// back at once, so the file shrinks (on a full disk, after a drain).
    /// The copy goes through the WAL: it needs room for the pages in use.
    pub fn compact(&self) -> rusqlite::Result<()> {
        self.conn
            .execute_batch("PRAGMA temp_store = MEMORY; VACUUM;")?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })?;
        Ok(())
    }

    pub fn page_size(&self) -> rusqlite::Result<i64> {
        self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))
    }

    /// Bytes of pages in the WAL after the last commit.
    pub fn wal_bytes(&self) -> i64 {
        self.wal_bytes.load(Ordering::Relaxed)
    }

    /// The queue table of `sink`, made on first use (inside `tx`; the map
    /// is updated by the caller once `tx` commits, see [`Db::learn`]).
    pub fn table_for(
        tx: &Transaction<'_>,
        known: &HashMap<String, String>,
        sink: &str,
    ) -> rusqlite::Result<String> {
        if let Some(t) = known.get(sink) {
            return Ok(t.clone());
        }
        if let Some(id) = tx
            .query_row("SELECT id FROM sinks WHERE name = ?1", params![sink], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
        {
            return Ok(format!("q{id}"));
        }
        tx.execute("INSERT INTO sinks (name) VALUES (?1)", params![sink])?;
        let table = format!("q{}", tx.last_insert_rowid());
        tx.execute_batch(&queue_table(&table))?;
        Ok(table)
    }

    pub fn tables(&self) -> &HashMap<String, String> {
        &self.tables
    }

    /// Reads the sink → table map again (after a commit that made tables).
    pub fn learn(&mut self) -> rusqlite::Result<()> {
        self.tables = read_tables(&self.conn)?;
        Ok(())
    }

    pub fn depths(&self) -> rusqlite::Result<HashMap<String, Depth>> {
        let mut out = HashMap::new();
        for (sink, table) in &self.tables {
            let (records, bytes) = self.conn.query_row(
                &format!(
                    "SELECT COUNT(*), COALESCE(SUM({}), 0) FROM {table}",
                    size_expr(sink)
                ),
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )?;
            out.insert(
                sink.clone(),
                Depth {
                    records: u64::try_from(records).unwrap_or(0),
                    bytes: u64::try_from(bytes).unwrap_or(0),
                },
            );
        }
        Ok(out)
    }

    /// The next record id: above every id in the file, and at least what
    /// was saved last.
    pub fn next_id(&self) -> rusqlite::Result<i64> {
        let saved: i64 = self
            .conn
            .query_row(
                "SELECT value FROM counters WHERE sink = ?1 AND name = ?2",
                params![NEXT_ID.0, NEXT_ID.1],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        Ok(self.max_id()?.saturating_add(1).max(saved))
    }

    /// `PRAGMA quick_check`: `None` when the file is sound, else SQLite's
    /// first complaint.
    pub fn quick_check(&self) -> rusqlite::Result<Option<String>> {
        let first: String = self
            .conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
        Ok((first != "ok").then_some(first))
    }

    /// The highest id in any queue or the dead letters.
    pub fn max_id(&self) -> rusqlite::Result<i64> {
        let mut max: i64 =
            self.conn
                .query_row("SELECT COALESCE(MAX(id), 0) FROM dead_letters", [], |r| {
                    r.get(0)
                })?;
        for table in self.tables.values() {
            let m: i64 = self.conn.query_row(
                &format!("SELECT COALESCE(MAX(id), 0) FROM {table}"),
                [],
                |r| r.get(0),
            )?;
            max = max.max(m);
        }
        Ok(max)
    }

    pub fn counters(&self) -> rusqlite::Result<HashMap<(String, String), u64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT sink, name, value FROM counters")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            ))
        })?;
        rows.collect()
    }

    pub fn transaction(&mut self) -> rusqlite::Result<Transaction<'_>> {
        self.conn.transaction()
    }

    pub fn qos2_pending(&self, client: &str) -> rusqlite::Result<Vec<u16>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT pkid FROM inbound_qos2 WHERE client = ?1 ORDER BY pkid")?;
        let rows = stmt.query_map(params![client], |r| r.get::<_, u16>(0))?;
        rows.collect()
    }

    /// (count, bytes) of the dead letters.
    pub fn dead_size(&self) -> rusqlite::Result<(u64, u64)> {
        self.conn.query_row(
            &format!("SELECT COUNT(*), COALESCE(SUM({DEAD_SIZE}), 0) FROM dead_letters"),
            [],
            |r| {
                Ok((
                    u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                ))
            },
        )
    }
}

/// Inserts a record; `mono` is outpost's clock now (its `ingested_at`).
pub fn insert(
    tx: &Transaction<'_>,
    table: &str,
    id: i64,
    r: &Record,
    mono: i64,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(&format!(
        "INSERT INTO {table} (id, ts, ingested_at, kind, device, topic, payload, ts_offset)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?;
    let offset = match r.ts_source {
        TsSource::Provisional { offset } => Some(offset),
        _ => None,
    };
    stmt.execute(params![
        id,
        r.ts,
        mono,
        kind_code(r.kind),
        r.device,
        r.topic,
        r.payload,
        offset
    ])?;
    Ok(())
}

/// outpost's clock as the file last saved it (0 for a new file).
pub(super) fn saved_clock(tx: &Transaction<'_>) -> rusqlite::Result<i64> {
    tx.query_row(
        "SELECT value FROM counters WHERE sink = ?1 AND name = ?2",
        params![CLOCK.0, CLOCK.1],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|v| v.unwrap_or(0))
}

/// Saves the next record id.
pub fn save_next_id(tx: &Transaction<'_>, next: i64) -> rusqlite::Result<()> {
    raise_counter(tx, NEXT_ID, next)
}

/// Saves outpost's clock, to go on from after a restart.
pub fn save_clock(tx: &Transaction<'_>, mono: i64) -> rusqlite::Result<()> {
    raise_counter(tx, CLOCK, mono)
}

/// Sets a `counters` row to `value` unless it holds more already.
fn raise_counter(
    tx: &Transaction<'_>,
    (sink, name): (&str, &str),
    value: i64,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO counters (sink, name, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (sink, name) DO UPDATE SET value = MAX(value, excluded.value)",
    )?;
    stmt.execute(params![sink, name, value])?;
    Ok(())
}

/// Deletes one row of `sink`; returns its size if it was there.
pub fn delete(
    tx: &Transaction<'_>,
    sink: &str,
    table: &str,
    id: i64,
) -> rusqlite::Result<Option<u64>> {
    let mut stmt = tx.prepare_cached(&format!(
        "DELETE FROM {table} WHERE id = ?1 RETURNING {}",
        size_expr(sink)
    ))?;
    stmt.query_row(params![id], |r| r.get::<_, i64>(0))
        .optional()
        .map(|n| n.map(|n| u64::try_from(n).unwrap_or(0)))
}

/// Deletes the rows of `ids` from `sink`'s queue; returns how many were
/// there and their size. A run of consecutive ids (an acknowledged batch
/// usually is one) is one range statement, not a statement per row.
pub fn delete_many(
    tx: &Transaction<'_>,
    sink: &str,
    table: &str,
    ids: &[i64],
) -> rusqlite::Result<(u64, u64)> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut measure = tx.prepare_cached(&format!(
        "SELECT COUNT(*), COALESCE(SUM({}), 0) FROM {table} WHERE id BETWEEN ?1 AND ?2",
        size_expr(sink)
    ))?;
    let mut delete =
        tx.prepare_cached(&format!("DELETE FROM {table} WHERE id BETWEEN ?1 AND ?2"))?;
    let (mut rows, mut bytes) = (0u64, 0u64);
    for (first, last) in runs(&sorted) {
        let (n, size) = measure.query_row(params![first, last], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?;
        if n > 0 {
            delete.execute(params![first, last])?;
            rows = rows.saturating_add(u64::try_from(n).unwrap_or(0));
            bytes = bytes.saturating_add(u64::try_from(size).unwrap_or(0));
        }
    }
    Ok((rows, bytes))
}

/// The runs of consecutive values in sorted, distinct `ids`, as (first,
/// last).
fn runs(ids: &[i64]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for &id in ids {
        match out.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(id) => *last = id,
            _ => out.push((id, id)),
        }
    }
    out
}

/// The oldest rows across all queues: (id, sink, size, ingested_at).
pub fn oldest(
    tx: &Transaction<'_>,
    tables: &HashMap<String, String>,
    limit: usize,
) -> rusqlite::Result<Vec<(i64, String, u64, i64)>> {
    let mut all = Vec::new();
    for (sink, table) in tables {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT id, {}, ingested_at FROM {table} ORDER BY id LIMIT ?1",
            size_expr(sink)
        ))?;
        let rows = stmt.query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                sink.clone(),
                u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            all.push(row?);
        }
    }
    all.sort_unstable_by_key(|(id, ..)| *id);
    all.truncate(limit);
    Ok(all)
}

pub fn add_counter(tx: &Transaction<'_>, sink: &str, name: &str, by: u64) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO counters (sink, name, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (sink, name) DO UPDATE SET value = value + excluded.value",
    )?;
    stmt.execute(params![sink, name, i64::try_from(by).unwrap_or(i64::MAX)])?;
    Ok(())
}
