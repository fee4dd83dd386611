//! ThingsBoard's MQTT dialect: the device API (`v1/devices/me/...`, or the
//! short `v2/...` topics) and the gateway API (`v1/gateway/...`, every local
//! sensor a child device over one connection).
//!
//! Telemetry always carries the record's measurement ts, so a resend after
//! a crash overwrites itself. One job per file: [`encode`] (payloads and
//! batching), [`limits`] (session limits), [`rpc`] (RPC both ways),
//! [`remote`] (outpost's own attributes and reports), [`provision`]
//! (self-provisioning of credentials).

mod admit;
mod checksum;
pub mod child_firmware;
mod children;
mod encode;
mod firmware;
mod limits;
pub mod provision;
mod remote;
mod rpc;
mod values;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::ConnectReturnCode;
use serde_json::{Map, Value};

pub use admit::{PayloadLimit, TbAdmit};
pub use limits::initial_rate;

use super::session::{BudgetSpec, Cost, Settings};
use super::{Action, Downlink, Platform, Publish, Report, SessionStart};
use crate::config::{TbMode, ThingsboardSinkConfig};
use crate::pki::identity::Identity;
use crate::record::{Record, RecordKind};
use crate::route::Admit;
use crate::stats::{self, SinkStats};
use crate::topic::{fill, DeviceTopics};

/// Bytes kept free in each PUBLISH for the topic and MQTT framing.
const FRAMING: usize = 64;

/// Children remembered as announced on one connection.
const MAX_CONNECTED: usize = 10_000;

pub struct Thingsboard {
    sink: String,
    mode: TbMode,
    short_topics: bool,
    device_type: String,
    /// The payload limit: configured, lowered by the server's answer.
    limit: PayloadLimit,
    /// Gateway mode: children announced with `v1/gateway/connect` on this
    /// connection (forgotten beyond [`MAX_CONNECTED`]; announcing again is
    /// harmless).
    connected: HashSet<String>,
    stats: Arc<SinkStats>,
    last_clash_log: Option<Instant>,
    topics: DeviceTopics,
    device_name: String,
    /// Rate limits fixed by the config (the server's answer is then ignored).
    fixed_rate: bool,
    /// Id of this session's `getSessionLimits` request.
    limits_request: u64,
    /// Client-side RPC relayed for local devices: upstream id → local
    /// response topic. Ids only grow, so the oldest go first beyond
    /// [`rpc::MAX_PENDING`].
    /// Client-side RPCs awaiting their answer: the local response topic,
    /// and the body sent (to tell an echo from a server RPC with the same
    /// id).
    client_rpc: BTreeMap<u64, (String, Vec<u8>)>,
    next_rpc: u64,
    /// The client certificate presented (mTLS), reported on each connect.
    identity: Option<Identity>,
    /// outpost's remote configuration comes through this sink.
    remote: bool,
    /// Id of this session's shared-attributes request.
    attr_request: u64,
    /// Children beyond their data: attribute requests, refresh, idleness.
    children: children::Children,
    /// The rate windows in force (what batches are cut to fit).
    budget: BudgetSpec,
    /// Firmware updates of outpost's own device.
    firmware: firmware::Firmware,
    /// Id of this session's request for the `fw_*` attributes.
    fw_request: u64,
}

impl Thingsboard {
    pub fn new(sink: &str, cfg: &ThingsboardSinkConfig, stats: Arc<SinkStats>) -> Thingsboard {
        let mut tb = Thingsboard {
            sink: sink.to_string(),
            mode: cfg.mode,
            short_topics: cfg.short_topics,
            device_type: cfg.device_type.clone(),
            limit: PayloadLimit::new(cfg.max_payload_size.0 as usize, None),
            connected: HashSet::new(),
            stats,
            last_clash_log: None,
            topics: cfg.device_topics(),
            device_name: cfg.device_name.clone(),
            fixed_rate: cfg.rate_limits.is_some(),
            limits_request: 0,
            client_rpc: BTreeMap::new(),
            next_rpc: 0,
            identity: None,
            remote: false,
            attr_request: 0,
            children: children::Children::new(
                Some(cfg.child_idle.0).filter(|d| !d.is_zero()),
                cfg.shared_keys.clone(),
            ),
            budget: BudgetSpec::default(),
            firmware: firmware::Firmware::new(&crate::config::sink::FirmwareConfig {
                chunk_size: crate::units::ByteSize(
                    cfg.firmware.chunk_size.0.min(cfg.max_payload_size.0).max(1),
                ),
                ..cfg.firmware.clone()
            }),
            fw_request: 0,
        };
        tb.set_budget(&initial_rate(cfg));
        tb
    }

