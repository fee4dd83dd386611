//! Reading a payload without building its tree.
//!
//! [`Reading::parse`] builds a `serde_json::Value` of the whole payload, and
//! the generic MQTT envelope then serializes that tree again. On the path
//! every reading takes (routing, the sink's admission at ingest, encoding
//! at send) that was three trees per reading, and the allocator showed up
//! as the largest cost in the flat-out benchmark. But the envelope only
//! moves the values from one place to another: it needs the `ts` member
//! and where the values begin and end, not a tree.
//!
//! [`Scan`] finds exactly that with `serde_json`'s [`RawValue`]: the JSON is
//! validated (strings, UTF-8, structure) and the values are kept as the
//! sensor wrote them. A payload whose meaning a tree could change is left
//! to [`Reading::parse`], so a scan and a parse always agree on the ts and
//! on what the values are:
//! - numbers a tree cannot hold (exponents, hundreds of digits),
//! - `\u` escapes (lone surrogates are errors in a tree),
//! - nesting deeper than a tree takes,
//! - an object that names a member twice (a tree keeps the last).
//!
//! What may differ is only the spelling: whitespace and number forms stay
//! as sent, and members keep their order.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::{as_millis, Reading};

/// A payload's `ts` and its values, borrowed from the payload.
#[derive(Debug)]
pub struct Scan<'a> {
    /// As [`Reading::ts`].
    pub ts: Option<i64>,
    /// As [`Reading::ts_given`].
    pub ts_given: bool,
    values: Values<'a>,
}

#[derive(Debug)]
enum Values<'a> {
    /// JSON text as the sensor wrote it.
    Raw(&'a str),
    /// An object's members without its `ts`, in their order.
    Members(Vec<(Cow<'a, str>, &'a RawValue)>),
    /// What [`Reading::parse`] made of a payload a scan leaves to it.
    Tree(Value),
}

/// Deeper than this, a payload goes to [`Reading::parse`] (serde_json's
/// tree stops at 128 levels).
const MAX_PLAIN_DEPTH: usize = 100;
/// A number with more digits than this goes to [`Reading::parse`] (past
/// 308 digits a float is out of range).
const MAX_PLAIN_DIGITS: usize = 300;
/// Top-level members checked pairwise for a repeated name; more are
/// checked with a set.
const PAIRWISE: usize = 16;

