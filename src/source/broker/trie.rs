//! Subscriptions, by topic-filter level, so that a publish visits only the
//! branches that can match it. A node that loses its last subscriber is
//! removed at once: nothing is kept for a filter nobody wants.
//!
//! Shared subscriptions (`$share/{group}/{filter}`) sit at their filter's
//! node, per group; a message goes to one member of each matching group.

use std::collections::HashMap;
use std::sync::Arc;

use super::codec::SubOpts;

/// Who a subscription belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subscriber {
    /// A LAN client's session, by client id.
    Client(Arc<str>),
    /// One of outpost's own in-process clients.
    Internal(u64),
}

/// A subscription's options and (MQTT 5) identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub {
    pub opts: SubOpts,
    pub id: Option<u32>,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Plain subscriptions whose filter ends at this node.
    subs: HashMap<Subscriber, Sub>,
    /// Shared subscriptions ending here: group → members.
    shared: HashMap<Box<str>, Vec<(Subscriber, Sub)>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }
}

/// One match of a published topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Plain(Subscriber, Sub),
    /// A shared group's members: the caller picks one.
    Group(Vec<(Subscriber, Sub)>),
}

#[derive(Debug, Default)]
pub struct Trie {
    root: Node,
    count: usize,
}

/// `$share/g/a/b` → (Some("g"), "a/b").
pub fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match filter
        .strip_prefix("$share/")
        .and_then(|r| r.split_once('/'))
    {
        Some((group, f)) => (Some(group), f),
        None => (None, filter),
    }
}

impl Trie {
    /// Subscriptions held, in all.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Adds or replaces `who`'s subscription to `filter`. Returns true if
    /// it is new (not a replacement).
    pub fn insert(&mut self, filter: &str, who: Subscriber, sub: Sub) -> bool {
        let (group, inner) = split_shared(filter);
        let mut node = &mut self.root;
        for level in inner.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let new = match group {
            None => node.subs.insert(who, sub).is_none(),
            Some(g) => {
                let members = node.shared.entry(g.into()).or_default();
                match members.iter_mut().find(|(w, _)| *w == who) {
                    Some(m) => {
                        m.1 = sub;
                        false
                    }
                    None => {
                        members.push((who, sub));
                        true
                    }
                }
            }
        };
        if new {
            self.count = self.count.saturating_add(1);
        }
        new
    }

    /// Removes `who`'s subscription to `filter`; true if it existed.
    pub fn remove(&mut self, filter: &str, who: &Subscriber) -> bool {
        let (group, inner) = split_shared(filter);
        let levels: Vec<&str> = inner.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, group, who);
        if removed {
            self.count = self.count.saturating_sub(1);
        }
        removed
    }

    /// Every subscription matching `topic`.
    pub fn matches(&self, topic: &str) -> Vec<Match> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = Vec::new();
        let dollar = topic.starts_with('$');
        collect(&self.root, &levels, 0, dollar, &mut out);
        out
    }
}

fn remove_at(node: &mut Node, levels: &[&str], group: Option<&str>, who: &Subscriber) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            None => node.subs.remove(who).is_some(),
            Some(g) => {
                let Some(members) = node.shared.get_mut(g) else {
                    return false;
                };
                let before = members.len();
                members.retain(|(w, _)| w != who);
                let removed = members.len() < before;
                if members.is_empty() {
                    node.shared.remove(g);
                }
                removed
            }
        };
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove_at(child, rest, group, who);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn emit(node: &Node, out: &mut Vec<Match>) {
    for (who, sub) in &node.subs {
        out.push(Match::Plain(who.clone(), *sub));
    }
    for members in node.shared.values() {
        out.push(Match::Group(members.clone()));
    }
}

/// Matches in the order Mosquitto delivers them: exact levels, then `+`,
/// then `#`.
fn collect(node: &Node, levels: &[&str], depth: usize, dollar: bool, out: &mut Vec<Match>) {
    // Wildcards at the first level never match topics starting with `$`.
    let wild_ok = !(depth == 0 && dollar);
    match levels.split_first() {
        None => emit(node, out),
        Some((first, rest)) => {
            if let Some(child) = node.children.get(*first) {
                collect(child, rest, depth.saturating_add(1), dollar, out);
            }
            if wild_ok {
                if let Some(plus) = node.children.get("+") {
                    collect(plus, rest, depth.saturating_add(1), dollar, out);
                }
            }
        }
    }
    if wild_ok {
        if let Some(hash) = node.children.get("#") {
            // `a/#` matches `a` itself and everything below it.
            emit(hash, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(s: &str) -> Subscriber {
        Subscriber::Client(Arc::from(s))
    }

    fn sub(qos: u8) -> Sub {
        Sub {
            opts: SubOpts {
                qos,
                ..SubOpts::default()
            },
            id: None,
        }
    }

    fn plain(t: &Trie, topic: &str) -> Vec<String> {
        let mut v: Vec<String> = t
            .matches(topic)
            .into_iter()
            .filter_map(|m| match m {
                Match::Plain(Subscriber::Client(c), _) => Some(c.to_string()),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn wildcards_match_like_the_specification_says() {
        let mut t = Trie::default();
        t.insert("a/+/c", who("plus"), sub(1));
        t.insert("a/#", who("hash"), sub(1));
        t.insert("#", who("all"), sub(0));
        t.insert("a/b/c", who("exact"), sub(2));
        t.insert("+/+", who("two"), sub(0));
        assert_eq!(plain(&t, "a/b/c"), ["all", "exact", "hash", "plus"]);
        assert_eq!(plain(&t, "a"), ["all", "hash"]);
        assert_eq!(plain(&t, "a/b"), ["all", "hash", "two"]);
        assert_eq!(plain(&t, "$SYS/x"), Vec::<String>::new());
        t.insert("$SYS/#", who("sys"), sub(0));
        assert_eq!(plain(&t, "$SYS/x"), ["sys"]);
        assert_eq!(plain(&t, "/"), ["all", "two"]);
    }

    #[test]
    fn removing_the_last_subscriber_prunes_the_branch() {
        let mut t = Trie::default();
        for i in 0..100 {
            t.insert(&format!("x/{i}/y"), who("c"), sub(0));
        }
        assert_eq!(t.len(), 100);
        for i in 0..100 {
            assert!(t.remove(&format!("x/{i}/y"), &who("c")));
        }
        assert_eq!(t.len(), 0);
        assert!(t.root.is_empty(), "nothing kept for filters nobody wants");
        assert!(!t.remove("x/1/y", &who("c")));
    }

    #[test]
    fn shared_groups_match_once_per_group() {
        let mut t = Trie::default();
        t.insert("$share/g/s/+", who("a"), sub(1));
        t.insert("$share/g/s/+", who("b"), sub(1));
        t.insert("$share/h/s/#", who("c"), sub(1));
        let m = t.matches("s/1");
        assert_eq!(m.len(), 2);
        assert!(m
            .iter()
            .any(|m| matches!(m, Match::Group(members) if members.len() == 2)));
        assert!(t.remove("$share/g/s/+", &who("a")));
        assert!(t.remove("$share/g/s/+", &who("b")));
        assert!(t.remove("$share/h/s/#", &who("c")));
        assert!(t.root.is_empty());
    }
}
