//! The outbox's writer thread: group commit, bounds, and the in-memory view
//! of queue depths that the rest of outpost reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Transaction;
use tokio::sync::mpsc;

use super::bounds::{expire, make_room, DropLog, Drops};
use super::checkpoint::{Checkpointer, NUDGE_BYTES};
use super::db::{self, Db, Depth};
use super::pace::{self, Pace};
use super::{
    Appended, Command, DeadDone, DeadOp, DeadStats, Limits, Pick, Qos2Op, QueueStats, Shared,
    StoreError,
};
use crate::clock;

/// Most commands applied in one transaction. Large enough that a burst is a
/// handful of commits; small enough that one commit stays short.
const MAX_GROUP: usize = 4096;

/// How long the writer waits before it tries again the deletes of a commit
/// that failed (a full or failing disk), if nothing else comes first.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// outpost's clock is saved with a commit at most this often (and when the
/// writer stops): after a crash, ages resume from at most this long ago.
const SAVE_CLOCK_EVERY_MS: i64 = 10_000;

/// How long deletes wait for the next commit of new readings, to ride in
/// its transaction: at low rates the delete of the last reading and the
/// insert of the next change the same page, one WAL frame written instead
/// of two commits (measured with the bench at 20 readings/s: 12,575 bytes
/// written per reading with a 20 ms window, 8,492 with this, both with
/// 4 KiB pages). A delete lost in a crash only re-sends its reading (a
/// duplicate, never a loss).
const DELETE_WINDOW: Duration = Duration::from_secs(1);

/// Rows whose deletes are committed without waiting further, so a drain
/// (acknowledgements and no new readings) commits every few milliseconds
/// and a crash re-sends at most this many.
pub(super) const DELETE_ROWS: usize = 16_384;

