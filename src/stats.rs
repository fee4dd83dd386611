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
}

#[derive(Debug, Default)]
pub struct SinkStats {
    pub connected: AtomicBool,
    /// Successful CONNACKs since start.
    pub connects: AtomicU64,
    /// Records acknowledged by the upstream broker and deleted.
    pub delivered: AtomicU64,
    /// Records that can never be sent (larger than the upstream packet limit).
    pub undeliverable: AtomicU64,
    /// Readings of one device with the same ts and key (ThingsBoard keeps one).
    pub ts_clashes: AtomicU64,
}

/// All counters of one outpost process.
#[derive(Debug, Default)]
pub struct Stats {
    pub ingest: IngestStats,
    pub sinks: BTreeMap<String, Arc<SinkStats>>,
}

impl Stats {
    pub fn new<'a>(sinks: impl IntoIterator<Item = &'a String>) -> Stats {
        Stats {
            ingest: IngestStats::default(),
            sinks: sinks
                .into_iter()
                .map(|s| (s.clone(), Arc::new(SinkStats::default())))
                .collect(),
        }
    }
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
