//! ThingsBoard's MQTT dialect: the device API (`v1/devices/me/...`, or the
//! short `v2/...` topics) and the gateway API (`v1/gateway/...`, every local
//! sensor a child device over one connection).
//!
//! Telemetry always carries the record's measurement ts, so a resend after a
//! crash overwrites itself. ThingsBoard keeps one value per (device, key,
//! millisecond): within a batch, two records of one device with the same ts
//! are merged into one entry when their keys differ, and a key clash is
//! counted and logged (the later value is the one ThingsBoard would keep).
//! Many records go in one PUBLISH, per device in ts order, never above
//! `max_payload_size`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::ConnectReturnCode;
use serde_json::{Map, Value};

use super::rate::RateLimit;
use super::uplink::Settings;
use super::{Action, Platform, Publish};
use crate::config::{RecordKind, TbMode, ThingsboardSinkConfig};
use crate::control::downlink::{fill, Downlink};
use crate::control::status::StatusSource;
use crate::record::{Reading, Record};
use crate::stats::{self, SinkStats};

/// Bytes kept free in each PUBLISH for the topic and MQTT framing.
const FRAMING: usize = 64;

/// ThingsBoard's documented default limits (`messages`, `telemetryMessages`),
/// obeyed until the server answers `getSessionLimits`.
const DEFAULT_RATE: &str = "200:1,6000:60,14000:3600";
const DEFAULT_TELEMETRY_RATE: &str = "100:1,3000:60,7000:3600";

pub struct Thingsboard {
    sink: String,
    mode: TbMode,
    short_topics: bool,
    device_type: String,
    max_payload: usize,
    /// Gateway mode: children announced with `v1/gateway/connect` on this connection.
    connected: HashSet<String>,
    stats: Arc<SinkStats>,
    last_clash_log: Option<Instant>,
    attributes_topic: String,
    rpc_request_topic: String,
    rpc_response_topic: String,
    device_name: String,
    status: Option<StatusSource>,
    /// The configured ceiling for batches.
    configured_payload: usize,
    /// Rate limits fixed by the config (the server's answer is then ignored).
    fixed_rate: bool,
    /// Id of this session's `getSessionLimits` request.
    limits_request: u64,
    /// Client-side RPC relayed for local devices: upstream id → local
    /// response topic.
    client_rpc: std::collections::HashMap<u64, String>,
    next_rpc: u64,
    /// The client certificate presented (mTLS), reported on each connect.
    identity: Option<crate::pki::identity::Identity>,
    /// Where outpost's own shared attributes (remote configuration) go.
    remote: Option<tokio::sync::mpsc::Sender<crate::control::remote::Event>>,
    /// Id of this session's shared-attributes request.
    attr_request: u64,
}

impl Thingsboard {
    pub fn new(sink: &str, cfg: &ThingsboardSinkConfig, stats: Arc<SinkStats>) -> Thingsboard {
        Thingsboard {
            sink: sink.to_string(),
            mode: cfg.mode,
            short_topics: cfg.short_topics,
            device_type: cfg.device_type.clone(),
            max_payload: cfg.max_payload_size.0 as usize,
            connected: HashSet::new(),
            stats,
            last_clash_log: None,
            attributes_topic: cfg.attributes_topic.clone(),
            rpc_request_topic: cfg.rpc_request_topic.clone(),
            rpc_response_topic: cfg.rpc_response_topic.clone(),
            device_name: cfg.device_name.clone(),
            status: None,
            configured_payload: cfg.max_payload_size.0 as usize,
            fixed_rate: cfg.rate_limits.is_some(),
            limits_request: 0,
            client_rpc: std::collections::HashMap::new(),
            next_rpc: 0,
            identity: None,
            remote: None,
            attr_request: 0,
        }
    }

