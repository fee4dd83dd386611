//! A connected client: the loop that reads its packets, writes what the
//! broker has for it, and ends the connection the way the protocol says.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::units::deadline;
use tokio_util::sync::CancellationToken;

use super::RECEIVE_MAX;
use crate::source::broker::codec::props::{self, Value};
use crate::source::broker::codec::{
    self, Ack, Disconnect, Packet, Props, Publish, SubAck, Subscribe, UnsubAck, V5,
};
use crate::source::broker::core::Ending;
use crate::source::broker::gate::AckGate;
use crate::source::broker::io::{Conn, IoError, Stream};
use crate::source::broker::session::{Link, Out};
use crate::source::broker::trie::Subscriber;
use crate::source::broker::{Inner, Slot};
use crate::stats;
use crate::store::Tagged;

/// Why a connection ended.
#[derive(Debug)]
pub(super) enum End {
    /// DISCONNECT from the client (normal: no will; MQTT 5 0x04: with
    /// will), with the session expiry it set (MQTT 5).
    Disconnect { will: bool, expiry: Option<u32> },
    /// A reload took the client's login away.
    Revoked,
    /// Ended to make room for a client of an owner with fewer connections.
    Quota,
    /// The network connection broke, or the keep-alive ran out.
    Lost(String),
    /// The client broke the protocol.
    Violation(String),
    /// Another connection took the client id.
    TakenOver,
    /// The broker stops or restarts.
    Server,
}

/// A connected client.
pub(super) struct Client {
    pub(super) inner: Arc<Inner>,
    pub(super) peer: SocketAddr,
    pub(super) level: u8,
    pub(super) id: Arc<str>,
    /// Who it logged in as (for the ACL).
    pub(super) username: Option<Arc<str>>,
    pub(super) conn_id: u64,
    /// Woken when the broker has something for it, or ends it.
    pub(super) link: Arc<Link>,
    pub(super) gate: AckGate,
    /// Commit outcomes of held acknowledgements; made at the first one, so
    /// a client that never publishes a routed reading costs nothing here.
    pub(super) commits: Option<(
        mpsc::UnboundedSender<Tagged>,
        mpsc::UnboundedReceiver<Tagged>,
    )>,
    pub(super) next_commit: u64,
    /// Holds one of `max_connections` (none for outpost's own probes).
    pub(super) _slot: Option<Slot>,
    /// Cancelled when the broker restarts in place (which then wakes
    /// every connection).
    pub(super) stop: CancellationToken,
    /// What only some clients need; made at first use.
    pub(super) seen: Option<Box<Seen>>,
}

/// A client's state that many clients never have: kept apart from
/// [`Client`] so that an idle client's task stays small.
#[derive(Default)]
pub(super) struct Seen {
    /// MQTT 5 topic aliases the client set.
    pub(super) aliases: BTreeMap<u16, String>,
    /// QoS 2 ids whose marker is in the outbox.
    pub(super) stored_qos2: BTreeSet<u16>,
    /// Devices this connection published readings for: gone when it ends.
    pub(super) spoken: Vec<String>,
}

/// What a packet did to the connection.
pub(super) type Handled = Result<(), End>;

impl Client {
    pub(super) fn v5(&self) -> bool {
        self.level == V5
    }

    pub(super) fn seen(&mut self) -> &mut Seen {
        self.seen.get_or_insert_with(Box::default)
    }

    /// Forgets a stored QoS 2 id; true if it was stored.
    pub(super) fn unstore_qos2(&mut self, pkid: u16) -> bool {
        self.seen
            .as_mut()
            .is_some_and(|s| s.stored_qos2.remove(&pkid))
    }

    pub(super) fn who(&self) -> Subscriber {
        Subscriber::Client(self.id.clone())
    }

    /// Ends for a protocol violation; MQTT 5 clients are told why.
    pub(super) fn violation<S: Stream>(&self, conn: &mut Conn<S>, code: u8, why: &str) -> End {
        if self.v5() {
            conn.queue(
                &Packet::Disconnect(Disconnect {
                    code,
                    props: Props::default(),
                }),
                V5,
            );
        }
        End::Violation(why.to_string())
    }