impl<'a> Scan<'a> {
    pub fn of(payload: &'a [u8]) -> Scan<'a> {
        if plain(payload) {
            if let Some(scan) = scan(payload) {
                return scan;
            }
        }
        let r = Reading::parse(payload);
        Scan {
            ts: r.ts,
            ts_given: r.ts_given,
            values: Values::Tree(r.values),
        }
    }

    /// Appends `{"ts":..,"device":..,"values":..}`, the generic envelope
    /// ([`Reading::envelope`] serialized).
    pub fn write_envelope(&self, ts: i64, device: &str, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail, nor can serializing a str or a Value.
        let _ = write!(out, "{{\"ts\":{ts},\"device\":");
        let _ = serde_json::to_writer(&mut *out, device);
        out.extend_from_slice(b",\"values\":");
        match &self.values {
            Values::Raw(text) => out.extend_from_slice(text.as_bytes()),
            Values::Tree(v) => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
            Values::Members(members) => {
                out.push(b'{');
                for (i, (name, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut *out, name.as_ref());
                    out.push(b':');
                    out.extend_from_slice(value.get().as_bytes());
                }
                out.push(b'}');
            }
        }
        out.push(b'}');
    }
}

/// The elements of a JSON list, each as its own payload; `None` when the
/// payload is not a list. A list a tree would read differently from its
/// text (see the module's notes) is read as a tree.
pub fn elements(payload: &[u8]) -> Option<Vec<Vec<u8>>> {
    if plain(payload) {
        let items: Vec<&RawValue> = serde_json::from_slice(payload).ok()?;
        return Some(items.iter().map(|i| i.get().as_bytes().to_vec()).collect());
    }
    match serde_json::from_slice::<Value>(payload).ok()? {
        // Serializing a Value cannot fail.
        Value::Array(items) => Some(
            items
                .iter()
                .map(|i| serde_json::to_vec(i).unwrap_or_default())
                .collect(),
        ),
        _ => None,
    }
}

/// The scan of a payload [`plain`] found nothing against; `None` when a
/// tree must decide (not JSON, or a member named twice).
fn scan(payload: &[u8]) -> Option<Scan<'_>> {
    let text = std::str::from_utf8(payload)
        .ok()?
        .trim_matches(is_json_space);
    if !text.starts_with('{') {
        let raw: &RawValue = serde_json::from_str(text).ok()?;
        return Some(Scan {
            ts: None,
            ts_given: false,
            values: Values::Raw(raw.get()),
        });
    }
    let Members(mut members) = serde_json::from_str(text).ok()?;
    if repeats_a_name(&members) {
        return None;
    }
    let Some(at) = members.iter().position(|(name, _)| name == "ts") else {
        return Some(Scan {
            ts: None,
            ts_given: false,
            values: Values::Raw(text),
        });
    };
    let ts_text = members.get(at).map_or("", |(_, v)| v.get());
    if !ts_text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        // A `ts` that is not a number is a value like any other.
        return Some(Scan {
            ts: None,
            ts_given: false,
            values: Values::Raw(text),
        });
    }
    let ts = serde_json::from_str::<Value>(ts_text)
        .ok()
        .as_ref()
        .and_then(as_millis);
    members.remove(at);
    let values = match members.as_slice() {
        [(name, v)] if name == "values" => Values::Raw(v.get()),
        _ => Values::Members(members),
    };
    Some(Scan {
        ts,
        ts_given: true,
        values,
    })
}

