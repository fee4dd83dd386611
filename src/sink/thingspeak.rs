//! ThingSpeak: one channel per sink, over MQTT at QoS 0 (the only QoS the
//! platform has).
//!
//! A channel takes one update per interval (15 s on a free licence); a
//! faster update is refused ("Requests are too frequent") without a word
//! back over MQTT. So outpost shapes the rate itself: readings whose
//! measurement times fall within one interval, counted from the first of
//! them, become **one** update (latest value per field, or mean, min or
//! max), sent once that interval has closed, with `created_at` = the last
//! reading's time. Updates leave at most one per interval. A backlog after
//! an outage therefore replays at the same pace it was measured (an outage
//! of six hours at 15 s takes six hours to replay), or, with
//! `replay = "latest_only"`, as one update with the latest values.
//!
//! What QoS 0 guarantees here: a record leaves the outbox once the broker
//! has answered a PINGREQ sent after the update was written (so the broker
//! read it; the uplink session deletes rows then, see `uplink.rs`). It does
//! not tell whether ThingSpeak accepted the update (a wrong field, a
//! channel the device may not write).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{check_publish, Platform, Publish, Ready};
use crate::config::sink::{Merge, PublishMode, Replay};
use crate::config::ThingspeakSinkConfig;
use crate::record::{Reading, Record};
use crate::route::{Admit, Refusal};
use crate::sink::session::Settings;
use crate::units::RateSpec;

#[derive(Debug, Clone)]
pub struct Thingspeak {
    topic: String,
    /// `publish = "field"`: the single field's own topic.
    field_topic: Option<String>,
    fields: BTreeMap<String, String>,
    interval_ms: i64,
    merge: Merge,
    replay: Replay,
    /// The second of the last update's `created_at`: the next one goes at
    /// least a second later (ThingSpeak keeps one entry per second).
    last_second: i64,
}

impl Thingspeak {
    pub fn new(cfg: &ThingspeakSinkConfig) -> Thingspeak {
        let field_topic = (cfg.publish == PublishMode::Field)
            .then(|| cfg.fields.values().next().cloned())
            .flatten()
            .map(|f| format!("channels/{}/publish/fields/{f}", cfg.channel_id));
        Thingspeak {
            topic: format!("channels/{}/publish", cfg.channel_id),
            field_topic,
            fields: cfg.fields.clone(),
            interval_ms: cfg.interval.0.as_millis() as i64,
            merge: cfg.merge,
            replay: cfg.replay,
            last_second: i64::MIN,
        }
    }

    pub fn settings(cfg: &ThingspeakSinkConfig) -> Settings {
        Settings::new(cfg.connection(), cfg.client_id.clone())
            .login(Some(cfg.username.clone()), Some(cfg.password.clone()))
            // 100 updates written and not yet confirmed by a ping answer;
            .window(100, MAX_MESSAGE + 64)
    }

    /// One update per interval.
    pub fn rate(cfg: &ThingspeakSinkConfig) -> RateSpec {
        RateSpec::parse(&format!("1:{}", cfg.interval.0.as_secs().max(1))).unwrap_or_default()
    }

    /// The mapped values of a record: field → value.
    fn mapped(&self, r: &Record) -> Vec<(&str, Value)> {
        let Value::Object(values) = Reading::parse(&r.payload).values else {
            return Vec::new();
        };
        values
            .into_iter()
            .filter_map(|(k, v)| self.fields.get(&k).map(|f| (f.as_str(), v)))
            .collect()
    }
}

impl Platform for Thingspeak {
    fn qos(&self) -> rumqttc::QoS {
        rumqttc::QoS::AtMostOnce
    }

    fn admission(&self) -> std::sync::Arc<dyn Admit> {
        std::sync::Arc::new(self.clone())
    }

    fn ready(&self, next: &[&Record], now_ms: i64) -> Ready {
        let Some(first) = next.first() else {
            return Ready::All;
        };
        let end = first.ts.saturating_add(self.interval_ms);
        if now_ms < end {
            return Ready::WaitMs(u64::try_from(end.saturating_sub(now_ms)).unwrap_or(0));
        }
        let until = match self.replay {
            Replay::All => end,
            // Everything already closed goes as one update.
            Replay::LatestOnly => end.max(now_ms.saturating_sub(self.interval_ms)),
        };
        Ready::Count(next.iter().take_while(|r| r.ts < until).count().max(1))
    }

