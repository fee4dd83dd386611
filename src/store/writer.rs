//! The outbox's writer thread: group commit, bounds, and the in-memory view
//! of queue depths that the rest of outpost reads.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::alarm::{self, Last};
use super::bounds::{DropLog, Drops};
use super::checkpoint::{Checkpointer, NUDGE_BYTES};
use super::db::{self, Db};
use super::disk::{Condition, Disk, Room};
use super::pace::{self, Pace};
use super::read::Reader;
use super::space;
use super::state::State;
use super::{Appended, Command, DeadDone, DiskView, Limits, Qos2Op, Shared, StoreError};
use crate::clock;
use crate::record::Record;

/// Most commands applied in one transaction. Large enough that a burst is a
/// handful of commits; small enough that one commit stays short.
const MAX_GROUP: usize = 4096;

/// How long the writer waits before it tries again the deletes of a commit
/// that failed (a full or failing disk), if nothing else comes first.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// outpost's clock is saved with a commit at most this often (and when the
/// writer stops): after a crash, ages resume from at most this long ago.
pub(super) const SAVE_CLOCK_EVERY_MS: i64 = 10_000;

/// The last queue seen is written beside the outbox at most this often
/// (and when the writer stops): a few hundred bytes a minute, next to the
/// outbox's own writes of every reading.
const LAST_EVERY_MS: i64 = 60_000;

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

/// The writer thread's files and what it knows about them.
struct Writer {
    db: Db,
    checkpoints: Checkpointer,
    /// The sinks' connection, opened again with the writer's.
    reader: Arc<Mutex<Reader>>,
    shared: Arc<Shared>,
    state: State,
    disk: Disk,
    log: DropLog,
    /// A failing disk fails every commit: one line a minute says so.
    failures: crate::throttle::Throttle,
    /// What `alarm::Last` says now, and when it was written.
    last: Option<(Last, i64)>,
}

/// What one commit of a group produced, for its callers.
#[derive(Default)]
pub(super) struct Outputs {
    pub(super) appended: Vec<Appended>,
    pub(super) woken: Vec<String>,
    pub(super) acted: Vec<DeadDone>,
    pub(super) drops: Drops,
    /// The clock and next id were saved in this commit.
    pub(super) saved: bool,
    /// The writer stops after this commit.
    pub(super) stopping: bool,
}

