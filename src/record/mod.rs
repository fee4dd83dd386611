//! The one type that flows upstream, and the clock that stamps it.
//!
//! Every source (the local broker, serial ports, platform uplinks) turns
//! what it hears into [`Record`]s; the outbox stores them; every sink encodes
//! them for its platform. The measurement time `ts` is fixed when the record
//! is made, never when it is sent, so a resend after a crash carries the same
//! timestamp and overwrites itself on platforms that key values by (device,
//! key, ts).

mod scan;

use serde::Deserialize;
use serde_json::{Map, Value};

pub use scan::{elements, Scan};

/// Longest device name, in bytes.
pub const MAX_DEVICE_NAME: usize = 256;

/// Why `name` cannot be a device name anywhere, if it cannot: empty, longer
/// than [`MAX_DEVICE_NAME`] bytes, or with control characters (NUL, line
/// breaks), which no platform takes and no log shows honestly.
pub fn device_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("an empty device name".into());
    }
    if name.len() > MAX_DEVICE_NAME {
        return Some(format!(
            "a device name of {} bytes (at most {MAX_DEVICE_NAME})",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Some("a device name with control characters (NUL, line breaks, ...)".into());
    }
    None
}

/// What a record is to its platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Telemetry,
    /// Client attributes of the device.
    Attributes,
    /// A device claiming request (`{"secretKey":..,"durationMs":..}`).
    Claim,
    /// A client-side RPC request (`{"method":..,"params":..}`); the local
    /// topic's last level is the request id, and the answer is published on
    /// the same topic with `request` replaced by `response`.
    Rpc,
    /// A device asks for its attribute values
    /// (`{"clientKeys":"a","sharedKeys":"b"}`); the request id and the
    /// answer's topic work as for [`RecordKind::Rpc`].
    AttributesRequest,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Telemetry => "telemetry",
            RecordKind::Attributes => "attributes",
            RecordKind::Claim => "claim",
            RecordKind::Rpc => "rpc",
            RecordKind::AttributesRequest => "attributes_request",
        }
    }

    pub fn parse(s: &str) -> Option<RecordKind> {
        match s {
            "telemetry" => Some(RecordKind::Telemetry),
            "attributes" => Some(RecordKind::Attributes),
            "claim" => Some(RecordKind::Claim),
            "rpc" => Some(RecordKind::Rpc),
            "attributes_request" => Some(RecordKind::AttributesRequest),
            _ => None,
        }
    }
}

/// The wall clock: milliseconds since the Unix epoch. A timestamp, never
/// an age (ages come from [`crate::clock::mono_ms`]).
pub fn now_ms() -> i64 {
    crate::clock::wall_ms()
}

/// Where a record's `ts` came from, and what became of it since.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TsSource {
    /// From the payload, or stamped while the wall clock was trusted.
    #[default]
    Trusted,
    /// Stamped by outpost while the wall clock was not trusted; `offset`
    /// is the wall clock minus outpost's clock at that moment
    /// ([`crate::clock::Now::offset`]).
    Provisional { offset: i64 },
    /// Was provisional; corrected by the step the wall clock made since,
    /// before it left.
    Corrected,
    /// Was provisional in an earlier run of outpost: corrected as if outpost
    /// had been down for no time (that time is unknown), so it may be late
    /// by as long as outpost was down.
    Estimated,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Row id in the outbox; 0 until stored.
    pub id: i64,
    pub sink: String,
    pub device: String,
    pub kind: RecordKind,
    /// Measurement time, milliseconds since the Unix epoch.
    pub ts: i64,
    /// The local topic the reading arrived on (empty for non-MQTT sources).
    pub topic: String,
    /// The payload as the sensor sent it.
    pub payload: Vec<u8>,
    /// Whether `ts` can be trusted (see [`TsSource`]).
    pub ts_source: TsSource,
}

impl Record {
    /// What the record occupies in the outbox, for the `max_bytes` bound.
    pub fn stored_size(&self) -> u64 {
        [
            self.payload.len(),
            self.device.len(),
            self.topic.len(),
            self.sink.len(),
            48,
        ]
        .iter()
        .fold(0u64, |sum, n| sum.saturating_add(*n as u64))
    }
}

/// A payload understood as a reading: its own timestamp, if it carries one,
/// and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub ts: Option<i64>,
    /// The payload gave a numeric `ts`, usable or not (one that is not is
    /// dropped from the values and the reading stamped at ingest).
    pub ts_given: bool,
    pub values: Value,
}

impl Reading {
    /// Reads a payload the way sensors send them:
    /// - `{"ts": 1700000000000, "values": {...}}` (ThingsBoard's form),
    /// - `{"ts": 1700000000000, "temp": 21.5}` (ts beside the values),
    /// - any other JSON (`{"temp": 21.5}`, `21.5`, `[...]`) as the values,
    /// - anything that is not JSON as a string value (never an error).
    pub fn parse(payload: &[u8]) -> Reading {
        let Ok(value) = serde_json::from_slice::<Value>(payload) else {
            return Reading {
                ts: None,
                ts_given: false,
                values: Value::String(String::from_utf8_lossy(payload).into_owned()),
            };
        };
        match value {
            Value::Object(mut obj) => {
                // A `ts` that is not a number is a value like any other.
                if !obj.get("ts").is_some_and(Value::is_number) {
                    return Reading {
                        ts: None,
                        ts_given: false,
                        values: Value::Object(obj),
                    };
                }
                let ts = obj.remove("ts").as_ref().and_then(as_millis);
                let values = match obj.remove("values") {
                    Some(v) if obj.is_empty() => v,
                    Some(v) => {
                        obj.insert("values".into(), v);
                        Value::Object(obj)
                    }
                    None => Value::Object(obj),
                };
                Reading {
                    ts,
                    ts_given: true,
                    values,
                }
            }
            other => Reading {
                ts: None,
                ts_given: false,
                values: other,
            },
        }
    }

