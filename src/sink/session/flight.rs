//! What one connection has in flight, from the outbox to the PUBACK.

use std::collections::{HashMap, VecDeque};

use rumqttc::{Event, Outgoing, Packet};
use tokio::time::Instant;

use crate::record::Record;
use crate::sink::Publish;

/// What one connection has in flight: records fetched but not yet sent,
/// publishes handed to rumqttc awaiting their packet id, and packet ids
/// awaiting their PUBACK.
pub(super) struct Flight {
    pub(super) window: usize,
    /// Highest outbox id fetched on this connection.
    pub(super) cursor: i64,
    /// The outbox may hold more than was fetched.
    pub(super) more: bool,
    /// Fetched and not yet encoded: the backlog (or the whole queue) ...
    pub(super) fetched: VecDeque<Record>,
    /// ... and, with a live split, what arrived during this connection,
    /// which goes first.
    pub(super) fetched_live: VecDeque<Record>,
    /// Encoded, waiting for the rate limit.
    pub(super) outgoing: VecDeque<Publish>,
    /// The rate limit allows the next publish then.
    pub(super) blocked_until: Option<Instant>,
    /// Handed to rumqttc, with when: waiting for their packet id ...
    pub(super) awaiting_pkid: VecDeque<(Vec<i64>, Instant)>,
    /// ... and sent, waiting for their PUBACK.
    pub(super) in_flight: HashMap<u16, (Vec<i64>, Instant)>,
    /// QoS 0: rows written to the socket since the last PINGREQ ...
    pub(super) written: Vec<Vec<i64>>,
    /// ... and rows written before the PINGREQ now awaiting its PINGRESP.
    pub(super) pinged: Vec<Vec<i64>>,
    pub(super) qos0: bool,
    /// For platforms that order by timestamp, not arrival: the backlog and
    /// what arrives during this connection are read separately.
    pub(super) live: Option<LiveSplit>,
    /// New live rows were committed since the last live read.
    pub(super) live_dirty: bool,
}

/// The queue as two parts: rows up to `floor` (queued before this
/// connection) and rows after it (live).
pub(super) struct LiveSplit {
    pub(super) floor: i64,
    pub(super) live_cursor: i64,
    pub(super) backlog_done: bool,
}

impl Flight {
    pub(super) fn new(window: usize) -> Flight {
        Flight {
            window,
            cursor: 0,
            more: true,
            fetched: VecDeque::new(),
            fetched_live: VecDeque::new(),
            outgoing: VecDeque::new(),
            blocked_until: None,
            awaiting_pkid: VecDeque::new(),
            written: Vec::new(),
            pinged: Vec::new(),
            qos0: false,
            in_flight: HashMap::new(),
            live: None,
            live_dirty: false,
        }
    }

    pub(super) fn len(&self) -> usize {
        [
            self.awaiting_pkid.len(),
            self.in_flight.len(),
            self.written.len(),
            self.pinged.len(),
        ]
        .iter()
        .fold(0, |sum, n| sum.saturating_add(*n))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn has_room(&self) -> bool {
        self.len() < self.window
    }

    pub(super) fn fetched_is_empty(&self) -> bool {
        self.fetched.is_empty() && self.fetched_live.is_empty()
    }

    /// The next `n` records `take` would give, without taking them.
    pub(super) fn peek(&self, n: usize) -> Vec<&Record> {
        self.fetched_live
            .iter()
            .chain(self.fetched.iter())
            .take(n)
            .collect()
    }

    /// Up to `n` records to encode: live ones first, each part in id order.
    pub(super) fn take(&mut self, n: usize) -> Vec<Record> {
        let live = self.fetched_live.len().min(n);
        let mut out: Vec<Record> = self.fetched_live.drain(..live).collect();
        let rest = self.fetched.len().min(n.saturating_sub(live));
        out.extend(self.fetched.drain(..rest));
        out
    }

    pub(super) fn refill(&mut self, batch: Vec<Record>, limit: usize) {
        self.more = batch.len() >= limit;
        if let Some(last) = batch.last() {
            self.cursor = last.id;
        }
        self.fetched.extend(batch);
    }

    pub(super) fn sent(&mut self, ids: Vec<i64>) {
        self.awaiting_pkid.push_back((ids, Instant::now()));
    }

    /// How long the oldest publish still unacknowledged has waited (QoS 1;
    /// at QoS 0 the keep-alive's ping is the acknowledgement, and rumqttc
    /// ends a connection whose ping goes unanswered).
    pub(super) fn oldest_wait(&self, now: Instant) -> Option<std::time::Duration> {
        self.awaiting_pkid
            .iter()
            .map(|(_, at)| *at)
            .chain(self.in_flight.values().map(|(_, at)| *at))
            .min()
            .map(|at| now.saturating_duration_since(at))
    }

    /// Tracks packet ids; returns the rows a PUBACK has delivered.
    pub(super) fn on_event(&mut self, ev: &Event) -> Option<Vec<i64>> {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some((ids, at)) = self.awaiting_pkid.pop_front() {
                    if !self.qos0 {
                        self.in_flight.insert(*pkid, (ids, at));
                    } else if !ids.is_empty() {
                        self.written.push(ids);
                    }
                }
                None
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                self.in_flight.remove(&ack.pkid).map(|(ids, _)| ids)
            }
            Event::Outgoing(Outgoing::PingReq) if self.qos0 => {
                self.pinged.append(&mut self.written);
                None
            }
            Event::Incoming(Packet::PingResp) if self.qos0 && !self.pinged.is_empty() => {
                Some(self.pinged.drain(..).flatten().collect())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flight_maps_packet_ids_to_rows() {
        let mut f = Flight::new(2);
        f.sent(vec![10]);
        f.sent(vec![11, 12]);
        assert!(!f.has_room());
        assert_eq!(f.on_event(&Event::Outgoing(Outgoing::Publish(1))), None);
        assert_eq!(f.on_event(&Event::Outgoing(Outgoing::Publish(2))), None);
        let ack = |pkid| Event::Incoming(Packet::PubAck(rumqttc::PubAck { pkid }));
        assert_eq!(f.on_event(&ack(2)), Some(vec![11, 12]));
        assert_eq!(f.on_event(&ack(2)), None);
        assert_eq!(f.on_event(&ack(1)), Some(vec![10]));
        assert!(f.is_empty());
    }

    #[test]
    fn the_oldest_unacknowledged_publish_is_timed_from_its_hand_over() {
        let mut f = Flight::new(4);
        assert_eq!(f.oldest_wait(Instant::now()), None);
        let t0 = Instant::now();
        f.sent(vec![1]);
        f.sent(vec![2]);
        f.on_event(&Event::Outgoing(Outgoing::Publish(7)));
        let later = t0 + std::time::Duration::from_secs(30);
        let wait = f.oldest_wait(later).expect("waiting");
        assert!(wait >= std::time::Duration::from_millis(29_990), "{wait:?}");
        // Its PUBACK: the next one (still waiting for its packet id) is timed.
        let ack = Event::Incoming(Packet::PubAck(rumqttc::PubAck { pkid: 7 }));
        assert_eq!(f.on_event(&ack), Some(vec![1]));
        assert!(f.oldest_wait(later).is_some());
        f.on_event(&Event::Outgoing(Outgoing::Publish(8)));
        f.on_event(&Event::Incoming(Packet::PubAck(rumqttc::PubAck {
            pkid: 8,
        })));
        assert_eq!(f.oldest_wait(later), None);
    }
}
