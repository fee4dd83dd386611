//! Records a platform can never take. Two kinds are caught: a publish
//! larger than the upstream packet limit (moved aside at once), and a
//! record after which the platform hangs up every time (found by sending
//! one record per publish, then moved aside after three strikes). Either
//! way the record goes to the dead letters with its reason and the queue
//! behind it moves on.

use super::Uplink;
use crate::route::Refusal;
use crate::sink::{Platform, Publish};
use crate::stats;

/// Failed sessions in a row with the same single record first, before it
/// is moved to the dead letters.
const POISON_STRIKES: u32 = 3;

/// PUBACKs in one-record-per-publish mode after a suspect batch.
const CAREFUL_ACKS: u32 = 100;

/// What the current (or last) connection did, for poison detection.
#[derive(Debug, Default, Clone)]
pub(super) struct SessionLog {
    pub(super) connected: bool,
    /// PUBACKs for publishes that carried rows.
    pub(super) acks: u64,
    /// Rows of the first publish of the session that carried rows.
    pub(super) head: Option<Vec<i64>>,
    /// The rate limit held a publish back during the session: a hang-up
    /// then is the platform enforcing its limit (its count and ours can
    /// differ), not a record it cannot take.
    pub(super) limited: bool,
}

impl<E: Platform> Uplink<E> {
    /// A queued record the platform can no longer take (a limit or a
    /// template changed since it was queued).
    pub(super) async fn refuse(&mut self, id: i64, device: &str, why: String) {
        stats::add(&self.stats.undeliverable, 1);
        if let Some(count) = self.logs.due(&why) {
            let device: String = device.chars().take(64).collect();
            tracing::warn!(sink = %self.name, record = id, device = %device, reason = %why, count,
                "queued record the platform can no longer take: moved to the dead letters (see `outpost dead-letters`)");
        }
        let _ = self.outbox.dead_letter(&self.name, vec![id], why).await;
    }

    /// A publish that cannot go upstream (its topic is not a topic name, or
    /// it is larger than the packet limit) would block its queue forever;
    /// its records go to the dead letters instead. One that carries no
    /// records (a reply) is dropped.
    pub(super) async fn undeliverable(&mut self, p: Publish, why: Refusal) {
        let topic = self.encoder.topic_for_logs(&p.topic);
        let topic: String = topic.chars().take(128).collect();
        let reason = format!("{} (on {topic})", why.reason);
        if let Some(count) = self.logs.due(&why.reason) {
            tracing::warn!(sink = %self.name, topic = %topic, records = p.ids.len(), reason = %why.reason, count,
                "publish the upstream cannot take: its records moved to the dead letters (see `outpost dead-letters`)");
        }
        if p.ids.is_empty() {
            return;
        }
        stats::add(&self.stats.undeliverable, p.ids.len() as u64);
        let _ = self.outbox.dead_letter(&self.name, p.ids, reason).await;
    }

    /// After a session that ended with no PUBACK at all: if it is always the
    /// same publish that goes first before the platform drops us, that
    /// record is poison. A batch is first split (one record per publish) to
    /// find which record it is; a single record that fails three times in a
    /// row is moved to the dead letters so the queue behind it moves on.
    pub(super) async fn check_poison(&mut self) {
        let (Some(head), true) = (self.session.head.clone(), self.session.acks == 0) else {
            return;
        };
        let Some(&first) = head.first() else { return };
        // A hang-up while the rate limit held outpost back is most likely
        // the platform enforcing its limit (its count of what was sent is
        // higher than ours): the budget is halved instead of a strike. Once
        // it is at its smallest, hang-ups count against the record again.
        if self.session.limited && self.rate.tighten() {
            tracing::warn!(sink = %self.name, halvings = self.rate.shift(),
                "the platform hung up while its rate limit held outpost back: sending at half the budget, not blaming the record sent first");
            return;
        }
        let count = match self.suspect {
            Some((id, n)) if id == first => n.saturating_add(1),
            _ => 1,
        };
        self.suspect = Some((first, count));
        if head.len() > 1 {
            if count >= 2 && self.careful == 0 {
                tracing::warn!(sink = %self.name, "the platform dropped the connection twice right after the same batch; sending one record per publish to find the cause");
                self.careful = CAREFUL_ACKS;
            }
        } else if count >= POISON_STRIKES {
            tracing::error!(
                sink = %self.name,
                record = first,
                strikes = count,
                "the platform drops the connection every time this record is sent: moved to the dead letters (see `outpost dead-letters`)"
            );
            stats::add(&self.stats.undeliverable, 1);
            let reason = format!("the platform closed the connection {count} times in a row right after this record was sent");
            let _ = self.outbox.dead_letter(&self.name, head, reason).await;
            self.suspect = None;
        }
    }
}