    /// A device's claim, and its client-side RPC with a fresh upstream id
    /// (devices number their requests independently).
    fn encode_requests(&mut self, records: &[Record], out: &mut Vec<Publish>) {
        let gateway = self.mode == TbMode::Gateway;
        for r in records {
            match r.kind {
                RecordKind::Claim => {
                    let values = Value::Object(key_values(&r.payload));
                    let topic = self.topic(RecordKind::Claim);
                    let body = if gateway {
                        let mut m = Map::new();
                        m.insert(r.device.clone(), values);
                        Value::Object(m)
                    } else {
                        values
                    };
                    out.push(Publish {
                        topic: topic.into(),
                        payload: serde_json::to_vec(&body).unwrap_or_default(),
                        ids: vec![r.id],
                    });
                }
                RecordKind::Rpc => {
                    self.next_rpc = self.next_rpc % 999_999_999 + 1;
                    let response = match r.topic.rsplit_once("/request/") {
                        Some((head, id)) => format!("{head}/response/{id}"),
                        None => format!("{}/response", r.topic),
                    };
                    self.client_rpc.insert(self.next_rpc, response);
                    out.push(Publish {
                        topic: format!("{}/{}", self.topic(RecordKind::Rpc), self.next_rpc),
                        payload: serde_json::to_vec(&Value::Object(key_values(&r.payload)))
                            .unwrap_or_default(),
                        ids: vec![r.id],
                    });
                }
                RecordKind::Telemetry | RecordKind::Attributes => {}
            }
        }
    }

    /// The limits to start with: the configured ones, else the documented
    /// defaults.
    pub fn initial_rate(cfg: &ThingsboardSinkConfig) -> RateLimit {
        match &cfg.rate_limits {
            Some(text) => RateLimit::parse(text).unwrap_or_default(),
            None => RateLimit::parse(DEFAULT_RATE)
                .unwrap_or_default()
                .and(RateLimit::parse(DEFAULT_TELEMETRY_RATE).unwrap_or_default()),
        }
    }

    /// Reads a `getSessionLimits` answer.
    fn session_limits(&mut self, v: &Value) -> Action {
        let gateway = self.mode == TbMode::Gateway;
        if let Some(max) = v["maxPayloadSize"].as_u64() {
            self.max_payload = (max as usize).min(self.configured_payload);
        }
        let max_inflight = v["maxInflightMessages"].as_u64().map(|n| n as usize);
        let rate = if self.fixed_rate {
            None
        } else {
            let limits = if gateway && v["gatewayRateLimits"].is_object() {
                &v["gatewayRateLimits"]
            } else {
                &v["rateLimits"]
            };
            let parse = |k: &str| {
                limits[k]
                    .as_str()
                    .and_then(|t| RateLimit::parse(t).ok())
                    .unwrap_or_default()
            };
            Some(parse("messages").and(parse("telemetryMessages")))
        };
        tracing::info!(
            sink = %self.sink,
            max_payload = self.max_payload,
            max_inflight = ?max_inflight,
            "ThingsBoard session limits received"
        );
        Action::Limits { max_inflight, rate }
    }

    /// Takes outpost's own shared attributes (remote configuration): asks
    /// for them on each connect and passes them, and their updates, on.
    pub fn with_remote(
        mut self,
        remote: tokio::sync::mpsc::Sender<crate::control::remote::Event>,
    ) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Splits outpost's own keys out of a shared-attributes object and
    /// hands them to the remote-configuration manager.
    fn take_remote(&self, values: &mut Map<String, Value>) {
        let Some(remote) = &self.remote else { return };
        let mut ours = Map::new();
        for name in crate::config::overlay::attribute_names() {
            if let Some(v) = values.remove(name) {
                ours.insert(name.to_string(), v);
            }
        }
        if !ours.is_empty()
            && remote
                .try_send(crate::control::remote::Event::Shared(ours))
                .is_err()
        {
            tracing::warn!(sink = %self.sink, "remote configuration busy; dropped an update (it is asked again on reconnect)");
        }
    }

    /// Reports the client certificate as client attributes on each connect.
    pub fn with_identity(mut self, identity: Option<crate::pki::identity::Identity>) -> Self {
        self.identity = identity;
        self
    }

    /// Lets the `status` RPC report queues and counters.
    pub fn with_status(mut self, status: StatusSource) -> Self {
        self.status = Some(status);
        self
    }

