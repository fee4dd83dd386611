//! Records a platform can never take. Two kinds are caught: a publish
//! larger than the upstream packet limit (moved aside at once), and a
//! record after which the platform hangs up every time (found by sending
//! one record per publish, then moved aside after three strikes). Either
//! way the record goes to the dead letters with its reason and the queue
//! behind it moves on.

use super::Uplink;
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
}

impl<E: Platform> Uplink<E> {
    /// A record the platform says it cannot take (its `validate`).
    pub(super) async fn refuse(&mut self, id: i64, device: &str, why: String) {
        tracing::error!(sink = %self.name, record = id, device = %device, reason = %why, "record the platform cannot take: moved to the dead letters");
        stats::add(&self.stats.undeliverable, 1);
        let _ = self.outbox.dead_letter(vec![id], why).await;
    }

    /// A record that can never fit the upstream packet limit would block its
    /// queue forever; it is removed, counted and logged instead.
    pub(super) async fn undeliverable(&mut self, p: Publish) {
        let topic = self.encoder.topic_for_logs(&p.topic);
        tracing::error!(
            sink = %self.name,
            topic = %topic,
            bytes = p.payload.len(),
            max_packet_size = self.max_packet,
            "record larger than the upstream packet limit: moved to the dead letters (raise max_packet_size if the platform allows)"
        );
        stats::add(&self.stats.undeliverable, p.ids.len() as u64);
        let reason = format!(
            "{} bytes on {}: larger than the upstream packet limit of {} bytes",
            p.payload.len(),
            topic,
            self.max_packet
        );
        let _ = self.outbox.dead_letter(p.ids, reason).await;
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
        let count = match self.suspect {
            Some((id, n)) if id == first => n + 1,
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
            let _ = self.outbox.dead_letter(head, reason).await;
            self.suspect = None;
        }
    }
}
