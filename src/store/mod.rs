//! The durable outbox: every record waits here until its sink's platform has
//! acknowledged it.
//!
//! One SQLite file in WAL mode holds one FIFO queue per sink (a table each,
//! rows ordered by an id that is never reused; see `db`). A single writer
//! thread owns the connection and applies whatever commands are pending as
//! one transaction — group commit without a timer, so throughput follows
//! the offered load rather than the disk's fsync latency. Appenders may
//! wait for the commit (that is how an acknowledgement can be held until
//! data is on disk). Sinks read their queues through a second connection,
//! so a fetch never waits behind a commit.
//!
//! Deletes of delivered records are not fsynced on their own: they are
//! gathered for a moment and committed without a sync, and become durable
//! with the next append (or a checkpoint). A power cut can undo the last of
//! them; those records are then sent again, a duplicate with the same ts,
//! never a loss. On an SD card that is the difference between one flash
//! write per reading and one per batch.
//!
//! The outbox is bounded by bytes and by age. What the bound removes or
//! refuses is counted per sink in the file itself, so the count survives
//! restarts and can be reported upstream.

mod alarm;
mod apply;
mod bounds;
mod checkpoint;
mod db;
mod dead;
mod disk;
mod marks;
mod migrate;
mod open;
mod pace;
mod read;
mod salvage;
mod space;
mod state;
mod types;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, Notify};

use crate::config::{FullPolicy, StoreConfig};
use crate::record::Record;

pub use alarm::Alarm;
pub use db::Depth;
pub use disk::Condition;
pub use read::{dead_letters, DeadLetter};
pub use types::{Appended, DeadDone, DeadOp, DeadStats, DiskView, Pick, QueueStats, StoreError};

/// An incoming QoS 2 PUBLISH that was stored: `(client id, packet id)`.
/// Kept until the client releases the packet id (PUBREL), so a resend of
/// an unreleased id, even after a crash, is recognised and not stored
/// twice.
pub type Qos2Mark = (String, u16);

pub(crate) enum Qos2Op {
    /// The client released the id (PUBREL); answered once committed.
    Release(Qos2Mark, oneshot::Sender<Result<(), StoreError>>),
    /// A clean session: every marker of the client goes.
    Forget(String),
    /// The unreleased ids of a client.
    Pending(String, oneshot::Sender<Result<Vec<u16>, StoreError>>),
}

/// A commit outcome, tagged with the caller's sequence number.
pub type Tagged = (u64, Result<Appended, StoreError>);

/// How an appender hears that its records are committed.
pub(crate) enum Done {
    Once(oneshot::Sender<Result<Appended, StoreError>>),
    /// For callers with many appends outstanding (one per held PUBACK).
    Tagged(mpsc::UnboundedSender<Tagged>, u64),
}

impl Shared {
    /// The queues that are read.
    pub(crate) fn sinks(&self) -> Vec<String> {
        let n = self.notify.lock().unwrap_or_else(|p| p.into_inner());
        n.keys().cloned().collect()
    }

    pub(crate) fn notifier(&self, sink: &str) -> Option<Arc<Notify>> {
        let n = self.notify.lock().unwrap_or_else(|p| p.into_inner());
        n.get(sink).cloned()
    }

    /// Counts acknowledged rows handed over to delete (`add`), or whose
    /// delete committed.
    pub(crate) fn deleting(&self, sink: &str, n: u64, add: bool) {
        let mut d = match self.deleting.lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        let e = d.entry(sink.to_string()).or_default();
        *e = if add {
            e.saturating_add(n)
        } else {
            e.saturating_sub(n)
        };
    }
}

impl Done {
    pub(crate) fn send(self, r: Result<Appended, StoreError>) {
        match self {
            Done::Once(tx) => {
                let _ = tx.send(r);
            }
            Done::Tagged(tx, tag) => {
                let _ = tx.send((tag, r));
            }
        }
    }
}

