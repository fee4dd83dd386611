//! The Things Stack (TTN): one application, over its MQTT server (3.1.1,
//! QoS 0 only).
//!
//! - **Source:** each uplink on `v3/{app}/devices/{device}/up` becomes a
//!   reading of that device on a local topic (`ttn/{device}/up`), timed by
//!   `received_at`, with the decoded payload's values when the application
//!   has a payload formatter (else `frm_payload`, base64), plus `f_port`,
//!   `f_cnt` and the best `rssi` and `snr` among the gateways that heard
//!   it. Routes take it from there, e.g. LoRaWAN sensors to ThingsBoard,
//!   buffered while ThingsBoard is unreachable. Other events (join,
//!   downlink acks, ...) can be taken the same way.
//! - **Sink:** a record routed here is a downlink request, e.g. published on
//!   `ttn/{device}/down`: `{"f_port": 1..233, "payload_hex" |
//!   "payload_base64" | "frm_payload", "priority", "confirmed", "replace",
//!   "correlation_ids"}` (the ids are passed through), or `{"clear": true}`
//!   to empty the device's queue (`{"downlinks":[]}` on `.../down/replace`).
//!   It becomes `{"downlinks":[...]}` on `.../down/push` (or
//!   `.../down/replace`). A request that cannot be valid (an f_port outside
//!   1..=233, a payload that is not hex or base64) goes to the dead letters
//!   with the reason.
//!
//! `{app}` is `{application id}@{tenant id}`, or the application id alone on
//! The Things Stack Open Source.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio_util::sync::CancellationToken;

use crate::source::broker::Broker;
use crate::source::Ingest;
use crate::topic::{captures, fill, DeviceTopics};

/// LoRaWAN devices seen on this application (the most recent ones).
pub type Known = Arc<Mutex<Recent<()>>>;

/// LoRaWAN devices remembered per application.
pub const MAX_KNOWN: usize = 10_000;

/// A fresh, empty [`Known`].
pub fn known() -> Known {
    Arc::new(Mutex::new(Recent::new(MAX_KNOWN)))
}
use serde_json::{json, Map, Value};

use super::session::Settings;
use super::{check_publish, Action, Platform, Publish, SessionStart};
use crate::config::TtnSinkConfig;
use crate::recent::Recent;
use crate::record::{Reading, Record};
use crate::route::{Admit, Refusal};

pub struct Ttn {
    /// `app1@ttn` or `app1`.
    app: String,
    /// Devices that have sent an uplink: RPC to them becomes a downlink.
    known: Known,
    uplink_topic: String,
    events: Vec<String>,
    event_topic: String,
}

const PRIORITIES: &[&str] = &[
    "LOWEST",
    "LOW",
    "BELOW_NORMAL",
    "NORMAL",
    "ABOVE_NORMAL",
    "HIGH",
    "HIGHEST",
];

impl Ttn {
    pub fn new(cfg: &TtnSinkConfig, known: Known) -> Ttn {
        Ttn {
            app: app_id(cfg),
            known,
            uplink_topic: cfg.uplink_topic.clone(),
            events: cfg.events.clone(),
            event_topic: cfg.event_topic.clone(),
        }
    }

    pub fn settings(cfg: &TtnSinkConfig) -> Settings {
        Settings::new(
            cfg.connection(),
            format!("outpost-{:08x}", fastrand::u32(..)),
        )
        .login(Some(app_id(cfg)), Some(cfg.api_key.clone()))
        .window(100, MAX_PACKET)
    }

    /// `v3/{app}/devices/{device}/{event}` → (device, event).
    fn parse_topic<'a>(&self, topic: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = topic.strip_prefix("v3/")?.strip_prefix(self.app.as_str())?;
        let rest = rest.strip_prefix("/devices/")?;
        rest.split_once('/')
    }
}

fn app_id(cfg: &TtnSinkConfig) -> String {
    match &cfg.tenant_id {
        Some(t) => format!("{}@{t}", cfg.application_id),
        None => cfg.application_id.clone(),
    }
}