/// [`DELETE_WINDOW`]; a debug build's integration tests may stretch it
/// (`OUTPOST_TEST_DELETE_WINDOW_MS`) to kill outpost while an
/// acknowledged reading's delete is still pending. Never in a release build.
fn delete_window() -> Duration {
    crate::units::test_stretch("OUTPOST_TEST_DELETE_WINDOW_MS", DELETE_WINDOW)
}

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
        let next_id = db
            .max_id()
            .map_err(|e| db::explain(db.path(), e))?
            .saturating_add(1);
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
        for sink in shared.notify.keys() {
            view.entry(sink.clone()).or_default();
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
    fn dead_added(&mut self, tx: &Transaction<'_>, size: u64) -> rusqlite::Result<()> {
        self.dead.count = self.dead.count.saturating_add(1);
        self.dead.bytes = self.dead.bytes.saturating_add(size);
        let mut dropped: u64 = 0;
        while self.dead.bytes > self.limits.dead_max_bytes {
            match db::drop_oldest_dead(tx)? {
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
    fn take_id(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        id
    }

    /// The queue table of `sink` (made in `tx` if new).
    fn table(&mut self, tx: &Transaction<'_>, sink: &str) -> rusqlite::Result<String> {
        if let Some(t) = self.tables.get(sink) {
            return Ok(t.clone());
        }
        let t = Db::table_for(tx, &self.tables, sink)?;
        self.tables.insert(sink.to_string(), t.clone());
        Ok(t)
    }

    fn added(&mut self, sink: &str, size: u64) {
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

    fn removed_many(&mut self, sink: &str, rows: u64, bytes: u64) {
        if let Some(d) = self.depths.get_mut(sink) {
            d.records = d.records.saturating_sub(rows);
            d.bytes = d.bytes.saturating_sub(bytes);
        }
        self.total_bytes = self.total_bytes.saturating_sub(bytes);
    }
}

/// Takes what else is pending, up to [`MAX_GROUP`].
fn gather(rx: &mut mpsc::Receiver<Command>, group: &mut Vec<Command>, stop: &mut bool) {
    while group.len() < MAX_GROUP && !*stop {
        match rx.try_recv() {
            Ok(c) => {
                *stop |= matches!(c, Command::Stop);
                group.push(c);
            }
            Err(_) => break,
        }
    }
}

/// [`gather`], again and again for up to `wait`, until the group holds
/// [`pace::ENOUGH`] readings. Polled: tokio's timers tick in whole
/// milliseconds, too coarse for a wait of a few.
fn gather_for(
    rx: &mut mpsc::Receiver<Command>,
    group: &mut Vec<Command>,
    stop: &mut bool,
    wait: Duration,
) {
    const POLL: Duration = Duration::from_micros(100);
    let until = Instant::now()
        .checked_add(wait)
        .unwrap_or_else(Instant::now);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || *stop || group.len() >= MAX_GROUP || readings(group) >= pace::ENOUGH {
            return;
        }
        std::thread::sleep(left.min(POLL));
        gather(rx, group, stop);
    }
}

/// New readings in `group`.
fn readings(group: &[Command]) -> usize {
    group
        .iter()
        .map(|c| match c {
            Command::Append { records, .. } => records.len(),
            _ => 0,
        })
        .sum()
}

/// Does the group hold something that must be on disk when its caller
/// hears back (records, QoS 2 releases, a flush, dead letters)? Deletes of
/// delivered records do not: losing one only sends a record again.
fn needs_sync(group: &[Command]) -> bool {
    group.iter().any(|c| {
        !matches!(
            c,
            Command::Delete { .. }
                | Command::Qos2(Qos2Op::Pending(..))
                | Command::Qos2(Qos2Op::Forget(_))
        )
    })
}

/// Is `group` only deletes (and forgotten QoS 2 state), which may wait for
/// readings to commit with? Anything with a caller waiting ends the wait.
fn may_wait(group: &[Command]) -> bool {
    group
        .iter()
        .all(|c| matches!(c, Command::Delete { .. } | Command::Qos2(Qos2Op::Forget(_))))
}

/// Rows the deletes in `group` name.
fn deleted_rows(group: &[Command]) -> usize {
    group
        .iter()
        .map(|c| match c {
            Command::Delete { ids, .. } => ids.len(),
            _ => 0,
        })
        .sum()
}

/// Runs until [`Command::Stop`] or every sender is gone; the checkpoints
/// stop with it.
pub(crate) fn run(
    mut db: Db,
    mut rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    mut state: State,
    checkpoints: Checkpointer,
) {
    let window = delete_window();
    let mut log = DropLog::default();
    // For waiting on the channel with a timeout (the deletes' window).
    let clock = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "the outbox writer cannot start its clock");
            return;
        }
    };
    // A full disk fails every commit: one line a minute says so.
    let mut failures = crate::throttle::Throttle::default();
    let mut stop = false;
    let mut pace = Pace::default();
    // Deletes of a commit that failed, tried again with the next one: a
    // delivered row whose delete is lost would be sent again.
    let mut carry: Vec<Command> = Vec::new();
    loop {
        let mut group = Vec::with_capacity(64);
        if carry.is_empty() {
            match rx.blocking_recv() {
                Some(first) => {
                    stop |= matches!(first, Command::Stop);
                    group.push(first);
                }
                None => break,
            }
        } else {
            group.append(&mut carry);
            // Not at once: what failed needs the disk to change first.
            match clock.block_on(async { tokio::time::timeout(RETRY_AFTER, rx.recv()).await }) {
                Ok(Some(c)) => {
                    stop |= matches!(c, Command::Stop);
                    group.push(c);
                }
                Ok(None) => stop = true,
                Err(_) => {}
            }
        }
        gather(&mut rx, &mut group, &mut stop);
        // Only deletes (and the like) so far: wait for readings to commit
        // with, or for enough deletes, so a stream of acknowledgements is
        // a few commits, not thousands.
        if !stop && may_wait(&group) {
            let until = Instant::now()
                .checked_add(window)
                .unwrap_or_else(Instant::now);
            while group.len() < MAX_GROUP
                && !stop
                && may_wait(&group)
                && deleted_rows(&group) < DELETE_ROWS
            {
                let left = until.saturating_duration_since(Instant::now());
                // Woken by the next command at once (a reading must not
                // wait for the window), or at its end.
                match clock.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
                    Ok(Some(c)) => {
                        stop |= matches!(c, Command::Stop);
                        group.push(c);
                        gather(&mut rx, &mut group, &mut stop);
                    }
                    Ok(None) => stop = true,
                    Err(_) => break,
                }
            }
        }
        // New readings arriving many per millisecond: let the next ones
        // ride in this commit (see `pace`).
        if !stop {
            if let Some(wait) = pace.wait(readings(&group), Instant::now()) {
                gather_for(&mut rx, &mut group, &mut stop, wait);
            }
        }
        pace.committed(readings(&group), Instant::now());
        let durable = needs_sync(&group);
        if let Err(e) = db.set_durable(durable) {
            tracing::warn!(error = %e, "cannot set the outbox's sync level");
        }

        let before = state.clone();
        let mut drops = Drops::default();
        let mut outcomes: Vec<Appended> = Vec::new();
        let mut woken: Vec<String> = Vec::new();
        let mut acted: Vec<DeadDone> = Vec::new();
        let result = db
            .transaction()
            .and_then(|tx| {
                apply(
                    &tx,
                    &group,
                    &mut state,
                    &mut drops,
                    &mut outcomes,
                    &mut woken,
                    &mut acted,
                )?;
                tx.commit()
            })
            .map_err(|e| db::explain(db.path(), e));

        if let Err(e) = &result {
            state = before;
            woken.clear();
            if let Some(count) = failures.due("commit") {
                tracing::error!(error = %e, commands = group.len(), failed_commits = count,
                    "outbox commit failed; nothing in this group was stored (readings are refused until commits work again)");
            }
        } else {
            if state.tables.len() != db.tables().len() {
                if let Err(e) = db.learn() {
                    tracing::warn!(error = %e, "cannot read the outbox's queue tables");
                }
            }
            state.publish(&shared);
            #[cfg(test)]
            shared
                .commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if db.wal_bytes() >= NUDGE_BYTES {
                checkpoints.nudge();
            }
            log.note(&drops, &state.limits);
        }

        let mut outcomes = outcomes.into_iter();
        let mut acted = acted.into_iter();
        for cmd in group {
            match cmd {
                Command::Append { done, .. } => {
                    let outcome = outcomes.next().unwrap_or_default();
                    if let Some(done) = done {
                        done.send(result.clone().map(|_| outcome));
                    }
                }
                Command::Flush(reply) => {
                    let _ = reply.send(());
                }
                Command::Dead { reply, .. } => {
                    let done = acted.next().unwrap_or_default();
                    let _ = reply.send(result.clone().map(|_| done));
                }
                Command::Qos2(Qos2Op::Release(_, reply)) => {
                    let _ = reply.send(result.clone());
                }
                Command::Qos2(Qos2Op::Pending(client, reply)) => {
                    let _ = reply.send(
                        db.qos2_pending(&client)
                            .map_err(|e| db::explain(db.path(), e)),
                    );
                }
                Command::Qos2(Qos2Op::Forget(_)) => {}
                Command::Delete { sink, ids } => {
                    if result.is_ok() {
                        shared.deleting(&sink, ids.len() as u64, false);
                    } else {
                        carry.push(Command::Delete { sink, ids });
                    }
                }
                Command::DeadLetter { .. }
                | Command::Expire
                | Command::SetLimits(_)
                | Command::Stop => {}
            }
        }
        // After the callers: a sensor's acknowledgement waits for its
        // commit, the uplink's fetch can wait for the acknowledgement.
        for sink in woken {
            if let Some(n) = shared.notify.get(&sink) {
                n.notify_one();
            }
        }
        if stop {
            break;
        }
    }
    rx.close();
    tracing::debug!("outbox writer stopped");
}