    fn encode(&mut self, records: &[Record]) -> Vec<Publish> {
        let last = records.iter().map(|r| r.ts).max().unwrap_or_default();
        let second = last
            .div_euclid(1000)
            .max(self.last_second.saturating_add(1));
        let out = self.build(records, second);
        if !out.is_empty() {
            self.last_second = second;
        }
        out
    }
}

/// A reading goes if a key of it is mapped to a field and its update fits
/// ThingSpeak's 3000 bytes.
impl Admit for Thingspeak {
    fn admit(&self, r: &Record) -> Result<(), Refusal> {
        if self.mapped(r).is_empty() {
            let keys: Vec<&str> = self.fields.keys().map(String::as_str).collect();
            return Err(Refusal::format(format!(
                "no key of this reading is mapped to a ThingSpeak field (mapped: {})",
                keys.join(", ")
            )));
        }
        for p in self.build(std::slice::from_ref(r), r.ts.div_euclid(1000)) {
            check_publish(&p.topic, p.payload.len(), MAX_MESSAGE + 64)?;
        }
        Ok(())
    }
}

/// ThingSpeak takes messages up to this many bytes.
const MAX_MESSAGE: usize = 3000;

impl Thingspeak {
    /// One update (the interval's readings merged) per call, stamped with
    /// `second` (Unix seconds).
    fn build(&self, records: &[Record], second: i64) -> Vec<Publish> {
        if records.is_empty() {
            return Vec::new();
        }
        // field → values in record order
        let mut per_field: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for r in records {
            for (field, v) in self.mapped(r) {
                per_field.entry(field).or_default().push(v);
            }
        }
        let mut pairs: Vec<(String, String)> = per_field
            .into_iter()
            .filter_map(|(field, values)| {
                merge(self.merge, &values).map(|v| (field.to_string(), v))
            })
            .collect();
        if let Some(topic) = &self.field_topic {
            let value = pairs.pop().map(|(_, v)| v).unwrap_or_default();
            return vec![Publish {
                topic: topic.clone(),
                payload: value.into_bytes(),
                ids: records.iter().map(|r| r.id).collect(),
            }];
        }
        pairs.push(("created_at".into(), created_at(second)));
        let body = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        vec![Publish {
            topic: self.topic.clone(),
            payload: body.into_bytes(),
            ids: records.iter().map(|r| r.id).collect(),
        }]
    }
}