    /// The generic envelope sent to plain MQTT brokers.
    pub fn envelope(&self, ts: i64, device: &str) -> Value {
        let mut m = Map::new();
        m.insert("ts".into(), Value::from(ts));
        m.insert("device".into(), Value::from(device));
        m.insert("values".into(), self.values.clone());
        Value::Object(m)
    }
}

/// Unix time in seconds from 2001-09-09 (10 digits) up to 2286: read as
/// seconds, the rest as milliseconds.
const SECONDS_UP_TO: f64 = 1e10;
const SECONDS_FROM: f64 = 1e9;

/// A payload's `ts` in milliseconds: milliseconds as they are, 10-digit
/// Unix seconds (with or without a fraction) converted. `None` when it is
/// not a number that fits (negative, NaN, beyond i64). Whether the time is
/// plausible is the router's question.
pub fn as_millis(v: &Value) -> Option<i64> {
    let Value::Number(n) = v else { return None };
    let x = n.as_f64().filter(|f| f.is_finite())?;
    let ms = if (SECONDS_FROM..SECONDS_UP_TO).contains(&x) {
        x * 1000.0
    } else {
        x
    };
    // i64::MAX as f64 rounds up to 2^63, which does not fit.
    if !(0.0..9.2e18).contains(&ms) {
        return None;
    }
    // An integer given as such keeps every digit.
    match n.as_i64() {
        Some(i) if x == ms => Some(i),
        _ => Some(ms.round() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn thingsboard_form() {
        let r = Reading::parse(br#"{"ts":1700000000123,"values":{"t":1}}"#);
        assert_eq!(r.ts, Some(1_700_000_000_123));
        assert_eq!(r.values, json!({"t":1}));
    }

    #[test]
    fn ts_beside_values() {
        let r = Reading::parse(br#"{"ts":5,"t":1,"h":2}"#);
        assert_eq!(r.ts, Some(5));
        assert_eq!(r.values, json!({"t":1,"h":2}));
    }

    #[test]
    fn no_ts() {
        let r = Reading::parse(br#"{"t":1}"#);
        assert_eq!(r.ts, None);
        assert_eq!(r.values, json!({"t":1}));
    }

    #[test]
    fn not_json_is_a_string() {
        let r = Reading::parse(b"21.5 C \xff");
        assert_eq!(r.ts, None);
        assert_eq!(r.values, json!("21.5 C \u{fffd}"));
    }

    #[test]
    fn seconds_are_converted_and_what_does_not_fit_is_not_a_ts() {
        let ts = |t: &str| Reading::parse(format!("{{\"ts\":{t},\"v\":1}}").as_bytes()).ts;
        assert_eq!(ts("1700000000"), Some(1_700_000_000_000));
        assert_eq!(ts("1700000000.25"), Some(1_700_000_000_250));
        assert_eq!(ts("1700000000123"), Some(1_700_000_000_123));
        assert_eq!(ts("9223372036854775807"), None);
        assert_eq!(ts("1e30"), None);
        // A numeric ts that does not fit is still the reading's time field:
        // not kept among the values.
        let r = Reading::parse(br#"{"ts":1e30,"v":1}"#);
        assert!(r.ts_given && r.ts.is_none());
        assert_eq!(r.values, json!({"v":1}));
        assert_eq!(ts("-5"), None);
        assert_eq!(ts("0"), Some(0), "a number, left to the router to judge");
    }

    #[test]
    fn any_number_parses_without_panic() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..20_000 {
            let v = match rng.u8(0..4) {
                0 => Value::from(rng.i64(..)),
                1 => Value::from(rng.u64(..)),
                2 => Value::from(rng.f64() * 10f64.powi(rng.i32(-5..40))),
                _ => Value::from(-rng.f64() * 1e20),
            };
            if let Some(ms) = as_millis(&v) {
                assert!(ms >= 0, "{v} -> {ms}");
            }
        }
    }

    /// Up to `most` parts, each one of `pieces` or a random byte.
    pub(crate) fn random_payload(
        rng: &mut fastrand::Rng,
        pieces: &[&[u8]],
        most: usize,
    ) -> Vec<u8> {
        let mut p = Vec::new();
        for _ in 0..rng.usize(0..most) {
            match pieces.get(rng.usize(..pieces.len().saturating_mul(2))) {
                Some(piece) => p.extend_from_slice(piece),
                None => p.push(rng.u8(..)),
            }
        }
        p
    }

    /// Property: any bytes parse (as JSON or as a string value), and what
    /// parses re-encodes as an envelope, for random, broken, deep and
    /// binary payloads.
    #[test]
    fn any_payload_parses_and_encodes() {
        let mut rng = fastrand::Rng::with_seed(7);
        let pieces: [&[u8]; 10] = [
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"ts\":",
            b"1e30",
            b",",
            b"\"",
            b"\\",
            b"\xff\xfe",
        ];
        for _ in 0..20_000 {
            let p = random_payload(&mut rng, &pieces, 40);
            let r = Reading::parse(&p);
            assert!(r.ts.map_or(true, |t| t >= 0));
            assert!(serde_json::to_vec(&r.envelope(1, "d")).is_ok());
        }
        // 10,000 nested objects: past serde_json's depth limit, so a string.
        let deep = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        let r = Reading::parse(deep.as_bytes());
        assert!(r.values.is_string());
    }

    #[test]
    fn bad_ts_is_a_value() {
        let r = Reading::parse(br#"{"ts":"yesterday","t":1}"#);
        assert_eq!(r.ts, None);
        assert_eq!(r.values, json!({"ts":"yesterday","t":1}));
    }
}
