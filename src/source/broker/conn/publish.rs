//! What a client publishes: topic aliases resolved, checks, local
//! delivery, and the reading handed to the outbox with its acknowledgement
//! held until the commit (PUBREC and the QoS 2 marker in one transaction).

use std::sync::Arc;
use std::time::Duration;

use crate::units::deadline;

use super::client::{Client, End};
use super::{RECEIVE_MAX, TOPIC_ALIAS_MAX};
use crate::source::broker::codec::props;
use crate::source::broker::codec::{self, Ack, Packet, Publish};
use crate::source::broker::io::{Conn, Stream};
use crate::source::broker::session::Message;
use crate::source::broker::trie::Subscriber;
use crate::store::Appended;

type Handled = Result<(), End>;

impl Client {
    /// PUBREL for an incoming QoS 2 message: released (and, if it was
    /// stored, its marker removed) before PUBCOMP goes.
    pub(super) async fn pubrel(&mut self, pkid: u16) {
        self.inner.core().qos2_end(&self.id, pkid);
        let comp = self.encoded(&Packet::PubComp(Ack::ok(pkid)));
        if !self.unstore_qos2(pkid) {
            self.gate.push(comp, None);
            return;
        }
        self.next_commit = self.next_commit.saturating_add(1);
        let tag = self.next_commit;
        self.gate.push(comp, Some(tag));
        let (outbox, tx, client) = (
            self.inner.ingest.outbox().clone(),
            self.commit_sender(),
            self.id.to_string(),
        );
        tokio::spawn(async move {
            let r = outbox
                .qos2_release(&client, pkid)
                .await
                .map(|()| Appended::default());
            let _ = tx.send((tag, r));
        });
    }

    /// The topic a PUBLISH is on, after MQTT 5 topic aliases.
    fn topic_of<S: Stream>(&mut self, conn: &mut Conn<S>, p: &Publish) -> Result<String, End> {
        if !self.v5() {
            return Ok(p.topic.clone());
        }
        match p.props.u16(props::TOPIC_ALIAS) {
            None if p.topic.is_empty() => {
                Err(self.violation(conn, 0x82, "an empty topic without a topic alias"))
            }
            None => Ok(p.topic.clone()),
            Some(a) if a == 0 || a > TOPIC_ALIAS_MAX => {
                Err(self.violation(conn, 0x94, "a topic alias beyond the maximum"))
            }
            Some(a) if p.topic.is_empty() => match self.seen().aliases.get(&a) {
                Some(t) => Ok(t.clone()),
                None => Err(self.violation(conn, 0x82, "an unknown topic alias")),
            },
            Some(a) => {
                self.seen().aliases.insert(a, p.topic.clone());
                Ok(p.topic.clone())
            }
        }
    }

    /// The acknowledgement of a QoS `qos` PUBLISH `pkid`, with a reason
    /// code for MQTT 5.
    pub(super) fn ack_bytes(&self, pkid: u16, qos: u8, code: u8) -> bytes::Bytes {
        let mut a = Ack::ok(pkid);
        if self.v5() {
            a.code = code;
        }
        let packet = if qos == 2 {
            Packet::PubRec(a)
        } else {
            Packet::PubAck(a)
        };
        self.encoded(&packet)
    }

    /// Queues the acknowledgement of `p` with a reason code (MQTT 5), at
    /// once or after `commit`.
    fn ack(&mut self, p: &Publish, code: u8, commit: Option<u64>) {
        let bytes = self.ack_bytes(p.pkid, p.qos, code);
        self.gate.push_ack(bytes, commit, p.pkid, p.qos);
    }

    /// A held acknowledgement whose readings were not stored (the outbox is
    /// full under `reject_new`, or the disk is): no PUBACK says they were.
    /// MQTT 5 is told 0x97 (quota exceeded); a 3.1.1 client's connection is
    /// closed, so it keeps the readings and sends them again.
    pub(super) fn not_stored(&mut self, tag: u64, why: &str) -> Result<(), End> {
        let Some((pkid, qos)) = self.gate.held_ack(tag) else {
            return Ok(());
        };
        if qos == 2 {
            self.inner.core().qos2_end(&self.id, pkid);
            self.unstore_qos2(pkid);
        }
        if !self.v5() {
            return Err(End::Lost(format!(
                "{why}: closing so the client sends again"
            )));
        }
        let refused = self.ack_bytes(pkid, qos, 0x97);
        self.gate.replace(tag, refused);
        Ok(())
    }