fn is_json_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn repeats_a_name(members: &[(Cow<'_, str>, &RawValue)]) -> bool {
    if members.len() <= PAIRWISE {
        return members.iter().enumerate().any(|(i, (a, _))| {
            members
                .iter()
                .skip(i.saturating_add(1))
                .any(|(b, _)| a == b)
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(members.len());
    !members.iter().all(|(name, _)| seen.insert(name.as_ref()))
}

/// Does the payload hold nothing a tree would read differently from its
/// text: no exponent, no overlong number, no `\u` escape, no deep nesting?
/// (Looks at the bytes outside strings, and at escapes inside them; whether
/// it is JSON at all is serde_json's to say.)
fn plain(payload: &[u8]) -> bool {
    let (mut depth, mut digits) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    let mut prev = 0u8;
    for &b in payload {
        if in_string {
            if escaped {
                if b == b'u' {
                    return false;
                }
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth = depth.saturating_add(1);
                if depth > MAX_PLAIN_DEPTH {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'e' | b'E' if prev.is_ascii_digit() || prev == b'.' => return false,
            _ => {}
        }
        if b.is_ascii_digit() {
            digits = digits.saturating_add(1);
            if digits > MAX_PLAIN_DIGITS {
                return false;
            }
        } else {
            digits = 0;
        }
        prev = b;
    }
    true
}

/// An object's members as written: names (borrowed when they hold no
/// escape) and raw values.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(Name(name)) = map.next_key()? {
                    members.push((name, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the envelope was made of before: a tree, serialized.
    fn by_tree(payload: &[u8]) -> Value {
        Reading::parse(payload).envelope(42, "dev")
    }

    fn by_scan(payload: &[u8]) -> Value {
        let mut out = Vec::new();
        Scan::of(payload).write_envelope(42, "dev", &mut out);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    fn agree(payload: &[u8]) {
        let (tree, scan) = (Reading::parse(payload), Scan::of(payload));
        assert_eq!(
            (scan.ts, scan.ts_given),
            (tree.ts, tree.ts_given),
            "{}",
            String::from_utf8_lossy(payload)
        );
        assert_eq!(
            by_scan(payload),
            by_tree(payload),
            "{}",
            String::from_utf8_lossy(payload)
        );
    }

    #[test]
    fn the_forms_sensors_send_read_as_a_tree_reads_them() {
        for p in [
            r#"{"temp":21.5,"hum":40}"#,
            r#" { "temp" : 21.5 } "#,
            r#"{"ts":1700000000123,"values":{"t":1}}"#,
            r#"{"ts":1700000000,"t":1,"h":2}"#,
            r#"{"ts":1700000000.25,"t":1}"#,
            r#"{"values":{"t":1},"ts":5,"x":2}"#,
            r#"{"ts":"yesterday","t":1}"#,
            r#"{"ts":-5,"t":1}"#,
            r#"{"ts":9223372036854775807,"v":1}"#,
            r#"{"ts":1700000000123}"#,
            r#"{"t\"q":1,"a\\b":"x\ny"}"#,
            r#"{"nested":{"a":[1,2,{"b":null}]},"ok":true,"no":false}"#,
            "21.5",
            "-3",
            r#""text""#,
            "[1,2,3]",
            "[]",
            "{}",
            "null",
            "21.5 C",
            "{\"t\":",
            "",
            "{\"t\":1} trailing",
        ] {
            agree(p.as_bytes());
        }
        agree(b"21.5 C \xff");
        agree(b"{\"s\":\"\xff\"}");
    }

    #[test]
    fn what_a_tree_would_read_differently_is_left_to_the_tree() {
        for p in [
            r#"{"v":1e400}"#,
            r#"{"v":1E5}"#,
            r#"{"ts":1.7e12,"v":1}"#,
            r#"{"ts":1e30,"v":1}"#,
            r#"{"s":"\ud800"}"#,
            r#"{"s":"\u00e9"}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"ts":1,"ts":"x"}"#,
            r#"{"values":1,"values":{"x":2},"ts":3}"#,
        ] {
            agree(p.as_bytes());
        }
        let long = format!("{{\"v\":{}}}", "9".repeat(400));
        agree(long.as_bytes());
        let deep = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        agree(deep.as_bytes());
        let many: String = (0..40).map(|i| format!("\"k{}\":{i},", i % 30)).collect();
        agree(format!("{{{}\"z\":0}}", many).as_bytes());
    }

    #[test]
    fn values_keep_the_sensors_spelling() {
        let mut out = Vec::new();
        Scan::of(br#"{"ts":1700000000000,"v":21.50}"#).write_envelope(7, "a\"b", &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"{"ts":7,"device":"a\"b","values":{"v":21.50}}"#
        );
    }

    #[test]
    fn lists_split_as_a_tree_splits_them() {
        for p in [
            r#"[{"a":1},{"ts":5,"b":2}]"#,
            r#" [ {"a" : 1} ] "#,
            "[1, 2]",
            "[]",
            r#"[{"v":1e400}]"#,
            r#"[{"v":1e4}]"#,
            r#"[{"s":"\u00e9"}]"#,
            r#"{"a":1}"#,
            "[1,",
        ] {
            let tree = match serde_json::from_str::<Value>(p) {
                Ok(Value::Array(items)) => Some(items),
                _ => None,
            };
            let got = elements(p.as_bytes()).map(|items| {
                items
                    .iter()
                    .map(|i| serde_json::from_slice::<Value>(i).expect("an element is JSON"))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, tree, "{p}");
        }
    }

    /// Property: for random, broken and binary payloads a scan and a tree
    /// agree on the ts and the values, and the envelope is JSON.
    #[test]
    fn any_payload_scans_as_it_parses() {
        let mut rng = fastrand::Rng::with_seed(11);
        let pieces: [&[u8]; 16] = [
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"ts\":",
            b"\"values\":",
            b"1700000000",
            b"1e30",
            b",",
            b"\"",
            b"\\",
            b"\\u00",
            b"\xff\xfe",
            b"\"a\":",
            b"true",
            b" ",
        ];
        for _ in 0..20_000 {
            agree(&crate::record::tests::random_payload(&mut rng, &pieces, 30));
        }
    }
}
