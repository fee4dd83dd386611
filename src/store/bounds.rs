//! The outbox's bounds, applied by the writer inside its transaction:
//! `max_bytes` (room made under the configured policy, or a record
//! refused) and `max_age` (on outpost's clock), and the drops and refusals
//! they count.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rusqlite::Transaction;

use super::db;
use super::state::State;
use super::Limits;
use crate::config::FullPolicy;

/// Rows looked at per step when making room or expiring.
const EVICT_STEP: usize = 256;

/// Drops (accepted records a bound removed) and refusals (records never
/// accepted) counted in this group, to persist and to log.
#[derive(Default)]
pub(super) struct Drops {
    /// Accepted records a bound removed, per sink.
    pub(super) dropped: BTreeMap<String, u64>,
    /// Records refused for want of room, per sink.
    pub(super) refused: BTreeMap<String, u64>,
}

impl Drops {
    pub(super) fn add(&mut self, sink: &str, n: u64) {
        let e = self.dropped.entry(sink.to_string()).or_default();
        *e = e.saturating_add(n);
    }

    pub(super) fn refuse(&mut self, sink: &str) {
        let e = self.refused.entry(sink.to_string()).or_default();
        *e = e.saturating_add(1);
    }
}

/// Makes room for `size` more bytes under the configured policy. Returns
/// false if the record must be refused.
pub(super) fn make_room(
    tx: &Transaction<'_>,
    state: &mut State,
    drops: &mut Drops,
    size: u64,
) -> rusqlite::Result<bool> {
    let max = state.limits.max_bytes;
    if size > max {
        return Ok(false);
    }
    if state.total_bytes.saturating_add(size) <= max {
        return Ok(true);
    }
    if state.limits.policy == FullPolicy::RejectNew {
        return Ok(false);
    }
    while state.total_bytes.saturating_add(size) > max {
        let rows = db::oldest(tx, &state.tables, EVICT_STEP)?;
        if rows.is_empty() {
            break;
        }
        for (id, sink, _, _) in rows {
            if state.total_bytes.saturating_add(size) <= max {
                break;
            }
            let Some(table) = state.tables.get(&sink).cloned() else {
                continue;
            };
            if let Some(row_size) = db::delete(tx, &sink, &table, id)? {
                state.removed(&sink, row_size);
                drops.add(&sink, 1);
            }
        }
    }
    Ok(state.total_bytes.saturating_add(size) <= max)
}

/// Removes what outpost's clock says is older than `max_age` (`mono`:
/// that clock now; a wall-clock step changes nothing here).
pub(super) fn expire(
    tx: &Transaction<'_>,
    state: &mut State,
    drops: &mut Drops,
    mono: i64,
) -> rusqlite::Result<()> {
    let cutoff = mono.saturating_sub(state.limits.max_age_ms);
    loop {
        let rows = db::oldest(tx, &state.tables, EVICT_STEP)?;
        let mut removed: u64 = 0;
        for (id, sink, _, ingested_at) in &rows {
            if *ingested_at >= cutoff {
                return Ok(());
            }
            let Some(table) = state.tables.get(sink).cloned() else {
                continue;
            };
            if let Some(size) = db::delete(tx, sink, &table, *id)? {
                state.removed(sink, size);
                drops.add(sink, 1);
                removed = removed.saturating_add(1);
            }
        }
        if rows.len() < EVICT_STEP || removed == 0 {
            return Ok(());
        }
    }
}

/// Logs drops at most every few seconds, with the totals since the last line,
/// so a full outbox under load does not flood the journal.
#[derive(Default)]
pub(super) struct DropLog {
    pending: BTreeMap<String, u64>,
    refused: BTreeMap<String, u64>,
    last: Option<Instant>,
}

impl DropLog {
    pub(super) fn note(&mut self, drops: &Drops, limits: &Limits) {
        for (sink, n) in &drops.refused {
            let e = self.refused.entry(sink.clone()).or_default();
            *e = e.saturating_add(*n);
        }
        for (sink, n) in &drops.dropped {
            let e = self.pending.entry(sink.clone()).or_default();
            *e = e.saturating_add(*n);
        }
        if self.pending.is_empty() && self.refused.is_empty() {
            return;
        }
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        for (sink, n) in std::mem::take(&mut self.refused) {
            tracing::warn!(
                sink = %sink,
                refused = n,
                policy = ?limits.policy,
                max_bytes = limits.max_bytes,
                "outbox full: {n} new reading(s) for sink {sink} refused, never acknowledged (store.max_bytes {}, policy {:?})",
                limits.max_bytes,
                limits.policy
            );
        }
        for (sink, n) in std::mem::take(&mut self.pending) {
            tracing::warn!(
                sink = %sink,
                dropped = n,
                policy = ?limits.policy,
                max_bytes = limits.max_bytes,
                "outbox bound reached: records dropped (counted; see store.max_bytes, store.max_age)"
            );
        }
        self.last = Some(Instant::now());
    }
}
