//! ThingsBoard payloads: telemetry as `{"ts":..,"values":{..}}` entries,
//! many per PUBLISH, per device in ts order, never above the payload
//! limit; attributes merged per device. ThingsBoard keeps one value per
//! (device, key, millisecond): within a batch, two records of one device
//! with the same ts are merged into one entry when their keys differ, and
//! a key clash is reported (the later value is the one ThingsBoard keeps).

use serde_json::{Map, Value};

use crate::record::{Reading, Record, RecordKind};
use crate::sink::Publish;

/// A (device, ts, key) sent twice in one batch.
pub(super) type Clash = (String, i64, String);

/// A reading's values as ThingsBoard key-values: an object stays as it is,
/// anything else becomes `{"value": ...}`.
pub(super) fn key_values(payload: &[u8]) -> Map<String, Value> {
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
            .saturating_add(1)
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
            device.len().saturating_add(6)
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

/// Telemetry records as batched publishes on `topic` (gateway mode: keyed
/// by device), with the key clashes found on the way.
pub(super) fn telemetry(
    records: &[Record],
    topic: &'static str,
    gateway: bool,
    max_payload: usize,
) -> (Vec<Publish>, Vec<Clash>) {
    // Telemetry: batched, merged by (device, ts).
    let mut batch = Batcher::new(topic, gateway, max_payload);
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
            if size.saturating_add(grown) <= limit {
                *e = merged;
                batch.size = batch.size.saturating_add(grown);
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
        let mut cost = entry.size().saturating_add(batch.device_cost(&dev_key));
        if batch.size.saturating_add(cost) > batch.limit && !batch.devices.is_empty() {
            batch.flush();
            cost = entry.size().saturating_add(batch.device_cost(&dev_key));
        }
        batch.size = batch.size.saturating_add(cost);
        match batch.devices.iter_mut().find(|(d, _)| *d == dev_key) {
            Some((_, entries)) => entries.push(entry),
            None => batch.devices.push((dev_key, vec![entry])),
        }
    }
    batch.flush();
    (batch.out, clashes)
}

/// Attribute records: the latest value per key wins, per device, in order.
pub(super) fn attributes(
    records: &[Record],
    topic: &str,
    gateway: bool,
    max_payload: usize,
) -> Vec<Publish> {
    let mut out = Vec::new();
    let mut attrs: Vec<(String, Map<String, Value>, Vec<i64>)> = Vec::new();
    let mut size: usize = 2;
    for r in records.iter().filter(|r| r.kind == RecordKind::Attributes) {
        let values = key_values(&r.payload);
        let cost = serde_json::to_vec(&values)
            .map(|v| v.len())
            .unwrap_or(0)
            .saturating_add(r.device.len())
            .saturating_add(6);
        if size.saturating_add(cost) > max_payload && !attrs.is_empty() {
            out.push(attributes_publish(
                topic,
                gateway,
                std::mem::take(&mut attrs),
            ));
            size = 2;
        }
        size = size.saturating_add(cost);
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
    out
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
