//! Retained messages, bounded in count and bytes: when full, a message for
//! a new topic is delivered but not retained (counted and logged), so a
//! client publishing retained messages on endless topics cannot exhaust
//! memory.

use std::collections::HashMap;
use std::sync::Arc;

use super::session::Message;
use crate::topic::TopicFilter;

#[derive(Debug, Default)]
pub struct Retained {
    by_topic: HashMap<Arc<str>, Arc<Message>>,
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

    /// A retained publish: an empty payload clears the topic.
    pub fn store(&mut self, m: &Arc<Message>) -> Stored {
        if m.payload.is_empty() {
            if let Some(old) = self.by_topic.remove(&m.topic) {
                self.bytes = self.bytes.saturating_sub(size(&old));
            }
            return Stored::Cleared;
        }
        let old = self.by_topic.get(&m.topic).map(|o| size(o)).unwrap_or(0);
        let grows_count = old == 0 && !self.by_topic.contains_key(&m.topic);
        let bytes = self.bytes.saturating_sub(old).saturating_add(size(m));
        if (grows_count && self.by_topic.len() >= self.max_count) || bytes > self.max_bytes {
            return Stored::Full;
        }
        self.by_topic.insert(m.topic.clone(), m.clone());
        self.bytes = bytes;
        Stored::Kept
    }

    /// Retained messages matching `filter` (never for a shared one).
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let Ok(f) = TopicFilter::parse(filter) else {
            return Vec::new();
        };
        let mut out: Vec<Arc<Message>> = self
            .by_topic
            .values()
            .filter(|m| f.matches(&m.topic))
            .cloned()
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
        assert_eq!(r.store(&msg("a", "1")), Stored::Kept);
        assert_eq!(r.store(&msg("b", "2")), Stored::Kept);
        assert_eq!(r.store(&msg("c", "3")), Stored::Full, "count bound");
        assert_eq!(r.store(&msg("a", "11")), Stored::Kept, "replacing is fine");
        assert_eq!(
            r.store(&msg("b", &"x".repeat(200))),
            Stored::Full,
            "byte bound"
        );
        assert_eq!(r.store(&msg("a", "")), Stored::Cleared);
        assert_eq!(r.len(), 1);
        assert_eq!(r.bytes(), 2);
        assert_eq!(r.matching("#").len(), 1);
        assert!(r.matching("a/#/b").is_empty());
    }
}
