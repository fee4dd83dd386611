//! Child devices of the gateway API, beyond their data:
//! - attribute requests: a local device asks on its request topic
//!   (`devices/{device}/attributes/request/{id}`, routed with
//!   `kind = "attributes_request"`), outpost asks ThingsBoard with a fresh id
//!   (`v1/gateway/attributes/request`, or `v1/devices/me/attributes/request/N`
//!   in device mode) and the answer goes to the device's response topic (the
//!   request topic with `request` replaced by `response`);
//! - after every reconnect, outpost asks again, for each child it knows,
//!   for the shared keys that child has received or asked for, so changes
//!   made while the uplink was down reach it (on its attributes topic);
//! - `v1/gateway/disconnect` for a child not heard from for `child_idle`,
//!   or whose source says it went away (its MQTT connection ended or its
//!   will fired, its serial port disappeared); its next reading announces
//!   it again with `v1/gateway/connect`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::Thingsboard;
use crate::config::TbMode;
use crate::recent::Recent;
use crate::record::Record;
use crate::sink::{Action, Downlink, Publish};
use crate::source::presence::Notice;
use crate::topic::fill;

/// Requests awaiting their answer; beyond, the oldest are forgotten.
const MAX_PENDING: usize = 1024;

/// Children whose shared keys are remembered (least recent forgotten).
const MAX_CHILDREN: usize = 10_000;

/// Shared keys remembered per child.
const MAX_KEYS: usize = 256;

/// A child that went away is disconnected once none of its readings was
/// encoded for this long (its queued ones go first).
const LEAVING_QUIET: Duration = Duration::from_secs(2);

/// Where an answer goes.
#[derive(Debug, Clone)]
enum Pending {
    /// A local device's own request: its response topic and the keys asked
    /// for (a single-key answer names no key). The gateway API asks one
    /// scope per request, so a request for both is two: the first answer
    /// waits in `got` for its `partner`'s, and the device gets one answer.
    Local {
        topic: String,
        keys: Vec<String>,
        partner: Option<u64>,
        got: Map<String, Value>,
    },
    /// outpost's refresh after a reconnect: the child's attributes topic.
    Refresh { device: String, keys: Vec<String> },
}

#[derive(Debug)]
pub(super) struct Children {
    /// `v1/gateway/disconnect` after this long without a reading.
    idle: Option<Duration>,
    last_seen: HashMap<String, Instant>,
    keys: Recent<BTreeSet<String>>,
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
    /// Asked for every known child after a reconnect (`shared_keys`).
    configured: Vec<String>,
    /// Children whose source went away, with why: disconnected once quiet.
    pub(super) leaving: HashMap<String, &'static str>,
}

impl Children {
    pub(super) fn new(idle: Option<Duration>, configured: Vec<String>) -> Children {
        Children {
            configured,
            idle,
            last_seen: HashMap::new(),
            keys: Recent::new(MAX_CHILDREN),
            pending: BTreeMap::new(),
            next_id: 0,
            leaving: HashMap::new(),
        }
    }

    fn id(&mut self, p: Pending) -> u64 {
        self.next_id = self.next_id.wrapping_rem(999_999_999).wrapping_add(1);
        self.pending.insert(self.next_id, p);
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_first();
        }
        self.next_id
    }

    fn remember(&mut self, device: &str, keys: impl IntoIterator<Item = String>) {
        let known = self.keys.entry(device, BTreeSet::new);
        for k in keys {
            if known.len() < MAX_KEYS {
                known.insert(k);
            }
        }
    }

    pub(super) fn seen(&mut self, device: &str, now: Instant) {
        // Known from now on, for the refresh after a reconnect.
        self.keys.entry(device, BTreeSet::new);
        if self.last_seen.len() >= MAX_CHILDREN && !self.last_seen.contains_key(device) {
            self.last_seen.clear();
        }
        self.last_seen.insert(device.to_string(), now);
    }
}

/// The keys a local request names: `{"clientKeys":"a,b","sharedKeys":"c"}`
/// (the device API's form), `{"client":[..],"shared":[..]}`, or
/// `{"keys":[..]}` (shared).
fn requested(payload: &[u8]) -> (Vec<String>, Vec<String>) {
    let v: Value = serde_json::from_slice(payload).unwrap_or_default();
    let list = |v: Option<&Value>| -> Vec<String> {
        match v {
            Some(Value::String(s)) => s
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(String::from)
                .collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            _ => Vec::new(),
        }
    };
    let client = [list(v.get("clientKeys")), list(v.get("client"))].concat();
    let shared = [
        list(v.get("sharedKeys")),
        list(v.get("shared")),
        list(v.get("keys")),
    ]
    .concat();
    (client, shared)
}

