//! Reconnect backoff: exponential with jitter, capped.

use std::time::Duration;

/// Exponential backoff with ±25 % jitter, so a site full of gateways does not
/// reconnect in lockstep after an outage. `max` is a maximum: no wait,
/// jitter included, exceeds it, so the first attempt after the cloud
/// returns comes within `reconnect_max`.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The wait before the next attempt; doubles each call up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        jitter(base).min(self.max)
    }

    /// The longest wait, for failures that retrying soon cannot fix.
    pub fn give_up_delay(&mut self) -> Duration {
        self.next = self.max;
        jitter(self.max).min(self.max)
    }
}

fn jitter(d: Duration) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * (0.75 + fastrand::f64() * 0.5)).unwrap_or(d)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let d: Vec<f64> = (0..6).map(|_| b.next_delay().as_secs_f64()).collect();
        for (got, base) in d.iter().zip([1.0, 2.0, 4.0, 8.0, 8.0, 8.0]) {
            assert!(*got >= base * 0.75 && *got <= base * 1.25, "{d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1250));
    }

    #[test]
    fn no_wait_exceeds_the_maximum_jitter_included() {
        let max = Duration::from_secs(8);
        let mut b = Backoff::new(Duration::from_secs(1), max);
        for _ in 0..1_000 {
            assert!(b.next_delay() <= max);
            assert!(b.give_up_delay() <= max);
        }
        let mut b = Backoff::new(max, max);
        let waits: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        assert!(
            waits.iter().all(|w| *w <= max && *w >= max * 3 / 4),
            "{waits:?}"
        );
    }
}
