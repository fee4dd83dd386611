//! Pacing publishes to a platform's message-rate windows. Sending faster
//! gets a device disconnected, so the session asks before every publish
//! and waits when a window is full.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::units::RateSpec;

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
                let free = self.sent.get(self.sent.len() - *n).map_or(now, |t| *t + *d);
                at = Some(at.map_or(free, |a| a.max(free)));
            }
        }
        at
    }

    pub fn record(&mut self, now: Instant) {
        if self.is_limited() {
            self.sent.push_back(now);
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
}
