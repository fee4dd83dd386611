//! Mosquitto's ACL file, with Mosquitto's rules:
//!
//! ```text
//! # before the first `user` line: clients without a username
//! topic read public/#
//! user sensor1
//! topic readwrite sensors/sensor1/#
//! # for every client, whatever the section
//! pattern write sensors/%u/telemetry
//! pattern read devices/%c/#
//! ```
//!
//! `topic` and `pattern` take `read`, `write`, `readwrite` (the default) or
//! `deny`, then a topic filter. A client's own `topic` lines are checked
//! first (`deny` before the others), then the `pattern` lines (`deny`
//! first), with `%u` the username and `%c` the client id; nothing that
//! matches is a refusal. A username or client id with `+` or `#` gets
//! nothing from patterns (the hole behind CVE-2017-7650), and one with `/`
//! cannot widen a pattern across levels: a substitution is matched against
//! one topic level.

use std::collections::HashMap;
use std::path::Path;

use super::FileError;
use crate::topic::TopicFilter;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive it (checked for every message delivered).
    Read,
    /// Publish on it (wills included).
    Write,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    User,
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Exact(String),
    Plus,
    Hash,
    /// A level with `%u` or `%c` in it (patterns only).
    Template(Vec<Piece>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    deny: bool,
    read: bool,
    write: bool,
    dollar: bool,
    levels: Vec<Level>,
    uses_user: bool,
}

/// Who asks: the username (or a certificate's CN) and the client id.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    pub fn load(path: &Path) -> Result<Acl, FileError> {
        let text = super::read(path)?;
        Acl::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Acl, FileError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let at = |problem: String| FileError {
                path: path.to_path_buf(),
                line: i.saturating_add(1),
                problem,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            let rest = rest.trim();
            match word {
                "user" => {
                    if rest.is_empty() {
                        return Err(at("`user` needs a username".into()));
                    }
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let rule = rule(rest, word == "pattern").map_err(at)?;
                    match (word, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, None) => acl.anonymous.push(rule),
                        (_, Some(u)) => acl.users.entry(u.clone()).or_default().push(rule),
                    }
                }
                other => {
                    return Err(at(format!(
                        "`{other}` is not an ACL line (use `user`, `topic` or `pattern`)"
                    )))
                }
            }
        }
        // Denials are looked at first, as Mosquitto does.
        let deny_first = |rules: &mut Vec<Rule>| rules.sort_by_key(|r| !r.deny);
        deny_first(&mut acl.anonymous);
        deny_first(&mut acl.patterns);
        acl.users.values_mut().for_each(deny_first);
        Ok(acl)
    }

    /// May `who` do `access` on `topic`?
    pub fn allows(&self, who: Who<'_>, topic: &str, access: Access) -> bool {
        let own = match who.username {
            None => Some(&self.anonymous),
            Some(u) => self.users.get(u),
        };
        for r in own.into_iter().flatten() {
            if r.matches(topic, who) {
                if r.deny {
                    return false;
                }
                if r.grants(access) {
                    return true;
                }
            }
        }
        if self.patterns.is_empty() {
            return false;
        }
        let dangerous = |s: &str| s.contains(['+', '#']);
        if who.username.is_some_and(dangerous) || dangerous(who.client_id) {
            return false;
        }
        for r in &self.patterns {
            if r.uses_user && who.username.is_none() {
                continue;
            }
            if r.matches(topic, who) {
                if r.deny {
                    return false;
                }
                if r.grants(access) {
                    return true;
                }
            }
        }
        false
    }
}

/// `[read|write|readwrite|deny] FILTER` of a `topic` or `pattern` line.
fn rule(text: &str, pattern: bool) -> Result<Rule, String> {
    // One word: the filter, for reading and writing. Two or more: the
    // access, then the filter (which may hold spaces).
    let (access, filter) = match text.split_once(' ') {
        None if text.is_empty() => return Err("an empty topic".into()),
        None => ("readwrite", text),
        Some((access, filter)) => {
            if !matches!(access, "read" | "write" | "readwrite" | "deny") {
                return Err(format!(
                    "`{access}` is not an access (use read, write, readwrite or deny)"
                ));
            }
            (access, filter.trim())
        }
    };
    TopicFilter::parse(filter).map_err(|e| format!("not a topic filter: {e}"))?;
    let mut uses_user = false;
    let levels = filter
        .split('/')
        .map(|l| match l {
            "+" => Level::Plus,
            "#" => Level::Hash,
            _ if pattern && (l.contains("%u") || l.contains("%c")) => {
                uses_user |= l.contains("%u");
                Level::Template(pieces(l))
            }
            _ => Level::Exact(l.to_string()),
        })
        .collect();
    Ok(Rule {
        deny: access == "deny",
        read: matches!(access, "read" | "readwrite"),
        write: matches!(access, "write" | "readwrite"),
        dollar: filter.starts_with('$'),
        levels,
        uses_user,
    })
}

/// `dev-%c` → [Text("dev-"), Client].
fn pieces(level: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut rest = level;
    while let Some(at) = rest.find('%') {
        let (before, from) = rest.split_at(at);
        let piece = if from.starts_with("%u") {
            Some(Piece::User)
        } else if from.starts_with("%c") {
            Some(Piece::Client)
        } else {
            None
        };
        match piece {
            Some(p) => {
                if !before.is_empty() {
                    out.push(Piece::Text(before.to_string()));
                }
                out.push(p);
                rest = from.get(2..).unwrap_or_default();
            }
            None => {
                out.push(Piece::Text(format!("{before}%")));
                rest = from.get(1..).unwrap_or_default();
            }
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_string()));
    }
    out
}

