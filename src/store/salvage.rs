//! Reading what is still readable out of a damaged outbox, in order.
//!
//! SQLite finds a row by walking its table's B-tree from the root; a
//! damaged page hides the rows under it and fails the walk when it gets
//! there. A scan in id order keeps every row up to the damage, then the
//! next readable id is found by seeking ever further ahead (1, 2, 4, ...
//! ids on: a seek passes through other pages), the rows between the damage
//! and that id are read backwards from it, and the scan goes on. A last
//! scan backwards from the newest row picks up what lies beyond the last
//! seek. Rows whose columns cannot be read are skipped and counted.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection, OpenFlags};

use super::db::{self, kind_of, Db};
use crate::record::{Record, TsSource};

/// How far ahead a seek past damage may look (ids).
const SEEK_LIMIT: i64 = 1 << 40;

/// A queued row as read from a damaged file.
#[derive(Debug, Clone)]
struct Row {
    record: Record,
    ingested_at: i64,
}

/// What was read out of a damaged outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvaged {
    /// Rows copied into the new outbox.
    pub rows: u64,
    /// Dead letters copied.
    pub dead_letters: u64,
    /// Places a scan met damage (rows under them are lost).
    pub damaged_places: u64,
    /// The highest id read, for the new outbox's id counter.
    pub max_id: i64,
    /// Why nothing could be read at all, if so.
    pub unreadable: Option<String>,
}

/// Copies every readable row of `damaged` into `fresh`, with its id, ts,
/// and age; the counters (dropped, refused, the clock) and dead letters
/// too, where they can be read.
pub(super) fn salvage(damaged: &Path, fresh: &mut Db) -> Salvaged {
    let mut out = Salvaged::default();
    let conn = match Connection::open_with_flags(
        damaged,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => {
            out.unreadable = Some(e.to_string());
            return out;
        }
    };
    // A file shorter than its header says is refused unless the schema is
    // "writable": then SQLite reads what is there (as `.dump` does).
    if let Err(e) = conn.execute_batch("PRAGMA writable_schema = ON;") {
        tracing::debug!(error = %e, "cannot relax the damaged outbox's checks");
    }
    let sinks = match db::read_tables(&conn) {
        Ok(t) => t,
        Err(e) => {
            out.unreadable = Some(format!("its list of queues cannot be read: {e}"));
            return out;
        }
    };
    for (sink, table) in &sinks {
        let rows = scan(&conn, table, sink, &mut out.damaged_places);
        if let Err(e) = copy_rows(fresh, sink, &rows) {
            tracing::error!(sink, error = %e, "cannot copy salvaged rows into the new outbox");
            continue;
        }
        out.rows = out.rows.saturating_add(rows.len() as u64);
        if let Some((id, _)) = rows.last_key_value() {
            out.max_id = out.max_id.max(*id);
        }
    }
    out.dead_letters = copy_rest(&conn, fresh, &mut out.max_id);
    out
}

/// Every readable row of `table`, by id.
fn scan(conn: &Connection, table: &str, sink: &str, damage: &mut u64) -> BTreeMap<i64, Row> {
    let mut rows = BTreeMap::new();
    let mut after = i64::MIN;
    loop {
        let (last, failed) = read(conn, table, sink, after, i64::MAX, false, &mut rows);
        after = last.unwrap_or(after);
        if !failed {
            return rows;
        }
        *damage = damage.saturating_add(1);
        // Seek past the damage.
        let mut step: i64 = 1;
        let mut next = None;
        while step < SEEK_LIMIT {
            match first_from(conn, table, after.saturating_add(step)) {
                Ok(Some(id)) => {
                    next = Some(id);
                    break;
                }
                Ok(None) => break,
                Err(_) => step = step.saturating_mul(2),
            }
        }
        let Some(next) = next else { break };
        // Between the damage and the row found, backwards.
        read(conn, table, sink, after, next, true, &mut rows);
        after = next.saturating_sub(1);
    }
    // Beyond the last seek, backwards from the newest.
    read(conn, table, sink, after, i64::MAX, true, &mut rows);
    rows
}

