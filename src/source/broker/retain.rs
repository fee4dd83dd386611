//! Retained messages, bounded in count and bytes. Each is kept with the
//! owner of the client that published it (`core::owner`). At a bound, the
//! owner with the most retained topics gives up one of its own for an
//! owner with fewer; an owner already at the most gets its new topic
//! delivered but not retained (counted and logged). A client publishing
//! retained messages on endless topics exhausts neither memory nor the
//! place of a device's own retained message.

use std::collections::HashMap;
use std::sync::Arc;

use super::core::Owner;
use super::session::Message;
use crate::topic::TopicFilter;

#[derive(Debug, Default)]
pub struct Retained {
    by_topic: HashMap<Arc<str>, (Arc<Message>, Owner)>,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
}

/// What storing a retained message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Kept,
    Cleared,
    /// The bound was reached: not retained.
    Full,
}

fn size(m: &Message) -> usize {
    m.topic.len().saturating_add(m.payload.len())
}

impl Retained {
    pub fn new(max_count: usize, max_bytes: usize) -> Retained {
        Retained {
            max_count,
            max_bytes,
            ..Retained::default()
        }
    }

    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A retained publish by a client of `owner`: an empty payload clears
    /// the topic.
    pub fn store(&mut self, m: &Arc<Message>, owner: &Owner) -> Stored {
        if m.payload.is_empty() {
            if let Some((old, _)) = self.by_topic.remove(&m.topic) {
                self.bytes = self.bytes.saturating_sub(size(&old));
            }
            return Stored::Cleared;
        }
        loop {
            let old = self.by_topic.get(&m.topic).map(|(o, _)| size(o));
            let grows_count = old.is_none();
            let bytes = self
                .bytes
                .saturating_sub(old.unwrap_or(0))
                .saturating_add(size(m));
            let full =
                (grows_count && self.by_topic.len() >= self.max_count) || bytes > self.max_bytes;
            if !full {
                self.by_topic
                    .insert(m.topic.clone(), (m.clone(), owner.clone()));
                self.bytes = bytes;
                return Stored::Kept;
            }
            if !self.give_way_for(owner, &m.topic) {
                return Stored::Full;
            }
        }
    }

    /// Removes one retained topic of the owner with the most (more than
    /// `owner` would have with one more), never `keep`. False: none.
    fn give_way_for(&mut self, owner: &Owner, keep: &str) -> bool {
        let mut per: HashMap<&Owner, (usize, &Arc<str>)> = HashMap::new();
        for (topic, (_, o)) in &self.by_topic {
            let e = per.entry(o).or_insert((0, topic));
            e.0 = e.0.saturating_add(1);
            if topic.as_ref() != keep && topic > e.1 {
                e.1 = topic;
            }
        }
        let Some(victim) = super::core::giver(&per, &owner).cloned() else {
            return false;
        };
        if let Some((old, _)) = self.by_topic.remove(&victim) {
            self.bytes = self.bytes.saturating_sub(size(&old));
        }
        true
    }

    /// Retained messages matching `filter` (never for a shared one).
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let Ok(f) = TopicFilter::parse(filter) else {
            return Vec::new();
        };
        let mut out: Vec<Arc<Message>> = self
            .by_topic
            .values()
            .filter(|(m, _)| f.matches(&m.topic))
            .map(|(m, _)| m.clone())
            .collect();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &str) -> Arc<Message> {
        Arc::new(Message::new(
            topic,
            payload.as_bytes().to_vec().into(),
            0,
            true,
        ))
    }

    #[test]
    fn bounded_by_count_and_bytes_and_cleared_by_an_empty_payload() {
        let mut r = Retained::new(2, 100);
        let o = Owner::User(Arc::from("one"));
        assert_eq!(r.store(&msg("a", "1"), &o), Stored::Kept);
        assert_eq!(r.store(&msg("b", "2"), &o), Stored::Kept);
        assert_eq!(r.store(&msg("c", "3"), &o), Stored::Full, "count bound");
        assert_eq!(
            r.store(&msg("a", "11"), &o),
            Stored::Kept,
            "replacing is fine"
        );
        assert_eq!(
            r.store(&msg("b", &"x".repeat(200)), &o),
            Stored::Full,
            "byte bound"
        );
        assert_eq!(r.store(&msg("a", ""), &o), Stored::Cleared);
        assert_eq!(r.len(), 1);
        assert_eq!(r.bytes(), 2);
        assert_eq!(r.matching("#").len(), 1);
        assert!(r.matching("a/#/b").is_empty());
    }

    #[test]
    fn a_device_keeps_its_retained_message_when_junk_fills_the_store() {
        let mut r = Retained::new(10, 1 << 20);
        let (junk, valve) = (
            Owner::Address([10, 0, 0, 9].into()),
            Owner::User(Arc::from("valve")),
        );
        for i in 0..20 {
            r.store(&msg(&format!("junk/{i}"), "j"), &junk);
        }
        assert_eq!(r.len(), 10);
        assert_eq!(
            r.store(&msg("devices/valve-1/attributes", "{}"), &valve),
            Stored::Kept
        );
        assert_eq!(r.len(), 10);
        assert_eq!(r.matching("devices/#").len(), 1);
        assert_eq!(
            r.store(&msg("junk/new", "j"), &junk),
            Stored::Full,
            "the greediest gets no more"
        );
    }
}
