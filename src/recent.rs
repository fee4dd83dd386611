//! A map by name that forgets: at most `cap` entries, and when a new name
//! would go beyond, the quarter heard from least recently are dropped.
//!
//! Names come from the LAN and the cloud (device names, LoRaWAN device
//! ids), so anything kept per name must be bounded: a sensor that sends a
//! new name every millisecond costs a bounded amount of memory, and the
//! names in use stay.

use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct Recent<V> {
    cap: usize,
    tick: u64,
    entries: HashMap<String, (V, u64)>,
}

impl<V> Recent<V> {
    pub fn new(cap: usize) -> Recent<V> {
        Recent {
            cap: cap.max(4),
            tick: 0,
            entries: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The entry for `name`, made with `make` if new; either way it
    /// counts as heard from now.
    pub fn entry(&mut self, name: &str, make: impl FnOnce() -> V) -> &mut V {
        self.tick = self.tick.wrapping_add(1);
        if !self.entries.contains_key(name) && self.entries.len() >= self.cap {
            self.forget_least_recent();
        }
        let tick = self.tick;
        let slot = self
            .entries
            .entry(name.to_string())
            .or_insert_with(|| (make(), tick));
        slot.1 = tick;
        &mut slot.0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries.iter().map(|(k, (v, _))| (k.as_str(), v))
    }

    /// Drops the quarter of the entries heard from least recently.
    fn forget_least_recent(&mut self) {
        let mut ticks: Vec<u64> = self.entries.values().map(|(_, t)| *t).collect();
        ticks.sort_unstable();
        let cut = ticks.get(ticks.len() / 4).copied().unwrap_or(0);
        self.entries.retain(|_, (_, t)| *t > cut);
        self.entries.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_the_names_in_use_stay() {
        let mut r: Recent<u32> = Recent::new(100);
        for i in 0..10_000 {
            *r.entry("busy", || 0) += 1;
            r.entry(&format!("once-{i}"), || 0);
            assert!(r.len() <= 100);
        }
        assert!(r.contains("busy"));
        assert_eq!(*r.entry("busy", || 0), 10_000);
        assert!(!r.contains("once-0"));
    }
}
