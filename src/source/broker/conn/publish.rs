//! What a client publishes: topic aliases resolved, checks, local
//! delivery, and the reading handed to the outbox with its acknowledgement
//! held until the commit (PUBREC and the QoS 2 marker in one transaction).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

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
        if !self.stored_qos2.remove(&pkid) {
            self.gate.push(comp, None);
            return;
        }
        self.next_commit += 1;
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
            Some(a) if p.topic.is_empty() => match self.aliases.get(&a) {
                Some(t) => Ok(t.clone()),
                None => Err(self.violation(conn, 0x82, "an unknown topic alias")),
            },
            Some(a) => {
                self.aliases.insert(a, p.topic.clone());
                Ok(p.topic.clone())
            }
        }
    }

    /// Queues the acknowledgement of `p` with a reason code (MQTT 5), at
    /// once or after `commit`.
    fn ack(&mut self, p: &Publish, code: u8, commit: Option<u64>) {
        let mut a = Ack::ok(p.pkid);
        if self.v5() {
            a.code = code;
        }
        let packet = if p.qos == 2 {
            Packet::PubRec(a)
        } else {
            Packet::PubAck(a)
        };
        let bytes = self.encoded(&packet);
        self.gate.push(bytes, commit);
    }

    pub(super) async fn publish<S: Stream>(&mut self, conn: &mut Conn<S>, p: Publish) -> Handled {
        let topic = self.topic_of(conn, &p)?;
        if !codec::valid_topic_name(&topic) {
            return Err(self.violation(conn, 0x90, "a topic name with a wildcard"));
        }
        if p.qos > 0 && self.gate.held() >= usize::from(RECEIVE_MAX) && self.v5() {
            return Err(self.violation(
                conn,
                0x93,
                "more unacknowledged publishes than the receive maximum",
            ));
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
        let records = self.inner.ingest.route(&topic, &p.payload);
        self.inner.deliver(&topic, &p, Some(self.who()));
        let hold = !records.is_empty() && self.inner.settings.ack_after_commit && p.qos > 0;
        if !hold {
            if !records.is_empty() && self.inner.ingest.store(records).await.is_err() {
                return Err(End::Server);
            }
            if p.qos > 0 {
                self.ack(&p, 0, None);
            }
        } else {
            self.next_commit += 1;
            let tag = self.next_commit;
            let tx = self.commit_sender();
            let stored = if p.qos == 2 {
                self.stored_qos2.insert(p.pkid);
                self.inner
                    .ingest
                    .outbox()
                    .append_marked(records, (self.id.to_string(), p.pkid), tx, tag)
                    .await
            } else {
                self.inner.ingest.store_held(records, tx, tag).await
            };
            if stored.is_err() {
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
            .map(|s| Instant::now() + Duration::from_secs(u64::from(s))),
        from,
    }
}