fn apply(
    tx: &Transaction<'_>,
    group: &[Command],
    state: &mut State,
    drops: &mut Drops,
    outcomes: &mut Vec<Appended>,
    woken: &mut Vec<String>,
    acted: &mut Vec<DeadDone>,
) -> rusqlite::Result<()> {
    let now = clock::now();
    let stopping = group.iter().any(|c| matches!(c, Command::Stop));
    if stopping || now.mono.saturating_sub(state.clock_saved) >= SAVE_CLOCK_EVERY_MS {
        db::save_clock(tx, now.mono)?;
        state.clock_saved = now.mono;
    }
    for cmd in group {
        match cmd {
            Command::Append {
                records,
                dead,
                mark,
                ..
            } => {
                let mut outcome = Appended::default();
                for (r, reason) in dead {
                    let id = state.take_id();
                    db::insert_dead(tx, id, r, reason, now.wall)?;
                    db::add_counter(tx, &r.sink, "dead_lettered", 1)?;
                    state.dead_added(tx, r.stored_size())?;
                }
                for r in records {
                    let size = r.stored_size();
                    if !make_room(tx, state, drops, size)? {
                        drops.refuse(&r.sink);
                        outcome.rejected = outcome.rejected.saturating_add(1);
                        continue;
                    }
                    let table = state.table(tx, &r.sink)?;
                    let id = state.take_id();
                    db::insert(tx, &table, id, r, now.mono)?;
                    state.added(&r.sink, size);
                    outcome.stored = outcome.stored.saturating_add(1);
                    if !woken.contains(&r.sink) {
                        woken.push(r.sink.clone());
                    }
                }
                if let (Some((client, pkid)), true) = (mark, outcome.stored > 0) {
                    db::qos2_mark(tx, client, *pkid, now.wall)?;
                }
                outcomes.push(outcome);
            }
            Command::Delete { sink, ids } => {
                let Some(table) = state.tables.get(sink).cloned() else {
                    continue;
                };
                let (rows, bytes) = db::delete_many(tx, sink, &table, ids)?;
                state.removed_many(sink, rows, bytes);
            }
            Command::DeadLetter { sink, ids, reason } => {
                let Some(table) = state.tables.get(sink).cloned() else {
                    continue;
                };
                for id in ids {
                    if let Some(size) = db::dead_letter(tx, sink, &table, *id, reason, now.wall)? {
                        state.removed(sink, size);
                        db::add_counter(tx, sink, "dead_lettered", 1)?;
                        state.dead_added(tx, size)?;
                    }
                }
            }
            Command::Dead {
                op, pick, sinks, ..
            } => acted.push(act_on_dead(tx, state, *op, *pick, sinks, now.mono, woken)?),
            Command::Expire => expire(tx, state, drops, now.mono)?,
            Command::SetLimits(l) => {
                tracing::info!(max_bytes = l.max_bytes, max_age_ms = l.max_age_ms, policy = ?l.policy, "outbox bounds changed");
                state.limits = *l;
            }
            Command::Qos2(Qos2Op::Release((client, pkid), _)) => {
                db::qos2_release(tx, client, *pkid)?
            }
            Command::Qos2(Qos2Op::Forget(client)) => db::qos2_forget(tx, client)?,
            Command::Flush(_) | Command::Qos2(Qos2Op::Pending(..)) | Command::Stop => {}
        }
    }
    for (sink, n) in &drops.dropped {
        db::add_counter(tx, sink, "dropped", *n)?;
        let e = state.dropped.entry(sink.clone()).or_default();
        *e = e.saturating_add(*n);
    }
    for (sink, n) in &drops.refused {
        db::add_counter(tx, sink, "refused", *n)?;
        let e = state.refused.entry(sink.clone()).or_default();
        *e = e.saturating_add(*n);
    }
    Ok(())
}

