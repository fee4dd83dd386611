//! A client's session: what outlives one connection when the client asks
//! for it (clean session 0, or an MQTT 5 session expiry): subscriptions,
//! messages queued for it, the messages in flight to it, the QoS 2 packet
//! ids it has not released yet, and its will. Every part is bounded.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::codec::{Props, Will};
use super::trie::{Sub, Subscriber};

/// A message as the broker keeps it: shared by every subscriber it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 properties forwarded to subscribers (never a topic alias).
    pub props: Props,
    /// MQTT 5 message expiry.
    pub expires: Option<Instant>,
    /// Who published it (for MQTT 5's no-local option).
    pub from: Option<Subscriber>,
}

impl Message {
    pub fn new(topic: &str, payload: Bytes, qos: u8, retain: bool) -> Message {
        Message {
            topic: Arc::from(topic),
            payload,
            qos,
            retain,
            props: Props::default(),
            expires: None,
            from: None,
        }
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|t| t <= now)
    }

    /// Bytes it holds, for the queue bounds.
    pub fn size(&self) -> usize {
        self.topic.len().saturating_add(self.payload.len())
    }
}

/// A message on its way to one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// The QoS it goes with: the lower of the message's and the
    /// subscription's.
    pub qos: u8,
    /// The RETAIN flag it goes with.
    pub retain: bool,
    /// MQTT 5 subscription identifiers of the matching subscriptions.
    pub sub_ids: Vec<u32>,
}

/// A message sent to the client and not yet fully acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inflight {
    /// Awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent(Delivery),
    /// PUBREL sent, awaiting PUBCOMP.
    Released,
}

/// What the connection writes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Publish {
        pkid: u16,
        delivery: Delivery,
        dup: bool,
    },
    PubRel(u16),
}

/// The live connection of a session.
#[derive(Debug, Clone)]
pub struct Live {
    pub id: u64,
    pub link: Arc<Link>,
}

/// How the broker reaches a live connection's task, and how it knows
/// that the client is still heard from. One small allocation per
/// connection: the task needs no timer of its own for the keep-alive.
#[derive(Debug)]
pub struct Link {
    /// Woken when there is something to send, or when the connection must
    /// end (taken over, revoked, over its share, silent past its
    /// keep-alive: `Core::must_end`).
    wake: Notify,
    /// When the client last sent a packet, in milliseconds after
    /// [`epoch`].
    heard: AtomicU64,
    /// 1.5 times the client's keep-alive, in milliseconds (MQTT 3.1.1
    /// §3.1.2.10, MQTT 5 §3.1.2.10); 0: no keep-alive.
    keep_ms: u32,
}

/// The instant [`Link`] times count from.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn ms_after_epoch(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_millis()).unwrap_or(u64::MAX)
}

impl Link {
    /// A link for a client with `keep_alive` (zero: none), heard `now`.
    pub fn new(keep_alive: Duration, now: Instant) -> Link {
        let keep = keep_alive.saturating_add(keep_alive.checked_div(2).unwrap_or_default());
        Link {
            wake: Notify::new(),
            heard: AtomicU64::new(ms_after_epoch(now)),
            keep_ms: u32::try_from(keep.as_millis()).unwrap_or(u32::MAX),
        }
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// The client sent a packet at `now`.
    pub fn heard(&self, now: Instant) {
        self.heard.store(ms_after_epoch(now), Ordering::Relaxed);
    }

    /// Silent for 1.5 keep-alives at `now`: the server must disconnect it
    /// (MQTT-3.1.2-24).
    pub fn overdue(&self, now: Instant) -> bool {
        self.keep_ms > 0
            && ms_after_epoch(now).saturating_sub(self.heard.load(Ordering::Relaxed))
                >= u64::from(self.keep_ms)
    }
}

/// A will waiting for the connection to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWill {
    pub will: Will,
    pub delay: Duration,
}