/// One gateway attribute request: one scope, the names in `keys`.
fn gateway_request(id: u64, device: &str, client: bool, keys: &[String]) -> Publish {
    let mut m = Map::new();
    m.insert("id".into(), Value::from(id));
    m.insert("device".into(), Value::from(device));
    m.insert("client".into(), Value::from(client));
    m.insert("keys".into(), Value::from(keys.to_vec()));
    Publish::control("v1/gateway/attributes/request", &Value::Object(m))
}

/// The request topic with its `request` level replaced by `response`
/// (attribute requests and client-side RPC alike).
pub(super) fn response_topic(request: &str) -> String {
    match request.rsplit_once("/request/") {
        Some((head, id)) => format!("{head}/response/{id}"),
        None => format!("{request}/response"),
    }
}

impl Thingsboard {
    /// A local device's attribute request, sent upstream with fresh ids;
    /// the record rides on the last publish.
    pub(super) fn encode_attribute_request(&mut self, r: &Record) -> Vec<Publish> {
        let (client, shared) = requested(&r.payload);
        let topic = response_topic(&r.topic);
        let mut out = if self.mode == TbMode::Gateway {
            self.children.remember(&r.device, shared.iter().cloned());
            self.gateway_requests(&r.device, &topic, client, shared)
        } else {
            let keys = [client.clone(), shared.clone()].concat();
            let id = self.children.id(Pending::Local {
                topic,
                keys,
                partner: None,
                got: Map::new(),
            });
            let mut m = Map::new();
            m.insert("clientKeys".into(), Value::from(client.join(",")));
            m.insert("sharedKeys".into(), Value::from(shared.join(",")));
            vec![Publish::control(
                format!("v1/devices/me/attributes/request/{id}"),
                &Value::Object(m),
            )]
        };
        if let Some(last) = out.last_mut() {
            last.ids = vec![r.id];
        }
        out
    }

    /// The gateway API's requests for a local device: one per scope, in the
    /// form `AbstractGatewaySessionHandler.onDeviceAttributesRequestJson`
    /// reads (`"client"` a boolean, the names in `"keys"`; anything else
    /// throws there, and the transport closes the whole gateway session).
    fn gateway_requests(
        &mut self,
        device: &str,
        topic: &str,
        client: Vec<String>,
        shared: Vec<String>,
    ) -> Vec<Publish> {
        let mut scopes: Vec<(bool, Vec<String>)> = Vec::new();
        if !client.is_empty() {
            scopes.push((true, client));
        }
        if !shared.is_empty() || scopes.is_empty() {
            scopes.push((false, shared));
        }
        let ids: Vec<u64> = scopes
            .iter()
            .map(|(_, keys)| {
                self.children.id(Pending::Local {
                    topic: topic.to_string(),
                    keys: keys.clone(),
                    partner: None,
                    got: Map::new(),
                })
            })
            .collect();
        if let [a, b] = ids.as_slice() {
            for (id, other) in [(a, b), (b, a)] {
                if let Some(Pending::Local { partner, .. }) = self.children.pending.get_mut(id) {
                    *partner = Some(*other);
                }
            }
        }
        let mut out: Vec<Publish> = self.announce(device).into_iter().collect();
        out.extend(
            scopes
                .iter()
                .zip(ids)
                .map(|((client, keys), id)| gateway_request(id, device, *client, keys)),
        );
        out
    }
    /// Shared keys a child received (pushed by ThingsBoard) are asked for
    /// again after the next reconnect.
    pub(super) fn note_child_keys(&mut self, device: &str, values: &Map<String, Value>) {
        self.children.remember(device, values.keys().cloned());
    }

    /// After a reconnect: each known child's shared keys, asked again.
    pub(super) fn refresh_requests(&mut self) -> Vec<Publish> {
        if self.mode != TbMode::Gateway {
            return Vec::new();
        }
        let configured = &self.children.configured;
        let known: Vec<(String, Vec<String>)> = self
            .children
            .keys
            .iter()
            .map(|(d, k)| {
                let mut keys: BTreeSet<String> = k.clone();
                keys.extend(configured.iter().cloned());
                (d.to_string(), keys.into_iter().collect::<Vec<_>>())
            })
            .filter(|(_, k)| !k.is_empty())
            .collect();
        let mut out = Vec::new();
        for (device, keys) in known {
            // Connected first: ThingsBoard serves a child's request only
            // on a session it knows the child on (after a reconnect, none).
            out.extend(self.announce(&device));
            let id = self.children.id(Pending::Refresh {
                device: device.clone(),
                keys: keys.clone(),
            });
            out.push(gateway_request(id, &device, false, &keys));
        }
        out
    }

