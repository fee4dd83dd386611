//! The writer's in-memory view of the outbox: queue depths, bounds, the
//! next id, and what it publishes for the rest of outpost to read.

use std::collections::{BTreeMap, HashMap};

use rusqlite::Transaction;

use super::db::{self, Db, Depth};
use super::dead;
use super::{DeadStats, Limits, QueueStats, Shared, StoreError};

#[derive(Clone)]
pub(crate) struct State {
    pub(super) limits: Limits,
    /// sink → queue table (new ones join when their first record does).
    pub(super) tables: HashMap<String, String>,
    /// The next record id (above every id the file has seen).
    pub(super) next_id: i64,
    pub(super) depths: HashMap<String, Depth>,
    pub(super) dropped: HashMap<String, u64>,
    pub(super) refused: HashMap<String, u64>,
    pub(super) total_bytes: u64,
    pub(super) dead: DeadStats,
    /// outpost's clock when it was last saved in the file.
    pub(super) clock_saved: i64,
}

impl State {
    pub(crate) fn load(db: &Db, limits: Limits) -> Result<State, StoreError> {
        let depths = db.depths().map_err(|e| db::explain(db.path(), e))?;
        let counters = db.counters().map_err(|e| db::explain(db.path(), e))?;
        let named = |want: &str| -> HashMap<String, u64> {
            counters
                .iter()
                .filter(|((_, name), _)| name == want)
                .map(|((sink, _), v)| (sink.clone(), *v))
                .collect()
        };
        let dropped = named("dropped");
        let refused = named("refused");
        let total_bytes = depths.values().map(|d| d.bytes).sum();
        let (count, bytes) = db.dead_size().map_err(|e| db::explain(db.path(), e))?;
        let dead_dropped = db
            .counters()
            .map_err(|e| db::explain(db.path(), e))?
            .into_iter()
            .filter(|((_, name), _)| name == "dead_dropped")
            .map(|(_, v)| v)
            .sum();
        let next_id = db.next_id().map_err(|e| db::explain(db.path(), e))?;
        Ok(State {
            limits,
            tables: db.tables().clone(),
            next_id,
            depths,
            dropped,
            refused,
            total_bytes,
            dead: DeadStats {
                count,
                bytes,
                dropped: dead_dropped,
            },
            clock_saved: i64::MIN,
        })
    }

    pub(crate) fn publish(&self, shared: &Shared) {
        let mut view = BTreeMap::new();
        for (sink, d) in &self.depths {
            view.entry(sink.clone())
                .or_insert_with(QueueStats::default)
                .depth = *d;
        }
        for (sink, n) in &self.dropped {
            view.entry(sink.clone())
                .or_insert_with(QueueStats::default)
                .dropped = *n;
        }
        for (sink, n) in &self.refused {
            view.entry(sink.clone())
                .or_insert_with(QueueStats::default)
                .refused = *n;
        }
        for sink in shared.sinks() {
            view.entry(sink).or_default();
        }
        match shared.stats.lock() {
            Ok(mut s) => *s = view,
            Err(p) => *p.into_inner() = view,
        }
        match shared.dead.lock() {
            Ok(mut d) => *d = self.dead,
            Err(p) => *p.into_inner() = self.dead,
        }
    }

    /// A record moved to the dead letters; the oldest go beyond the bound.
    pub(super) fn dead_added(&mut self, tx: &Transaction<'_>, size: u64) -> rusqlite::Result<()> {
        self.dead.count = self.dead.count.saturating_add(1);
        self.dead.bytes = self.dead.bytes.saturating_add(size);
        let mut dropped: u64 = 0;
        while self.dead.bytes > self.limits.dead_max_bytes {
            match dead::drop_oldest_dead(tx)? {
                Some(n) => {
                    self.dead.bytes = self.dead.bytes.saturating_sub(n);
                    self.dead.count = self.dead.count.saturating_sub(1);
                    dropped = dropped.saturating_add(1);
                }
                None => {
                    self.dead = DeadStats {
                        dropped: self.dead.dropped,
                        ..DeadStats::default()
                    };
                    break;
                }
            }
        }
        if dropped > 0 {
            self.dead.dropped = self.dead.dropped.saturating_add(dropped);
            db::add_counter(tx, "", "dead_dropped", dropped)?;
        }
        Ok(())
    }

    /// A new record id.
    pub(super) fn take_id(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        id
    }

    /// The queue table of `sink` (made in `tx` if new).
    pub(super) fn table(&mut self, tx: &Transaction<'_>, sink: &str) -> rusqlite::Result<String> {
        if let Some(t) = self.tables.get(sink) {
            return Ok(t.clone());
        }
        let t = Db::table_for(tx, &self.tables, sink)?;
        self.tables.insert(sink.to_string(), t.clone());
        Ok(t)
    }

    pub(super) fn added(&mut self, sink: &str, size: u64) {
        if !self.depths.contains_key(sink) {
            self.depths.insert(sink.to_string(), Depth::default());
        }
        let Some(d) = self.depths.get_mut(sink) else {
            return;
        };
        d.records = d.records.saturating_add(1);
        d.bytes = d.bytes.saturating_add(size);
        self.total_bytes = self.total_bytes.saturating_add(size);
    }

    pub(super) fn removed(&mut self, sink: &str, size: u64) {
        self.removed_many(sink, 1, size);
    }

    pub(super) fn removed_many(&mut self, sink: &str, rows: u64, bytes: u64) {
        if let Some(d) = self.depths.get_mut(sink) {
            d.records = d.records.saturating_sub(rows);
            d.bytes = d.bytes.saturating_sub(bytes);
        }
        self.total_bytes = self.total_bytes.saturating_sub(bytes);
    }
}
