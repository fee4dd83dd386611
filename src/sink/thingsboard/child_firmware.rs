//! Firmware updates of child devices. ThingsBoard's gateway API carries a
//! child's `fw_*` shared attributes but no firmware transfer: chunks are
//! fetched over the device API (`v2/fw/...`) of the device's own session.
//! So a child whose access token the site gives
//! (`[sink.NAME.firmware.child_tokens]`) gets a device session of its own,
//! for its firmware only, run by the same [`Firmware`] steps as outpost's
//! own device: its image under `firmware/children/{device}/`, the notice on
//! `child_notice_topic`, the answer on `child_result_topic`.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::firmware::{self, Firmware, KEYS};
use super::{PayloadLimit, TbAdmit, Thingsboard};
use crate::config::{TbMode, ThingsboardSinkConfig};
use crate::record::Record;
use crate::route::Admit;
use crate::sink::session::Settings;
use crate::sink::{Action, Platform, Publish, SessionStart};
use crate::topic::fill;

pub struct ChildFirmware {
    device: String,
    firmware: Firmware,
    request: u64,
    max_payload: usize,
}

impl ChildFirmware {
    /// The firmware session of child `device` of the sink configured by `t`.
    pub fn new(t: &ThingsboardSinkConfig, device: &str, state_dir: &std::path::Path) -> Self {
        let fw = &t.firmware;
        let cfg = crate::config::sink::FirmwareConfig {
            // `enabled` is about outpost's own device; a child with a
            // token is updated.
            enabled: true,
            chunk_size: crate::units::ByteSize(fw.chunk_size.0.min(t.max_payload_size.0).max(1)),
            notice_topic: fill(&fw.child_notice_topic, device, ""),
            result_topic: fill(&fw.child_result_topic, device, ""),
            ..fw.clone()
        };
        let dir = state_dir
            .join("firmware")
            .join("children")
            .join(firmware::safe_name(device));
        ChildFirmware {
            device: device.to_string(),
            firmware: Firmware::new(&cfg).in_dir(dir),
            request: 0,
            max_payload: t.max_payload_size.0 as usize,
        }
    }

    /// The local topic the child answers on.
    pub fn result_topic(t: &ThingsboardSinkConfig, device: &str) -> String {
        fill(&t.firmware.child_result_topic, device, "")
    }

    /// The sink's connection, as the child: its token, its own client id.
    pub fn settings(t: &ThingsboardSinkConfig, device: &str, token: &str) -> Settings {
        let child = ThingsboardSinkConfig {
            access_token: Some(token.to_string()),
            client_id: Some(format!("outpost-fw-{}", firmware::safe_name(device))),
            username: None,
            password: None,
            ..t.clone()
        };
        Thingsboard::settings(&child)
    }
}

impl Platform for ChildFirmware {
    fn session_start(&mut self) -> SessionStart {
        self.request = super::limits::next_request_id(self.request);
        let mut ask = Map::new();
        ask.insert("sharedKeys".into(), Value::from(KEYS));
        let mut publish = vec![Publish::control(
            format!("v1/devices/me/attributes/request/{}", self.request),
            &Value::Object(ask),
        )];
        publish.extend(self.firmware.session_start(self.request));
        SessionStart {
            subscribe: vec![
                "v2/fw/response/+/chunk/+".into(),
                "v2/fw/error".into(),
                "v1/devices/me/attributes".into(),
                "v1/devices/me/attributes/response/+".into(),
            ],
            publish,
        }
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Vec<Action> {
        if let Some(rest) = topic.strip_prefix("v2/fw/response/") {
            let mut parts = rest.split('/');
            if let (Some(req), Some("chunk"), Some(n)) = (parts.next(), parts.next(), parts.next())
            {
                return firmware::actions(self.firmware.chunk(req, n, payload));
            }
            return Vec::new();
        }
        if topic == "v2/fw/error" {
            return firmware::actions(self.firmware.server_error(payload));
        }
        let pushed = topic == "v1/devices/me/attributes";
        let attrs = match topic.strip_prefix("v1/devices/me/attributes/response/") {
            Some(id) if id == self.request.to_string() => serde_json::from_slice::<Value>(payload)
                .ok()
                .and_then(|v| v.get("shared").and_then(Value::as_object).cloned()),
            Some(_) => None,
            None if topic == "v1/devices/me/attributes" => serde_json::from_slice::<Value>(payload)
                .ok()
                .and_then(|v| v.as_object().cloned()),
            None => None,
        };
        match attrs {
            Some(a) => firmware::actions(self.firmware.offered(&a, pushed)),
            None => Vec::new(),
        }
    }

    fn on_local(&mut self, topic: &str, payload: &[u8]) -> Vec<Action> {
        firmware::actions(self.firmware.result(topic, payload))
    }

    fn tick(&mut self, now: std::time::Instant, _drained: bool) -> Vec<Publish> {
        self.firmware.tick(now)
    }

    fn admission(&self) -> Arc<dyn Admit> {
        Arc::new(TbAdmit::new(
            TbMode::Device,
            PayloadLimit::new(self.max_payload, None),
        ))
    }

    /// A firmware session carries no records.
    fn encode(&mut self, _records: &[Record]) -> Vec<Publish> {
        Vec::new()
    }

    fn topic_for_logs(&self, topic: &str) -> String {
        format!("{topic} (firmware session of {})", self.device)
    }
}