    /// RPC to outpost itself.
    fn own_rpc(&self, method: &str, params: &Value) -> Value {
        match method {
            "ping" | "gateway_ping" => serde_json::json!({"pong": true}),
            "status" | "gateway_stats" => match &self.status {
                Some(s) => s.snapshot(),
                None => serde_json::json!({"version": env!("CARGO_PKG_VERSION")}),
            },
            "set_log_level" => {
                let level = params
                    .get("level")
                    .and_then(Value::as_str)
                    .or_else(|| params.as_str())
                    .unwrap_or_default();
                match crate::daemon::logging::set_level(level) {
                    Ok(()) => serde_json::json!({"ok": true, "level": level}),
                    Err(e) => serde_json::json!({"error": e}),
                }
            }
            other => serde_json::json!({
                "error": format!("unknown method `{other}`; outpost answers ping, status and set_log_level")
            }),
        }
    }

    fn gateway_rpc(&self, payload: &[u8]) -> Result<Action, String> {
        let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
        let device = v["device"].as_str().ok_or("no `device`")?.to_string();
        let data = &v["data"];
        let id = match &data["id"] {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => return Err("no `data.id`".into()),
        };
        let id_value = data["id"].clone();
        let request = serde_json::json!({"method": data["method"], "params": data["params"]});
        let reply_device = device.clone();
        Ok(Action::Local(Downlink::Rpc {
            request_topic: fill(&self.rpc_request_topic, &device, &id),
            request: serde_json::to_vec(&request).unwrap_or_default(),
            response_topic: fill(&self.rpc_response_topic, &device, &id),
            reply: Box::new(move |answer| {
                let data = match answer {
                    Ok(v) => v,
                    Err(e) => serde_json::json!({"error": e}),
                };
                let body =
                    serde_json::json!({"device": reply_device, "id": id_value, "data": data});
                Publish {
                    topic: "v1/gateway/rpc".into(),
                    payload: serde_json::to_vec(&body).unwrap_or_default(),
                    ids: Vec::new(),
                }
            }),
        }))
    }

    /// Connection settings: an access token is the MQTT username.
    pub fn settings(cfg: &ThingsboardSinkConfig) -> Settings {
        let (client_id, username, password) = match &cfg.access_token {
            Some(token) => (
                cfg.client_id.clone().unwrap_or_else(|| "outpost".into()),
                Some(token.clone()),
                None,
            ),
            None => (
                cfg.client_id.clone().unwrap_or_else(|| "outpost".into()),
                cfg.username.clone(),
                cfg.password.clone(),
            ),
        };
        Settings {
            url: cfg.url.clone(),
            client_id,
            username,
            password,
            ca_file: cfg.ca_file.clone(),
            client_cert: cfg.cert_file.clone().zip(cfg.key_file.clone()),
            inflight: cfg.inflight,
            max_packet: cfg.max_payload_size.0 as usize + FRAMING,
            keep_alive: cfg.keep_alive.0,
            reconnect_min: cfg.reconnect_min.0,
            reconnect_max: cfg.reconnect_max.0,
            grace: cfg.shutdown_grace.0,
        }
    }

    fn topic(&self, kind: RecordKind) -> &'static str {
        match (self.mode, kind, self.short_topics) {
            (TbMode::Device, RecordKind::Telemetry, false) => "v1/devices/me/telemetry",
            (TbMode::Device, RecordKind::Telemetry, true) => "v2/t",
            (TbMode::Device, RecordKind::Attributes, false) => "v1/devices/me/attributes",
            (TbMode::Device, RecordKind::Attributes, true) => "v2/a",
            (TbMode::Gateway, RecordKind::Telemetry, _) => "v1/gateway/telemetry",
            (TbMode::Gateway, RecordKind::Attributes, _) => "v1/gateway/attributes",
            (TbMode::Device, RecordKind::Claim, _) => "v1/devices/me/claim",
            (TbMode::Gateway, RecordKind::Claim, _) => "v1/gateway/claim",
            // Followed by `/{id}`; client-side RPC exists only on the device API.
            (_, RecordKind::Rpc, _) => "v1/devices/me/rpc/request",
        }
    }

    fn clash(&mut self, device: &str, ts: i64, key: &str) {
        stats::add(&self.stats.ts_clashes, 1);
        let quiet = self
            .last_clash_log
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
        if !quiet {
            tracing::warn!(
                sink = %self.sink, device, ts, key,
                total = stats::get(&self.stats.ts_clashes),
                "two readings of one device carry the same ts and key: ThingsBoard keeps one value per millisecond, the later one is sent"
            );
            self.last_clash_log = Some(Instant::now());
        }
    }
}

