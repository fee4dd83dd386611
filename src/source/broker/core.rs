//! The broker's state behind one lock: sessions, subscriptions, retained
//! messages and outpost's own in-process clients. Every operation is
//! synchronous and short; connections hold the lock only to hand a packet's
//! effect in or to take what to send out, never across an await.

mod deliver;
mod shares;

pub(super) use shares::giver;
pub use shares::Owner;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::codec::SubOpts;
use super::retain::Retained;
use super::session::{Inflight, Link, Live, Out, PendingWill, Session};
use super::trie::{Sub, Subscriber, Trie};
use crate::access::Acl;

/// The bounds that keep state per client and in total small.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_subscriptions_per_client: usize,
    pub max_subscriptions: usize,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    /// Queued bytes of all sessions together.
    pub max_queued_bytes_total: usize,
    /// Messages in flight to one client.
    pub max_inflight: u16,
    /// Offline persistent sessions kept at most (the oldest go first).
    pub max_offline_sessions: usize,
    /// How long an MQTT 3.1.1 persistent session is kept offline.
    pub persistent_expiry: Duration,
    pub max_retained: usize,
    pub max_retained_bytes: usize,
}

impl Limits {
    /// The bounds configured in `[broker]`.
    pub fn of(cfg: &crate::config::BrokerConfig) -> Limits {
        let bytes = |b: crate::units::ByteSize| usize::try_from(b.0).unwrap_or(usize::MAX);
        Limits {
            max_subscriptions_per_client: cfg.max_subscriptions_per_client,
            max_subscriptions: cfg.max_subscriptions,
            max_queued_messages: cfg.max_queued_messages,
            max_queued_bytes: bytes(cfg.max_queued_bytes),
            max_queued_bytes_total: bytes(cfg.max_queued_bytes_total),
            max_inflight: cfg.max_inflight,
            max_offline_sessions: cfg.max_offline_sessions,
            persistent_expiry: cfg.persistent_session_expiry.0,
            max_retained: cfg.max_retained,
            max_retained_bytes: bytes(cfg.max_retained_bytes),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_subscriptions_per_client: 100,
            max_subscriptions: 10_000,
            max_queued_messages: 1000,
            max_queued_bytes: 1 << 20,
            max_queued_bytes_total: 32 << 20,
            max_inflight: 20,
            max_offline_sessions: 1000,
            persistent_expiry: Duration::from_secs(86_400),
            max_retained: 1000,
            max_retained_bytes: 4 << 20,
        }
    }
}

/// A message for one of outpost's own clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMessage {
    pub topic: String,
    pub payload: bytes::Bytes,
    pub retain: bool,
}

struct Internal {
    tx: mpsc::Sender<LocalMessage>,
    subs: Vec<String>,
}

/// What a CONNECT asks of the session store.
#[derive(Debug, Clone)]
pub struct Join {
    pub client_id: Arc<str>,
    pub level: u8,
    pub clean: bool,
    /// Keep the session this long after the connection ends (`None`: not
    /// at all; 3.1.1 persistent sessions get `persistent_expiry`).
    pub expiry: Option<Duration>,
    pub receive_max: u16,
    pub max_packet: Option<u32>,
    pub will: Option<PendingWill>,
    /// Who the client logged in as (for the ACL).
    pub username: Option<Arc<str>>,
    /// Whose share it counts against.
    pub owner: Owner,
    /// The keep-alive from its CONNECT (zero: none).
    pub keep_alive: Duration,
}

/// The session a connection got.
pub struct Joined {
    pub conn_id: u64,
    pub link: Arc<Link>,
    pub session_present: bool,
    /// What was in flight to the client before, sent again first.
    pub resend: Vec<Out>,
    /// The will of the connection this one took over, to publish now: its
    /// session ended (a clean start), or it had no will delay (MQTT 5
    /// §3.1.3.2.2, §3.1.4-3).
    pub taken_will: Option<TakenWill>,
}

/// A will left by a connection that was taken over.
#[derive(Debug)]
pub struct TakenWill {
    pub will: PendingWill,
    pub username: Option<Arc<str>>,
    pub conn_id: u64,
}

