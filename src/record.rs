//! The one type that flows upstream, and the clock that stamps it.
//!
//! Every source (the local broker, serial ports, platform uplinks) turns
//! what it hears into [`Record`]s; the outbox stores them; every sink encodes
//! them for its platform. The measurement time `ts` is fixed when the record
//! is made, never when it is sent, so a resend after a crash carries the same
//! timestamp and overwrites itself on platforms that key values by (device,
//! key, ts).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Map, Value};

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
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Telemetry => "telemetry",
            RecordKind::Attributes => "attributes",
            RecordKind::Claim => "claim",
            RecordKind::Rpc => "rpc",
        }
    }

    pub fn parse(s: &str) -> Option<RecordKind> {
        match s {
            "telemetry" => Some(RecordKind::Telemetry),
            "attributes" => Some(RecordKind::Attributes),
            "claim" => Some(RecordKind::Claim),
            "rpc" => Some(RecordKind::Rpc),
            _ => None,
        }
    }
}

/// The gateway clock: milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
}

impl Record {
    /// What the record occupies in the outbox, for the `max_bytes` bound.
    pub fn stored_size(&self) -> u64 {
        (self.payload.len() + self.device.len() + self.topic.len() + self.sink.len() + 48) as u64
    }
}

/// A payload understood as a reading: its own timestamp, if it carries one,
/// and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub ts: Option<i64>,
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
                values: Value::String(String::from_utf8_lossy(payload).into_owned()),
            };
        };
        match value {
            Value::Object(mut obj) => {
                let ts = obj.get("ts").and_then(as_millis);
                if ts.is_none() {
                    return Reading {
                        ts: None,
                        values: Value::Object(obj),
                    };
                }
                obj.remove("ts");
                let values = match obj.remove("values") {
                    Some(v) if obj.is_empty() => v,
                    Some(v) => {
                        obj.insert("values".into(), v);
                        Value::Object(obj)
                    }
                    None => Value::Object(obj),
                };
                Reading { ts, values }
            }
            other => Reading {
                ts: None,
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

fn as_millis(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .filter(|ms| *ms >= 0),
        _ => None,
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
    fn bad_ts_is_a_value() {
        let r = Reading::parse(br#"{"ts":"yesterday","t":1}"#);
        assert_eq!(r.ts, None);
        assert_eq!(r.values, json!({"ts":"yesterday","t":1}));
    }
}
