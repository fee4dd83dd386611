//! Holds a sensor's PUBACKs until its records are committed, and releases
//! them in the order the PUBLISHes arrived (MQTT requires that order).

use std::collections::VecDeque;

use bytes::Bytes;

#[derive(Debug)]
struct Held {
    pkid: u16,
    /// The commit this acknowledgement waits for; None if the message was
    /// not routed (it waits only for the ones before it).
    commit: Option<u64>,
    committed: bool,
    /// The broker's PUBACK/PUBREC, once it came.
    ack: Option<Bytes>,
}

#[derive(Debug, Default)]
pub struct AckGate {
    queue: VecDeque<Held>,
}

impl AckGate {
    /// A QoS 1/2 PUBLISH went to the broker.
    pub fn published(&mut self, pkid: u16, commit: Option<u64>) {
        self.queue.push_back(Held {
            pkid,
            commit,
            committed: false,
            ack: None,
        });
    }

    /// The broker acknowledged `pkid`. Returns false if the gate does not
    /// know it (the ack then passes straight through).
    pub fn acked(&mut self, pkid: u16, ack: Bytes) -> bool {
        match self
            .queue
            .iter_mut()
            .find(|h| h.pkid == pkid && h.ack.is_none())
        {
            Some(h) => {
                h.ack = Some(ack);
                true
            }
            None => false,
        }
    }

    /// The outbox committed `commit`.
    pub fn committed(&mut self, commit: u64) {
        if let Some(h) = self.queue.iter_mut().find(|h| h.commit == Some(commit)) {
            h.committed = true;
        }
    }

    /// Acknowledgements that may go to the sensor now, in order.
    pub fn release(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(front) = self.queue.front() {
            let ready = front.ack.is_some() && (front.commit.is_none() || front.committed);
            if !ready {
                break;
            }
            if let Some(ack) = self.queue.pop_front().and_then(|h| h.ack) {
                out.push(ack);
            }
        }
        out
    }

    /// Commits still awaited.
    pub fn awaiting_commit(&self) -> usize {
        self.queue
            .iter()
            .filter(|h| h.commit.is_some() && !h.committed)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x: u8) -> Bytes {
        Bytes::from(vec![x])
    }

    #[test]
    fn an_ack_waits_for_its_commit() {
        let mut g = AckGate::default();
        g.published(1, Some(10));
        assert!(g.acked(1, b(1)));
        assert!(g.release().is_empty(), "not committed yet");
        g.committed(10);
        assert_eq!(g.release(), [b(1)]);
    }

    #[test]
    fn acks_leave_in_publish_order() {
        let mut g = AckGate::default();
        g.published(1, Some(10)); // routed
        g.published(2, None); // not routed, behind a routed one
        g.published(3, Some(11));
        assert!(g.acked(2, b(2)));
        assert!(g.acked(1, b(1)));
        assert!(g.acked(3, b(3)));
        assert!(g.release().is_empty());
        g.committed(11);
        assert!(g.release().is_empty(), "3 must not overtake 1");
        g.committed(10);
        assert_eq!(g.release(), [b(1), b(2), b(3)]);
    }

    #[test]
    fn unrouted_alone_is_not_held() {
        let mut g = AckGate::default();
        g.published(5, None);
        assert!(g.acked(5, b(5)));
        assert_eq!(g.release(), [b(5)]);
        assert!(!g.acked(6, b(6)), "unknown ids pass through");
    }

    #[test]
    fn a_reused_packet_id_matches_the_oldest_unacked() {
        let mut g = AckGate::default();
        g.published(1, Some(1));
        g.acked(1, b(1));
        g.published(1, Some(2));
        assert!(g.acked(1, b(9)));
        g.committed(2);
        assert!(g.release().is_empty());
        g.committed(1);
        assert_eq!(g.release(), [b(1), b(9)]);
        assert_eq!(g.awaiting_commit(), 0);
    }
}
