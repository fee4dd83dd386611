//! Delivery: a published message to every matching subscription (one
//! member of each shared group), retained messages to a new subscription,
//! each checked against the ACL's `read` for the client that would get it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::super::auth;
use super::super::codec::SubOpts;
use super::super::retain::Stored;
use super::super::session::{Delivery, Message};
use super::super::trie::{Match, Sub, Subscriber};
use super::Owner;
use super::{Core, LocalMessage};
use crate::access::Access;

impl Core {
    /// Room for `size` more queued bytes for `client` within the total
    /// (`max_queued_bytes_total`): when the total is reached, the owner
    /// with the most queued (more than `client`'s owner would have with
    /// this message) gives up the oldest messages of its session with the
    /// most; a client whose owner is itself the greediest gets nothing (its
    /// message is dropped and counted). No owner within its share loses a
    /// message to another's flood, however the flood is spread over
    /// sessions. False: no room.
    fn make_room(&mut self, client: &Arc<str>, size: usize) -> bool {
        let max = self.limits.max_queued_bytes_total;
        let total = self.queued.load(std::sync::atomic::Ordering::Relaxed);
        let need = total.saturating_add(size).saturating_sub(max);
        if need == 0 {
            return true;
        }
        let me = self
            .sessions
            .get(client)
            .map_or(Owner::Outpost, |s| s.owner.clone());
        // Per owner: its queued bytes, and its session with the most.
        let mut per: HashMap<&Owner, (usize, (usize, &Arc<str>))> = HashMap::new();
        for (id, s) in &self.sessions {
            let e = per.entry(&s.owner).or_insert((0, (0, id)));
            e.0 = e.0.saturating_add(s.queued_bytes);
            if s.queued_bytes > e.1 .0 {
                e.1 = (s.queued_bytes, id);
            }
        }
        let mine = per.get(&me).map_or(0, |e| e.0);
        let greediest = per
            .iter()
            .filter(|(o, _)| **o != &me)
            .max_by_key(|(_, e)| e.0)
            .filter(|(_, e)| e.0 > mine.saturating_add(size))
            .map(|(_, e)| e.1 .1.clone());
        if let Some(s) = greediest.and_then(|id| self.sessions.get_mut(&id)) {
            s.shed_oldest(need);
        }
        let room = self.queued_total().saturating_add(size) <= max;
        if !room {
            if let Some(s) = self.sessions.get_mut(client) {
                s.dropped = s.dropped.saturating_add(1);
            }
        }
        room
    }

    /// Whose share a message counts against: its publisher's owner
    /// (outpost's own messages: `outpost`).
    fn owner_of(&self, from: Option<&Subscriber>) -> Owner {
        match from {
            Some(Subscriber::Client(c)) => self
                .sessions
                .get(c)
                .map_or(Owner::Outpost, |s| s.owner.clone()),
            _ => Owner::Outpost,
        }
    }