/// Why the broker ends a live connection ([`Core::must_end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Another connection took the client id.
    TakenOver,
    /// A reload took its login away ([`Core::revoke`]).
    Revoked,
    /// Its owner is over its share of `max_connections`
    /// ([`Core::evict_connection_for`]).
    Quota,
    /// The client was silent for 1.5 times its keep-alive.
    KeepAlive,
}

/// Counters and sizes, for status and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub sessions: usize,
    pub connected: usize,
    pub subscriptions: usize,
    pub retained: usize,
    pub retained_bytes: usize,
    pub queued: usize,
    pub dropped: u64,
    pub retained_refused: u64,
    /// Subscriptions taken from the greediest owner at `max_subscriptions`.
    pub subscriptions_evicted: u64,
}

pub struct Core {
    limits: Limits,
    /// Boxed: the map's table is sized by powers of two, and a slot that
    /// holds a whole session would cost its size again for every free slot.
    sessions: HashMap<Arc<str>, Box<Session>>,
    internal: HashMap<u64, Internal>,
    trie: Trie,
    retained: Retained,
    next_id: u64,
    /// Round-robin position for shared subscriptions.
    rr: usize,
    dropped: u64,
    retained_refused: u64,
    /// Who may read what; `None`: everyone everything.
    acl: Option<Arc<Acl>>,
    /// Subscriptions taken from the greediest owner to make room.
    subs_evicted: u64,
    /// Queued bytes of all sessions (each session keeps it in step).
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// SUBACK codes.
pub const GRANTED_QOS: [u8; 3] = [0x00, 0x01, 0x02];
pub const SUB_QUOTA_EXCEEDED: u8 = 0x97;
pub const SUB_FAILURE_311: u8 = 0x80;

impl Core {
    pub fn new(limits: Limits, acl: Option<Arc<Acl>>) -> Core {
        let retained = Retained::new(limits.max_retained, limits.max_retained_bytes);
        Core {
            limits,
            sessions: HashMap::new(),
            internal: HashMap::new(),
            trie: Trie::default(),
            retained,
            next_id: 0,
            rr: 0,
            dropped: 0,
            retained_refused: 0,
            acl,
            queued: Arc::default(),
            subs_evicted: 0,
        }
    }