/// Reads rows with `after < id < before` (forwards, or backwards from
/// `before`) until the end or the first error. Returns the last id read
/// forwards and whether it stopped at an error.
fn read(
    conn: &Connection,
    table: &str,
    sink: &str,
    after: i64,
    before: i64,
    backwards: bool,
    into: &mut BTreeMap<i64, Row>,
) -> (Option<i64>, bool) {
    let order = if backwards { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT id, ts, ingested_at, kind, device, topic, payload, ts_offset FROM {table}
         WHERE id > ?1 AND id < ?2 ORDER BY id {order}"
    );
    let Ok(mut stmt) = conn.prepare(&sql) else {
        return (None, true);
    };
    let Ok(mut q) = stmt.query(params![after, before]) else {
        return (None, true);
    };
    let mut last = None;
    loop {
        match q.next() {
            Ok(Some(r)) => {
                if let Ok(row) = decode(r, sink) {
                    last = Some(row.record.id);
                    into.insert(row.record.id, row);
                }
            }
            Ok(None) => return (if backwards { None } else { last }, false),
            Err(_) => return (if backwards { None } else { last }, true),
        }
    }
}

fn decode(r: &rusqlite::Row<'_>, sink: &str) -> rusqlite::Result<Row> {
    let offset: Option<i64> = r.get(7)?;
    Ok(Row {
        record: Record {
            id: r.get(0)?,
            sink: sink.to_string(),
            device: r.get(4)?,
            kind: kind_of(r.get(3)?),
            ts: r.get(1)?,
            topic: r.get(5)?,
            payload: r.get(6)?,
            ts_source: offset.map_or(TsSource::Trusted, |offset| TsSource::Provisional { offset }),
        },
        ingested_at: r.get(2)?,
    })
}

/// The first id at or after `from`, if the seek gets there.
fn first_from(conn: &Connection, table: &str, from: i64) -> rusqlite::Result<Option<i64>> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        &format!("SELECT id FROM {table} WHERE id >= ?1 ORDER BY id LIMIT 1"),
        params![from],
        |r| r.get(0),
    )
    .optional()
}

fn copy_rows(fresh: &mut Db, sink: &str, rows: &BTreeMap<i64, Row>) -> rusqlite::Result<()> {
    let known = fresh.tables().clone();
    let tx = fresh.transaction()?;
    let table = Db::table_for(&tx, &known, sink)?;
    for row in rows.values() {
        db::insert(&tx, &table, row.record.id, &row.record, row.ingested_at)?;
    }
    tx.commit()?;
    fresh.learn()
}

