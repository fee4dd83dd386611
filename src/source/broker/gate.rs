//! Holds a client's acknowledgements until their readings are committed,
//! and releases them in the order the PUBLISHes arrived (MQTT requires that
//! order for PUBACK and for PUBREC).

use std::collections::VecDeque;

use bytes::Bytes;

#[derive(Debug)]
struct Held {
    /// The commit this acknowledgement waits for; None: nothing to wait for
    /// (it waits only for the ones before it).
    commit: Option<u64>,
    committed: bool,
    ack: Bytes,
    /// The PUBLISH it acknowledges (packet id, QoS), when it is a PUBACK or
    /// PUBREC.
    of: Option<(u16, u8)>,
}

#[derive(Debug, Default)]
pub struct AckGate {
    queue: VecDeque<Held>,
}

impl AckGate {
    /// An acknowledgement to send once `commit` (if any) is done and every
    /// earlier one has gone.
    pub fn push(&mut self, ack: Bytes, commit: Option<u64>) {
        self.queue.push_back(Held {
            commit,
            committed: false,
            ack,
            of: None,
        });
    }

    /// [`AckGate::push`] for the PUBACK or PUBREC of PUBLISH `pkid`.
    pub fn push_ack(&mut self, ack: Bytes, commit: Option<u64>, pkid: u16, qos: u8) {
        self.queue.push_back(Held {
            commit,
            committed: false,
            ack,
            of: Some((pkid, qos)),
        });
    }

    /// The PUBLISH whose acknowledgement waits for `commit`.
    pub fn held_ack(&self, commit: u64) -> Option<(u16, u8)> {
        self.queue
            .iter()
            .find(|h| h.commit == Some(commit))
            .and_then(|h| h.of)
    }

    /// The acknowledgement waiting for `commit` goes out as `ack` instead,
    /// without waiting any more.
    pub fn replace(&mut self, commit: u64, ack: Bytes) {
        if let Some(h) = self.queue.iter_mut().find(|h| h.commit == Some(commit)) {
            h.ack = ack;
            h.committed = true;
        }
    }

    /// The outbox committed `commit`.
    pub fn committed(&mut self, commit: u64) {
        if let Some(h) = self.queue.iter_mut().find(|h| h.commit == Some(commit)) {
            h.committed = true;
        }
    }

    /// Acknowledgements that may go now, in order.
    pub fn release(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(front) = self.queue.front() {
            if front.commit.is_some() && !front.committed {
                break;
            }
            if let Some(h) = self.queue.pop_front() {
                out.push(h.ack);
            }
        }
        out
    }

    /// PUBACKs of QoS 1 PUBLISHes still held.
    pub fn held_qos1(&self) -> usize {
        self.queue
            .iter()
            .filter(|h| h.of.is_some_and(|(_, qos)| qos == 1))
            .count()
    }

    /// Acknowledgements still held.
    pub fn held(&self) -> usize {
        self.queue.len()
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
    fn an_ack_waits_for_its_commit_and_order_is_kept() {
        let mut g = AckGate::default();
        g.push(b(1), Some(10));
        g.push(b(2), None);
        g.push(b(3), Some(11));
        assert!(g.release().is_empty());
        g.committed(11);
        assert!(g.release().is_empty(), "3 must not overtake 1");
        g.committed(10);
        assert_eq!(g.release(), [b(1), b(2), b(3)]);
        assert_eq!(g.awaiting_commit(), 0);
    }

    #[test]
    fn nothing_to_wait_for_goes_at_once() {
        let mut g = AckGate::default();
        g.push(b(5), None);
        assert_eq!(g.release(), [b(5)]);
        assert_eq!(g.held(), 0);
    }
}
