//! Connections that have not sent CONNECT yet. They hold a descriptor and a
//! task but no connection slot, so they are bounded apart: in all
//! (`broker.max_pending`) and per remote address
//! (`broker.max_pending_per_address`). A socket over either bound is closed
//! at once, before anything is read from it; one that sends no CONNECT
//! within `connect_timeout` is closed then. A LAN that opens sockets and
//! sends nothing cannot use up the process's descriptors.
//!
//! State only, no I/O: the accept loop asks [`Pending::take`] and the
//! returned [`Ticket`] gives the place back when it drops.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a new connection was closed before it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max_pending` connections are waiting for their CONNECT.
    All(usize),
    /// This address has `max_pending_per_address` waiting.
    Address(usize),
}

impl Full {
    pub fn reason(self) -> String {
        match self {
            Full::All(n) => format!(
                "{n} connections are waiting to send CONNECT (broker.max_pending); new ones are closed"
            ),
            Full::Address(n) => format!(
                "this address has {n} connections waiting to send CONNECT (broker.max_pending_per_address); new ones are closed"
            ),
        }
    }
}

#[derive(Debug)]
struct Counts {
    total: usize,
    per: HashMap<IpAddr, usize>,
}

/// The bounds and what is taken of them; cheap to clone.
#[derive(Debug, Clone)]
pub struct Pending {
    max_total: usize,
    max_per: usize,
    counts: Arc<Mutex<Counts>>,
}

/// A place taken; given back on drop.
#[derive(Debug)]
pub struct Ticket {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl Pending {
    pub fn new(max_total: usize, max_per: usize) -> Pending {
        Pending {
            max_total,
            max_per,
            counts: Arc::new(Mutex::new(Counts {
                total: 0,
                per: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection from `ip`, if both bounds allow.
    pub fn take(&self, ip: IpAddr) -> Result<Ticket, Full> {
        let mut c = self.lock();
        if c.total >= self.max_total {
            return Err(Full::All(c.total));
        }
        let mine = c.per.get(&ip).copied().unwrap_or(0);
        if mine >= self.max_per {
            return Err(Full::Address(mine));
        }
        c.total = c.total.saturating_add(1);
        c.per.insert(ip, mine.saturating_add(1));
        Ok(Ticket {
            ip,
            counts: self.counts.clone(),
        })
    }

    /// Connections waiting for their CONNECT now.
    pub fn waiting(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share() {
        let p = Pending::new(10, 2);
        let a1 = p.take(ip(1)).expect("first");
        let _a2 = p.take(ip(1)).expect("second");
        assert_eq!(p.take(ip(1)).map(|_| ()), Err(Full::Address(2)));
        let _b = p.take(ip(2)).expect("another address still gets in");
        drop(a1);
        assert!(p.take(ip(1)).is_ok(), "a place given back is free again");
    }

    #[test]
    fn the_total_bounds_every_address_together() {
        let p = Pending::new(3, 2);
        let held: Vec<Ticket> = (1..=3).map(|i| p.take(ip(i)).expect("room")).collect();
        assert_eq!(p.waiting(), 3);
        assert_eq!(p.take(ip(9)).map(|_| ()), Err(Full::All(3)));
        drop(held);
        assert_eq!(p.waiting(), 0);
        assert!(
            p.lock().per.is_empty(),
            "no address is remembered when it has nothing waiting"
        );
    }
}