/// An uplink message as a reading: `(ts ms, values)`.
pub fn uplink_reading(msg: &Value) -> Option<(Option<i64>, Map<String, Value>)> {
    let up = msg.get("uplink_message")?;
    let mut values = match up.get("decoded_payload") {
        Some(Value::Object(m)) if !m.is_empty() => m.clone(),
        _ => {
            let mut m = Map::new();
            if let Some(p) = up.get("frm_payload") {
                m.insert("frm_payload".into(), p.clone());
            }
            m
        }
    };
    for k in ["f_port", "f_cnt"] {
        if let Some(v) = up.get(k) {
            values.insert(k.into(), v.clone());
        }
    }
    let meta = up
        .get("rx_metadata")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let best = |k: &str| {
        meta.iter()
            .filter_map(|g| g.get(k).and_then(Value::as_f64))
            .fold(None, |best: Option<f64>, x| {
                Some(best.map_or(x, |b| b.max(x)))
            })
    };
    for k in ["rssi", "snr"] {
        if let Some(x) = best(k) {
            values.insert(k.into(), json!(x));
        }
    }
    let ts = msg
        .get("received_at")
        .or_else(|| up.get("received_at"))
        .and_then(Value::as_str)
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64);
    Some((ts, values))
}

/// A downlink request as the downlinks to send and whether they replace the
/// device's queue. `{"clear": true}` replaces the queue with nothing (TTN
/// clears it).
pub fn downlink_request(payload: &[u8]) -> Result<(Vec<Value>, bool), String> {
    if let Value::Object(m) = Reading::parse(payload).values {
        if m.get("clear").and_then(Value::as_bool) == Some(true) {
            if m.len() > 1 {
                return Err("a clear request carries nothing else".into());
            }
            return Ok((Vec::new(), true));
        }
    }
    downlink(payload).map(|(d, replace)| (vec![d], replace))
}

/// A downlink request as TTN's downlink object, or why it cannot be one.
pub fn downlink(payload: &[u8]) -> Result<(Value, bool), String> {
    let req = match Reading::parse(payload).values {
        Value::Object(m) => m,
        _ => return Err("a downlink request is a JSON object with f_port and a payload".into()),
    };
    let f_port = req
        .get("f_port")
        .and_then(Value::as_i64)
        .ok_or("f_port is missing (1..=233)")?;
    if !(1..=233).contains(&f_port) {
        return Err(format!("f_port {f_port} is outside 1..=233"));
    }
    let bytes = if let Some(hex) = req.get("payload_hex").and_then(Value::as_str) {
        decode_hex(hex)?
    } else if let Some(b64) = req
        .get("payload_base64")
        .or_else(|| req.get("frm_payload"))
        .and_then(Value::as_str)
    {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("the payload is not base64: {e}"))?
    } else {
        return Err("no payload: give payload_hex, payload_base64 or frm_payload".into());
    };
    let mut d = Map::new();
    d.insert("f_port".into(), json!(f_port));
    d.insert(
        "frm_payload".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
    );
    if let Some(p) = req.get("priority") {
        let p = p.as_str().unwrap_or_default();
        if !PRIORITIES.contains(&p) {
            return Err(format!(
                "priority `{p}` is not one of {}",
                PRIORITIES.join(", ")
            ));
        }
        d.insert("priority".into(), json!(p));
    }
    if let Some(c) = req.get("confirmed") {
        d.insert(
            "confirmed".into(),
            json!(c.as_bool().ok_or("confirmed is true or false")?),
        );
    }
    if let Some(ids) = req.get("correlation_ids") {
        // Passed through, so the application can match TTN's events
        // (downlink ack, sent, failed) to its request.
        let ok = ids
            .as_array()
            .is_some_and(|a| a.len() <= 64 && a.iter().all(Value::is_string));
        if !ok {
            return Err("correlation_ids is a list of strings (64 at most)".into());
        }
        d.insert("correlation_ids".into(), ids.clone());
    }
    let replace = req.get("replace").and_then(Value::as_bool).unwrap_or(false);
    Ok((Value::Object(d), replace))
}

/// `"BE EF"` → `[0xBE, 0xEF]`; whitespace between digits is ignored.
fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err("payload_hex has an odd number of digits".into());
    }
    let shown: String = s.chars().take(64).collect();
    digits
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => match (hi.to_digit(16), lo.to_digit(16)) {
                (Some(hi), Some(lo)) => u8::try_from(hi << 4 | lo).ok(),
                _ => None,
            },
            _ => None,
        })
        .map(|b| b.ok_or_else(|| format!("payload_hex `{shown}` is not hexadecimal")))
        .collect()
}

