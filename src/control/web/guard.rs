//! Failed HTTP logins (the page's and `/ingest`'s), per address: after
//! [`ATTEMPTS`] failures within [`WINDOW`] an address gets 429 without its
//! password being checked until the window has passed, and a line is
//! logged at most once a window per address, with the count. State only,
//! time passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures an address may have in one window before it waits.
pub const ATTEMPTS: u32 = 10;
/// The window, and how long a locked-out address waits.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most (the oldest windows are forgotten first).
const ADDRESSES: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Tally {
    since: Instant,
    failures: u32,
    /// Failures not yet in a log line.
    unlogged: u32,
    logged: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct LoginGuard {
    by_address: HashMap<IpAddr, Tally>,
}

impl LoginGuard {
    /// `Err(wait)`: `ip` failed too often; answer 429 with `Retry-After`.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.by_address.get(&ip) {
            Some(t) if t.failures >= ATTEMPTS => {
                let over = t.since.checked_add(WINDOW).unwrap_or(now);
                match over.checked_duration_since(now) {
                    Some(wait) if !wait.is_zero() => Err(wait),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Notes a failure from `ip`; `Some(n)` when a log line is due: `n`
    /// failures since the last one.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> Option<u32> {
        if self.by_address.len() >= ADDRESSES && !self.by_address.contains_key(&ip) {
            self.by_address
                .retain(|_, t| now.saturating_duration_since(t.since) < WINDOW);
            if self.by_address.len() >= ADDRESSES {
                self.by_address.clear();
            }
        }
        let t = self.by_address.entry(ip).or_insert(Tally {
            since: now,
            failures: 0,
            unlogged: 0,
            logged: None,
        });
        if now.saturating_duration_since(t.since) >= WINDOW {
            t.since = now;
            t.failures = 0;
        }
        t.failures = t.failures.saturating_add(1);
        t.unlogged = t.unlogged.saturating_add(1);
        let due = t
            .logged
            .map_or(true, |at| now.saturating_duration_since(at) >= WINDOW);
        if due {
            t.logged = Some(now);
            let n = t.unlogged;
            t.unlogged = 0;
            Some(n)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_keeps_guessing_waits_and_is_logged_once_a_minute() {
        let mut g = LoginGuard::default();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let t0 = Instant::now();
        let mut lines = Vec::new();
        for i in 0..ATTEMPTS {
            assert!(g.check(a, t0).is_ok(), "attempt {i} is checked");
            lines.extend(g.failed(a, t0));
        }
        assert_eq!(lines, [1], "one line for the first failure, then quiet");
        let wait = g
            .check(a, t0 + Duration::from_secs(5))
            .expect_err("locked out");
        assert_eq!(wait, Duration::from_secs(55));
        assert!(g.check(b, t0).is_ok(), "another address is not held back");
        let later = t0 + WINDOW;
        assert!(g.check(a, later).is_ok(), "the window passed");
        assert_eq!(
            g.failed(a, later),
            Some(ATTEMPTS),
            "the count since the last line"
        );
    }
}