    /// Takes outpost's own shared attributes (remote configuration): asks
    /// for them on each connect and hands them, and their updates, on.
    pub fn with_remote(mut self, remote: bool) -> Self {
        self.remote = remote;
        self
    }

    /// Keeps the server's payload limit in `state_dir` for the next start
    /// (and starts from the one kept there).
    pub fn with_state_dir(mut self, state_dir: &std::path::Path) -> Self {
        let file = state_dir.join("limits").join(format!("{}.json", self.sink));
        let configured = self.limit.configured();
        let points = self.limit.max_points();
        let fw = std::mem::replace(
            &mut self.firmware,
            firmware::Firmware::new(&Default::default()),
        );
        self.firmware = fw.in_dir(state_dir.join("firmware"));
        self.limit = PayloadLimit::new(configured, Some(file));
        self.limit
            .set_max_points(Some(points).filter(|p| *p != u64::MAX));
        self
    }

    /// Reports the client certificate as client attributes on each connect.
    pub fn with_identity(mut self, identity: Option<Identity>) -> Self {
        self.identity = identity;
        self
    }

    /// Connection settings: an access token is the MQTT username.
    pub fn settings(cfg: &ThingsboardSinkConfig) -> Settings {
        let client_id = cfg.client_id.clone().unwrap_or_else(|| "outpost".into());
        let (username, password) = match &cfg.access_token {
            Some(token) => (Some(token.clone()), None),
            None => (cfg.username.clone(), cfg.password.clone()),
        };
        Settings::new(cfg.connection(), client_id)
            .login(username, password)
            .client_cert(cfg.cert_file.as_ref(), cfg.key_file.as_ref())
            .window(
                cfg.inflight,
                (cfg.max_payload_size.0 as usize).saturating_add(FRAMING),
            )
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
            (TbMode::Gateway, RecordKind::AttributesRequest, _) => "v1/gateway/attributes/request",
            (TbMode::Device, RecordKind::AttributesRequest, _) => {
                "v1/devices/me/attributes/request"
            }
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

    /// Shared attributes for a child device (gateway API).
    fn child_attributes(&mut self, payload: &[u8]) -> Result<Vec<Action>, String> {
        let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
        let device = v
            .get("device")
            .and_then(Value::as_str)
            .ok_or("no `device`")?
            .to_string();
        let Value::Object(values) = v.get("data").cloned().unwrap_or_default() else {
            return Err("no `data` object".to_string());
        };
        self.note_child_keys(&device, &values);
        Ok(vec![Action::Local(Downlink::Settings {
            topic: fill(&self.topics.attributes, &device, ""),
            values,
        })])
    }

    /// What the firmware module asks for, as actions.
    /// `v1/gateway/connect` for a child not yet connected on this session
    /// (`None`: it is). Everything sent for a child goes after it.
    fn announce(&mut self, device: &str) -> Option<Publish> {
        if self.connected.len() >= MAX_CONNECTED {
            self.connected.clear();
        }
        if !self.connected.insert(device.to_string()) {
            return None;
        }
        let mut m = Map::new();
        m.insert("device".into(), Value::from(device));
        m.insert("type".into(), Value::from(self.device_type.clone()));
        Some(Publish::control("v1/gateway/connect", &Value::Object(m)))
    }

    fn fw_actions(&self, steps: firmware::Steps) -> Vec<Action> {
        firmware::actions(steps)
    }

    /// Shared attributes of outpost's own device: firmware offers go to the
    /// firmware module, its own keys to the remote configuration, the rest
    /// (device mode) to `device_name`.
    fn own_attributes(&mut self, payload: &[u8]) -> Result<Vec<Action>, String> {
        let Ok(Value::Object(mut values)) = serde_json::from_slice::<Value>(payload) else {
            return Err("shared attributes must be a JSON object".to_string());
        };
        let steps = self.firmware.offered(&values, true);
        let mut out = self.fw_actions(steps);
        out.extend(self.take_remote(&mut values));
        if self.mode == TbMode::Device && !values.is_empty() {
            out.push(Action::Local(Downlink::Settings {
                topic: fill(&self.topics.attributes, &self.device_name, ""),
                values,
            }));
        }
        Ok(out)
    }
}

impl Platform for Thingsboard {
    fn session_start(&mut self) -> SessionStart {
        self.connected.clear();
        self.children.leaving.clear();
        let mut subscribe = vec![
            "v1/devices/me/rpc/request/+".to_string(),
            "v1/devices/me/rpc/response/+".to_string(),
            "v1/devices/me/attributes".to_string(),
        ];
        if self.mode == TbMode::Gateway {
            subscribe.push("v1/gateway/attributes".into());
            subscribe.push("v1/gateway/rpc".into());
            subscribe.push("v1/gateway/attributes/response".into());
        }
        // Answers to outpost's own request (remote configuration) and to
        // local devices' attribute requests in device mode.
        subscribe.push("v1/devices/me/attributes/response/+".into());
        let mut publish = vec![self.ask_limits()];
        if self.remote {
            publish.push(self.ask_remote());
        }
        publish.extend(self.refresh_requests());
        publish.extend(self.identity_report());
        if self.firmware.enabled() {
            subscribe.push("v2/fw/response/+/chunk/+".into());
            subscribe.push("v2/fw/error".into());
            self.fw_request = limits::next_request_id(self.fw_request.max(self.limits_request));
            let mut ask = Map::new();
            ask.insert("sharedKeys".into(), Value::from(firmware::KEYS));
            publish.push(Publish::control(
                format!("v1/devices/me/attributes/request/{}", self.fw_request),
                &Value::Object(ask),
            ));
            publish.extend(self.firmware.session_start(self.fw_request));
        }
        SessionStart { subscribe, publish }
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Vec<Action> {
        let gateway = self.mode == TbMode::Gateway;
        if let Some(rest) = topic.strip_prefix("v2/fw/response/") {
            let mut parts = rest.split('/');
            if let (Some(req), Some("chunk"), Some(n)) = (parts.next(), parts.next(), parts.next())
            {
                let steps = self.firmware.chunk(req, n, payload);
                return self.fw_actions(steps);
            }
            return Vec::new();
        }
        if topic == "v2/fw/error" {
            let steps = self.firmware.server_error(payload);
            return self.fw_actions(steps);
        }
        if let Some(id) = topic.strip_prefix("v1/devices/me/attributes/response/") {
            if id == self.fw_request.to_string() && self.firmware.enabled() {
                let shared = serde_json::from_slice::<Value>(payload)
                    .ok()
                    .and_then(|v| v.get("shared").and_then(Value::as_object).cloned())
                    .unwrap_or_default();
                let steps = self.firmware.offered(&shared, false);
                return self.fw_actions(steps);
            }
            if let Some(a) = self.attribute_answer(id.parse().ok(), payload) {
                return a;
            }
            return self.remote_answer(id, payload);
        }
        if topic == "v1/gateway/attributes/response" && gateway {
            return self.attribute_answer(None, payload).unwrap_or_default();
        }
        if let Some(id) = topic.strip_prefix("v1/devices/me/rpc/response/") {
            if let Some(answer) = self.client_rpc_answer(id, payload) {
                return vec![answer];
            }
            return self.limits_answer(id, payload).unwrap_or_default();
        }
        if let Some(id) = topic.strip_prefix("v1/devices/me/rpc/request/") {
            return self.device_rpc(id, payload);
        }
        let result = match topic {
            // A broker that echoes our own replies (any plain MQTT broker
            // standing in for ThingsBoard) sends them back: not a request.
            "v1/gateway/rpc" if gateway && rpc::is_reply(payload) => Ok(Vec::new()),
            "v1/gateway/rpc" if gateway => self.gateway_rpc(payload).map(|a| vec![a]),
            "v1/gateway/attributes" if gateway => self.child_attributes(payload),
            "v1/devices/me/attributes" => self.own_attributes(payload),
            _ => Ok(Vec::new()),
        };
        result.unwrap_or_else(|e| {
            tracing::warn!(sink = %self.sink, topic, error = %e, "ignored a message from ThingsBoard");
            Vec::new()
        })
    }

    fn report(&self, report: Report) -> Vec<Publish> {
        self.own_report(report)
    }

    /// ThingsBoard stores telemetry by (device, key, ts): arrival order
    /// does not matter, so live readings may overtake a backlog.
    fn live_first(&self) -> bool {
        true
    }

    fn admission(&self) -> Arc<dyn Admit> {
        Arc::new(TbAdmit::new(self.mode, self.limit.clone()))
    }

    /// An answer to a child's server-side RPC may go out on a later
    /// session than its request came on: the child is connected on this
    /// one first.
    fn reply(&mut self, publish: Publish) -> Vec<Publish> {
        if self.mode != TbMode::Gateway || publish.topic != "v1/gateway/rpc" {
            return vec![publish];
        }
        let device = serde_json::from_slice::<Value>(&publish.payload)
            .ok()
            .and_then(|v| v.get("device").and_then(Value::as_str).map(str::to_string));
        let mut out: Vec<Publish> = device.and_then(|d| self.announce(&d)).into_iter().collect();
        out.push(publish);
        out
    }

    fn encode(&mut self, records: &[Record]) -> Vec<Publish> {
        let gateway = self.mode == TbMode::Gateway;
        let mut out = Vec::new();
        if gateway {
            let now = Instant::now();
            for r in records {
                self.children.seen(&r.device, now);
                out.extend(self.announce(&r.device));
            }
        }
        let (telemetry, clashes) = encode::telemetry_within(
            records,
            self.topic(RecordKind::Telemetry),
            gateway,
            self.limit.get(),
            encode::PointCaps {
                message: self.budget.session.max_points(),
                child: self.budget.child.as_ref().and_then(|c| c.max_points()),
            },
        );
        out.extend(telemetry);
        for (device, ts, key) in clashes {
            self.clash(&device, ts, &key);
        }
        out.extend(encode::attributes(
            records,
            self.topic(RecordKind::Attributes),
            gateway,
            self.limit.get(),
        ));
        self.encode_requests(records, &mut out);
        out
    }

    fn tick(&mut self, now: Instant, drained: bool) -> Vec<Publish> {
        let mut out = self.idle_children(now, drained);
        out.extend(self.firmware.tick(now));
        out
    }

    fn on_local(&mut self, topic: &str, payload: &[u8]) -> Vec<Action> {
        let steps = self.firmware.result(topic, payload);
        self.fw_actions(steps)
    }

    fn presence(&mut self, notice: crate::source::presence::Notice) {
        self.child_presence(notice);
    }

    fn cost(&self, publish: &Publish) -> Cost {
        encode::cost(
            &publish.topic,
            &publish.payload,
            self.mode == TbMode::Gateway,
        )
    }

    fn refused_hint(&self, code: ConnectReturnCode) -> Option<&'static str> {
        match code {
            ConnectReturnCode::BadUserNamePassword => {
                Some(" (ThingsBoard 0x04: access token missing or malformed, or a bad MQTT basic username/password; copy access_token or the MQTT basic credentials from the device's page)")
            }
            ConnectReturnCode::NotAuthorized => Some(
                " (ThingsBoard 0x05: access token invalid or device disabled, or unknown MQTT basic credentials; copy them from the device's page and check the device is active)",
            ),
            _ => None,
        }
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
            ts_source: Default::default(),
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
    fn an_rpc_answer_on_a_new_session_connects_its_child_first() {
        let mut tb = Thingsboard::new("tb", &cfg("mode = \"gateway\""), Arc::default());
        let answer = || {
            Publish::control(
                "v1/gateway/rpc",
                &serde_json::json!({"device":"A","id":42,"data":{"on":true}}),
            )
        };
        let topics =
            |out: Vec<Publish>| -> Vec<String> { out.into_iter().map(|p| p.topic).collect() };
        assert_eq!(
            topics(tb.reply(answer())),
            ["v1/gateway/connect", "v1/gateway/rpc"]
        );
        assert_eq!(topics(tb.reply(answer())), ["v1/gateway/rpc"]);
        tb.session_start();
        assert_eq!(
            topics(tb.reply(answer())),
            ["v1/gateway/connect", "v1/gateway/rpc"]
        );
        // Outpost's own answers (device API) are left as they are.
        let own = Publish::control("v1/devices/me/rpc/response/1", &serde_json::json!({}));
        assert_eq!(topics(tb.reply(own)), ["v1/devices/me/rpc/response/1"]);
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