/// A reading's values as ThingsBoard key-values: an object stays as it is,
/// anything else becomes `{"value": ...}`.
fn key_values(payload: &[u8]) -> Map<String, Value> {
    match Reading::parse(payload).values {
        Value::Object(m) => m,
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            m
        }
    }
}

/// One `{"ts":..,"values":{..}}` entry being built, with the rows merged into it.
struct Entry {
    ts: i64,
    values: Map<String, Value>,
    ids: Vec<i64>,
}

impl Entry {
    fn json(&self) -> Value {
        let mut m = Map::new();
        m.insert("ts".into(), Value::from(self.ts));
        m.insert("values".into(), Value::Object(self.values.clone()));
        Value::Object(m)
    }

    fn size(&self) -> usize {
        serde_json::to_vec(&self.json())
            .map(|v| v.len())
            .unwrap_or(0)
            + 1
    }
}

/// Accumulates entries per device into publishes no larger than a limit.
struct Batcher {
    topic: &'static str,
    gateway: bool,
    limit: usize,
    /// (device, entries) in first-seen order.
    devices: Vec<(String, Vec<Entry>)>,
    size: usize,
    out: Vec<Publish>,
}

impl Batcher {
    fn new(topic: &'static str, gateway: bool, limit: usize) -> Batcher {
        Batcher {
            topic,
            gateway,
            limit,
            devices: Vec::new(),
            size: 2,
            out: Vec::new(),
        }
    }

    /// JSON overhead of a device key not yet in the batch: `"name":[`…`],`.
    fn device_cost(&self, device: &str) -> usize {
        if self.devices.iter().any(|(d, _)| d == device) {
            0
        } else {
            device.len() + 6
        }
    }

    fn entry_mut(&mut self, device: &str, ts: i64) -> Option<&mut Entry> {
        self.devices
            .iter_mut()
            .find(|(d, _)| d == device)
            .and_then(|(_, entries)| entries.iter_mut().find(|e| e.ts == ts))
    }

    fn flush(&mut self) {
        if self.devices.is_empty() {
            return;
        }
        let mut ids = Vec::new();
        // Per device in ts order (live readings may be batched with a backlog).
        for (_, entries) in self.devices.iter_mut() {
            entries.sort_by_key(|e| e.ts);
        }
        let body = if self.gateway {
            let mut m = Map::new();
            for (dev, entries) in self.devices.drain(..) {
                let arr = entries.iter().map(Entry::json).collect();
                ids.extend(entries.into_iter().flat_map(|e| e.ids));
                m.insert(dev, Value::Array(arr));
            }
            Value::Object(m)
        } else {
            let mut arr = Vec::new();
            for (_, entries) in self.devices.drain(..) {
                arr.extend(entries.iter().map(Entry::json));
                ids.extend(entries.into_iter().flat_map(|e| e.ids));
            }
            Value::Array(arr)
        };
        self.out.push(Publish {
            topic: self.topic.to_string(),
            payload: serde_json::to_vec(&body).unwrap_or_default(),
            ids,
        });
        self.size = 2;
    }
}