pub(crate) enum Command {
    Append {
        records: Vec<Record>,
        /// Records refused at ingest: straight to the dead letters, with
        /// the reason, in the same transaction.
        dead: Vec<(Record, String)>,
        /// An incoming QoS 2 packet id recorded with the records, in the
        /// same transaction (see [`Qos2Mark`]).
        mark: Option<Qos2Mark>,
        done: Option<Done>,
    },
    /// The QoS 2 markers of a client.
    Qos2(Qos2Op),
    Delete {
        sink: String,
        ids: Vec<i64>,
    },
    /// Move rows to the dead-letter table.
    DeadLetter {
        sink: String,
        ids: Vec<i64>,
        reason: String,
    },
    /// An operator's retry or purge of dead letters; answered once
    /// committed.
    Dead {
        op: DeadOp,
        pick: Pick,
        /// The sinks that exist now: a retry puts a record back only into
        /// a queue that is read.
        sinks: Vec<String>,
        reply: oneshot::Sender<Result<DeadDone, StoreError>>,
    },
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
    Expire,
    /// New bounds (a remote configuration change); applied from the next
    /// append or expiry on.
    SetLimits(Limits),
    /// Commit what came before, then stop the writer.
    Stop,
}

pub(crate) struct Shared {
    /// The queues that are read (the configured sinks, which a remote
    /// change may add or remove while running), each with what wakes its
    /// reader.
    notify: Mutex<HashMap<String, Arc<Notify>>>,
    /// Per sink, acknowledged rows handed to the writer to delete and not
    /// committed yet.
    deleting: Mutex<HashMap<String, u64>>,
    stats: Mutex<BTreeMap<String, QueueStats>>,
    dead: Mutex<DeadStats>,
    disk: Mutex<DiskView>,
    /// The outbox file (its alarms' reports lie beside it).
    path: PathBuf,
    /// Commits that worked (the tests count them).
    #[cfg(test)]
    commits: std::sync::atomic::AtomicU64,
}

/// A cheap, cloneable handle to the outbox.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    reader: Arc<Mutex<read::Reader>>,
}

/// Joins the writer thread once every [`Outbox`] handle is gone, so that the
/// last commit has finished before the process exits.
pub struct WriterHandle(JoinHandle<()>);

impl WriterHandle {
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the outbox writer thread panicked");
        }
    }
}

/// Limits the writer applies; resolved from [`StoreConfig`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    /// `store.disk_reserve`.
    pub disk_reserve: u64,
    /// `store.synchronous` (a change applies from the next commit).
    pub synchronous: crate::config::Synchronous,
    pub max_age_ms: i64,
    pub policy: FullPolicy,
    pub dead_max_bytes: u64,
}

impl Limits {
    pub fn of(cfg: &StoreConfig) -> Limits {
        Limits {
            max_bytes: cfg.max_bytes.0,
            disk_reserve: cfg.disk_reserve.0,
            synchronous: cfg.synchronous,
            max_age_ms: i64::try_from(cfg.max_age.0.as_millis()).unwrap_or(i64::MAX),
            policy: cfg.full_policy,
            dead_max_bytes: cfg.dead_letters_max_bytes.0,
        }
    }
}