    pub(super) async fn serve<S: Stream>(&mut self, conn: &mut Conn<S>) -> End {
        loop {
            // Everything already buffered, then what that produced.
            loop {
                match conn.buffered() {
                    Ok(Some(frame)) => {
                        self.link.heard(Instant::now());
                        if let Err(end) = self.handle(conn, &frame).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return self.violation(conn, e.reason(), &e.to_string()),
                }
                // A 3.1.1 client far ahead of its acknowledgements waits;
                // an MQTT 5 one that goes past the receive maximum it was
                // told is disconnected with 0x93 (MQTT 5 §3.3.4).
                if !self.v5() && self.gate.held() >= usize::from(RECEIVE_MAX) {
                    break;
                }
            }
            if let Err(e) = conn.flush().await {
                return End::Lost(e.to_string());
            }
            let reading = self.v5() || self.gate.held() < usize::from(RECEIVE_MAX);
            if let Some(end) = self.stopped(conn) {
                return end;
            }
            tokio::select! {
                r = conn.fill(), if reading => match r {
                    Ok(true) => {}
                    Ok(false) => return End::Lost("closed by the client".into()),
                    Err(IoError::Codec(e)) => return self.violation(conn, e.reason(), &e.to_string()),
                    Err(e) => return End::Lost(e.to_string()),
                },
                Some(first) = next_commit(&mut self.commits) => {
                    // One commit of the outbox usually holds several of
                    // this client's publishes: their acknowledgements go
                    // out in one write.
                    let mut next = Some(first);
                    while let Some(commit) = next {
                        let result = self.committed(commit);
                        self.release(conn);
                        if let Err(end) = result {
                            return end;
                        }
                        next = self.commits.as_mut().and_then(|(_, rx)| rx.try_recv().ok());
                    }
                }
                // Also how a silent client's keep-alive runs out: the
                // broker's once-a-second sweep wakes it.
                _ = self.link.woken() => {
                    if let Some(end) = self.write_pending(conn) {
                        return end;
                    }
                }
            }
        }
    }

    /// The outbox's answer for the publish tagged `tag`.
    fn committed(&mut self, (tag, outcome): Tagged) -> Result<(), End> {
        match outcome {
            Ok(done) => {
                self.inner.ingest.count(&done);
                if done.rejected > 0 {
                    self.not_stored(
                        tag,
                        "the outbox is full (store.full_policy = \"reject_new\")",
                    )
                } else {
                    self.gate.committed(tag);
                    Ok(())
                }
            }
            Err(e) => {
                stats::add(&self.inner.ingest.stats().ingest.refused, 1);
                self.inner.note_store_failure(&e);
                self.not_stored(tag, &e.to_string())
            }
        }
    }

    pub(super) fn release<S: Stream>(&mut self, conn: &mut Conn<S>) {
        for ack in self.gate.release() {
            conn.queue_raw(&ack);
        }
    }

    pub(super) fn encoded(&self, p: &Packet) -> Bytes {
        let mut b = BytesMut::new();
        codec::encode(p, self.level, &mut b);
        b.freeze()
    }

    /// The broker restarted in place: the connection ends (MQTT 5: 0x8B
    /// server shutting down). Checked before every wait and on every
    /// wake-up, so the restart needs no wait of its own in every task.
    fn stopped<S: Stream>(&self, conn: &mut Conn<S>) -> Option<End> {
        if !self.stop.is_cancelled() {
            return None;
        }
        if self.v5() {
            conn.queue(
                &Packet::Disconnect(Disconnect {
                    code: 0x8B,
                    props: Props::default(),
                }),
                V5,
            );
        }
        Some(End::Server)
    }

    /// Woken: whatever the broker has for this client now, or the end of
    /// the connection when the broker ends it (MQTT 5 clients are told
    /// why: 0x8E session taken over, 0x87 not authorized when its login
    /// was taken away, 0x97 quota exceeded when room was made for a
    /// smaller share).
    fn write_pending<S: Stream>(&mut self, conn: &mut Conn<S>) -> Option<End> {
        if let Some(end) = self.stopped(conn) {
            return Some(end);
        }
        let outs = {
            let mut core = self.inner.core();
            if let Some(ending) = core.must_end(&self.id, self.conn_id, Instant::now()) {
                let (code, end) = match ending {
                    Ending::Revoked => (Some(0x87), End::Revoked),
                    Ending::Quota => (Some(0x97), End::Quota),
                    Ending::TakenOver => (Some(0x8E), End::TakenOver),
                    // As before and as Mosquitto: the connection is
                    // closed without a DISCONNECT.
                    Ending::KeepAlive => (None, End::Lost("keep-alive timeout".into())),
                };
                drop(core);
                if let Some(code) = code.filter(|_| self.v5()) {
                    conn.queue(
                        &Packet::Disconnect(Disconnect {
                            code,
                            props: Props::default(),
                        }),
                        V5,
                    );
                }
                return Some(end);
            }
            core.outgoing(&self.id, self.conn_id)
        };
        for out in outs {
            self.write_out(conn, out);
        }
        None
    }

    pub(super) fn write_out<S: Stream>(&mut self, conn: &mut Conn<S>, out: Out) {
        match out {
            Out::PubRel(pkid) => {
                let p = Packet::PubRel(Ack::ok(pkid));
                conn.queue(&p, self.level);
            }
            Out::Publish {
                pkid,
                delivery,
                dup,
            } => {
                let mut props = if self.v5() {
                    delivery.msg.props.clone()
                } else {
                    Props::default()
                };
                if self.v5() {
                    for id in &delivery.sub_ids {
                        props.set(props::SUBSCRIPTION_ID, Value::Var(*id));
                    }
                    if let Some(exp) = delivery.msg.expires {
                        let left = exp.saturating_duration_since(Instant::now()).as_secs();
                        props.set(
                            props::MESSAGE_EXPIRY,
                            Value::U32(u32::try_from(left).unwrap_or(u32::MAX)),
                        );
                    }
                }
                let p = Packet::Publish(Publish {
                    dup,
                    qos: delivery.qos,
                    retain: delivery.retain,
                    topic: delivery.msg.topic.to_string(),
                    pkid,
                    payload: delivery.msg.payload.clone(),
                    props,
                });
                let bytes = self.encoded(&p);
                let too_large = self
                    .inner
                    .core()
                    .max_packet(&self.id)
                    .is_some_and(|m| bytes.len() > m as usize);
                if too_large {
                    // MQTT 5: a packet larger than the client takes is
                    // discarded as if it had been sent and acknowledged.
                    if pkid != 0 {
                        self.inner.core().acked(&self.id, pkid);
                    }
                    return;
                }
                conn.queue_raw(&bytes);
            }
        }
    }

    async fn handle<S: Stream>(&mut self, conn: &mut Conn<S>, frame: &[u8]) -> Handled {
        let packet = match codec::decode(frame, self.level) {
            Ok(p) => p,
            Err(e) => return Err(self.violation(conn, e.reason(), &e.to_string())),
        };
        match packet {
            // Boxed: a publish waits on the outbox, and its future would
            // otherwise make every idle client's task that much larger.
            Packet::Publish(p) => Box::pin(self.publish(conn, p)).await,
            Packet::PubAck(a) | Packet::PubComp(a) => {
                self.inner.core().acked(&self.id, a.pkid);
                Ok(())
            }
            Packet::PubRec(a) => {
                if a.code >= 0x80 {
                    // MQTT 5: the client refused it; the exchange ends here.
                    self.inner.core().acked(&self.id, a.pkid);
                } else if self.inner.core().received(&self.id, a.pkid) {
                    conn.queue(&Packet::PubRel(Ack::ok(a.pkid)), self.level);
                } else if self.v5() {
                    let mut rel = Ack::ok(a.pkid);
                    rel.code = 0x92; // packet identifier not found
                    conn.queue(&Packet::PubRel(rel), V5);
                }
                Ok(())
            }
            Packet::PubRel(a) => {
                Box::pin(self.pubrel(a.pkid)).await;
                self.release(conn);
                Ok(())
            }
            Packet::Subscribe(s) => self.subscribe(conn, s),
            Packet::Unsubscribe(u) => {
                let codes = self.inner.core().unsubscribe(&self.who(), &u.filters);
                let ack = Packet::UnsubAck(UnsubAck {
                    pkid: u.pkid,
                    codes,
                    props: Props::default(),
                });
                conn.queue(&ack, self.level);
                Ok(())
            }
            Packet::PingReq => {
                conn.queue(&Packet::PingResp, self.level);
                Ok(())
            }
            Packet::Disconnect(d) => {
                if self.v5() {
                    if let Some(n) = d.props.u32(props::SESSION_EXPIRY) {
                        if n > 0 && !self.inner.core().persistent(&self.id) {
                            return Err(self.violation(
                                conn,
                                0x82,
                                "DISCONNECT sets a session expiry the CONNECT did not have",
                            ));
                        }
                    }
                }
                Err(End::Disconnect {
                    will: self.v5() && d.code == 0x04,
                    expiry: d.props.u32(props::SESSION_EXPIRY).filter(|_| self.v5()),
                })
            }
            Packet::Connect(_) => Err(self.violation(conn, 0x82, "a second CONNECT")),
            Packet::Auth(_) => {
                Err(self.violation(conn, 0x82, "AUTH without an authentication method"))
            }
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => {
                let why = format!("{} is a packet only a server sends", other.name());
                Err(self.violation(conn, 0x82, &why))
            }
        }
    }
}

impl Client {
    fn subscribe<S: Stream>(&mut self, conn: &mut Conn<S>, s: Subscribe) -> Handled {
        if !self.v5() {
            if let Some((_, Err(why))) = s.filters.iter().find(|(_, r)| r.is_err()) {
                // 3.1.1: a malformed topic filter closes the connection.
                return Err(self.violation(conn, 0x81, why));
            }
        }
        let valid: Vec<(String, codec::SubOpts)> = s
            .filters
            .iter()
            .filter_map(|(f, r)| r.ok().map(|o| (f.clone(), o)))
            .collect();
        let sub_id = s.props.u32(props::SUBSCRIPTION_ID);
        let mut granted = self
            .inner
            .core()
            .subscribe(&self.who(), &valid, sub_id)
            .into_iter();
        let codes = s
            .filters
            .iter()
            .map(|(_, r)| match r {
                Ok(_) => granted.next().unwrap_or(0x80),
                Err(_) => 0x8F,
            })
            .collect();
        let ack = Packet::SubAck(SubAck {
            pkid: s.pkid,
            codes,
            props: Props::default(),
        });
        conn.queue(&ack, self.level);
        Ok(())
    }

