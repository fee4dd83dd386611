//! What the session tells about acknowledgements and stamps: the last
//! PUBACK's age, a broker that stopped acknowledging (the connection then
//! ends, see `ack_timeout`), and the provisional stamps records leave with.

use std::time::Duration;

use super::{End, Uplink};
use crate::sink::Platform;
use crate::stats;

impl<E: Platform> Uplink<E> {
    /// A PUBACK came: the broker acknowledges again.
    pub(super) fn acknowledged(&self) {
        use std::sync::atomic::Ordering;
        self.stats
            .last_ack_ms
            .store(crate::clock::mono_ms().max(1), Ordering::Relaxed);
        if self.stats.stalled.swap(false, Ordering::Relaxed) {
            tracing::info!(sink = %self.name, "sink {}: the upstream broker acknowledges publishes again", self.name);
        }
    }

    /// Ends a connection whose broker stopped acknowledging: what it holds
    /// is sent again from the oldest row on the next one.
    pub(super) fn stalled(&self, waited: Duration, in_flight: usize) -> End {
        use std::sync::atomic::Ordering;
        self.stats.stalled.store(true, Ordering::Relaxed);
        stats::add(&self.stats.stalls, 1);
        tracing::warn!(
            sink = %self.name,
            waited_s = waited.as_secs(),
            ack_timeout_s = self.ack_timeout.as_secs(),
            in_flight,
            "sink {}: no PUBACK for {} s (ack_timeout {} s) with {} publish(es) in flight: reconnecting, and sending again from the oldest queued record",
            self.name,
            waited.as_secs(),
            self.ack_timeout.as_secs(),
            in_flight
        );
        End::Stalled(waited)
    }

    /// Counts the records leaving with a stamp that was provisional, once
    /// per record.
    pub(super) fn count_stamps(&mut self, records: &[crate::record::Record]) {
        use crate::record::TsSource;
        for r in records.iter().filter(|r| r.id > self.ts_counted) {
            let counter = match r.ts_source {
                TsSource::Trusted => continue,
                TsSource::Corrected => &self.stats.ts_corrected,
                TsSource::Estimated => &self.stats.ts_estimated,
                TsSource::Provisional { .. } => &self.stats.ts_provisional,
            };
            stats::add(counter, 1);
        }
        if let Some(last) = records.iter().map(|r| r.id).max() {
            self.ts_counted = self.ts_counted.max(last);
        }
    }
}