    /// The ACL from now on (SIGHUP): every message delivered after this is
    /// checked against it.
    pub fn set_acl(&mut self, acl: Option<Arc<Acl>>) {
        self.acl = acl;
        // Queued before the change: kept only what the new rules allow.
        let acl = self.acl.clone();
        for (id, session) in self.sessions.iter_mut() {
            session.keep_readable(acl.as_deref(), id);
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn id(&mut self) -> u64 {
        self.next_id = self.next_id.saturating_add(1);
        self.next_id
    }

    pub fn stats(&self) -> CoreStats {
        CoreStats {
            sessions: self.sessions.len(),
            connected: self.sessions.values().filter(|s| s.connected()).count(),
            subscriptions: self.trie.len(),
            retained: self.retained.len(),
            retained_bytes: self.retained.bytes(),
            queued: self.sessions.values().map(|s| s.queue.len()).sum(),
            dropped: self
                .sessions
                .values()
                .map(|s| s.dropped)
                .fold(self.dropped, u64::saturating_add),
            retained_refused: self.retained_refused,
            subscriptions_evicted: self.subs_evicted,
        }
    }

    /// A connection takes the client id: the connection that held it (if
    /// any) is woken to end; the session is resumed or started fresh.
    pub fn join(&mut self, j: Join) -> Joined {
        let conn_id = self.id();
        let link = Arc::new(Link::new(j.keep_alive, Instant::now()));
        // An offline session past its expiry is over when its client comes
        // back, whenever the sweep would have come.
        let keep = self.limits.persistent_expiry;
        if self
            .sessions
            .get(&j.client_id)
            .is_some_and(|s| s.expired(Instant::now(), keep))
        {
            if let Some(old) = self.sessions.remove(&j.client_id) {
                self.drop_subs(&Subscriber::Client(j.client_id.clone()), &old);
            }
        }
        let mut taken_will = None;
        if j.clean {
            if let Some(mut old) = self.sessions.remove(&j.client_id) {
                if let Some(live) = &old.live {
                    live.link.wake();
                    // The old session ends here: its will goes now.
                    taken_will = old.will.take().map(|mut will| {
                        will.delay = Duration::ZERO;
                        TakenWill {
                            will: *will,
                            username: old.username.clone(),
                            conn_id: live.id,
                        }
                    });
                }
                self.drop_subs(&Subscriber::Client(j.client_id.clone()), &old);
            }
        }
        // A session that was kept (offline, or taken over from a live
        // connection) is present for a client that did not ask for a
        // clean one.
        let session_present = !j.clean && self.sessions.contains_key(&j.client_id);
        let pool = self.queued.clone();
        let session = self
            .sessions
            .entry(j.client_id.clone())
            .or_insert_with(|| Box::new(Session::new(j.level, pool)));
        if let Some(old) = session.live.take() {
            old.link.wake();
            // The session goes on: a will without a delay goes now, one
            // with a delay is dropped (reconnected before it passed).
            if let Some(will) = session.will.take().filter(|w| w.delay.is_zero()) {
                taken_will = Some(TakenWill {
                    will: *will,
                    username: session.username.clone(),
                    conn_id: old.id,
                });
            }
        }
        session.level = j.level;
        session.owner = j.owner.clone();
        session.persistent = j.expiry.is_some_and(|d| !d.is_zero());
        session.expiry = j.expiry;
        session.disconnected_at = None;
        session.receive_max = j.receive_max.clamp(1, self.limits.max_inflight.max(1));
        session.max_packet = j.max_packet;
        session.will = j.will.map(Box::new);
        if session.username != j.username {
            // A session taken over under another name keeps only what the
            // new name may read.
            session.username = j.username;
            session.keep_readable(self.acl.as_deref(), &j.client_id);
        }
        session.revoked = false;
        session.over_quota = false;
        session.live = Some(Live {
            id: conn_id,
            link: link.clone(),
        });
        let resend = if session_present {
            session.resend()
        } else {
            Vec::new()
        };
        if !session.queue.is_empty() {
            link.wake();
        }
        Joined {
            conn_id,
            link,
            session_present,
            resend,
            taken_will,
        }
    }

    /// The connection `conn_id` of `client` ended. Returns its will when it
    /// is to be published (`with_will`), with the will delay, cut to when
    /// the session ends if that comes first (MQTT 5 §3.1.3.2.2). `expiry`:
    /// the session expiry a DISCONNECT set (MQTT 5 §3.14.2.2.2; zero ends
    /// the session now). A session that is not persistent goes.
    pub fn leave(
        &mut self,
        client: &Arc<str>,
        conn_id: u64,
        with_will: bool,
        expiry: Option<Duration>,
    ) -> Option<PendingWill> {
        let keep = self.limits.persistent_expiry;
        let session = self.sessions.get_mut(client)?;
        if session.live.as_ref().map(|l| l.id) != Some(conn_id) {
            // Taken over: the session belongs to the newer connection.
            return None;
        }
        session.live = None;
        if let Some(e) = expiry {
            session.persistent = !e.is_zero();
            session.expiry = Some(e.min(keep));
        }
        let ends_in = if session.persistent {
            session.expiry.unwrap_or(keep)
        } else {
            Duration::ZERO
        };
        let will = session.will.take().filter(|_| with_will).map(|mut w| {
            w.delay = w.delay.min(ends_in);
            *w
        });
        if session.persistent {
            session.disconnected_at = Some(Instant::now());
            self.bound_offline();
        } else if let Some(old) = self.sessions.remove(client) {
            self.drop_subs(&Subscriber::Client(client.clone()), &old);
        }
        will
    }

    /// Wakes every live connection (the broker restarts in place).
    pub fn wake_all(&self) {
        for live in self.sessions.values().filter_map(|s| s.live.as_ref()) {
            live.link.wake();
        }
    }

    /// Wakes the connections whose client has been silent past 1.5 times
    /// its keep-alive at `now`; woken, each learns from
    /// [`Core::must_end`] that it ends. Called about once a second, so a
    /// silent client is disconnected at most a second late (Mosquitto
    /// checks keep-alives about as often).
    pub fn wake_overdue(&self, now: Instant) {
        for live in self.sessions.values().filter_map(|s| s.live.as_ref()) {
            if live.link.overdue(now) {
                live.link.wake();
            }
        }
    }

    /// Must the connection `conn_id` of `client` end, and why? Asked when
    /// the connection is woken: one wake-up serves both "something to
    /// send" and "end now".
    pub fn must_end(&self, client: &Arc<str>, conn_id: u64, now: Instant) -> Option<Ending> {
        let session = self.sessions.get(client);
        let Some(live) = session
            .and_then(|s| s.live.as_ref())
            .filter(|l| l.id == conn_id)
        else {
            return Some(Ending::TakenOver);
        };
        if session.is_some_and(|s| s.revoked) {
            Some(Ending::Revoked)
        } else if session.is_some_and(|s| s.over_quota) {
            Some(Ending::Quota)
        } else if live.link.overdue(now) {
            Some(Ending::KeepAlive)
        } else {
            None
        }
    }

    /// Is `client` connected again (or still) since `conn_id` left? A
    /// delayed will is then not published.
    pub fn reconnected(&self, client: &Arc<str>, conn_id: u64) -> bool {
        self.sessions
            .get(client)
            .and_then(|s| s.live.as_ref())
            .is_some_and(|l| l.id != conn_id)
    }

    fn drop_subs(&mut self, who: &Subscriber, s: &Session) {
        for filter in s.subs.keys() {
            self.trie.remove(filter, who);
        }
    }

    /// Removes offline sessions past their expiry and expired queued
    /// messages.
    pub fn sweep(&mut self, now: Instant) {
        let persistent_expiry = self.limits.persistent_expiry;
        let expired: Vec<Arc<str>> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expired(now, persistent_expiry))
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            if let Some(s) = self.sessions.remove(&k) {
                self.drop_subs(&Subscriber::Client(k.clone()), &s);
            }
        }
        for s in self.sessions.values_mut() {
            let before = s.queue.len();
            s.queue.retain(|d| !d.msg.expired(now));
            if s.queue.len() != before {
                s.recount();
            }
        }
    }

