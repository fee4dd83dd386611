//! thethings.iO: one thing per sink.
//!
//! A thing is addressed by its thing token, which sits in the topic
//! (`v2/things/{token}`), so the token is a secret that never appears in a
//! log line or a dead-letter reason. A device that ships with only an
//! activation code activates once: it subscribes to
//! `v2/activations/{code}/{random}` and the platform publishes the new
//! thing token there. outpost stores the token (0600) in the state
//! directory and never activates twice.
//!
//! Values go as `{"values":[{"key":..,"value":..,"datetime":"YYYYMMDDHHmmss"}]}`
//! (UTC, the measurement time). Keys may use letters, digits, `.`, `-` and
//! `_` only; a reading with another key is refused with the key named.
//! Realtime updates of the thing are relayed to a local topic.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::session::{tls_config, Settings};
use super::{Action, Downlink, Platform, Publish, SessionStart};
use crate::config::ThethingsioSinkConfig;
use crate::net::BrokerUrl;
use crate::record::{Reading, Record};
use crate::route::{Admit, Refusal};

pub struct Thethingsio {
    topic: String,
    realtime: Option<String>,
    max_payload: usize,
    geo: Geo,
}

/// The names of a reading's latitude and longitude keys.
#[derive(Debug, Clone)]
struct Geo {
    lat: String,
    long: String,
}

impl Thethingsio {
    pub fn new(sink: &str, cfg: &ThethingsioSinkConfig, token: &str) -> Thethingsio {
        Thethingsio {
            topic: format!("v2/things/{token}"),
            realtime: Some(cfg.realtime_topic.replace("{sink}", sink)).filter(|t| !t.is_empty()),
            max_payload: 64 * 1024,
            geo: Geo {
                lat: cfg.geo_keys[0].clone(),
                long: cfg.geo_keys[1].clone(),
            },
        }
    }

    pub fn settings(cfg: &ThethingsioSinkConfig) -> Settings {
        Settings::new(
            cfg.connection(),
            format!("outpost-{:08x}", fastrand::u32(..)),
        )
        .window(cfg.inflight, 64 * 1024 + 256)
    }
}

impl Geo {
    /// A record's entries in the `values` list. Numeric latitude and
    /// longitude keys become each entry's `geo` (and stay values only when
    /// the reading has nothing else).
    fn entries(&self, r: &Record) -> Vec<Value> {
        let datetime = datetime(r.ts);
        let mut values = match Reading::parse(&r.payload).values {
            Value::Object(m) => m,
            other => Map::from_iter([("value".to_string(), other)]),
        };
        let position = match (
            values.get(&self.lat).and_then(Value::as_f64),
            values.get(&self.long).and_then(Value::as_f64),
        ) {
            (Some(lat), Some(long)) => Some(json!({"lat": lat, "long": long})),
            _ => None,
        };
        if position.is_some() && values.len() > 2 {
            values.remove(&self.lat);
            values.remove(&self.long);
        }
        values
            .into_iter()
            .map(|(key, value)| {
                let mut e = json!({"key": key, "value": value, "datetime": datetime});
                if let (Some(p), Value::Object(m)) = (&position, &mut e) {
                    m.insert("geo".into(), p.clone());
                }
                e
            })
            .collect()
    }
}

