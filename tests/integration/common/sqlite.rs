//! Reading outpost's outbox file as another process would.

use std::path::Path;

/// Rows queued for every sink (each sink has its own queue table, named in
/// `sinks`); -1 when the file cannot be read.
pub fn queued(db: &Path) -> i64 {
    match queued_payloads(db) {
        Some(p) => i64::try_from(p.len()).unwrap_or(i64::MAX),
        None => -1,
    }
}

/// The payloads of every queued row, as another process reads them.
pub fn queued_payloads(db: &Path) -> Option<Vec<Vec<u8>>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    let ids: Vec<i64> = {
        let mut stmt = conn.prepare("SELECT id FROM sinks").ok()?;
        let rows = stmt.query_map([], |r| r.get(0)).ok()?;
        rows.collect::<Result<_, _>>().ok()?
    };
    let mut out = Vec::new();
    for id in ids {
        let mut stmt = conn.prepare(&format!("SELECT payload FROM q{id}")).ok()?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).ok()?;
        out.extend(rows.collect::<Result<Vec<_>, _>>().ok()?);
    }
    Some(out)
}

pub fn counter(db: &Path, sink: &str, name: &str) -> i64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return -1;
    };
    conn.query_row(
        "SELECT value FROM counters WHERE sink = ?1 AND name = ?2",
        [sink, name],
        |r| r.get(0),
    )
    .unwrap_or(0)
}
