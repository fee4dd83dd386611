//! Shares of what all clients share, and taking logins away. At a shared
//! bound (connections, subscriptions, offline sessions) the owner with the
//! most gives way to an owner with less; an owner already at the most is
//! refused. An owner is a client's user, or its address when it is
//! anonymous (see [`owner`]). Retained topics (`retain`) and queued bytes
//! (`deliver`) follow the same rule.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::super::trie::Subscriber;
use super::Core;

/// The owner of a client's share of what all clients share (connections,
/// subscriptions, retained topics, persistent sessions, queued bytes): its
/// user when it logged in, its address when it is anonymous. At a shared
/// bound, the owner with the most gives way to one with less. Made without
/// an allocation: a user shares the login's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    User(Arc<str>),
    Address(std::net::IpAddr),
    /// outpost's own messages and clients.
    Outpost,
}

impl Owner {
    pub fn of(username: Option<&Arc<str>>, peer: std::net::IpAddr) -> Owner {
        match username {
            Some(u) => Owner::User(u.clone()),
            None => Owner::Address(peer),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::User(u) => write!(f, "user {u}"),
            Owner::Address(a) => write!(f, "address {a}"),
            Owner::Outpost => f.write_str("outpost"),
        }
    }
}

/// Per owner: its use of a shared bound, and what it would give up.
type Uses<K, T> = HashMap<K, (usize, T)>;

/// The rule every shared bound follows. `per` holds each owner's use and
/// what that owner would give up; the owner with the most gives it up if
/// it has more than `me` would with one more. `None`: `me` is refused.
pub(in crate::source::broker) fn giver<K, T>(per: &HashMap<K, (usize, T)>, me: &K) -> Option<T>
where
    K: Eq + std::hash::Hash,
    T: Clone,
{
    let mine = per.get(me).map_or(0, |e| e.0);
    per.iter()
        .filter(|(o, _)| *o != me)
        .max_by_key(|(_, e)| e.0)
        .filter(|(_, e)| e.0 > mine.saturating_add(1))
        .map(|(_, e)| e.1.clone())
}

impl Core {
    /// The logins of `users` are taken away (SIGHUP with a changed password
    /// file): their connections are ended and their sessions do not stay.
    /// Returns how many connections are ended.
    pub fn revoke(&mut self, users: &[String]) -> usize {
        let mut ended: usize = 0;
        let mut gone = Vec::new();
        for (id, s) in self.sessions.iter_mut() {
            let Some(user) = s.username.as_deref() else {
                continue;
            };
            if !users.iter().any(|u| u == user) {
                continue;
            }
            s.persistent = false;
            match &s.live {
                Some(live) => {
                    s.revoked = true;
                    live.link.wake();
                    ended = ended.saturating_add(1);
                }
                None => gone.push(id.clone()),
            }
        }
        for id in gone {
            if let Some(old) = self.sessions.remove(&id) {
                self.drop_subs(&Subscriber::Client(id.clone()), &old);
            }
        }
        ended
    }

    /// `max_subscriptions` is reached and `who` asks for one more: the
    /// owner with the most subscriptions (more than `who`'s owner would
    /// have with this one) loses one of its clients' subscriptions, from
    /// the client with the most. True: there is room now.
    pub(super) fn evict_subscription_for(&mut self, who: &Subscriber) -> bool {
        let Subscriber::Client(me) = who else {
            return false;
        };
        let Some(my_owner) = self.sessions.get(me).map(|s| s.owner.clone()) else {
            return false;
        };
        // Per owner: its subscriptions, and its client with the most.
        let mut per: Uses<&Owner, (usize, &Arc<str>)> = HashMap::new();
        for (id, s) in &self.sessions {
            let e = per.entry(&s.owner).or_insert((0, (0, id)));
            e.0 = e.0.saturating_add(s.subs.len());
            if s.subs.len() > e.1 .0 {
                e.1 = (s.subs.len(), id);
            }
        }
        let Some(victim) = giver(&per, &&my_owner).map(|(_, id)| id.clone()) else {
            return false;
        };
        let filter = self
            .sessions
            .get(&victim)
            .and_then(|s| s.subs.keys().max().cloned());
        let Some(filter) = filter else {
            return false;
        };
        if let Some(s) = self.sessions.get_mut(&victim) {
            s.subs.remove(&filter);
        }
        self.trie.remove(&filter, &Subscriber::Client(victim));
        self.subs_evicted = self.subs_evicted.saturating_add(1);
        true
    }

    /// `max_connections` is reached and a client of `owner` asks to join:
    /// the newest connection of the owner with the most connections is
    /// ended (MQTT 5: 0x97, quota exceeded) if that owner has more than
    /// `owner` would with this one. True: one was ended, the newcomer may
    /// take its place.
    pub fn evict_connection_for(&mut self, owner: &Owner) -> bool {
        // Per owner: its connections, and its newest.
        let mut per: Uses<&Owner, (u64, &Arc<str>)> = HashMap::new();
        for (id, s) in &self.sessions {
            if let Some(live) = &s.live {
                let e = per.entry(&s.owner).or_insert((0, (0, id)));
                e.0 = e.0.saturating_add(1);
                if live.id >= e.1 .0 {
                    e.1 = (live.id, id);
                }
            }
        }
        let Some(victim) = giver(&per, &owner).map(|(_, id)| id.clone()) else {
            return false;
        };
        match self.sessions.get_mut(&victim) {
            Some(s) => {
                s.over_quota = true;
                if let Some(live) = &s.live {
                    live.link.wake();
                }
                true
            }
            None => false,
        }
    }

    /// At most `max_offline_sessions` offline sessions. Over the bound, the
    /// owner with the most offline sessions loses its longest offline one:
    /// a thousand junk sessions of one owner push out their own, not a
    /// sensor's.
    pub(super) fn bound_offline(&mut self) {
        loop {
            let mut per: HashMap<&Owner, (usize, Instant, Arc<str>)> = HashMap::new();
            let mut offline: usize = 0;
            for (k, s) in &self.sessions {
                let Some(t) = s.disconnected_at else {
                    continue;
                };
                offline = offline.saturating_add(1);
                let e = per.entry(&s.owner).or_insert((0, t, k.clone()));
                e.0 = e.0.saturating_add(1);
                if t <= e.1 {
                    e.1 = t;
                    e.2 = k.clone();
                }
            }
            if offline <= self.limits.max_offline_sessions {
                return;
            }
            let Some(victim) = per
                .into_values()
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
                .map(|e| e.2)
            else {
                return;
            };
            if let Some(s) = self.sessions.remove(&victim) {
                self.drop_subs(&Subscriber::Client(victim.clone()), &s);
            }
        }
    }
}