/// `YYYYMMDDHHmmss`, UTC.
fn datetime(ts_ms: i64) -> String {
    crate::units::utc_text(ts_ms.div_euclid(1000), "", "", "")
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// A reading goes if its keys are thethings.iO keys, its values are not
/// null, and its entries fit one message.
struct ThethingsioAdmit {
    max_payload: usize,
    geo: Geo,
}

impl Admit for ThethingsioAdmit {
    fn admit(&self, r: &Record) -> Result<(), Refusal> {
        let entries = self.geo.entries(r);
        for e in &entries {
            let key = e["key"].as_str().unwrap_or_default();
            let shown: String = key.chars().take(64).collect();
            if !valid_key(key) {
                return Err(Refusal::format(format!(
                    "key `{shown}`: thethings.iO keys use only letters, digits, `.`, `-` and `_`"
                )));
            }
            if e["value"].is_null() {
                return Err(Refusal::format(format!("key `{shown}` has a null value")));
            }
        }
        let size = entries
            .iter()
            .map(|e| e.to_string().len().saturating_add(1))
            .fold(ENVELOPE, usize::saturating_add);
        if size > self.max_payload {
            return Err(Refusal::too_large(format!(
                "{size} bytes as a thethings.iO message: larger than its limit of {} bytes",
                self.max_payload
            )));
        }
        Ok(())
    }
}

/// `{"values":[` … `]}`.
const ENVELOPE: usize = 16;

impl Platform for Thethingsio {
    fn session_start(&mut self) -> SessionStart {
        SessionStart {
            subscribe: self.realtime.iter().map(|_| self.topic.clone()).collect(),
            publish: Vec::new(),
        }
    }

    fn admission(&self) -> Arc<dyn Admit> {
        Arc::new(ThethingsioAdmit {
            max_payload: self.max_payload,
            geo: self.geo.clone(),
        })
    }

    fn encode(&mut self, records: &[Record]) -> Vec<Publish> {
        let mut out = Vec::new();
        let mut values = Vec::new();
        let mut ids = Vec::new();
        let mut size = ENVELOPE;
        for r in records {
            let entries = self.geo.entries(r);
            let add = entries
                .iter()
                .map(|e| e.to_string().len().saturating_add(1))
                .fold(0, usize::saturating_add);
            if !ids.is_empty() && size.saturating_add(add) > self.max_payload {
                out.push(self.publish(std::mem::take(&mut values), std::mem::take(&mut ids)));
                size = ENVELOPE;
            }
            size = size.saturating_add(add);
            values.extend(entries);
            ids.push(r.id);
        }
        if !ids.is_empty() {
            out.push(self.publish(values, ids));
        }
        out
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Vec<Action> {
        match &self.realtime {
            Some(local) if topic == self.topic => vec![Action::Local(Downlink::Publish {
                topic: local.clone(),
                payload: payload.to_vec(),
            })],
            _ => Vec::new(),
        }
    }

    fn topic_for_logs(&self, topic: &str) -> String {
        if topic == self.topic {
            "v2/things/<thing token>".into()
        } else {
            topic.to_string()
        }
    }
}

impl Thethingsio {
    fn publish(&self, values: Vec<Value>, ids: Vec<i64>) -> Publish {
        Publish {
            topic: self.topic.clone(),
            payload: serde_json::to_vec(&json!({ "values": values })).unwrap_or_default(),
            ids,
        }
    }
}

fn stored_path(state_dir: &Path, sink: &str) -> PathBuf {
    state_dir.join("credentials").join(format!("{sink}.json"))
}

/// The thing token: configured, stored by an earlier activation, or got by
/// activating now. Retries (after `reconnect_max`) until it has one; `None`
/// only on shutdown.
pub async fn thing_token(
    sink: &str,
    cfg: &ThethingsioSinkConfig,
    state_dir: &Path,
    shutdown: &CancellationToken,
) -> Option<String> {
    if let Some(t) = &cfg.thing_token {
        return Some(t.clone());
    }
    let path = stored_path(state_dir, sink);
    let mut last_error = None;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Some(t) = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
                v.get("thingToken")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }) {
                tracing::info!(sink, "using the thing token stored by activation");
                return Some(t);
            }
            tracing::error!(sink, path = %path.display(), "the stored thing token is damaged; activating again");
        }
        let result = tokio::select! {
            r = activate(cfg) => r,
            _ = shutdown.cancelled() => return None,
        };
        match result.and_then(|token| store(&path, &token).map(|()| token)) {
            Ok(token) => {
                tracing::info!(sink, stored = %path.display(), "thing activated; token stored");
                return Some(token);
            }
            Err(e) => {
                let wait = cfg.reconnect_max.0;
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::error!(sink, error = %e, retry_in_s = wait.as_secs_f64(),
                        "thethings.iO activation failed; records stay queued");
                    last_error = Some(e);
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

fn store(path: &Path, token: &str) -> Result<(), String> {
    let body = json!({ "thingToken": token }).to_string();
    crate::files::write_private(path, body.as_bytes())
        .map_err(|e| format!("cannot store the thing token in {}: {e}", path.display()))
}

/// One activation: subscribe to the code's channel and wait for the token.
async fn activate(cfg: &ThethingsioSinkConfig) -> Result<String, String> {
    let code = cfg.activation_code.clone().unwrap_or_default();
    let url = BrokerUrl::parse(&cfg.url)?;
    let mut opts = MqttOptions::new(
        format!("outpost-activate-{:08x}", fastrand::u32(..)),
        url.host.clone(),
        url.port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    if url.tls {
        let tls =
            tls_config("activation", cfg.ca_file.as_deref(), None).map_err(|e| e.to_string())?;
        opts.set_transport(Transport::tls_with_config(tls));
    }
    let channel = format!("v2/activations/{code}/{:016x}", fastrand::u64(..));
    let (client, mut events) = AsyncClient::new(opts, 8);
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .subscribe(channel.clone(), QoS::AtLeastOnce)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == channel => {
                    let v: Value = serde_json::from_slice(&p.payload)
                        .map_err(|e| format!("unreadable activation answer: {e}"))?;
                    if let Some(t) = v
                        .get("thingToken")
                        .and_then(Value::as_str)
                        .filter(|t| !t.is_empty())
                    {
                        return Ok(t.to_string());
                    }
                    let msg = v
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("no thingToken in the answer");
                    return Err(format!("thethings.iO refused the activation: {msg}"));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("cannot reach thethings.iO: {e}")),
            }
        }
    };
    let result = tokio::time::timeout(cfg.activation_timeout.0, wait)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no activation answer within {}s",
                cfg.activation_timeout.0.as_secs()
            ))
        });
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;

    fn rec(id: i64, ts: i64, payload: &str) -> Record {
        Record {
            id,
            sink: "tio".into(),
            device: "d".into(),
            kind: RecordKind::Telemetry,
            ts,
            topic: "t".into(),
            payload: payload.as_bytes().to_vec(),
            ts_source: Default::default(),
        }
    }

    #[test]
    fn a_position_becomes_each_values_geo() {
        let cfg: ThethingsioSinkConfig = toml::from_str("thing_token = \"T\"").expect("config");
        let mut t = Thethingsio::new("tio", &cfg, "TOKEN");
        let out = t.encode(&[rec(
            1,
            1_795_000_005_000,
            r#"{"temp":21.5,"lat":41.39,"long":2.17}"#,
        )]);
        let v: Value = serde_json::from_slice(&out[0].payload).expect("json");
        assert_eq!(
            v,
            json!({"values": [{"key": "temp", "value": 21.5, "datetime": "20261118110645",
                "geo": {"lat": 41.39, "long": 2.17}}]})
        );
        let named: ThethingsioSinkConfig =
            toml::from_str("thing_token = \"T\"\ngeo_keys = [\"latitude\", \"longitude\"]")
                .expect("config");
        let mut t = Thethingsio::new("tio", &named, "TOKEN");
        let out = t.encode(&[rec(2, 0, r#"{"v":1,"latitude":1.5,"longitude":-3}"#)]);
        let v: Value = serde_json::from_slice(&out[0].payload).expect("json");
        assert_eq!(v["values"][0]["geo"], json!({"lat": 1.5, "long": -3.0}));
        assert_eq!(v["values"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn values_carry_key_value_and_utc_datetime_and_bad_keys_are_named() {
        let cfg: ThethingsioSinkConfig = toml::from_str("thing_token = \"T\"").expect("config");
        let mut t = Thethingsio::new("tio", &cfg, "TOKEN");
        let out = t.encode(&[rec(1, 1_795_000_005_000, r#"{"temp":21.5,"door":"open"}"#)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "v2/things/TOKEN");
        let v: Value = serde_json::from_slice(&out[0].payload).expect("json");
        assert_eq!(
            v,
            json!({"values": [
                {"key": "temp", "value": 21.5, "datetime": "20261118110645"},
                {"key": "door", "value": "open", "datetime": "20261118110645"},
            ]})
        );
        let admit = t.admission();
        let err = admit
            .admit(&rec(2, 0, r#"{"temp °C":1}"#))
            .expect_err("bad key");
        assert!(err.reason.contains("key `temp °C`"), "{}", err.reason);
        let big = format!(r#"{{"v":"{}"}}"#, "x".repeat(70_000));
        assert_eq!(admit.admit(&rec(3, 0, &big)).map_err(|e| e.code), Err(0x97));
        assert_eq!(
            t.topic_for_logs("v2/things/TOKEN"),
            "v2/things/<thing token>"
        );
    }
}