#[derive(Debug)]
pub struct Session {
    pub level: u8,
    /// Kept after the connection ends.
    pub persistent: bool,
    /// How long a persistent session is kept after its connection ends.
    pub expiry: Option<Duration>,
    pub disconnected_at: Option<Instant>,
    /// Its login was taken away by a reload; its connection is ending.
    pub revoked: bool,
    /// Its connection is ending to make room for a client of an owner
    /// with a smaller share.
    pub over_quota: bool,
    /// Whose share it counts against.
    pub owner: super::core::Owner,
    pub live: Option<Live>,
    /// Filter → subscription, to clean up after the session.
    pub subs: BTreeMap<String, Sub>,
    pub queue: VecDeque<Delivery>,
    /// Bytes of `queue`; changed only through [`Session::recount`] and
    /// the queue operations, which keep `pool` in step.
    pub queued_bytes: usize,
    /// Queued bytes of every session together (`broker.max_queued_bytes_total`).
    pool: Arc<AtomicUsize>,
    pub inflight: BTreeMap<u16, Inflight>,
    next_pkid: u16,
    /// QoS 2 packet ids received and not yet released (PUBREL).
    pub qos2_in: BTreeSet<u16>,
    /// Boxed: most sessions have none, and every session would otherwise
    /// carry its size.
    pub will: Option<Box<PendingWill>>,
    /// The client's receive maximum (MQTT 5; 3.1.1: the broker's window).
    pub receive_max: u16,
    /// The largest packet the client takes (MQTT 5).
    pub max_packet: Option<u32>,
    /// Messages not queued because the queue was full.
    pub dropped: u64,
    /// Who the client logged in as (for the ACL).
    pub username: Option<Arc<str>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.pool.fetch_sub(self.queued_bytes, Ordering::Relaxed);
    }
}

impl Session {
    /// Keeps only the queued messages the session's user may read under
    /// `acl` (an ACL reloaded, or the session taken over under another
    /// name).
    pub fn keep_readable(&mut self, acl: Option<&crate::access::Acl>, id: &str) {
        let user = self.username.clone();
        let before = self.queue.len();
        self.queue.retain(|d| {
            super::auth::may(
                acl,
                user.as_deref(),
                id,
                &d.msg.topic,
                crate::access::Access::Read,
            )
        });
        if self.queue.len() != before {
            self.recount();
        }
    }

    /// `queued_bytes` counted again after the queue was filtered.
    pub fn recount(&mut self) {
        let now: usize = self.queue.iter().map(|d| d.msg.size()).sum();
        self.set_queued(now);
    }

    fn set_queued(&mut self, n: usize) {
        let old = self.queued_bytes;
        if n > old {
            self.pool
                .fetch_add(n.saturating_sub(old), Ordering::Relaxed);
        } else {
            self.pool
                .fetch_sub(old.saturating_sub(n), Ordering::Relaxed);
        }
        self.queued_bytes = n;
    }

    /// Drops the oldest queued messages until at least `bytes` are freed
    /// (or the queue is empty); returns the bytes freed.
    pub fn shed_oldest(&mut self, bytes: usize) -> usize {
        let mut freed: usize = 0;
        while freed < bytes {
            let Some(d) = self.queue.pop_front() else {
                break;
            };
            freed = freed.saturating_add(d.msg.size());
            self.dropped = self.dropped.saturating_add(1);
        }
        let left = self.queued_bytes.saturating_sub(freed);
        self.set_queued(left);
        freed
    }

    /// Offline past its expiry (`persistent_expiry` for an MQTT 3.1.1
    /// persistent session) at `now`.
    pub fn expired(&self, now: Instant, persistent_expiry: Duration) -> bool {
        self.disconnected_at.is_some_and(|t| {
            let keep = self.expiry.unwrap_or(persistent_expiry);
            now.saturating_duration_since(t) >= keep
        })
    }

    pub fn new(level: u8, pool: Arc<AtomicUsize>) -> Session {
        Session {
            level,
            persistent: false,
            expiry: None,
            disconnected_at: None,
            revoked: false,
            over_quota: false,
            owner: super::core::Owner::Outpost,
            live: None,
            subs: BTreeMap::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            pool,
            inflight: BTreeMap::new(),
            next_pkid: 0,
            qos2_in: BTreeSet::new(),
            will: None,
            receive_max: 20,
            max_packet: None,
            dropped: 0,
            username: None,
        }
    }