    /// Subscribes `who` to each filter (already checked to be valid).
    /// Returns the SUBACK code per filter; retained messages matching a
    /// new subscription are queued for the subscriber.
    pub fn subscribe(
        &mut self,
        who: &Subscriber,
        filters: &[(String, SubOpts)],
        sub_id: Option<u32>,
    ) -> Vec<u8> {
        let mut codes = Vec::with_capacity(filters.len());
        for (filter, opts) in filters {
            let sub = Sub {
                opts: *opts,
                id: sub_id,
            };
            let existing = match who {
                Subscriber::Client(c) => self
                    .sessions
                    .get(c)
                    .map(|s| (s.subs.contains_key(filter), s.subs.len(), s.level)),
                Subscriber::Internal(i) => self
                    .internal
                    .get(i)
                    .map(|x| (x.subs.contains(filter), x.subs.len(), super::codec::V5)),
            };
            let Some((had, count, level)) = existing else {
                codes.push(SUB_FAILURE_311);
                continue;
            };
            let quota = if level == super::codec::V5 {
                SUB_QUOTA_EXCEEDED
            } else {
                SUB_FAILURE_311
            };
            let internal = matches!(who, Subscriber::Internal(_));
            if !had && !internal {
                let full = self.trie.len() >= self.limits.max_subscriptions;
                if count >= self.limits.max_subscriptions_per_client
                    || (full && !self.evict_subscription_for(who))
                {
                    codes.push(quota);
                    continue;
                }
            }
            self.trie.insert(filter, who.clone(), sub);
            match who {
                Subscriber::Client(c) => {
                    if let Some(s) = self.sessions.get_mut(c) {
                        s.subs.insert(filter.clone(), sub);
                    }
                }
                Subscriber::Internal(i) => {
                    if let Some(x) = self.internal.get_mut(i) {
                        if !had {
                            x.subs.push(filter.clone());
                        }
                    }
                }
            }
            codes.push(
                GRANTED_QOS
                    .get(usize::from(opts.qos))
                    .copied()
                    .unwrap_or(0x80),
            );
            let send_retained = match opts.retain_handling {
                0 => true,
                1 => !had,
                _ => false,
            };
            let shared = filter.starts_with("$share/");
            if send_retained && !shared {
                for m in self.retained.matching(filter) {
                    self.deliver_retained(who, &sub, &m);
                }
            }
        }
        codes
    }