    pub(super) async fn publish<S: Stream>(&mut self, conn: &mut Conn<S>, p: Publish) -> Handled {
        let topic = self.topic_of(conn, &p)?;
        if !codec::valid_topic_name(&topic) {
            // MQTT-3.3.2-2: a protocol error (0x90 is for names well formed but
            // not accepted), as mosquitto answers too.
            return Err(self.violation(conn, 0x82, "a topic name with a wildcard"));
        }
        if p.qos > 0 && self.v5() {
            // In flight from the client (MQTT 5 §3.3.4): QoS 1 until our
            // PUBACK, QoS 2 until our PUBCOMP. A QoS 2 resend of an open
            // id is not a new one.
            let (open_qos2, resent) = self.inner.core().qos2_open(&self.id, p.pkid);
            let in_flight = self.gate.held_qos1().saturating_add(open_qos2);
            if !(p.qos == 2 && resent) && in_flight >= usize::from(RECEIVE_MAX) {
                return Err(self.violation(
                    conn,
                    0x93,
                    "more unacknowledged publishes than the receive maximum",
                ));
            }
        }
        let may = self.inner.auth().may(
            self.username.as_deref(),
            &self.id,
            &topic,
            crate::access::Access::Write,
        );
        if !may {
            // As Mosquitto: MQTT 5 is told 0x87 (not authorized); 3.1.1
            // cannot be told and gets its acknowledgement. Nothing is
            // stored or relayed either way.
            self.inner.note_denied(&self.id, &topic);
            if p.qos > 0 {
                self.ack(&p, 0x87, None);
                self.release(conn);
            }
            return Ok(());
        }
        if p.qos == 2 && !self.inner.core().qos2_begin(&self.id, p.pkid) {
            // A resend of an unreleased packet id: acknowledged again,
            // neither delivered nor stored a second time.
            self.ack(&p, 0, None);
            self.release(conn);
            return Ok(());
        }
        if p.props.byte(props::PAYLOAD_FORMAT) == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            // MQTT 5 "payload format invalid": refused, not relayed.
            if p.qos > 0 {
                self.ack(&p, 0x99, None);
                self.release(conn);
            }
            if p.qos == 2 {
                self.inner.core().qos2_end(&self.id, p.pkid);
            }
            return Ok(());
        }
        let routed = self.inner.ingest.route(&topic, &p.payload);
        if self.v5() {
            if let Some((_, why)) = routed.refused.first() {
                // MQTT 5 can be told: refused as a whole with the reason,
                // nothing stored or relayed.
                let code = why.code;
                self.inner.ingest.note_refused(&routed.refused, true);
                if p.qos > 0 {
                    self.ack(&p, code, None);
                    self.release(conn);
                }
                if p.qos == 2 {
                    self.inner.core().qos2_end(&self.id, p.pkid);
                }
                return Ok(());
            }
        }
        self.inner.deliver(&topic, &p, Some(self.who()));
        if !routed.records.is_empty() {
            let spoken = &mut self.seen.get_or_insert_with(Box::default).spoken;
            for r in &routed.records {
                self.inner.ingest.presence().note(spoken, &r.device);
            }
        }
        let storing = !routed.records.is_empty() || !routed.refused.is_empty();
        let hold = storing && self.inner.settings.ack_after_commit && p.qos > 0;
        if !hold {
            if storing && self.inner.ingest.store(routed).await.is_err() {
                return Err(End::Server);
            }
            if p.qos > 0 {
                self.ack(&p, 0, None);
            }
        } else {
            self.next_commit = self.next_commit.saturating_add(1);
            let tag = self.next_commit;
            let tx = self.commit_sender();
            let mark = (p.qos == 2 && !routed.records.is_empty()).then(|| {
                self.seen().stored_qos2.insert(p.pkid);
                (self.id.to_string(), p.pkid)
            });
            if self
                .inner
                .ingest
                .store_held(routed, mark, Some((tx, tag)))
                .await
                .is_err()
            {
                return Err(End::Server);
            }
            self.ack(&p, 0, Some(tag));
        }
        self.release(conn);
        Ok(())
    }
}

/// The message a PUBLISH (or will) becomes in the broker.
pub fn message(topic: &str, p: &Publish, from: Option<Subscriber>) -> Message {
    let keep = |id: u8| {
        matches!(
            id,
            props::PAYLOAD_FORMAT
                | props::CONTENT_TYPE
                | props::RESPONSE_TOPIC
                | props::CORRELATION_DATA
                | props::USER_PROPERTY
        )
    };
    Message {
        topic: Arc::from(topic),
        payload: p.payload.clone(),
        qos: p.qos,
        retain: p.retain,
        props: p.props.filtered(keep),
        expires: p
            .props
            .u32(props::MESSAGE_EXPIRY)
            .map(|s| deadline(Duration::from_secs(u64::from(s)))),
        from,
    }
}