    /// An answer on `v1/gateway/attributes/response` (`{"id","device",
    /// "value"|"values"}`) or `v1/devices/me/attributes/response/{id}`
    /// (`{"client":{..},"shared":{..}}`); `None` if it is not ours.
    pub(super) fn attribute_answer(
        &mut self,
        id: Option<u64>,
        payload: &[u8],
    ) -> Option<Vec<Action>> {
        let v: Value = serde_json::from_slice(payload).ok()?;
        let id = id.or_else(|| v.get("id").and_then(Value::as_u64))?;
        let pending = self.children.pending.remove(&id)?;
        let keys = match &pending {
            Pending::Local { keys, .. } | Pending::Refresh { keys, .. } => keys,
        };
        let mut values = Map::new();
        if let Some(Value::Object(m)) = v.get("values") {
            values.extend(m.clone());
        } else if let Some(one) = v.get("value") {
            if let Some(k) = keys.first() {
                values.insert(k.clone(), one.clone());
            }
        }
        for part in ["client", "shared"] {
            if let Some(Value::Object(m)) = v.get(part) {
                values.extend(m.clone());
            }
        }
        Some(vec![match pending {
            Pending::Local {
                topic,
                partner,
                mut got,
                ..
            } => {
                got.extend(values);
                // The other scope's answer still to come: it carries both.
                if let Some(Pending::Local { got: theirs, .. }) =
                    partner.and_then(|p| self.children.pending.get_mut(&p))
                {
                    theirs.extend(got);
                    return Some(Vec::new());
                }
                Action::Local(Downlink::Publish {
                    topic,
                    payload: serde_json::to_vec(&Value::Object(got)).unwrap_or_default(),
                })
            }
            Pending::Refresh { device, .. } => Action::Local(Downlink::Settings {
                topic: fill(&self.topics.attributes, &device, ""),
                values,
            }),
        }])
    }

    /// `v1/gateway/disconnect` for announced children idle for too long.
    /// A child's source said it went away, or is back. One that went away
    /// is disconnected once its queued readings are sent (the sink's queue
    /// is drained and none of its readings was encoded for
    /// [`LEAVING_QUIET`]), unless it is back first.
    pub(super) fn child_presence(&mut self, notice: Notice) {
        if self.mode != TbMode::Gateway {
            return;
        }
        match notice {
            Notice::Gone { device, why } if self.connected.contains(&device) => {
                self.children.leaving.insert(device, why);
            }
            Notice::Gone { .. } => {}
            Notice::Back { device } => {
                self.children.leaving.remove(&device);
            }
        }
    }

    fn disconnect(&mut self, device: String, why: &str) -> Publish {
        self.connected.remove(&device);
        self.children.last_seen.remove(&device);
        self.children.leaving.remove(&device);
        tracing::info!(sink = %self.sink, device = %device, reason = why, "child disconnected from ThingsBoard");
        let mut m = Map::new();
        m.insert("device".into(), Value::from(device));
        Publish::control("v1/gateway/disconnect", &Value::Object(m))
    }

    /// Disconnects the children that went away (once `drained`: nothing
    /// of the sink's is queued) or went quiet for `child_idle`.
    pub(super) fn idle_children(&mut self, now: Instant, drained: bool) -> Vec<Publish> {
        let quiet = |t: Option<&Instant>| {
            drained && t.map_or(true, |t| now.saturating_duration_since(*t) >= LEAVING_QUIET)
        };
        let left: Vec<(String, &'static str)> = self
            .children
            .leaving
            .iter()
            .filter(|(d, _)| quiet(self.children.last_seen.get(*d)))
            .map(|(d, why)| (d.clone(), *why))
            .collect();
        let mut out: Vec<Publish> = left
            .into_iter()
            .map(|(device, why)| self.disconnect(device, why))
            .collect();
        let Some(idle) = self.children.idle else {
            return out;
        };
        let gone: Vec<String> = self
            .connected
            .iter()
            .filter(|d| {
                self.children
                    .last_seen
                    .get(*d)
                    .map_or(true, |t| now.saturating_duration_since(*t) >= idle)
            })
            .cloned()
            .collect();
        out.extend(
            gone.into_iter()
                .map(|device| self.disconnect(device, "not heard from for child_idle")),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_form_names_its_keys() {
        assert_eq!(
            requested(br#"{"clientKeys":"a, b","sharedKeys":"c"}"#),
            (vec!["a".into(), "b".into()], vec!["c".into()])
        );
        assert_eq!(
            requested(br#"{"client":["a"],"shared":["c","d"]}"#),
            (vec!["a".into()], vec!["c".into(), "d".into()])
        );
        assert_eq!(requested(br#"{"keys":["k"]}"#), (vec![], vec!["k".into()]));
        assert_eq!(requested(b"not json"), (vec![], vec![]));
        assert_eq!(
            response_topic("devices/t1/attributes/request/7"),
            "devices/t1/attributes/response/7"
        );
    }
}