/// The counters and dead letters, as far as they read; returns the dead
/// letters copied.
fn copy_rest(conn: &Connection, fresh: &mut Db, max_id: &mut i64) -> u64 {
    let counters: Vec<(String, String, i64)> = conn
        .prepare("SELECT sink, name, value FROM counters")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .unwrap_or_default();
    let dead: Vec<(i64, Vec<rusqlite::types::Value>)> = conn
        .prepare(
            "SELECT id, sink, device, kind, ts, topic, payload, reason, moved_at
             FROM dead_letters ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map([], |r| {
                let mut v = Vec::with_capacity(9);
                for i in 0..9 {
                    v.push(r.get::<_, rusqlite::types::Value>(i)?);
                }
                Ok((r.get(0)?, v))
            })?
            .collect()
        })
        .unwrap_or_default();
    let copied = fresh.transaction().and_then(|tx| {
        for (sink, name, value) in &counters {
            tx.execute(
                "INSERT OR REPLACE INTO counters (sink, name, value) VALUES (?1, ?2, ?3)",
                params![sink, name, value],
            )?;
        }
        for (_, v) in &dead {
            tx.execute(
                "INSERT OR REPLACE INTO dead_letters
                 (id, sink, device, kind, ts, topic, payload, reason, moved_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                rusqlite::params_from_iter(v.iter()),
            )?;
        }
        tx.commit()
    });
    match copied {
        Ok(()) => {
            if let Some((id, _)) = dead.last() {
                *max_id = (*max_id).max(*id);
            }
            dead.len() as u64
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot copy the damaged outbox's counters and dead letters");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;

    /// An outbox of `n` readings of ~200 bytes for sink `up`.
    fn outbox(path: &Path, n: i64) {
        let mut db = Db::open(path, Synchronous::Normal).expect("open");
        let known = db.tables().clone();
        let tx = db.transaction().expect("tx");
        let table = Db::table_for(&tx, &known, "up").expect("table");
        for i in 1..=n {
            let r = Record {
                id: i,
                sink: "up".into(),
                device: format!("dev-{}", i % 3),
                kind: crate::record::RecordKind::Telemetry,
                ts: 1_700_000_000_000 + i,
                topic: "sensors/x/telemetry".into(),
                payload: format!("{{\"seq\":{i},\"pad\":\"{}\"}}", "x".repeat(180)).into_bytes(),
                ts_source: TsSource::Trusted,
            };
            db::insert(&tx, &table, i, &r, i).expect("insert");
        }
        tx.commit().expect("commit");
        drop(db);
    }

    fn salvaged_ids(damaged: &Path, dir: &Path) -> (Salvaged, Vec<i64>) {
        let mut fresh = Db::open(&dir.join("fresh.db"), Synchronous::Normal).expect("fresh");
        let s = salvage(damaged, &mut fresh);
        let table = fresh.tables().get("up").cloned().unwrap_or_default();
        let conn = Connection::open(dir.join("fresh.db")).expect("read");
        let ids = if table.is_empty() {
            Vec::new()
        } else {
            let mut stmt = conn
                .prepare(&format!("SELECT id FROM {table} ORDER BY id"))
                .expect("prepare");
            stmt.query_map([], |r| r.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("ids")
        };
        (s, ids)
    }

    #[test]
    fn an_intact_outbox_is_copied_whole_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("o.db");
        outbox(&path, 2_000);
        let (s, ids) = salvaged_ids(&path, dir.path());
        assert_eq!(s.rows, 2_000);
        assert_eq!(s.damaged_places, 0);
        assert_eq!(ids, (1..=2_000).collect::<Vec<_>>());
        assert_eq!(s.max_id, 2_000);
    }

    #[test]
    fn a_page_overwritten_in_the_middle_costs_only_the_rows_on_it() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("o.db");
        outbox(&path, 5_000);
        // 4 KiB of garbage in the middle of the file.
        let mut bytes = std::fs::read(&path).expect("read");
        let mid = bytes.len() / 2;
        for b in bytes.iter_mut().skip(mid).take(4096) {
            *b = 0xA5;
        }
        std::fs::write(&path, &bytes).expect("write");
        let (s, ids) = salvaged_ids(&path, dir.path());
        assert!(s.damaged_places >= 1, "{s:?}");
        assert!(ids.len() >= 4_900, "only {} of 5000 salvaged", ids.len());
        assert!(ids.len() < 5_000, "nothing was damaged?");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order");
        assert!(ids.contains(&1) && ids.contains(&5_000), "both ends kept");
    }

    #[test]
    fn a_file_cut_in_half_keeps_what_the_first_half_holds() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("o.db");
        outbox(&path, 5_000);
        let len = std::fs::metadata(&path).expect("meta").len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(len / 2)
            .expect("truncate");
        let (s, ids) = salvaged_ids(&path, dir.path());
        assert!(ids.len() >= 2_000, "only {} salvaged: {s:?}", ids.len());
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_file_that_is_not_a_database_salvages_nothing_and_says_why() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("o.db");
        std::fs::write(&path, vec![0x5Au8; 64 << 10]).expect("write");
        let (s, ids) = salvaged_ids(&path, dir.path());
        assert!(ids.is_empty());
        assert!(s.unreadable.is_some(), "{s:?}");
    }
}
