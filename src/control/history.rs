//! The last hour in numbers, for the status page's charts: one sample a
//! second of what was accepted, delivered and queued, in a ring of fixed
//! size (an hour is [`KEEP`] samples, about 115 KB, whatever the load).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::status::StatusSource;
use crate::stats;

/// Samples kept: one hour at one a second.
pub const KEEP: usize = 3600;

/// Counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: i64,
    /// Readings accepted into the outbox since start.
    pub accepted: u64,
    /// Records delivered by all sinks since start.
    pub delivered: u64,
    /// Records queued in the outbox now.
    pub queued: u64,
}

/// A cheap, cloneable handle to the ring.
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<VecDeque<Sample>>>);

/// One chart's points: (seconds before now, value).
pub type Series = Vec<(f64, f64)>;

impl History {
    pub fn push(&self, s: Sample) {
        let mut ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() >= KEEP {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    pub fn samples(&self) -> Vec<Sample> {
        let ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().copied().collect()
    }

    /// Accepted and delivered readings per second and queue depth, each as
    /// points relative to `now_ms` (rates from consecutive samples).
    pub fn series(&self, now_ms: i64) -> (Series, Series, Series) {
        let samples = self.samples();
        let ago = |at: i64| now_ms.saturating_sub(at) as f64 / 1000.0;
        let mut accepted = Vec::with_capacity(samples.len());
        let mut delivered = Vec::with_capacity(samples.len());
        for w in samples.windows(2) {
            let [a, b] = w else { continue };
            let dt = b.at_ms.saturating_sub(a.at_ms) as f64 / 1000.0;
            if dt <= 0.0 {
                continue;
            }
            let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / dt;
            accepted.push((ago(b.at_ms), rate(a.accepted, b.accepted)));
            delivered.push((ago(b.at_ms), rate(a.delivered, b.delivered)));
        }
        let queued = samples
            .iter()
            .map(|s| (ago(s.at_ms), s.queued as f64))
            .collect();
        (accepted, delivered, queued)
    }

    /// Takes a sample from `status` every `every` until `shutdown`.
    pub async fn record(self, status: StatusSource, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => self.push(sample(&status)),
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

fn sample(status: &StatusSource) -> Sample {
    let s = &status.stats;
    Sample {
        at_ms: crate::clock::mono_ms(),
        accepted: stats::get(&s.ingest.accepted),
        delivered: s.sinks.values().map(|k| stats::get(&k.delivered)).sum(),
        queued: status.outbox.stats().values().map(|q| q.waiting()).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_consecutive_samples_and_the_ring_is_bounded() {
        let h = History::default();
        for i in 0..(KEEP as i64 + 10) {
            h.push(Sample {
                at_ms: i * 1000,
                accepted: (i * 5) as u64,
                delivered: (i * 3) as u64,
                queued: (i * 2) as u64,
            });
        }
        assert_eq!(h.samples().len(), KEEP);
        let now = (KEEP as i64 + 9) * 1000;
        let (acc, del, q) = h.series(now);
        assert_eq!(acc.len(), KEEP - 1);
        assert!(acc.iter().all(|(_, r)| (*r - 5.0).abs() < 1e-9));
        assert!(del.iter().all(|(_, r)| (*r - 3.0).abs() < 1e-9));
        assert_eq!(q.last(), Some(&(0.0, ((KEEP + 9) * 2) as f64)));
    }
}
