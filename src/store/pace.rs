//! How long a commit of new readings waits for more to join it.
//!
//! Every commit writes the pages it touched to the WAL and fsyncs them,
//! so what a commit costs the SD card hardly depends on how many readings
//! it carries. When readings arrive many per millisecond on a disk whose
//! fsync takes a fraction of one, committing each group as it comes writes
//! the same half-full pages over and over (measured with the bench at
//! 5,000 readings/s spread evenly: 2,174 bytes written per reading). So
//! under such a load commits begin at most once per [`PERIOD`], and the
//! readings in between ride in one. On a disk slower than that (an SD
//! card's fsync takes milliseconds) the commits are that far apart anyway
//! and nothing waits; at the rates where a wait would gather little (200
//! readings/s is one every 5 ms) nothing waits either, so the sensor's
//! PUBACK is held only for its own commit.
//!
//! The rate is an exponentially decaying count of readings over the last
//! [`HORIZON`], so a burst long past does not make a lone reading wait.

use std::time::{Duration, Instant};

/// Under load, commits begin at most this often. Measured with the bench
/// at 5,000 readings/s on a disk with 0.2 ms fsyncs, in bytes written per
/// reading: 2,174 with no wait; a fixed wait of 1 ms after a group's first
/// reading 1,440, of 1.5 ms 1,158; a period of 2 ms 1,099–1,133, of 3 ms
/// 873 (PUBACK p99 4.3 ms there, against 1.8–2.1 with no wait).
pub(super) const PERIOD: Duration = Duration::from_millis(3);

/// A group this large commits at once.
pub(super) const ENOUGH: usize = 32;

/// A commit waits only when at least this many readings are expected
/// per [`PERIOD`].
const EXPECTED: f64 = 4.0;

/// The time over which the arrival rate is averaged.
const HORIZON: Duration = Duration::from_millis(100);

/// The arrival rate of readings, as the writer sees them commit.
#[derive(Debug, Default)]
pub(super) struct Pace {
    /// Readings per [`HORIZON`], decayed to `at`, when the last commit
    /// began.
    level: f64,
    at: Option<Instant>,
}

impl Pace {
    /// A commit of `readings` begins at `now`.
    pub(super) fn committed(&mut self, readings: usize, now: Instant) {
        self.level = self.level_at(now) + readings as f64;
        self.at = Some(now);
    }

    /// How long a group holding `readings` new readings waits for more
    /// at `now`; `None` if it commits at once.
    pub(super) fn wait(&self, readings: usize, now: Instant) -> Option<Duration> {
        if readings == 0 || readings >= ENOUGH {
            return None;
        }
        let per_period = self.level_at(now) * PERIOD.as_secs_f64() / HORIZON.as_secs_f64();
        if per_period < EXPECTED {
            return None;
        }
        let since = now.saturating_duration_since(self.at?);
        Some(PERIOD.checked_sub(since)?).filter(|w| !w.is_zero())
    }

    fn level_at(&self, now: Instant) -> f64 {
        let Some(at) = self.at else {
            return 0.0;
        };
        let age = now.saturating_duration_since(at).as_secs_f64();
        self.level * (-age / HORIZON.as_secs_f64()).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rate` readings per second in commits of `per` each, for a second;
    /// the time of the last commit.
    fn steady(rate: u64, per: usize) -> (Pace, Instant) {
        let mut pace = Pace::default();
        let start = Instant::now();
        let every = Duration::from_secs_f64(per as f64 / rate as f64);
        let mut at = start;
        let mut last = start;
        while at.duration_since(start) < Duration::from_secs(1) {
            pace.committed(per, at);
            last = at;
            at += every;
        }
        (pace, last)
    }

    #[test]
    fn readings_many_per_millisecond_wait_for_the_commit_period() {
        let (pace, last) = steady(5_000, 1);
        let now = last + Duration::from_micros(200);
        assert_eq!(pace.wait(1, now), Some(PERIOD - Duration::from_micros(200)));
        assert_eq!(pace.wait(ENOUGH, now), None, "a full group commits");
        assert_eq!(pace.wait(0, now), None, "nothing to wait for");
        assert_eq!(
            pace.wait(1, last + PERIOD),
            None,
            "a commit period already gone by (a slow disk) waits no more"
        );
    }

    #[test]
    fn readings_a_few_milliseconds_apart_commit_at_once() {
        for rate in [20, 200, 1_000] {
            let (pace, last) = steady(rate, 1);
            assert_eq!(
                pace.wait(1, last + Duration::from_micros(100)),
                None,
                "{rate}/s"
            );
        }
        assert_eq!(Pace::default().wait(1, Instant::now()), None);
    }

    #[test]
    fn a_burst_long_past_does_not_make_a_reading_wait() {
        let (pace, last) = steady(20_000, 20);
        assert!(pace.wait(1, last + Duration::from_micros(100)).is_some());
        let (pace, last) = steady(20_000, 20);
        let mut pace = pace;
        pace.committed(1, last + Duration::from_millis(500));
        assert_eq!(pace.wait(1, last + Duration::from_millis(501)), None);
    }
}