impl Outbox {
    /// Opens (or creates) the outbox file and starts its writer thread.
    /// `sinks` are the queues that will be read; others may exist in the file
    /// from an earlier config and are kept, counted and bounded all the same.
    pub fn open(
        path: PathBuf,
        cfg: &StoreConfig,
        sinks: &[String],
    ) -> Result<(Outbox, WriterHandle), StoreError> {
        let limits = Limits::of(cfg);
        let (db, disk) = open::open(&path, cfg.synchronous, limits.disk_reserve)?;
        let notify = sinks
            .iter()
            .map(|s| (s.clone(), Arc::new(Notify::new())))
            .collect();
        let shared = Arc::new(Shared {
            notify: Mutex::new(notify),
            deleting: Mutex::new(HashMap::new()),
            stats: Mutex::new(BTreeMap::new()),
            dead: Mutex::new(DeadStats::default()),
            disk: Mutex::new(DiskView::default()),
            path: path.clone(),
            #[cfg(test)]
            commits: std::sync::atomic::AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(64 * 1024);
        let state = state::State::load(&db, limits)?;
        let reader = Arc::new(Mutex::new(read::Reader::open(&path)?));
        let checkpointer = checkpoint::Checkpointer::start(&path)?;
        state.publish(&shared);
        let thread_shared = shared.clone();
        let thread_reader = reader.clone();
        let handle = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || {
                writer::run(
                    db,
                    rx,
                    thread_shared,
                    state,
                    checkpointer,
                    thread_reader,
                    disk,
                )
            })
            .map_err(|e| StoreError::Sqlite {
                path: path.clone(),
                detail: format!("cannot start the writer thread: {e}"),
            })?;
        Ok((Outbox { tx, shared, reader }, WriterHandle(handle)))
    }

    /// Alarms about the outbox that a person must read (see `alarm`).
    pub fn alarms(&self) -> Vec<Alarm> {
        alarm::list(&self.shared.path)
    }

    /// The outbox's filesystem: full, read-only, failing, or fine.
    pub fn disk(&self) -> DiskView {
        match self.shared.disk.lock() {
            Ok(d) => d.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Appends records and waits until they are committed.
    pub async fn append(&self, records: Vec<Record>) -> Result<Appended, StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Append {
                records,
                dead: Vec::new(),
                mark: None,
                done: Some(Done::Once(done)),
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends records, and records refused at ingest straight to the dead
    /// letters, in one transaction; the outcome arrives on `tx` with `tag`
    /// (to hold an acknowledgement until then), or nowhere.
    pub async fn append_with_dead(
        &self,
        records: Vec<Record>,
        dead: Vec<(Record, String)>,
        mark: Option<Qos2Mark>,
        done: Option<(mpsc::UnboundedSender<Tagged>, u64)>,
    ) -> Result<(), StoreError> {
        self.tx
            .send(Command::Append {
                records,
                dead,
                mark,
                done: done.map(|(tx, tag)| Done::Tagged(tx, tag)),
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Appends records from a blocking thread without waiting for the commit
    /// (the caller has no acknowledgement to hold).
    pub fn submit_blocking(&self, records: Vec<Record>) -> Result<(), StoreError> {
        self.tx
            .blocking_send(Command::Append {
                records,
                dead: Vec::new(),
                mark: None,
                done: None,
            })
            .map_err(|_| StoreError::Closed)
    }

    /// Appends records; the commit outcome arrives on `tx` with `tag`.
    pub async fn append_tagged(
        &self,
        records: Vec<Record>,
        tx: mpsc::UnboundedSender<Tagged>,
        tag: u64,
    ) -> Result<(), StoreError> {
        self.tx
            .send(Command::Append {
                records,
                dead: Vec::new(),
                mark: None,
                done: Some(Done::Tagged(tx, tag)),
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// [`Outbox::append_tagged`] for an incoming QoS 2 PUBLISH: its packet
    /// id is recorded in the same transaction as its records.
    pub async fn append_marked(
        &self,
        records: Vec<Record>,
        mark: Qos2Mark,
        tx: mpsc::UnboundedSender<Tagged>,
        tag: u64,
    ) -> Result<(), StoreError> {
        self.tx
            .send(Command::Append {
                records,
                dead: Vec::new(),
                mark: Some(mark),
                done: Some(Done::Tagged(tx, tag)),
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// The client released a QoS 2 packet id; returns once that is committed.
    pub async fn qos2_release(&self, client: &str, pkid: u16) -> Result<(), StoreError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Command::Qos2(Qos2Op::Release(
                (client.to_string(), pkid),
                reply,
            )))
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Forgets every QoS 2 marker of a client (it started a clean session).
    pub async fn qos2_forget(&self, client: &str) -> Result<(), StoreError> {
        self.tx
            .send(Command::Qos2(Qos2Op::Forget(client.to_string())))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// The packet ids a client sent at QoS 2 and has not released.
    pub async fn qos2_pending(&self, client: &str) -> Result<Vec<u16>, StoreError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Command::Qos2(Qos2Op::Pending(client.to_string(), reply)))
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Changes the bounds while running (`max_bytes`, `max_age`,
    /// `full_policy`, `synchronous`); the file (`path`) stays.
    pub async fn set_limits(&self, cfg: &StoreConfig) -> Result<(), StoreError> {
        self.tx
            .send(Command::SetLimits(Limits::of(cfg)))
            .await
            .map_err(|_| StoreError::Closed)?;
        // Expire at once under a shorter max_age, and trim to a smaller size.
        self.expire().await
    }

    pub async fn submit(&self, records: Vec<Record>) -> Result<(), StoreError> {
        self.tx
            .send(Command::Append {
                records,
                dead: Vec::new(),
                mark: None,
                done: None,
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Deletes records of `sink` its platform acknowledged. Returns once
    /// the command is queued; the delete commits a moment later, without a
    /// sync of its own (see the module docs).
    pub async fn delete(&self, sink: &str, ids: Vec<i64>) -> Result<(), StoreError> {
        self.shared.deleting(sink, ids.len() as u64, true);
        self.tx
            .send(Command::Delete {
                sink: sink.to_string(),
                ids,
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Moves records the platform can never take out of the queue, into the
    /// dead-letter table (listed by `outpost dead-letters`).
    pub async fn dead_letter(
        &self,
        sink: &str,
        ids: Vec<i64>,
        reason: String,
    ) -> Result<(), StoreError> {
        self.tx
            .send(Command::DeadLetter {
                sink: sink.to_string(),
                ids,
                reason,
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Retries or purges dead letters; returns once that is committed.
    pub async fn dead_letters_act(&self, op: DeadOp, pick: Pick) -> Result<DeadDone, StoreError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Command::Dead {
                op,
                pick,
                sinks: self.shared.sinks(),
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Returns once everything queued before it is committed (deletes
    /// included).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Command::Flush(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)
    }

    /// Runs `f` on the reader connection, on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut read::Reader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let mut r = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut r)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Up to `limit` records of `sink` with an id above `after`, oldest first.
    pub async fn fetch(
        &self,
        sink: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.fetch_range(sink, after, i64::MAX, limit).await
    }

    /// Up to `limit` records of `sink` with `after < id < before`, oldest first.
    pub async fn fetch_range(
        &self,
        sink: &str,
        after: i64,
        before: i64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let sink = sink.to_string();
        self.read(move |r| r.fetch(&sink, after, before, limit))
            .await
    }

    /// The newest record id queued for `sink` (0 if none).
    pub async fn last_id(&self, sink: &str) -> Result<i64, StoreError> {
        let sink = sink.to_string();
        self.read(move |r| r.last_id(&sink)).await
    }

    /// Per sink, when its oldest queued record was stored (ms); sinks with
    /// an empty queue are absent. A primary-key lookup per queue on the
    /// reader connection, cheap enough for a status snapshot.
    pub fn oldest_ingested(&self) -> BTreeMap<String, i64> {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        self.shared
            .sinks()
            .into_iter()
            .filter_map(|sink| match r.oldest_ingested(&sink) {
                Ok(Some(at)) => Some((sink, at)),
                _ => None,
            })
            .collect()
    }

    /// Removes records older than `store.max_age`.
    pub async fn expire(&self) -> Result<(), StoreError> {
        self.tx
            .send(Command::Expire)
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Commits everything submitted so far and stops the writer thread.
    /// Later calls on any handle fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }

    /// Woken whenever new records for `sink` are committed.
    pub fn notifier(&self, sink: &str) -> Option<Arc<Notify>> {
        self.shared.notifier(sink)
    }

    /// A sink added while running: its queue is read from now on.
    pub fn add_sink(&self, sink: &str) {
        let mut n = self.shared.notify.lock().unwrap_or_else(|p| p.into_inner());
        n.entry(sink.to_string()).or_default();
    }

    /// A sink removed while running: its queue stays in the file (counted
    /// and bounded, as any queue of an earlier config), unread.
    pub fn remove_sink(&self, sink: &str) {
        let mut n = self.shared.notify.lock().unwrap_or_else(|p| p.into_inner());
        n.remove(sink);
    }

    /// The dead letters, as of the last commit.
    pub fn dead_stats(&self) -> DeadStats {
        match self.shared.dead.lock() {
            Ok(s) => *s,
            Err(p) => *p.into_inner(),
        }
    }

    /// Queue depth and drop counts per sink, as of the last commit.
    pub fn stats(&self) -> BTreeMap<String, QueueStats> {
        let mut stats = match self.shared.stats.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let deleting = match self.shared.deleting.lock() {
            Ok(d) => d.clone(),
            Err(p) => p.into_inner().clone(),
        };
        for (sink, n) in deleting {
            if let Some(q) = stats.get_mut(&sink) {
                q.delivered_undeleted = n.min(q.depth.records);
            }
        }
        stats
    }
}

#[cfg(test)]
mod tests;