    /// Queued bytes of every session together.
    pub fn queued_total(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// May `who` receive `topic`? outpost's own clients always may.
    fn may_read(&self, who: &Subscriber, topic: &str) -> bool {
        match who {
            Subscriber::Internal(_) => true,
            Subscriber::Client(c) => self.sessions.get(c).is_some_and(|s| {
                auth::may(
                    self.acl.as_deref(),
                    s.username.as_deref(),
                    c,
                    topic,
                    Access::Read,
                )
            }),
        }
    }

    /// Delivers a message to every matching subscription, and keeps it if
    /// it is retained. Returns how many subscribers got it.
    pub fn publish(&mut self, msg: Arc<Message>) -> usize {
        if msg.retain {
            let owner = self.owner_of(msg.from.as_ref());
            if self.retained.store(&msg, &owner) == Stored::Full {
                self.retained_refused = self.retained_refused.saturating_add(1);
            }
        }
        let mut plain: BTreeMap<Subscriber, Vec<Sub>> = BTreeMap::new();
        let mut delivered: usize = 0;
        for m in self.trie.matches(&msg.topic) {
            match m {
                Match::Plain(who, sub) => plain.entry(who).or_default().push(sub),
                Match::Group(members) => {
                    // The member that gets it is one that may read it.
                    let members: Vec<(Subscriber, Sub)> = members
                        .into_iter()
                        .filter(|(w, _)| self.may_read(w, &msg.topic))
                        .collect();
                    if let Some((who, sub)) = self.pick(&members) {
                        delivered =
                            delivered.saturating_add(usize::from(self.deliver(&who, &[sub], &msg)));
                    }
                }
            }
        }
        for (who, subs) in plain {
            delivered = delivered.saturating_add(usize::from(self.deliver(&who, &subs, &msg)));
        }
        delivered
    }

    /// One member of a shared group: round robin, connected members first.
    pub(super) fn pick(&mut self, members: &[(Subscriber, Sub)]) -> Option<(Subscriber, Sub)> {
        if members.is_empty() {
            return None;
        }
        self.rr = self.rr.wrapping_add(1);
        let n = members.len();
        let online = |w: &Subscriber| match w {
            Subscriber::Client(c) => self.sessions.get(c).is_some_and(|s| s.connected()),
            Subscriber::Internal(_) => true,
        };
        // Round robin from `rr`, skipping members that are offline.
        let start = self.rr.checked_rem(n).unwrap_or(0);
        let (tail, head) = members.split_at(start);
        head.iter()
            .chain(tail.iter())
            .find(|(w, _)| online(w))
            .or_else(|| head.first())
            .cloned()
    }

    /// Hands a message to one subscriber. MQTT 3.1.1 clients get one copy
    /// for all their matching subscriptions (at the highest QoS); MQTT 5
    /// clients one per subscription, each with its identifier (as
    /// Mosquitto does).
    pub(super) fn deliver(&mut self, who: &Subscriber, subs: &[Sub], msg: &Arc<Message>) -> bool {
        let subs: Vec<Sub> = subs
            .iter()
            .copied()
            .filter(|s| !(s.opts.no_local && msg.from.as_ref() == Some(who)))
            .collect();
        if subs.is_empty() || !self.may_read(who, &msg.topic) {
            return false;
        }
        let delivery = |s: &Sub, qos: u8, ids: Vec<u32>| Delivery {
            msg: msg.clone(),
            qos: msg.qos.min(qos),
            retain: s.opts.retain_as_published && msg.retain,
            sub_ids: ids,
        };
        match who {
            Subscriber::Internal(id) => {
                let Some(i) = self.internal.get(id) else {
                    return false;
                };
                let m = LocalMessage {
                    topic: msg.topic.to_string(),
                    payload: msg.payload.clone(),
                    retain: false,
                };
                if i.tx.try_send(m).is_err() {
                    self.dropped = self.dropped.saturating_add(1);
                    return false;
                }
                true
            }
            Subscriber::Client(c) => {
                let (max_q, max_b) = (
                    self.limits.max_queued_messages,
                    self.limits.max_queued_bytes,
                );
                let Some(s) = self.sessions.get(c) else {
                    return false;
                };
                let deliveries: Vec<Delivery> = if s.level == super::super::codec::V5 {
                    subs.iter()
                        .map(|sub| delivery(sub, sub.opts.qos, sub.id.into_iter().collect()))
                        .collect()
                } else {
                    let best = subs.iter().map(|s| s.opts.qos).max().unwrap_or(0);
                    let first = subs.first().copied().unwrap_or(Sub {
                        opts: SubOpts::default(),
                        id: None,
                    });
                    vec![delivery(&first, best, Vec::new())]
                };
                let mut any = false;
                for d in deliveries {
                    // QoS 0 is not kept for a client that is away.
                    let away = self.sessions.get(c).is_some_and(|s| !s.connected());
                    if d.qos == 0 && away {
                        continue;
                    }
                    if !self.make_room(c, d.msg.size()) {
                        continue;
                    }
                    if let Some(s) = self.sessions.get_mut(c) {
                        any |= s.enqueue(d, max_q, max_b);
                    }
                }
                any
            }
        }
    }

    /// A retained message sent because of a new subscription: RETAIN set.
    pub(super) fn deliver_retained(&mut self, who: &Subscriber, sub: &Sub, m: &Arc<Message>) {
        if !self.may_read(who, &m.topic) {
            return;
        }
        let d = Delivery {
            msg: m.clone(),
            qos: m.qos.min(sub.opts.qos),
            retain: true,
            sub_ids: sub.id.into_iter().collect(),
        };
        let (max_q, max_b) = (
            self.limits.max_queued_messages,
            self.limits.max_queued_bytes,
        );
        match who {
            Subscriber::Client(c) => {
                if self.make_room(c, d.msg.size()) {
                    if let Some(s) = self.sessions.get_mut(c) {
                        s.enqueue(d, max_q, max_b);
                    }
                }
            }
            Subscriber::Internal(i) => {
                if let Some(x) = self.internal.get(i) {
                    let _ = x.tx.try_send(LocalMessage {
                        topic: m.topic.to_string(),
                        payload: m.payload.clone(),
                        retain: true,
                    });
                }
            }
        }
    }
}
