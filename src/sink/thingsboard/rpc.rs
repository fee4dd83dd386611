//! RPC through ThingsBoard, both ways:
//! - server-side RPC to outpost itself (device API) goes to outpost's
//!   [`Agent`](crate::sink::Agent); to a child device (gateway API) it goes
//!   to the device's local request topic, and its first answer (or a
//!   timeout error) goes back;
//! - client-side RPC and claims from local devices go up with a fresh id,
//!   and the answer comes back to the device's response topic.

use serde_json::{Map, Value};

use super::encode::key_values;
use super::Thingsboard;
use crate::config::TbMode;
use crate::record::{Record, RecordKind};
use crate::sink::{Action, Downlink, Publish, OWN_METHODS};
use crate::topic::fill;

/// Client-side RPCs awaiting their answer from ThingsBoard; beyond, the
/// oldest are forgotten (their answer, if it ever comes, is dropped).
pub(super) const MAX_PENDING: usize = 1024;

impl Thingsboard {
    /// A device's claim, and its client-side RPC with a fresh upstream id
    /// (devices number their requests independently).
    pub(super) fn encode_requests(&mut self, records: &[Record], out: &mut Vec<Publish>) {
        let gateway = self.mode == TbMode::Gateway;
        for r in records {
            match r.kind {
                RecordKind::Claim => {
                    let values = Value::Object(key_values(&r.payload));
                    let body = if gateway {
                        let mut m = Map::new();
                        m.insert(r.device.clone(), values);
                        Value::Object(m)
                    } else {
                        values
                    };
                    let mut p = Publish::control(self.topic(RecordKind::Claim), &body);
                    p.ids = vec![r.id];
                    out.push(p);
                }
                RecordKind::Rpc => {
                    self.next_rpc = self.next_rpc.wrapping_rem(999_999_999).wrapping_add(1);
                    let response = super::children::response_topic(&r.topic);
                    let topic = format!("{}/{}", self.topic(RecordKind::Rpc), self.next_rpc);
                    let mut p = Publish::control(topic, &Value::Object(key_values(&r.payload)));
                    self.client_rpc
                        .insert(self.next_rpc, (response, p.payload.clone()));
                    while self.client_rpc.len() > MAX_PENDING {
                        self.client_rpc.pop_first();
                    }
                    p.ids = vec![r.id];
                    out.push(p);
                }
                RecordKind::AttributesRequest => {
                    out.extend(self.encode_attribute_request(r));
                }
                RecordKind::Telemetry | RecordKind::Attributes => {}
            }
        }
    }

    /// The answer to a client-side RPC a local device made.
    pub(super) fn client_rpc_answer(&mut self, id: &str, payload: &[u8]) -> Option<Action> {
        let (local, _) = id
            .parse::<u64>()
            .ok()
            .and_then(|n| self.client_rpc.remove(&n))?;
        Some(Action::Local(Downlink::Publish {
            topic: local,
            payload: payload.to_vec(),
        }))
    }

    /// Server-side RPC on the device API (`v1/devices/me/rpc/request/{id}`):
    /// outpost's own methods for outpost; in device mode any other method
    /// for the local device `device_name`.
    pub(super) fn device_rpc(&self, id: &str, payload: &[u8]) -> Vec<Action> {
        // Our own requests, echoed by a plain broker standing in for
        // ThingsBoard: not RPC to us. Known by id *and* body: ThingsBoard
        // numbers its server-side RPCs per device from small integers too,
        // so an id alone clashes with a client-side RPC still pending.
        let ours = id
            .parse::<u64>()
            .ok()
            .and_then(|n| self.client_rpc.get(&n))
            .is_some_and(|(_, sent)| sent.as_slice() == payload);
        let request: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        if ours || request.get("method").and_then(Value::as_str) == Some("getSessionLimits") {
            return Vec::new();
        }
        let method = request
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let topic = format!("v1/devices/me/rpc/response/{id}");
        if self.mode == TbMode::Device && !OWN_METHODS.contains(&method.as_str()) {
            // For the local device behind this session (`device_name`),
            // relayed as in gateway mode, with the same timeout reply.
            let device = &self.device_name;
            let params = request.get("params").cloned().unwrap_or_default();
            let body = serde_json::json!({"method": method, "params": params});
            return vec![Action::Local(Downlink::Rpc {
                request_topic: fill(&self.topics.rpc_request, device, id),
                request: serde_json::to_vec(&body).unwrap_or_default(),
                response_topic: fill(&self.topics.rpc_response, device, id),
                reply: Box::new(move |answer| {
                    let data = match answer {
                        Ok(v) => v,
                        Err(e) => serde_json::json!({"error": e}),
                    };
                    Publish::control(topic, &data)
                }),
            })];
        }
        vec![Action::Own {
            method,
            params: request.get("params").cloned().unwrap_or_default(),
            reply: Box::new(move |answer| Publish::control(topic, &answer)),
        }]
    }

    /// Server-side RPC on the gateway API, for a child device.
    pub(super) fn gateway_rpc(&self, payload: &[u8]) -> Result<Action, String> {
        let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
        let device = v
            .get("device")
            .and_then(Value::as_str)
            .ok_or("no `device`")?
            .to_string();
        let data = v.get("data").unwrap_or(&Value::Null);
        let id = match &data["id"] {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => return Err("no `data.id`".into()),
        };
        let id_value = data["id"].clone();
        let request = serde_json::json!({"method": data["method"], "params": data["params"]});
        let reply_device = device.clone();
        Ok(Action::Local(Downlink::Rpc {
            request_topic: fill(&self.topics.rpc_request, &device, &id),
            request: serde_json::to_vec(&request).unwrap_or_default(),
            response_topic: fill(&self.topics.rpc_response, &device, &id),
            reply: Box::new(move |answer| {
                let data = match answer {
                    Ok(v) => v,
                    Err(e) => serde_json::json!({"error": e}),
                };
                let body =
                    serde_json::json!({"device": reply_device, "id": id_value, "data": data});
                Publish::control("v1/gateway/rpc", &body)
            }),
        }))
    }
}

/// `{"device":..,"id":..,"data":..}` is a reply; requests carry `data.method`.
pub(super) fn is_reply(payload: &[u8]) -> bool {
    serde_json::from_slice::<Value>(payload).is_ok_and(|v| {
        v.get("id").is_some() && v.get("data").and_then(|d| d.get("method")).is_none()
    })
}