impl Platform for Thingsboard {
    fn session_start(&mut self) -> super::SessionStart {
        self.connected.clear();
        let mut subscribe = vec![
            "v1/devices/me/rpc/request/+".to_string(),
            "v1/devices/me/rpc/response/+".to_string(),
            "v1/devices/me/attributes".to_string(),
        ];
        if self.mode == TbMode::Gateway {
            subscribe.push("v1/gateway/attributes".into());
            subscribe.push("v1/gateway/rpc".into());
        }
        // Far from the small ids ThingsBoard gives server-side RPC.
        self.limits_request = 1_000_000_000 + (self.limits_request + 1) % 1_000_000;
        let ask = Publish {
            topic: format!("v1/devices/me/rpc/request/{}", self.limits_request),
            payload: br#"{"method":"getSessionLimits","params":{}}"#.to_vec(),
            ids: Vec::new(),
        };
        let mut publish = vec![ask];
        if let Some(remote) = &self.remote {
            subscribe.push("v1/devices/me/attributes/response/+".into());
            self.attr_request = 1_000_000_000 + (self.attr_request + 1) % 1_000_000;
            publish.push(Publish {
                topic: format!("v1/devices/me/attributes/request/{}", self.attr_request),
                payload: serde_json::to_vec(&serde_json::json!({
                    "sharedKeys": crate::config::overlay::attribute_names().join(",")
                }))
                .unwrap_or_default(),
                ids: Vec::new(),
            });
            let _ = remote.try_send(crate::control::remote::Event::Connected);
        }
        if let Some(id) = &self.identity {
            // Days are counted from now, not from startup.
            let days_left = time::OffsetDateTime::parse(
                &id.not_after,
                &time::format_description::well_known::Rfc3339,
            )
            .map(|t| (t - time::OffsetDateTime::now_utc()).whole_days())
            .unwrap_or(id.days_left);
            let attrs = serde_json::json!({
                "certificateCN": id.cn,
                "certificateIssuer": id.issuer_cn,
                "certificateNotAfter": id.not_after,
                "certificateDaysLeft": days_left,
            });
            publish.push(Publish {
                topic: "v1/devices/me/attributes".into(),
                payload: serde_json::to_vec(&attrs).unwrap_or_default(),
                ids: Vec::new(),
            });
        }
        super::SessionStart { subscribe, publish }
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Vec<Action> {
        let gateway = self.mode == TbMode::Gateway;
        if let Some(id) = topic.strip_prefix("v1/devices/me/attributes/response/") {
            if id == self.attr_request.to_string() {
                if let Ok(Value::Object(mut shared)) =
                    serde_json::from_slice::<Value>(payload).map(|mut v| v["shared"].take())
                {
                    self.take_remote(&mut shared);
                }
            }
            return Vec::new();
        }
        if let Some(id) = topic.strip_prefix("v1/devices/me/rpc/response/") {
            if let Some(local) = id
                .parse::<u64>()
                .ok()
                .and_then(|n| self.client_rpc.remove(&n))
            {
                return vec![Action::Local(Downlink::Publish {
                    topic: local,
                    payload: payload.to_vec(),
                })];
            }
            if id == self.limits_request.to_string() {
                return match serde_json::from_slice::<Value>(payload) {
                    Ok(v) if v.get("maxPayloadSize").is_some() || v.get("rateLimits").is_some() => {
                        vec![self.session_limits(&v)]
                    }
                    _ => {
                        tracing::warn!(sink = %self.sink, "unreadable getSessionLimits answer; keeping the current limits");
                        Vec::new()
                    }
                };
            }
            return Vec::new();
        }
        if let Some(id) = topic.strip_prefix("v1/devices/me/rpc/request/") {
            // Our own requests, echoed by a plain broker standing in for
            // ThingsBoard: not RPC to us.
            let ours = id
                .parse::<u64>()
                .is_ok_and(|n| self.client_rpc.contains_key(&n));
            if ours
                || serde_json::from_slice::<Value>(payload)
                    .is_ok_and(|v| v["method"] == "getSessionLimits")
            {
                return Vec::new();
            }
            let request: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
            let method = request["method"].as_str().unwrap_or_default();
            tracing::info!(sink = %self.sink, method, "RPC to outpost");
            let answer = self.own_rpc(method, &request["params"]);
            return vec![Action::Upstream(Publish {
                topic: format!("v1/devices/me/rpc/response/{id}"),
                payload: serde_json::to_vec(&answer).unwrap_or_default(),
                ids: Vec::new(),
            })];
        }
        let result = match topic {
            // A broker that echoes our own replies (any plain MQTT broker
            // standing in for ThingsBoard) sends them back: not a request.
            "v1/gateway/rpc" if gateway && is_reply(payload) => Ok(Vec::new()),
            "v1/gateway/rpc" if gateway => self.gateway_rpc(payload).map(|a| vec![a]),
            "v1/gateway/attributes" if gateway => serde_json::from_slice::<Value>(payload)
                .map_err(|e| format!("not JSON: {e}"))
                .and_then(|v| {
                    let device = v["device"].as_str().ok_or("no `device`")?.to_string();
                    let Value::Object(values) = v["data"].clone() else {
                        return Err("no `data` object".to_string());
                    };
                    Ok(vec![Action::Local(Downlink::Settings {
                        topic: fill(&self.attributes_topic, &device, ""),
                        values,
                    })])
                }),
            "v1/devices/me/attributes" => match serde_json::from_slice::<Value>(payload) {
                Ok(Value::Object(mut values)) => {
                    self.take_remote(&mut values);
                    if gateway || values.is_empty() {
                        Ok(Vec::new())
                    } else {
                        Ok(vec![Action::Local(Downlink::Settings {
                            topic: fill(&self.attributes_topic, &self.device_name, ""),
                            values,
                        })])
                    }
                }
                _ => Err("shared attributes must be a JSON object".to_string()),
            },
            _ => Ok(Vec::new()),
        };
        result.unwrap_or_else(|e| {
            tracing::warn!(sink = %self.sink, topic, error = %e, "ignored a message from ThingsBoard");
            Vec::new()
        })
    }

    /// ThingsBoard stores telemetry by (device, key, ts): arrival order
    /// does not matter, so live readings may overtake a backlog.
    fn live_first(&self) -> bool {
        true
    }

    /// ThingsBoard takes string keys with string, boolean, number or JSON
    /// values; it refuses null values and empty keys.
    fn validate(&self, r: &Record) -> Result<(), String> {
        for (k, v) in key_values(&r.payload) {
            if k.is_empty() {
                return Err("empty key (ThingsBoard needs a non-empty string key)".into());
            }
            if v.is_null() {
                return Err(format!("key `{k}` has a null value (ThingsBoard takes strings, booleans, numbers or JSON)"));
            }
        }
        Ok(())
    }

    fn encode(&mut self, records: &[Record]) -> Vec<Publish> {
        let gateway = self.mode == TbMode::Gateway;
        let mut out = Vec::new();

        if gateway {
            for r in records {
                if self.connected.insert(r.device.clone()) {
                    let mut m = Map::new();
                    m.insert("device".into(), Value::from(r.device.clone()));
                    m.insert("type".into(), Value::from(self.device_type.clone()));
                    out.push(Publish {
                        topic: "v1/gateway/connect".into(),
                        payload: serde_json::to_vec(&Value::Object(m)).unwrap_or_default(),
                        ids: Vec::new(),
                    });
                }
            }
        }

        // Telemetry: batched, merged by (device, ts).
        let mut batch = Batcher::new(self.topic(RecordKind::Telemetry), gateway, self.max_payload);
        let mut clashes = Vec::new();
        for r in records.iter().filter(|r| r.kind == RecordKind::Telemetry) {
            let values = key_values(&r.payload);
            let dev_key = if gateway {
                r.device.clone()
            } else {
                String::new()
            };
            let (size, limit) = (batch.size, batch.limit);
            if let Some(e) = batch.entry_mut(&dev_key, r.ts) {
                // Same device and ts: one entry, if it still fits.
                let mut merged = Entry {
                    ts: e.ts,
                    values: e.values.clone(),
                    ids: e.ids.clone(),
                };
                let mut clashed = Vec::new();
                for (k, v) in values.clone() {
                    if merged.values.insert(k.clone(), v).is_some() {
                        clashed.push(k);
                    }
                }
                merged.ids.push(r.id);
                let grown = merged.size().saturating_sub(e.size());
                if size + grown <= limit {
                    *e = merged;
                    batch.size += grown;
                    clashes.extend(clashed.into_iter().map(|k| (r.device.clone(), r.ts, k)));
                    continue;
                }
                batch.flush();
            }
            let entry = Entry {
                ts: r.ts,
                values,
                ids: vec![r.id],
            };
            let mut cost = entry.size() + batch.device_cost(&dev_key);
            if batch.size + cost > batch.limit && !batch.devices.is_empty() {
                batch.flush();
                cost = entry.size() + batch.device_cost(&dev_key);
            }
            batch.size += cost;
            match batch.devices.iter_mut().find(|(d, _)| *d == dev_key) {
                Some((_, entries)) => entries.push(entry),
                None => batch.devices.push((dev_key, vec![entry])),
            }
        }
        batch.flush();
        out.append(&mut batch.out);
        for (device, ts, key) in clashes {
            self.clash(&device, ts, &key);
        }

        // Attributes: the latest value per key wins, per device, in order.
        let topic = self.topic(RecordKind::Attributes);
        let mut attrs: Vec<(String, Map<String, Value>, Vec<i64>)> = Vec::new();
        let mut size = 2;
        for r in records.iter().filter(|r| r.kind == RecordKind::Attributes) {
            let values = key_values(&r.payload);
            let cost =
                serde_json::to_vec(&values).map(|v| v.len()).unwrap_or(0) + r.device.len() + 6;
            if size + cost > self.max_payload && !attrs.is_empty() {
                out.push(attributes_publish(
                    topic,
                    gateway,
                    std::mem::take(&mut attrs),
                ));
                size = 2;
            }
            size += cost;
            let dev_key = if gateway {
                r.device.clone()
            } else {
                String::new()
            };
            match attrs.iter_mut().find(|(d, _, _)| *d == dev_key) {
                Some((_, m, ids)) => {
                    m.extend(values);
                    ids.push(r.id);
                }
                None => attrs.push((dev_key, values, vec![r.id])),
            }
        }
        if !attrs.is_empty() {
            out.push(attributes_publish(topic, gateway, attrs));
        }
        self.encode_requests(records, &mut out);
        out
    }

    fn refused_hint(&self, code: ConnectReturnCode) -> Option<&'static str> {
        match code {
            ConnectReturnCode::BadUserNamePassword => {
                Some(" (ThingsBoard 0x04: the access token or username is empty; set access_token)")
            }
            ConnectReturnCode::NotAuthorized => Some(
                " (ThingsBoard 0x05: unknown access token or MQTT basic credentials; copy them from the device's page)",
            ),
            _ => None,
        }
    }
}

