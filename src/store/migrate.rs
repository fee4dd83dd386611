//! What earlier versions of outpost left in the outbox file, brought up to
//! date when it opens: the first schema (one `records` table) and pages
//! of 4 KiB.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, Transaction};

use super::db::PAGE_SIZE;

/// A file made with other pages (earlier outpost made 4 KiB) is rebuilt with
/// [`PAGE_SIZE`] when it opens, if it holds at most this much: a `VACUUM`
/// that copies the whole file, atomic under its rollback journal. A larger
/// backlog keeps its pages until a later start finds the queue drained.
const REPAGE_MAX_BYTES: i64 = 64 << 20;

pub(super) fn has_table(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<bool> {
    tx.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// The first schema (one `records` table, text sink names, an index) to
/// one table per sink; every record keeps its id, order and content.
pub(super) fn v1(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let sinks: Vec<String> = {
        let mut stmt = tx.prepare("SELECT DISTINCT sink FROM records")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut moved: i64 = 0;
    for sink in &sinks {
        let table = super::db::Db::table_for(tx, &HashMap::new(), sink)?;
        moved = moved.saturating_add(tx.execute(
            &format!(
                "INSERT INTO {table} (id, ts, ingested_at, kind, device, topic, payload)
                 SELECT id, ts, ingested_at,
                        CASE kind WHEN 'attributes' THEN 1 WHEN 'claim' THEN 2 WHEN 'rpc' THEN 3 ELSE 0 END,
                        device, topic, CAST(payload AS BLOB)
                 FROM records WHERE sink = ?1 ORDER BY id"
            ),
            params![sink],
        )? as i64);
    }
    tx.execute_batch("DROP INDEX IF EXISTS records_by_sink; DROP TABLE records;")?;
    tracing::info!(
        records = moved,
        sinks = sinks.len(),
        "outbox moved to schema 2 (a table per sink)"
    );
    Ok(())
}

/// Rebuilds a file made with other pages than [`PAGE_SIZE`], if it is
/// small enough (see [`REPAGE_MAX_BYTES`]). A failure (another process
/// has the file open, or the disk has no room for the copy) leaves the
/// file as it was, which works as before: it is logged, not fatal.
pub(super) fn repage(conn: &Connection, path: &Path) -> rusqlite::Result<()> {
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    if page == PAGE_SIZE {
        return Ok(());
    }
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let live = pages.saturating_sub(free).saturating_mul(page);
    if live > REPAGE_MAX_BYTES {
        tracing::info!(path = %path.display(), page_size = page, live_bytes = live,
            "outbox keeps its page size until its queue is smaller");
        return Ok(());
    }
    // The page size of a WAL file is fixed: rebuild under a rollback
    // journal, then `init` turns WAL on again.
    let result = conn.execute_batch(&format!(
        "PRAGMA journal_mode = DELETE; PRAGMA page_size = {PAGE_SIZE}; VACUUM;"
    ));
    match result {
        Ok(()) => tracing::info!(path = %path.display(), from = page, to = PAGE_SIZE,
            "outbox rebuilt with smaller pages (fewer bytes written per commit)"),
        Err(e) => tracing::warn!(path = %path.display(), page_size = page, error = %e,
            "cannot rebuild the outbox with smaller pages; it keeps its pages"),
    }
    Ok(())
}

/// Schema 3: ages on outpost's own clock, and provisional stamps. Each
/// queue gains `ts_offset` (set only for a stamp taken while the wall clock
/// was not trusted), and `ingested_at`, which was the wall clock, becomes
/// outpost's clock: every row keeps the age it had by the wall clock now.
pub(super) fn v3(
    tx: &Transaction<'_>,
    tables: &HashMap<String, String>,
    wall: i64,
    mono: i64,
) -> rusqlite::Result<()> {
    let mut rows: i64 = 0;
    for table in tables.values() {
        let has: i64 = tx.query_row(
            &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = 'ts_offset'"),
            [],
            |r| r.get(0),
        )?;
        if has == 0 {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN ts_offset INTEGER"))?;
        }
        rows = rows.saturating_add(tx.execute(
            &format!("UPDATE {table} SET ingested_at = ?2 - MAX(0, ?1 - ingested_at)"),
            params![wall, mono],
        )? as i64);
    }
    if rows > 0 {
        tracing::info!(
            records = rows,
            "outbox moved to schema 3 (ages on outpost's own clock)"
        );
    }
    Ok(())
}
