//! Counters shared by the parts of the pipeline, read by status reports and
//! logs. Plain atomics: counting must never slow the data path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct IngestStats {
    /// Records stored in the outbox.
    pub accepted: AtomicU64,
    /// Records refused by a full outbox (`reject_new`) or a failed commit.
    pub refused: AtomicU64,
    /// Records refused at ingest because their sink could never send them
    /// (3.1.1 and serial: moved to the dead letters; MQTT 5: refused with a
    /// reason code).
    pub undeliverable: AtomicU64,
    /// Readings whose own ts was not plausible and was replaced by the
    /// ingest time.
    pub ts_replaced: AtomicU64,
    /// Sensors connected to the front right now.
    pub clients: AtomicU64,
    /// The serial sources' local client is subscribed: RPC and attributes
    /// for serial devices reach their ports.
    pub serial_control: AtomicBool,
}

#[derive(Debug, Default)]
pub struct SinkStats {
    pub connected: AtomicBool,
    /// Successful CONNACKs since start.
    pub connects: AtomicU64,
    /// Records acknowledged by the upstream broker and deleted.
    pub delivered: AtomicU64,
    /// outpost's clock at the last PUBACK (0: none yet).
    pub last_ack_ms: std::sync::atomic::AtomicI64,
    /// A publish has waited for its PUBACK past `ack_timeout` (the session
    /// then reconnects); cleared by the next PUBACK.
    pub stalled: AtomicBool,
    /// Connections ended because the broker stopped acknowledging.
    pub stalls: AtomicU64,
    /// Records that can never be sent (larger than the upstream packet limit).
    pub undeliverable: AtomicU64,
    /// Readings of one device with the same ts and key (ThingsBoard keeps one).
    pub ts_clashes: AtomicU64,
    /// Readings stamped while the wall clock was not trusted, by what their
    /// ts was when they first left: corrected by the step NTP made;
    /// estimated (stamped in an earlier run, the time outpost was down
    /// unknown); sent as stamped (the clock was still not trusted).
    pub ts_corrected: AtomicU64,
    pub ts_estimated: AtomicU64,
    pub ts_provisional: AtomicU64,
    /// Times one of the sink's tasks ended unexpectedly and was restarted.
    pub restarts: AtomicU64,
    /// Tasks of the sink that are running now (its session, its local side).
    pub running: AtomicU64,
    /// When a task of the sink last went down unexpectedly (ms since the
    /// epoch; 0: never), for the watchdog.
    pub down_since_ms: std::sync::atomic::AtomicI64,
    /// Why the last connection attempt or session failed (no secrets:
    /// connection errors name hosts and codes only).
    pub last_error: std::sync::Mutex<Option<String>>,
    /// When the next connection attempt is due (ms since the epoch; 0:
    /// connected or not waiting).
    pub next_attempt_ms: std::sync::atomic::AtomicI64,
    /// The platform's rate limit holds the next publish back until then
    /// (ms since the epoch; 0: not held), and which window does.
    pub held_until_ms: std::sync::atomic::AtomicI64,
    pub held_by: std::sync::Mutex<Option<String>>,
    /// Records a second the platform's limits let through in the long run
    /// (`f64` bits; 0: no limit known), for the drain estimate.
    pub budget_rate_bits: AtomicU64,
}

impl SinkStats {
    /// `(window, ms left)` while the platform's rate limit holds the next
    /// publish back.
    pub fn held_back(&self, now_ms: i64) -> Option<(String, i64)> {
        let until = self
            .held_until_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let by = self.held_by.lock().ok().and_then(|b| b.clone())?;
        Some((by, until.saturating_sub(now_ms).max(0)))
    }

    /// Seconds a backlog of `queued` records takes at the platform's
    /// budget, while a limit holds the sink back.
    pub fn drain_estimate_s(&self, queued: u64, now_ms: i64) -> Option<u64> {
        self.held_back(now_ms)?;
        let rate = self.budget_rate()?;
        Some((queued as f64 / rate).ceil() as u64)
    }