/// A downlink request goes if it is valid and its device id can be a
/// topic level; its message fits the session's packet limit.
struct TtnAdmit {
    app: String,
}

impl Admit for TtnAdmit {
    fn admit(&self, r: &Record) -> Result<(), Refusal> {
        if r.device.contains(['/', '+', '#']) {
            return Err(Refusal::topic(
                "a LoRaWAN device id with `/`, `+` or `#` cannot be a topic level",
            ));
        }
        let (d, replace) = downlink_request(&r.payload).map_err(Refusal::format)?;
        let p = downlink_publish(&self.app, r, &d, replace);
        check_publish(&p.topic, p.payload.len(), MAX_PACKET)
    }
}

/// The session's packet limit.
const MAX_PACKET: usize = 256 * 1024;

fn downlink_publish(app: &str, r: &Record, d: &[Value], replace: bool) -> Publish {
    let verb = if replace { "replace" } else { "push" };
    Publish {
        topic: format!("v3/{app}/devices/{}/down/{verb}", r.device),
        payload: json!({ "downlinks": d }).to_string().into_bytes(),
        ids: vec![r.id],
    }
}

impl Platform for Ttn {
    fn qos(&self) -> rumqttc::QoS {
        rumqttc::QoS::AtMostOnce
    }

    fn session_start(&mut self) -> SessionStart {
        let mut subscribe = vec![format!("v3/{}/devices/+/up", self.app)];
        subscribe.extend(
            self.events
                .iter()
                .map(|e| format!("v3/{}/devices/+/{e}", self.app)),
        );
        SessionStart {
            subscribe,
            publish: Vec::new(),
        }
    }

    fn admission(&self) -> Arc<dyn Admit> {
        Arc::new(TtnAdmit {
            app: self.app.clone(),
        })
    }