/// One value from an interval's values: numbers per `merge`; anything else
/// (status text, a string) keeps its latest value.
fn merge(how: Merge, values: &[Value]) -> Option<String> {
    let last = values.last()?;
    let numbers: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
    if how == Merge::Latest || numbers.is_empty() {
        return Some(text(last));
    }
    let x = match how {
        Merge::Mean => numbers.iter().sum::<f64>() / numbers.len() as f64,
        Merge::Min => numbers.iter().copied().fold(f64::INFINITY, f64::min),
        Merge::Max => numbers.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Merge::Latest => return Some(text(last)),
    };
    let rounded = (x * 1e6).round() / 1e6;
    Some(text(&serde_json::json!(rounded)))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// UTC to the second in the form ThingSpeak documents:
/// `2026-11-22 09:00:00`.
fn created_at(second: i64) -> String {
    crate::units::utc_text(second, "-", " ", ":")
}

/// `application/x-www-form-urlencoded` for one key or value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;
    use serde_json::json;

    fn cfg(merge: &str, replay: &str) -> ThingspeakSinkConfig {
        toml::from_str(&format!(
            r#"client_id = "c"
username = "u"
password = "p"
channel_id = 123
interval = "15s"
merge = "{merge}"
replay = "{replay}"
fields = {{ temp = "field1", hum = "field2", note = "status" }}"#
        ))
        .expect("config")
    }

    fn rec(id: i64, ts: i64, payload: Value) -> Record {
        Record {
            id,
            sink: "ts".into(),
            device: "d".into(),
            kind: RecordKind::Telemetry,
            ts,
            topic: "t".into(),
            payload: payload.to_string().into_bytes(),
            ts_source: Default::default(),
        }
    }

    #[test]
    fn two_updates_never_share_a_second() {
        let mut ts = Thingspeak::new(&cfg("latest", "all"));
        let t0 = 1_795_000_000_000;
        let a = ts.encode(&[rec(1, t0 + 100, json!({"temp": 1}))]);
        let b = ts.encode(&[rec(2, t0 + 900, json!({"temp": 2}))]);
        let at = |p: &[Publish]| {
            String::from_utf8_lossy(&p[0].payload)
                .rsplit("created_at=")
                .next()
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(at(&a), "2026-11-18+11%3A06%3A40");
        assert_eq!(at(&b), "2026-11-18+11%3A06%3A41", "one second later");
    }

    #[test]
    fn an_interval_waits_until_closed_then_merges_into_one_update() {
        let mut ts = Thingspeak::new(&cfg("latest", "all"));
        let t0 = 1_795_000_000_000;
        let recs = [
            rec(1, t0, json!({"temp": 20.0, "hum": 40})),
            rec(2, t0 + 5_000, json!({"temp": 21.5, "note": "door open"})),
            rec(3, t0 + 16_000, json!({"temp": 30})),
        ];
        let refs: Vec<&Record> = recs.iter().collect();
        assert_eq!(ts.ready(&refs, t0 + 10_000), Ready::WaitMs(5_000));
        assert_eq!(ts.ready(&refs, t0 + 15_000), Ready::Count(2));
        let out = ts.encode(&recs[..2]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "channels/123/publish");
        assert_eq!(out[0].ids, [1, 2]);
        assert_eq!(
            String::from_utf8_lossy(&out[0].payload),
            "field1=21.5&field2=40&status=door+open&created_at=2026-11-18+11%3A06%3A45"
        );
        // latest_only: everything closed goes as one.
        let lo = Thingspeak::new(&cfg("latest", "latest_only"));
        assert_eq!(lo.ready(&refs, t0 + 60_000), Ready::Count(3));
    }

    #[test]
    fn field_mode_publishes_the_one_field_on_its_own_topic() {
        let mut c = cfg("mean", "all");
        c.fields = BTreeMap::from([("temp".to_string(), "field3".to_string())]);
        c.publish = PublishMode::Field;
        let mut ts = Thingspeak::new(&c);
        let out = ts.encode(&[
            rec(1, 0, json!({"temp": 20})),
            rec(2, 1, json!({"temp": 22})),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "channels/123/publish/fields/field3");
        assert_eq!(String::from_utf8_lossy(&out[0].payload), "21");
        assert_eq!(out[0].ids, [1, 2]);
    }

    #[test]
    fn mean_min_max_merge_numbers_and_keep_the_latest_text() {
        let recs = [
            rec(1, 0, json!({"temp": 20, "note": "a"})),
            rec(2, 1, json!({"temp": 23, "note": "b"})),
            rec(3, 2, json!({"temp": 21.5})),
        ];
        let body = |m: &str| {
            String::from_utf8_lossy(&Thingspeak::new(&cfg(m, "all")).encode(&recs)[0].payload)
                .into_owned()
        };
        assert!(
            body("mean").starts_with("field1=21.5&status=b"),
            "{}",
            body("mean")
        );
        assert!(body("min").starts_with("field1=20&"), "{}", body("min"));
        assert!(body("max").starts_with("field1=23&"), "{}", body("max"));
        let ts = Thingspeak::new(&cfg("latest", "all"));
        assert!(ts.admit(&rec(9, 0, json!({"other": 1}))).is_err());
        assert!(ts.admit(&rec(9, 0, json!({"hum": 1}))).is_ok());
        let long = "y".repeat(4000);
        assert_eq!(
            ts.admit(&rec(9, 0, json!({ "note": long })))
                .map_err(|e| e.code),
            Err(0x97)
        );
    }
}