/// An operator's retry or purge. A retried record gets a new id at the end
/// of its queue (its ts is kept), and is counted against `max_bytes` like
/// any new record but never refused for it: it was accepted once.
fn act_on_dead(
    tx: &Transaction<'_>,
    state: &mut State,
    op: DeadOp,
    pick: Pick,
    sinks: &[String],
    now: i64,
    woken: &mut Vec<String>,
) -> rusqlite::Result<DeadDone> {
    let mut done = DeadDone::default();
    for (mut r, size) in db::dead_rows(tx, pick)? {
        if op == DeadOp::Retry {
            if !sinks.contains(&r.sink) {
                done.kept.push((r.id, r.sink));
                continue;
            }
            let table = state.table(tx, &r.sink)?;
            let dead_id = r.id;
            r.id = state.take_id();
            db::insert(tx, &table, r.id, &r, now)?;
            db::delete_dead(tx, dead_id)?;
            state.added(&r.sink, r.stored_size());
            if !woken.contains(&r.sink) {
                woken.push(r.sink.clone());
            }
        } else {
            db::delete_dead(tx, r.id)?;
        }
        state.dead.count = state.dead.count.saturating_sub(1);
        state.dead.bytes = state.dead.bytes.saturating_sub(size);
        done.done = done.done.saturating_add(1);
    }
    Ok(done)
}