    /// After the connection: the session is left (with its will when the
    /// end was not a plain DISCONNECT), acknowledgements still owed for
    /// committed readings go out.
    pub(super) async fn finish<S: Stream>(&mut self, conn: &mut Conn<S>, end: End) {
        let with_will = match &end {
            End::Disconnect { will, .. } => *will,
            End::Lost(_) | End::Violation(_) | End::Quota => true,
            End::TakenOver | End::Server | End::Revoked => false,
        };
        let expiry = match &end {
            End::Disconnect { expiry, .. } => expiry.map(|n| Duration::from_secs(u64::from(n))),
            _ => None,
        };
        match &end {
            End::Violation(why) => self.inner.note_violation(self.peer, &self.id, why),
            End::Lost(why) => {
                tracing::debug!(peer = %self.peer, client_id = %self.id, reason = %why, "client connection lost")
            }
            End::Quota => {
                self.inner.log_limited(format!("quota {}", self.peer.ip()), |n| {
                    tracing::warn!(peer = %self.peer, client_id = %self.id, count = n, "client {} disconnected: max_connections is reached and its owner has more connections than a client that asked to connect", self.id)
                });
            }
            End::Revoked => {
                let user = self.username.as_deref().unwrap_or_default();
                tracing::info!(peer = %self.peer, client_id = %self.id, user, "client {} disconnected: the reloaded password file no longer lets {user} in", self.id)
            }
            _ => {
                tracing::debug!(peer = %self.peer, client_id = %self.id, end = ?end, "client disconnected")
            }
        }
        // Readings already handed to the outbox: wait (bounded) for their
        // commits, so the acknowledgements that can still go, go.
        if !matches!(end, End::Lost(_)) {
            let until = deadline(Duration::from_secs(2));
            while self.gate.awaiting_commit() > 0 && Instant::now() < until {
                match tokio::time::timeout_at(until, next_commit(&mut self.commits)).await {
                    Ok(Some((tag, Ok(done)))) if done.rejected == 0 => {
                        self.inner.ingest.count(&done);
                        self.gate.committed(tag);
                    }
                    // Not stored: nothing more is acknowledged.
                    _ => break,
                }
            }
            self.release(conn);
        }
        let _ = conn.flush().await;
        let will = self
            .inner
            .core()
            .leave(&self.id, self.conn_id, with_will, expiry);
        let willed = will.is_some();
        if let Some(w) = will {
            self.inner
                .publish_will(self.id.clone(), self.username.clone(), self.conn_id, w);
        }
        // Taken over: the device is back already. The broker stopping:
        // outpost is, too.
        if !matches!(end, End::TakenOver | End::Server) {
            let why = if willed {
                "its MQTT connection ended and its will fired"
            } else {
                "its MQTT connection ended"
            };
            let spoken = self.seen.take().map(|s| s.spoken).unwrap_or_default();
            for device in spoken {
                self.inner.ingest.presence().gone(&device, why);
            }
        }
    }
}

async fn next_commit(
    commits: &mut Option<(
        mpsc::UnboundedSender<Tagged>,
        mpsc::UnboundedReceiver<Tagged>,
    )>,
) -> Option<Tagged> {
    match commits {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Client {
    /// Where the outbox reports commits of held acknowledgements.
    pub(super) fn commit_sender(&mut self) -> mpsc::UnboundedSender<Tagged> {
        self.commits
            .get_or_insert_with(mpsc::unbounded_channel)
            .0
            .clone()
    }
}