    fn encode(&mut self, records: &[Record]) -> Vec<Publish> {
        records
            .iter()
            .filter_map(|r| {
                let (d, replace) = downlink_request(&r.payload).ok()?;
                Some(downlink_publish(&self.app, r, &d, replace))
            })
            .collect()
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Vec<Action> {
        let Some((device, event)) = self.parse_topic(topic) else {
            return Vec::new();
        };
        let Ok(msg) = serde_json::from_slice::<Value>(payload) else {
            tracing::warn!(topic, "TTN message is not JSON; skipped");
            return Vec::new();
        };
        if let Ok(mut k) = self.known.lock() {
            k.entry(device, || ());
        }
        let (local, reading) = if event == "up" {
            let Some((ts, values)) = uplink_reading(&msg) else {
                tracing::warn!(topic, "TTN uplink without uplink_message; skipped");
                return Vec::new();
            };
            let mut r = Map::new();
            if let Some(ts) = ts {
                r.insert("ts".into(), json!(ts));
            }
            r.insert("values".into(), Value::Object(values));
            (
                self.uplink_topic.replace("{device}", device),
                Value::Object(r),
            )
        } else if self.events.iter().any(|e| e == event) {
            (
                self.event_topic
                    .replace("{device}", device)
                    .replace("{event}", event),
                msg,
            )
        } else {
            return Vec::new();
        };
        vec![Action::Ingest {
            topic: local,
            payload: reading.to_string().into_bytes(),
        }]
    }
}

/// Server-side RPC to a known LoRaWAN device (ThingsBoard → local RPC
/// topic) becomes a downlink request on `downlink_topic`, checked first; the
/// RPC is answered at once: `{"queued": true, ...}` or `{"error": ...}`.
/// RPC to other devices is left to them.
pub async fn rpc_bridge(
    broker: Broker,
    topics: DeviceTopics,
    downlink_topic: String,
    known: Known,
    ingest: Ingest,
    shutdown: CancellationToken,
) {
    let mut client = broker.client(256);
    if let Err(e) = client.subscribe(&fill(&topics.rpc_request, "+", "+")) {
        tracing::error!(error = %e, "RPC requests for LoRaWAN devices cannot be subscribed");
        return;
    }
    loop {
        let m = tokio::select! {
            m = client.recv() => match m {
                Some(m) => m,
                None => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let Some((device, id)) = captures(&topics.rpc_request, &m.topic) else {
            continue;
        };
        if !known.lock().is_ok_and(|k| k.contains(&device)) {
            continue;
        }
        let request: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        let params = request.get("params").cloned().unwrap_or(Value::Null);
        let body = serde_json::to_vec(&params).unwrap_or_default();
        let answer = match downlink_request(&body) {
            Ok((d, _)) => {
                let topic = downlink_topic.replace("{device}", &device);
                match ingest.submit(&topic, &body).await {
                    Ok(n) if n > 0 && d.is_empty() => json!({"queued": true, "clear": true}),
                    Ok(n) if n > 0 => {
                        json!({"queued": true, "f_port": d.first().and_then(|d| d.get("f_port"))})
                    }
                    Ok(_) => json!({"error": format!("no route takes {topic} to this sink")}),
                    Err(e) => json!({"error": e.to_string()}),
                }
            }
            Err(e) => json!({"error": e}),
        };
        client.publish(
            &fill(&topics.rpc_response, &device, &id),
            answer.to_string().into_bytes(),
            false,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uplink_becomes_values_with_metadata_and_its_time() {
        let msg = json!({
            "end_device_ids": {"device_id": "dev1"},
            "received_at": "2019-01-29T13:02:35.120Z",
            "uplink_message": {
                "f_port": 15, "f_cnt": 7, "frm_payload": "VGVtcGVyYXR1cmUgPSAwLjA=",
                "rx_metadata": [{"rssi": -35, "snr": 5}, {"rssi": -90, "snr": 9.5}]
            }
        });
        let (ts, values) = uplink_reading(&msg).expect("uplink");
        assert_eq!(ts, Some(1_548_766_955_120));
        assert_eq!(
            Value::Object(values),
            json!({"frm_payload": "VGVtcGVyYXR1cmUgPSAwLjA=", "f_port": 15, "f_cnt": 7, "rssi": -35.0, "snr": 9.5})
        );
    }

    #[test]
    fn correlation_ids_pass_through_and_clear_empties_the_queue() {
        let (d, replace) =
            downlink_request(br#"{"f_port":2,"payload_hex":"01","correlation_ids":["app:req-7"]}"#)
                .expect("ok");
        assert!(!replace);
        assert_eq!(d[0]["correlation_ids"], json!(["app:req-7"]));
        assert!(
            downlink_request(br#"{"f_port":2,"payload_hex":"01","correlation_ids":[1]}"#).is_err()
        );
        let (d, replace) = downlink_request(br#"{"clear":true}"#).expect("clear");
        assert!(d.is_empty() && replace);
        let r = Record {
            id: 1,
            sink: "ttn".into(),
            device: "dev1".into(),
            kind: crate::record::RecordKind::Telemetry,
            ts: 0,
            topic: "ttn/dev1/down".into(),
            payload: br#"{"clear":true}"#.to_vec(),
            ts_source: Default::default(),
        };
        let p = downlink_publish("app1@ttn", &r, &d, replace);
        assert_eq!(p.topic, "v3/app1@ttn/devices/dev1/down/replace");
        assert_eq!(String::from_utf8_lossy(&p.payload), r#"{"downlinks":[]}"#);
        assert!(downlink_request(br#"{"clear":true,"f_port":1}"#).is_err());
    }

    #[test]
    fn downlink_requests_are_checked_and_encoded() {
        let (d, replace) =
            downlink(br#"{"f_port":15,"payload_hex":"BE EF","priority":"NORMAL"}"#).expect("ok");
        assert_eq!(
            d,
            json!({"f_port": 15, "frm_payload": "vu8=", "priority": "NORMAL"})
        );
        assert!(!replace);
        assert_eq!(
            downlink(br#"{"f_port":234,"frm_payload":"vu8="}"#),
            Err("f_port 234 is outside 1..=233".into())
        );
        assert!(downlink(br#"{"f_port":1,"payload_hex":"XYZ"}"#)
            .unwrap_err()
            .contains("odd number"));
        // Not ASCII: refused with the reason, never a panic.
        for hex in ["é0", "0é", "ééé", "€€", "0\u{0}"] {
            let req = json!({"f_port": 1, "payload_hex": hex}).to_string();
            assert!(downlink(req.as_bytes()).is_err(), "{hex}");
        }
        assert!(downlink(br#"{"f_port":1,"payload_base64":"!!"}"#)
            .unwrap_err()
            .contains("not base64"));
        assert!(
            downlink(br#"{"f_port":1,"frm_payload":"vu8=","priority":"URGENT"}"#)
                .unwrap_err()
                .contains("priority")
        );
    }
}
