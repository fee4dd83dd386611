//! The dead letters' statements: readings a platform can never take, kept
//! with the reason until an operator retries or purges them.

use rusqlite::{params, OptionalExtension, Transaction};

use crate::record::{Record, RecordKind};

/// What a dead letter occupies for `dead_letters_max_bytes`: the same as
/// the record did in its queue ([`Record::stored_size`]).
pub(super) const DEAD_SIZE: &str =
    "LENGTH(payload) + LENGTH(CAST(device AS BLOB)) + LENGTH(CAST(topic AS BLOB)) \
     + LENGTH(CAST(sink AS BLOB)) + 48";

/// Writes a record straight to the dead letters (refused at ingest).
pub fn insert_dead(
    tx: &Transaction<'_>,
    id: i64,
    r: &Record,
    reason: &str,
    now: i64,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO dead_letters (id, sink, device, kind, ts, topic, payload, reason, moved_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    stmt.execute(params![
        id,
        r.sink,
        r.device,
        r.kind.as_str(),
        r.ts,
        r.topic,
        r.payload,
        reason,
        now
    ])?;
    Ok(())
}

/// Moves one queued row to the dead letters; returns its size.
pub fn dead_letter(
    tx: &Transaction<'_>,
    sink: &str,
    table: &str,
    id: i64,
    reason: &str,
    now: i64,
) -> rusqlite::Result<Option<u64>> {
    let mut copy = tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO dead_letters (id, sink, device, kind, ts, topic, payload, reason, moved_at)
         SELECT id, ?2, device,
                CASE kind WHEN 1 THEN 'attributes' WHEN 2 THEN 'claim' WHEN 3 THEN 'rpc' WHEN 4 THEN 'attributes_request' ELSE 'telemetry' END,
                ts, topic, payload, ?3, ?4 FROM {table} WHERE id = ?1"
    ))?;
    copy.execute(params![id, sink, reason, now])?;
    super::db::delete(tx, sink, table, id)
}

/// Removes the oldest dead letter; returns its size if there was one.
pub fn drop_oldest_dead(tx: &Transaction<'_>) -> rusqlite::Result<Option<u64>> {
    let mut stmt = tx.prepare_cached(&format!(
        "DELETE FROM dead_letters WHERE id = (SELECT MIN(id) FROM dead_letters)
         RETURNING {DEAD_SIZE}"
    ))?;
    stmt.query_row([], |r| r.get::<_, i64>(0))
        .optional()
        .map(|n| n.map(|n| u64::try_from(n).unwrap_or(0)))
}

/// The dead letters `pick` names, oldest first, each with its size.
pub fn dead_rows(tx: &Transaction<'_>, pick: super::Pick) -> rusqlite::Result<Vec<(Record, u64)>> {
    let (clause, id) = match pick {
        super::Pick::One(id) => ("WHERE id = ?1", id),
        super::Pick::All => ("WHERE ?1 = ?1", 0),
    };
    let mut stmt = tx.prepare(&format!(
        "SELECT id, sink, device, kind, ts, topic, payload,
                {DEAD_SIZE}
         FROM dead_letters {clause} ORDER BY id"
    ))?;
    let rows = stmt.query_map(params![id], |r| {
        let kind: String = r.get(3)?;
        Ok((
            Record {
                id: r.get(0)?,
                sink: r.get(1)?,
                device: r.get(2)?,
                kind: RecordKind::parse(&kind).unwrap_or(RecordKind::Telemetry),
                ts: r.get(4)?,
                topic: r.get(5)?,
                payload: r.get(6)?,
                ts_source: Default::default(),
            },
            u64::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
        ))
    })?;
    rows.collect()
}

pub fn delete_dead(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?;
    stmt.execute(params![id])?;
    Ok(())
}