    /// [`SinkStats::budget_rate_bits`] as a number, if there is a limit.
    pub fn budget_rate(&self) -> Option<f64> {
        let r = f64::from_bits(
            self.budget_rate_bits
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        (r > 0.0).then_some(r)
    }
}

/// All counters of one outpost process.
/// Counters of one Modbus slave.
#[derive(Debug, Default)]
pub struct SlaveStats {
    pub polls: AtomicU64,
    /// Polls without an answer after every attempt.
    pub timeouts: AtomicU64,
    /// Polls answered with a Modbus exception.
    pub exceptions: AtomicU64,
}

/// Counters of one serial port.
#[derive(Debug, Default)]
pub struct PortStats {
    pub open: AtomicBool,
    /// Successful opens since start (more than 1: the port came back).
    pub opens: AtomicU64,
    /// Readings taken from the port.
    pub readings: AtomicU64,
    /// Lines that were not readings (garbage, partial, too long).
    pub garbage: AtomicU64,
    pub slaves: BTreeMap<u8, Arc<SlaveStats>>,
}

impl PortStats {
    /// The slave's counters (a detached set for an unknown id).
    pub fn slave(&self, id: u8) -> Arc<SlaveStats> {
        self.slaves.get(&id).cloned().unwrap_or_default()
    }
}

/// The sinks' counters, by name. Sinks come and go with remote changes
/// while outpost runs, so the table is behind a lock; readers take a
/// snapshot.
#[derive(Debug, Default)]
pub struct SinkTable(std::sync::RwLock<BTreeMap<String, Arc<SinkStats>>>);

impl SinkTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<SinkStats>>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The counters of sink `name`.
    pub fn get(&self, name: &str) -> Option<Arc<SinkStats>> {
        self.read().get(name).cloned()
    }

    /// Every sink's counters, by name.
    pub fn all(&self) -> Vec<(String, Arc<SinkStats>)> {
        self.read()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    /// [`SinkTable::all`], as an iterator.
    pub fn iter(&self) -> std::vec::IntoIter<(String, Arc<SinkStats>)> {
        self.all().into_iter()
    }

    /// Every sink's counters.
    pub fn values(&self) -> std::vec::IntoIter<Arc<SinkStats>> {
        self.read()
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The counters of a sink added while running (kept if it was there).
    pub fn add(&self, name: &str) -> Arc<SinkStats> {
        let mut t = self.0.write().unwrap_or_else(|p| p.into_inner());
        t.entry(name.to_string()).or_default().clone()
    }

    /// A sink removed while running.
    pub fn remove(&self, name: &str) {
        let mut t = self.0.write().unwrap_or_else(|p| p.into_inner());
        t.remove(name);
    }
}

impl IntoIterator for &SinkTable {
    type Item = (String, Arc<SinkStats>);
    type IntoIter = std::vec::IntoIter<(String, Arc<SinkStats>)>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[derive(Debug)]
pub struct Stats {
    /// When this process started (uptime is measured from it, never from
    /// the wall clock).
    pub started: std::time::Instant,
    pub ingest: IngestStats,
    pub sinks: SinkTable,
    pub serial: BTreeMap<String, Arc<PortStats>>,
}

impl Stats {
    pub fn new<'a>(sinks: impl IntoIterator<Item = &'a String>) -> Stats {
        Stats {
            started: std::time::Instant::now(),
            ingest: IngestStats::default(),
            sinks: SinkTable(std::sync::RwLock::new(
                sinks
                    .into_iter()
                    .map(|s| (s.clone(), Arc::new(SinkStats::default())))
                    .collect(),
            )),
            serial: BTreeMap::new(),
        }
    }

    /// Adds counters for the serial ports and their Modbus slaves.
    pub fn with_serial(mut self, ports: &[crate::config::SerialConfig]) -> Stats {
        self.serial = ports
            .iter()
            .map(|p| {
                let slaves = p
                    .slave
                    .iter()
                    .map(|s| (s.id, Arc::new(SlaveStats::default())))
                    .collect();
                let stats = PortStats {
                    slaves,
                    ..PortStats::default()
                };
                (p.name.clone(), Arc::new(stats))
            })
            .collect();
        self
    }
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