/// Runs until [`Command::Stop`] or every sender is gone; the checkpoints
/// stop with it.
pub(crate) fn run(
    db: Db,
    mut rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    state: State,
    checkpoints: Checkpointer,
    reader: Arc<Mutex<Reader>>,
    disk: Disk,
) {
    let window = delete_window();
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
    let mut w = Writer {
        db,
        checkpoints,
        reader,
        shared,
        state,
        disk,
        log: DropLog::default(),
        failures: crate::throttle::Throttle::default(),
        last: None,
    };
    w.publish_disk();
    let mut stop = false;
    let mut pace = Pace::default();
    // Deletes of a commit that failed, tried again with the next one: a
    // delivered row whose delete is lost would be sent again.
    let mut carry: Vec<Command> = Vec::new();
    loop {
        let mut group = Vec::with_capacity(64);
        let probing = matches!(w.disk.condition(), Condition::ReadOnly | Condition::Failing);
        if carry.is_empty() && !probing {
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
        if !stop && !group.is_empty() && may_wait(&group) {
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
        w.probe();

        let (result, refusal, out) = w.commit(&group);
        let mut appended = out.appended.into_iter();
        let mut acted = out.acted.into_iter();
        for cmd in group {
            match cmd {
                Command::Append { done, .. } => {
                    let answer = match &refusal {
                        Some(e) => Err(e.clone()),
                        None => result.clone().map(|()| appended.next().unwrap_or_default()),
                    };
                    if let Some(done) = done {
                        done.send(answer);
                    }
                }
                Command::Flush(reply) => {
                    let _ = reply.send(());
                }
                Command::Dead { reply, .. } => {
                    let done = acted.next().unwrap_or_default();
                    let _ = reply.send(result.clone().map(|()| done));
                }
                Command::Qos2(Qos2Op::Release(_, reply)) => {
                    let _ = reply.send(result.clone());
                }
                Command::Qos2(Qos2Op::Pending(client, reply)) => {
                    let _ = reply.send(
                        w.db.qos2_pending(&client)
                            .map_err(|e| db::explain(w.db.path(), e)),
                    );
                }
                Command::Qos2(Qos2Op::Forget(_)) => {}
                Command::Delete { sink, ids } => {
                    if result.is_ok() {
                        w.shared.deleting(&sink, ids.len() as u64, false);
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
        for sink in out.woken {
            if let Some(n) = w.shared.notifier(&sink) {
                n.notify_one();
            }
        }
        if result.is_ok() {
            w.maintain();
        }
        if stop {
            break;
        }
    }
    rx.close();
    tracing::debug!("outbox writer stopped");
}

impl Writer {
    /// Commits `group`. New readings are tried only when the disk admits
    /// them; when they are what a full disk cannot take, the rest of the
    /// group is committed without them. Returns the commit's outcome, the
    /// error new readings are refused with (if they were), and what the
    /// callers hear.
    fn commit(
        &mut self,
        group: &[Command],
    ) -> (Result<(), StoreError>, Option<StoreError>, Outputs) {
        let bytes = append_bytes(group);
        // The room is read (statvfs, page counts) only when the disk is not
        // fine: a healthy disk admits every reading without asking.
        let mut admit = bytes == 0
            || self.disk.condition() == Condition::Ok
            || self.disk.admits(bytes, self.room());
        let mut refusal = (!admit).then(|| self.refusal());
        loop {
            self.db.set_sync(self.state.limits.synchronous);
            let durable = needs_sync(group);
            if let Err(e) = self.db.set_durable(durable) {
                tracing::warn!(error = %e, "cannot set the outbox's sync level");
            }
            let before = self.state.clone();
            let changes = self.db.total_changes();
            let mut out = Outputs::default();
            let result = self.db.transaction().and_then(|tx| {
                super::apply::apply(&tx, group, &mut self.state, admit, &mut out)?;
                tx.commit()
            });
            match result {
                Ok(()) => {
                    let wrote = self.db.total_changes() != changes;
                    self.committed(&out, wrote);
                    return (Ok(()), refusal, out);
                }
                Err(e) => {
                    self.state = before;
                    let fault = space::classify(self.db.path(), &e);
                    let err = db::explain(self.db.path(), e);
                    let had_appends = admit && bytes > 0;
                    let response = self.disk.failed(fault, had_appends, clock::mono_ms());
                    if response.release_reserve {
                        self.release_reserve();
                    }
                    if let Some(count) = self.failures.due("commit") {
                        tracing::error!(error = %err, commands = group.len(), failed_commits = count,
                            "outbox commit failed: {err}");
                    }
                    self.publish_disk();
                    if response.retry_without_appends {
                        admit = false;
                        refusal = Some(err);
                        continue;
                    }
                    return (Err(err.clone()), refusal.or(Some(err)), Outputs::default());
                }
            }
        }
    }

    /// After a commit that worked.
    fn committed(&mut self, out: &Outputs, wrote: bool) {
        if let Some(was) = self.disk.committed(wrote, clock::mono_ms()) {
            tracing::info!(
                was = was.as_str(),
                "the outbox is writable again: commits work"
            );
            self.publish_disk();
        }
        if self.state.tables.len() != self.db.tables().len() {
            if let Err(e) = self.db.learn() {
                tracing::warn!(error = %e, "cannot read the outbox's queue tables");
            }
        }
        self.state.publish(&self.shared);
        #[cfg(test)]
        self.shared
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if out.saved {
            self.write_last(out.stopping);
        }
        if self.db.wal_bytes() >= NUDGE_BYTES {
            self.checkpoints.nudge();
        }
        self.log.note(&out.drops, &self.state.limits);
    }

    /// Rewrites the last queue seen (`alarm::Last`) at most every
    /// [`LAST_EVERY_MS`] while it changes, and when the writer stops.
    fn write_last(&mut self, stopping: bool) {
        let now = clock::mono_ms();
        let last = Last {
            next_id: self.state.next_id,
            queued: self.state.depths.values().map(|d| d.records).sum(),
        };
        let due = match self.last {
            None => true,
            Some((was, at)) => was != last && (stopping || now.saturating_sub(at) >= LAST_EVERY_MS),
        };
        if !due {
            return;
        }
        match alarm::write_last(self.db.path(), last) {
            Ok(()) => self.last = Some((last, now)),
            Err(e) => tracing::debug!(error = %e, "cannot write the outbox's last queue length"),
        }
    }

    /// What new readings are refused with while the disk does not admit
    /// them.
    fn refusal(&self) -> StoreError {
        let path = self.db.path().to_path_buf();
        match self.disk.condition() {
            Condition::ReadOnly => StoreError::ReadOnly { path },
            Condition::Failing => StoreError::Io {
                path,
                detail: self.disk.detail().unwrap_or("I/O error").to_string(),
            },
            Condition::Full | Condition::Ok => StoreError::DiskFull { path },
        }
    }

    fn room(&self) -> Room {
        space::room(self.db.path(), self.db.pages().ok())
    }

    fn release_reserve(&mut self) {
        let path = self.db.path().to_path_buf();
        match space::release_reserve(&path) {
            Ok(true) => tracing::warn!(
                path = %space::reserve_path(&path).display(),
                "the disk holding the outbox is full: released the reserved space so that \
                 delivered readings can still be deleted; new readings are refused until there is room"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot release the outbox's reserved space"),
        }
    }

    /// On a full disk: compact a drained file, and take the reserve back
    /// once there is room.
    fn maintain(&mut self) {
        if self.disk.condition() == Condition::Ok && self.disk.reserve_held() {
            return;
        }
        let now = clock::mono_ms();
        if self.disk.compact(self.room(), now) {
            let started = Instant::now();
            match self.db.compact() {
                Ok(()) => tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    free_bytes = self.room().free,
                    "compacted the drained outbox to give its free pages back to the full disk"
                ),
                Err(e) => {
                    tracing::info!(error = %e, "cannot compact the outbox yet (too little room); trying again later")
                }
            }
        }
        if self.disk.restore(self.room(), now) {
            let path = self.db.path().to_path_buf();
            match space::make_reserve(&path, self.reserve_bytes()) {
                Ok(()) => tracing::info!(
                    "the disk holding the outbox has room again: new readings are accepted, space reserved again"
                ),
                Err(e) => {
                    self.disk.reserve_missing();
                    tracing::warn!(error = %e, "cannot reserve space beside the outbox");
                }
            }
        }
        self.publish_disk();
    }

    fn reserve_bytes(&self) -> u64 {
        self.state.limits.disk_reserve
    }

    /// A read-only or failing outbox: open it again (a filesystem mounted
    /// again is a new file under the old descriptors), every
    /// [`super::disk::PROBE_MS`].
    fn probe(&mut self) {
        if !self.disk.probe_due(clock::mono_ms()) {
            return;
        }
        let path = self.db.path().to_path_buf();
        if space::read_only(space::dir_of(&path)) {
            return;
        }
        match reopen(&path, self.db.sync(), self.state.limits) {
            Ok((db, checkpoints, reader, state)) => {
                self.db = db;
                self.checkpoints = checkpoints;
                *self.reader.lock().unwrap_or_else(|p| p.into_inner()) = reader;
                self.state = state;
                self.state.publish(&self.shared);
                tracing::info!(path = %path.display(), "opened the outbox again");
            }
            Err(e) => tracing::debug!(error = %e, "cannot open the outbox again yet"),
        }
    }

    /// What status shows about the disk.
    fn publish_disk(&self) {
        let view = DiskView {
            condition: self.disk.condition(),
            detail: self.disk.detail().map(str::to_string),
            since_ms: self.disk.since(),
            reserve_held: self.disk.reserve_held(),
            reserve_bytes: self.reserve_bytes(),
        };
        match self.shared.disk.lock() {
            Ok(mut d) => *d = view,
            Err(p) => *p.into_inner() = view,
        }
    }
}

/// The outbox's connections, opened again.
fn reopen(
    path: &Path,
    sync: crate::config::Synchronous,
    limits: Limits,
) -> Result<(Db, Checkpointer, Reader, State), StoreError> {
    let db = Db::reopen(path, sync)?;
    let state = State::load(&db, limits)?;
    let reader = Reader::open(path)?;
    let checkpoints = Checkpointer::start(path)?;
    Ok((db, checkpoints, reader, state))
}

/// Bytes of new readings (and ingest dead letters) in `group`.
fn append_bytes(group: &[Command]) -> u64 {
    group
        .iter()
        .map(|c| match c {
            Command::Append { records, dead, .. } => records
                .iter()
                .map(Record::stored_size)
                .chain(dead.iter().map(|(r, _)| r.stored_size()))
                .sum::<u64>(),
            _ => 0,
        })
        .sum()
}