    /// A packet id not in flight.
    pub fn next_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_pkid) {
                return Some(self.next_pkid);
            }
        }
        None
    }

    /// Queues a delivery within the bounds; false if it was dropped.
    pub fn enqueue(&mut self, d: Delivery, max_count: usize, max_bytes: usize) -> bool {
        let size = d.msg.size();
        if self.queue.len() >= max_count || self.queued_bytes.saturating_add(size) > max_bytes {
            self.dropped = self.dropped.saturating_add(1);
            return false;
        }
        self.set_queued(self.queued_bytes.saturating_add(size));
        self.queue.push_back(d);
        if let Some(live) = &self.live {
            live.link.wake();
        }
        true
    }

    /// The next deliveries to write, within the client's window; expired
    /// messages are dropped on the way.
    pub fn take(&mut self, window: usize, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        while let Some(d) = self.queue.front() {
            if d.qos > 0 && self.inflight.len() >= window {
                break;
            }
            let Some(d) = self.queue.pop_front() else {
                break;
            };
            self.set_queued(self.queued_bytes.saturating_sub(d.msg.size()));
            if d.msg.expired(now) {
                continue;
            }
            if d.qos == 0 {
                out.push(Out::Publish {
                    pkid: 0,
                    delivery: d,
                    dup: false,
                });
                continue;
            }
            let Some(pkid) = self.next_pkid() else {
                self.queue.push_front(d);
                break;
            };
            self.inflight.insert(pkid, Inflight::Sent(d.clone()));
            out.push(Out::Publish {
                pkid,
                delivery: d,
                dup: false,
            });
        }
        out
    }

    /// Everything in flight again, after the client reconnected to this
    /// session: unacknowledged publishes with DUP, and PUBRELs.
    pub fn resend(&self) -> Vec<Out> {
        self.inflight
            .iter()
            .map(|(pkid, f)| match f {
                Inflight::Sent(d) => Out::Publish {
                    pkid: *pkid,
                    delivery: d.clone(),
                    dup: true,
                },
                Inflight::Released => Out::PubRel(*pkid),
            })
            .collect()
    }

    pub fn connected(&self) -> bool {
        self.live.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(qos: u8, payload: &str) -> Delivery {
        Delivery {
            msg: Arc::new(Message::new(
                "t",
                payload.as_bytes().to_vec().into(),
                qos,
                false,
            )),
            qos,
            retain: false,
            sub_ids: Vec::new(),
        }
    }

    #[test]
    fn the_queue_is_bounded_and_the_window_holds_back_qos1() {
        let mut s = Session::new(4, Arc::default());
        for i in 0..5 {
            assert!(s.enqueue(d(1, &i.to_string()), 3, 1000) || i >= 3);
        }
        assert_eq!(s.queue.len(), 3);
        assert_eq!(s.dropped, 2);
        let out = s.take(2, Instant::now());
        assert_eq!(out.len(), 2, "window of 2");
        assert_eq!(s.inflight.len(), 2);
        assert!(s.take(2, Instant::now()).is_empty());
        s.inflight.clear();
        assert_eq!(s.take(2, Instant::now()).len(), 1);
        assert!(s.enqueue(d(0, "x"), 3, 1000));
        assert!(!s.enqueue(d(0, &"y".repeat(2000)), 3, 1000), "byte bound");
    }

    #[test]
    fn resend_marks_dup_and_keeps_pubrel() {
        let mut s = Session::new(5, Arc::default());
        s.enqueue(d(2, "a"), 10, 1000);
        s.enqueue(d(1, "b"), 10, 1000);
        let out = s.take(10, Instant::now());
        let Out::Publish { pkid, .. } = out[0] else {
            panic!()
        };
        s.inflight.insert(pkid, Inflight::Released);
        let again = s.resend();
        assert_eq!(again[0], Out::PubRel(pkid));
        assert!(matches!(again[1], Out::Publish { dup: true, .. }));
    }
}
