//! Logging at most once per key per minute, with how many happened: a
//! sensor that sends the same bad thing a thousand times a second gets one
//! line a minute, not a flooded journal.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Keys remembered at most (the oldest are forgotten first).
const KEYS: usize = 1024;

#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    seen: HashMap<String, (Instant, u64)>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::every(Duration::from_secs(60))
    }
}

impl Throttle {
    pub fn every(every: Duration) -> Throttle {
        Throttle {
            every,
            seen: HashMap::new(),
        }
    }

    /// `Some(n)` when a line is due for `key`: `n` events since the last
    /// line (this one included).
    pub fn due(&mut self, key: &str) -> Option<u64> {
        let now = Instant::now();
        if self.seen.len() >= KEYS && !self.seen.contains_key(key) {
            let every = self.every;
            self.seen
                .retain(|_, (t, _)| now.saturating_duration_since(*t) < every);
            if self.seen.len() >= KEYS {
                self.seen.clear();
            }
        }
        match self.seen.get_mut(key) {
            None => {
                self.seen.insert(key.to_string(), (now, 0));
                Some(1)
            }
            Some((last, n)) => {
                *n = n.saturating_add(1);
                if now.saturating_duration_since(*last) >= self.every {
                    let count = *n;
                    *last = now;
                    *n = 0;
                    Some(count)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_key_per_period_with_the_count() {
        let mut t = Throttle::every(Duration::from_millis(50));
        assert_eq!(t.due("a"), Some(1));
        assert_eq!(t.due("a"), None);
        assert_eq!(t.due("b"), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.due("a"), Some(2));
        for i in 0..5000 {
            t.due(&format!("k{i}"));
        }
        assert!(t.seen.len() <= KEYS);
    }
}
