//! Message rate limits in ThingsBoard's `N:seconds` form
//! (`"200:1,6000:60,14000:3600"`: at most 200 messages in any second, 6000 in
//! any minute, 14000 in any hour, all at once). Sending faster gets a device
//! disconnected, so the uplink asks the limiter before every publish and
//! waits when a window is full.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

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

    /// Parses `"N:seconds,N:seconds"`.
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let mut windows = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (n, secs) = part
                .split_once(':')
                .ok_or_else(|| format!("`{part}` is not N:seconds"))?;
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: `{n}` is not a count"))?;
            let secs: u64 = secs
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: `{secs}` is not a number of seconds"))?;
            if n == 0 || secs == 0 {
                return Err(format!("`{part}`: count and seconds must be above zero"));
            }
            windows.push((n, Duration::from_secs(secs)));
        }
        Ok(RateLimit {
            windows,
            sent: VecDeque::new(),
        })
    }

    /// Both limits at once (e.g. `messages` and `telemetryMessages`).
    pub fn and(mut self, other: RateLimit) -> RateLimit {
        self.windows.extend(other.windows);
        self
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
                let idx = self.sent.len() - *n;
                let free = self.sent[idx] + *d;
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
    fn parses_thingsboard_limits() {
        let r = RateLimit::parse("200:1,6000:60").expect("parse");
        assert_eq!(
            r.windows,
            [
                (200, Duration::from_secs(1)),
                (6000, Duration::from_secs(60))
            ]
        );
        assert!(RateLimit::parse("200").is_err());
        assert!(RateLimit::parse("0:1").is_err());
        assert!(!RateLimit::parse("")
            .expect("empty is no limit")
            .is_limited());
    }

    #[test]
    fn waits_when_a_window_is_full() {
        let mut r = RateLimit::parse("3:1,5:10").expect("parse");
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