    /// UNSUBACK codes (MQTT 5: 0x00 success, 0x11 no subscription existed).
    pub fn unsubscribe(&mut self, who: &Subscriber, filters: &[String]) -> Vec<u8> {
        filters
            .iter()
            .map(|f| {
                let removed = self.trie.remove(f, who);
                match who {
                    Subscriber::Client(c) => {
                        if let Some(s) = self.sessions.get_mut(c) {
                            s.subs.remove(f);
                        }
                    }
                    Subscriber::Internal(i) => {
                        if let Some(x) = self.internal.get_mut(i) {
                            x.subs.retain(|s| s != f);
                        }
                    }
                }
                if removed {
                    0x00
                } else {
                    0x11
                }
            })
            .collect()
    }

    /// What connection `conn_id` of `client` may write now.
    pub fn outgoing(&mut self, client: &Arc<str>, conn_id: u64) -> Vec<Out> {
        let Some(s) = self.sessions.get_mut(client) else {
            return Vec::new();
        };
        if s.live.as_ref().map(|l| l.id) != Some(conn_id) {
            return Vec::new();
        }
        let window = usize::from(s.receive_max);
        s.take(window, Instant::now())
    }

    /// The client acknowledged `pkid` (PUBACK, or PUBCOMP); more may go.
    pub fn acked(&mut self, client: &Arc<str>, pkid: u16) {
        if let Some(s) = self.sessions.get_mut(client) {
            s.inflight.remove(&pkid);
            if let Some(live) = &s.live {
                if !s.queue.is_empty() {
                    live.link.wake();
                }
            }
        }
    }

    /// PUBREC for a QoS 2 message to the client: true if a PUBREL is owed.
    pub fn received(&mut self, client: &Arc<str>, pkid: u16) -> bool {
        let Some(s) = self.sessions.get_mut(client) else {
            return false;
        };
        match s.inflight.get_mut(&pkid) {
            Some(f @ Inflight::Sent(_)) => {
                *f = Inflight::Released;
                true
            }
            Some(Inflight::Released) => true,
            None => false,
        }
    }

    /// Marks an incoming QoS 2 packet id unreleased; false if it already
    /// was (a resend: not to be delivered or stored again).
    pub fn qos2_begin(&mut self, client: &Arc<str>, pkid: u16) -> bool {
        self.sessions
            .get_mut(client)
            .is_some_and(|s| s.qos2_in.insert(pkid))
    }

    /// Incoming QoS 2 packet ids of `client` not released yet, and whether
    /// `pkid` is one of them.
    pub fn qos2_open(&self, client: &Arc<str>, pkid: u16) -> (usize, bool) {
        self.sessions
            .get(client)
            .map_or((0, false), |s| (s.qos2_in.len(), s.qos2_in.contains(&pkid)))
    }

    /// The client released an incoming QoS 2 packet id (PUBREL).
    pub fn qos2_end(&mut self, client: &Arc<str>, pkid: u16) {
        if let Some(s) = self.sessions.get_mut(client) {
            s.qos2_in.remove(&pkid);
        }
    }

    /// Unreleased QoS 2 ids recorded before (a crash), for a new session.
    pub fn qos2_restore(&mut self, client: &Arc<str>, ids: &[u16]) {
        if let Some(s) = self.sessions.get_mut(client) {
            s.qos2_in.extend(ids.iter().copied());
        }
    }

    /// One of outpost's own clients; its messages arrive on `tx`.
    pub fn add_internal(&mut self, tx: mpsc::Sender<LocalMessage>) -> u64 {
        let id = self.id();
        self.internal.insert(
            id,
            Internal {
                tx,
                subs: Vec::new(),
            },
        );
        id
    }

    pub fn remove_internal(&mut self, id: u64) {
        if let Some(i) = self.internal.remove(&id) {
            for f in i.subs {
                self.trie.remove(&f, &Subscriber::Internal(id));
            }
        }
    }

    /// Is `client`'s session kept after its connection ends?
    pub fn persistent(&self, client: &Arc<str>) -> bool {
        self.sessions.get(client).is_some_and(|s| s.persistent)
    }

    /// The largest packet `client` takes, if it said.
    pub fn max_packet(&self, client: &Arc<str>) -> Option<u32> {
        self.sessions.get(client).and_then(|s| s.max_packet)
    }
}

#[cfg(test)]
mod tests;
