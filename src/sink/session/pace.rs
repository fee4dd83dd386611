//! Pacing publishes to a platform's message-rate windows. Sending faster
//! gets a device disconnected, so the session asks before every publish
//! and waits when a window is full.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::units::RateSpec;

/// Send times remembered at most. A window allowing more messages than
/// this is treated as allowing this many more after each send leaves it.
const MAX_REMEMBERED: usize = 100_000;

#[derive(Debug, Clone, Default)]
pub struct RateLimit {
    /// (messages, window), strictest windows included.
    windows: Vec<(usize, Duration)>,
    /// Send times within the longest window, oldest first.
    sent: VecDeque<Instant>,
}

impl RateLimit {
    /// No limit.
    pub fn none() -> RateLimit {
        RateLimit::default()
    }

    pub fn new(spec: &RateSpec) -> RateLimit {
        RateLimit {
            windows: spec.windows.clone(),
            sent: VecDeque::new(),
        }
    }

    pub fn is_limited(&self) -> bool {
        !self.windows.is_empty()
    }

    /// When the next message may go: `None` means now.
    pub fn next_allowed(&mut self, now: Instant) -> Option<Instant> {
        let longest = self.windows.iter().map(|(_, d)| *d).max()?;
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= longest)
        {
            self.sent.pop_front();
        }
        let mut at: Option<Instant> = None;
        for (n, d) in &self.windows {
            let recent = self
                .sent
                .iter()
                .rev()
                .take_while(|t| now.duration_since(**t) < *d)
                .count();
            if recent >= *n {
                // The window frees up when the n-th most recent send leaves it.
                let nth = self.sent.len().saturating_sub(*n);
                let free = self
                    .sent
                    .get(nth)
                    .and_then(|t| t.checked_add(*d))
                    .unwrap_or(now);
                at = Some(at.map_or(free, |a| a.max(free)));
            }
        }
        at
    }

    pub fn record(&mut self, now: Instant) {
        if self.is_limited() {
            self.sent.push_back(now);
            // Only the n-th most recent send matters for a window of n: a
            // server that allows a billion messages an hour costs no more
            // memory than the largest n (capped) of the rest.
            let keep = self
                .windows
                .iter()
                .map(|(n, _)| *n)
                .max()
                .unwrap_or(0)
                .min(MAX_REMEMBERED);
            while self.sent.len() > keep {
                self.sent.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_when_a_window_is_full() {
        let mut r = RateLimit::new(&RateSpec::parse("3:1,5:10").expect("parse"));
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(r.next_allowed(t0), None, "message {i}");
            r.record(t0);
        }
        assert_eq!(r.next_allowed(t0), Some(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..2 {
            assert_eq!(r.next_allowed(t1), None);
            r.record(t1);
        }
        // Five in ten seconds: the next one waits for the first to age out.
        assert_eq!(r.next_allowed(t1), Some(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn a_huge_server_limit_costs_bounded_memory_and_no_overflow() {
        let mut r = RateLimit::new(&RateSpec {
            windows: vec![(usize::MAX, Duration::from_secs(315_360_000))],
        });
        let t0 = Instant::now();
        for _ in 0..200_000 {
            r.record(t0);
        }
        assert!(r.sent.len() <= MAX_REMEMBERED);
        assert_eq!(r.next_allowed(t0), None);
    }
}
