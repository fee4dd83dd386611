//! Reading outpost's outbox file as another process would.

use std::path::Path;

pub fn queued(db: &Path) -> i64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return -1;
    };
    conn.query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
        .unwrap_or(-1)
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