/// `{"device":..,"id":..,"data":..}` is a reply; requests carry `data.method`.
fn is_reply(payload: &[u8]) -> bool {
    serde_json::from_slice::<Value>(payload)
        .is_ok_and(|v| v.get("id").is_some() && v["data"].get("method").is_none())
}

fn attributes_publish(
    topic: &str,
    gateway: bool,
    attrs: Vec<(String, Map<String, Value>, Vec<i64>)>,
) -> Publish {
    let mut ids = Vec::new();
    let body = if gateway {
        let mut m = Map::new();
        for (dev, values, i) in attrs {
            m.insert(dev, Value::Object(values));
            ids.extend(i);
        }
        Value::Object(m)
    } else {
        let mut all = Map::new();
        for (_, values, i) in attrs {
            all.extend(values);
            ids.extend(i);
        }
        Value::Object(all)
    };
    Publish {
        topic: topic.to_string(),
        payload: serde_json::to_vec(&body).unwrap_or_default(),
        ids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> ThingsboardSinkConfig {
        toml::from_str(&format!(
            "url = \"mqtt://localhost\"\naccess_token = \"t\"\n{extra}"
        ))
        .expect("cfg")
    }

    fn rec(id: i64, device: &str, ts: i64, payload: &str) -> Record {
        Record {
            id,
            sink: "tb".into(),
            device: device.into(),
            kind: RecordKind::Telemetry,
            ts,
            topic: String::new(),
            payload: payload.as_bytes().to_vec(),
        }
    }

    fn json(p: &Publish) -> Value {
        serde_json::from_slice(&p.payload).expect("json")
    }

    #[test]
    fn device_mode_sends_ts_values_arrays() {
        let mut tb = Thingsboard::new("tb", &cfg(""), Arc::default());
        let out = tb.encode(&[rec(1, "a", 10, r#"{"t":1}"#), rec(2, "b", 11, "7")]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "v1/devices/me/telemetry");
        assert_eq!(out[0].ids, [1, 2]);
        assert_eq!(
            json(&out[0]),
            serde_json::json!([{"ts":10,"values":{"t":1}},{"ts":11,"values":{"value":7}}])
        );
        let mut short = Thingsboard::new("tb", &cfg("short_topics = true"), Arc::default());
        assert_eq!(short.encode(&[rec(1, "a", 10, "1")])[0].topic, "v2/t");
    }

    #[test]
    fn gateway_mode_connects_each_child_once_per_session() {
        let mut tb = Thingsboard::new(
            "tb",
            &cfg("mode = \"gateway\"\ndevice_type = \"sensor\""),
            Arc::default(),
        );
        let out = tb.encode(&[
            rec(1, "A", 10, r#"{"t":1}"#),
            rec(2, "B", 10, r#"{"t":2}"#),
            rec(3, "A", 11, r#"{"t":3}"#),
        ]);
        let topics: Vec<&str> = out.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "v1/gateway/connect",
                "v1/gateway/connect",
                "v1/gateway/telemetry"
            ]
        );
        assert_eq!(
            json(&out[0]),
            serde_json::json!({"device":"A","type":"sensor"})
        );
        assert_eq!(
            json(&out[2]),
            serde_json::json!({"A":[{"ts":10,"values":{"t":1}},{"ts":11,"values":{"t":3}}],"B":[{"ts":10,"values":{"t":2}}]})
        );
        assert_eq!(out[2].ids, [1, 3, 2]);
        // Same session: no second connect. New session: connect again.
        assert_eq!(tb.encode(&[rec(4, "A", 12, "1")]).len(), 1);
        tb.session_start();
        assert_eq!(tb.encode(&[rec(5, "A", 13, "1")]).len(), 2);
    }

    #[test]
    fn same_ts_merges_different_keys_and_counts_clashes() {
        let stats = Arc::new(SinkStats::default());
        let mut tb = Thingsboard::new("tb", &cfg("mode = \"gateway\""), stats.clone());
        tb.connected.insert("A".into());
        let out = tb.encode(&[
            rec(1, "A", 10, r#"{"t":1}"#),
            rec(2, "A", 10, r#"{"h":5}"#),
            rec(3, "A", 10, r#"{"t":2}"#),
        ]);
        assert_eq!(
            json(&out[0]),
            serde_json::json!({"A":[{"ts":10,"values":{"t":2,"h":5}}]})
        );
        assert_eq!(out[0].ids, [1, 2, 3]);
        assert_eq!(stats::get(&stats.ts_clashes), 1);
    }

    #[test]
    fn batches_never_exceed_the_payload_limit_and_keep_every_row() {
        let mut tb = Thingsboard::new(
            "tb",
            &cfg("mode = \"gateway\"\nmax_payload_size = \"1 KiB\""),
            Arc::default(),
        );
        let records: Vec<Record> = (0..500)
            .map(|i| {
                rec(
                    i,
                    &format!("dev-{}", i % 7),
                    1000 + i,
                    &format!(
                        "{{\"seq\":{i},\"x\":\"{}\"}}",
                        "y".repeat((i % 40) as usize)
                    ),
                )
            })
            .collect();
        let out = tb.encode(&records);
        let mut ids: Vec<i64> = Vec::new();
        for p in out.iter().filter(|p| p.topic == "v1/gateway/telemetry") {
            assert!(p.payload.len() <= 1024, "{} bytes", p.payload.len());
            ids.extend(&p.ids);
        }
        ids.sort();
        assert_eq!(ids, (0..500).collect::<Vec<_>>());
        assert!(out.len() > 10);
    }

    #[test]
    fn attributes_go_to_the_attributes_topic() {
        let mut tb = Thingsboard::new("tb", &cfg("mode = \"gateway\""), Arc::default());
        tb.connected.insert("A".into());
        let mut r = rec(1, "A", 10, r#"{"fw":"1.2"}"#);
        r.kind = RecordKind::Attributes;
        let out = tb.encode(&[r]);
        assert_eq!(out[0].topic, "v1/gateway/attributes");
        assert_eq!(json(&out[0]), serde_json::json!({"A":{"fw":"1.2"}}));
    }
}