impl Rule {
    fn grants(&self, access: Access) -> bool {
        match access {
            Access::Read => self.read,
            Access::Write => self.write,
        }
    }

    fn matches(&self, topic: &str, who: Who<'_>) -> bool {
        // `$SYS/...` and the like match only rules that start with `$`.
        if topic.starts_with('$') && !self.dollar {
            return false;
        }
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Hash => return true,
                Level::Plus => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Level::Exact(e) => {
                    if parts.next() != Some(e.as_str()) {
                        return false;
                    }
                }
                Level::Template(pieces) => {
                    let Some(part) = parts.next() else {
                        return false;
                    };
                    if !fills(pieces, part, who) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// Does the template level, filled in for `who`, equal `part`? Compared
/// piece by piece, without building the string.
fn fills(pieces: &[Piece], part: &str, who: Who<'_>) -> bool {
    let mut rest = part;
    for p in pieces {
        let text = match p {
            Piece::Text(t) => t.as_str(),
            Piece::User => match who.username {
                Some(u) => u,
                None => return false,
            },
            Piece::Client => who.client_id,
        };
        match rest.strip_prefix(text) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str) -> Acl {
        Acl::parse(text, Path::new("acl")).expect("valid")
    }

    fn who<'a>(user: Option<&'a str>, id: &'a str) -> Who<'a> {
        Who {
            username: user,
            client_id: id,
        }
    }

    #[test]
    fn patterns_give_each_client_its_own_place() {
        let a = acl("pattern write sensors/%u/telemetry\npattern read devices/%u/#\n");
        let s1 = who(Some("sensor1"), "c1");
        assert!(a.allows(s1, "sensors/sensor1/telemetry", Access::Write));
        assert!(!a.allows(s1, "sensors/sensor1/telemetry", Access::Read));
        assert!(!a.allows(s1, "sensors/other/telemetry", Access::Write));
        assert!(a.allows(s1, "devices/sensor1/rpc/request/1", Access::Read));
        assert!(!a.allows(s1, "devices/other/rpc/request/1", Access::Read));
        // No username: %u patterns do not apply.
        assert!(!a.allows(who(None, "c1"), "sensors//telemetry", Access::Write));
    }

    #[test]
    fn wildcards_and_slashes_in_names_gain_nothing() {
        let a = acl("pattern write sensors/%c/telemetry\npattern write up/%u\n");
        for id in ["+", "#", "a+", "x#"] {
            assert!(!a.allows(
                who(None, id),
                &format!("sensors/{id}/telemetry"),
                Access::Write
            ));
            assert!(!a.allows(who(None, id), "sensors/anything/telemetry", Access::Write));
        }
        assert!(!a.allows(who(Some("#"), "c"), "up/x", Access::Write));
        // `a/b` is one name, not two levels.
        assert!(!a.allows(who(None, "a/b"), "sensors/a/b/telemetry", Access::Write));
        assert!(a.allows(who(None, "ok"), "sensors/ok/telemetry", Access::Write));
    }

    #[test]
    fn user_sections_anonymous_section_and_deny_first() {
        let a = acl(
            "topic read public/#\n\nuser alice\ntopic readwrite home/#\ntopic deny home/secret\n# comment\nuser bob\ntopic home/bob\n",
        );
        assert!(a.allows(who(None, "x"), "public/news", Access::Read));
        assert!(!a.allows(who(None, "x"), "public/news", Access::Write));
        assert!(!a.allows(who(Some("alice"), "x"), "public/news", Access::Read));
        assert!(a.allows(who(Some("alice"), "x"), "home/kitchen", Access::Write));
        assert!(!a.allows(who(Some("alice"), "x"), "home/secret", Access::Read));
        assert!(a.allows(who(Some("bob"), "x"), "home/bob", Access::Read));
        assert!(!a.allows(who(Some("carol"), "x"), "home/bob", Access::Read));
        // `#` rules do not reach `$SYS`.
        let b = acl("topic #\n");
        assert!(!b.allows(who(None, "x"), "$SYS/broker/uptime", Access::Read));
        assert!(b.allows(who(None, "x"), "a/b", Access::Read));
    }

    #[test]
    fn bad_lines_are_named() {
        let e = Acl::parse("topic read a/#/b\n", Path::new("/etc/acl")).expect_err("bad");
        assert_eq!(
            (e.line, e.path.display().to_string()),
            (1, "/etc/acl".into())
        );
        let e = Acl::parse("\n\ntopics read x\n", Path::new("a")).expect_err("bad");
        assert_eq!(e.line, 3);
        assert!(e.problem.contains("`topics` is not an ACL line"), "{e}");
        let e = Acl::parse("user\n", Path::new("a")).expect_err("bad");
        assert!(e.problem.contains("needs a username"), "{e}");
        let e = Acl::parse("topic sometimes x\n", Path::new("a")).expect_err("bad");
        assert!(e.problem.contains("`sometimes` is not an access"), "{e}");
    }
}
