//! The incoming QoS 2 packet ids a client has not released yet (see
//! [`super::Qos2Mark`]): recorded with the readings they carried, gone
//! when the client sends PUBREL.

use rusqlite::{params, Transaction};

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
