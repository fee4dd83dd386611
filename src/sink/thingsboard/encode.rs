//! ThingsBoard payloads: telemetry as `{"ts":..,"values":{..}}` entries,
//! many per PUBLISH, per device in ts order, never above the payload
//! limit; attributes merged per device. ThingsBoard keeps one value per
//! (device, key, millisecond): within a batch, two records of one device
//! with the same ts are merged into one entry when their keys differ, and
//! a key clash is reported (the later value is the one ThingsBoard keeps).

use serde_json::{Map, Value};

use super::values::data_points;
use crate::record::{Reading, Record, RecordKind};
use crate::sink::session::Cost;
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

/// The most data points one publish may carry, in all and per child
/// (from the platform's `telemetryDataPoints` windows).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PointCaps {
    pub message: Option<u64>,
    pub child: Option<u64>,
}

impl PointCaps {
    /// Would `more` go beyond a cap, with `message` and `device` points in?
    fn over(&self, message: u64, device: u64, more: u64) -> bool {
        self.message
            .is_some_and(|cap| message.saturating_add(more) > cap)
            || self
                .child
                .is_some_and(|cap| device.saturating_add(more) > cap)
    }
}

/// Accumulates entries per device into publishes no larger than a limit.
struct Batcher {
    topic: &'static str,
    gateway: bool,
    limit: usize,
    caps: PointCaps,
    /// (device, entries) in first-seen order.
    devices: Vec<(String, Vec<Entry>)>,
    size: usize,
    /// Data points in the batch.
    points: u64,
    out: Vec<Publish>,
}

impl Batcher {
    fn new(topic: &'static str, gateway: bool, limit: usize, caps: PointCaps) -> Batcher {
        Batcher {
            topic,
            gateway,
            limit,
            caps,
            devices: Vec::new(),
            size: 2,
            points: 0,
            out: Vec::new(),
        }
    }

    /// Would `more` data points for `device` go beyond a cap?
    fn over_points(&self, device: &str, more: u64) -> bool {
        let device_points: u64 = self
            .devices
            .iter()
            .find(|(d, _)| d == device)
            .map(|(_, es)| es.iter().map(|e| e.values.len() as u64).sum())
            .unwrap_or(0);
        self.caps.over(self.points, device_points, more)
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
        self.points = 0;
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
    telemetry_within(records, topic, gateway, max_payload, PointCaps::default())
}

/// [`telemetry`], with no publish carrying more data points than `caps`.
pub(super) fn telemetry_within(
    records: &[Record],
    topic: &'static str,
    gateway: bool,
    max_payload: usize,
    caps: PointCaps,
) -> (Vec<Publish>, Vec<Clash>) {
    // Telemetry: batched, merged by (device, ts).
    let mut batch = Batcher::new(topic, gateway, max_payload, caps);
    let mut clashes = Vec::new();
    for r in records.iter().filter(|r| r.kind == RecordKind::Telemetry) {
        let values = data_points(&r.payload);
        let dev_key = if gateway {
            r.device.clone()
        } else {
            String::new()
        };
        let (size, limit, caps, in_message) = (batch.size, batch.limit, batch.caps, batch.points);
        let in_device: u64 = batch
            .devices
            .iter()
            .find(|(d, _)| *d == dev_key)
            .map(|(_, es)| es.iter().map(|e| e.values.len() as u64).sum())
            .unwrap_or(0);
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
            let more_points = (merged.values.len() as u64).saturating_sub(e.values.len() as u64);
            let fits_points = !caps.over(in_message, in_device, more_points);
            if size.saturating_add(grown) <= limit && fits_points {
                *e = merged;
                batch.size = batch.size.saturating_add(grown);
                batch.points = batch.points.saturating_add(more_points);
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
        let points = entry.values.len() as u64;
        if (batch.size.saturating_add(cost) > batch.limit || batch.over_points(&dev_key, points))
            && !batch.devices.is_empty()
        {
            batch.flush();
            cost = entry.size().saturating_add(batch.device_cost(&dev_key));
        }
        batch.size = batch.size.saturating_add(cost);
        batch.points = batch.points.saturating_add(points);
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
        let values = data_points(&r.payload);
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

/// What a publish on `topic` costs against ThingsBoard's windows: telemetry
/// counts its data points (key-values of every entry), and in gateway mode
/// every child it names counts it too.
pub(super) fn cost(topic: &str, payload: &[u8], gateway: bool) -> Cost {
    let telemetry = matches!(
        topic,
        "v1/devices/me/telemetry" | "v2/t" | "v1/gateway/telemetry"
    );
    let v: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(_) => {
            return Cost {
                telemetry,
                points: 0,
                children: Vec::new(),
            }
        }
    };
    let points_of = |entries: &Value| -> u64 {
        let count = |e: &Value| match e.get("values") {
            Some(Value::Object(m)) => m.len() as u64,
            _ => e.as_object().map_or(1, |m| m.len() as u64),
        };
        match entries {
            Value::Array(a) => a.iter().map(count).sum(),
            other => count(other),
        }
    };
    let mut children = Vec::new();
    if gateway && topic.starts_with("v1/gateway/") {
        match (&v, v.get("device").and_then(Value::as_str)) {
            // connect, disconnect, an attribute request, an RPC reply.
            (_, Some(device)) => children.push((device.to_string(), 0)),
            // telemetry, attributes, claim: keyed by device.
            (Value::Object(m), None) => {
                for (device, body) in m {
                    let points = if telemetry { points_of(body) } else { 0 };
                    children.push((device.clone(), points));
                }
            }
            _ => {}
        }
    }
    let points = if !telemetry {
        0
    } else if gateway && topic.starts_with("v1/gateway/") {
        children.iter().map(|(_, p)| p).sum()
    } else {
        // Device telemetry, or the gateway's own (health).
        points_of(&v)
    };
    Cost {
        telemetry,
        points,
        children,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn batches_are_cut_to_the_data_point_windows_and_every_row_goes() {
        let records: Vec<Record> = (0..40)
            .map(|i| {
                rec(
                    i,
                    &format!("c{}", i % 4),
                    1000 + i,
                    r#"{"a":1,"b":2,"c":3}"#,
                )
            })
            .collect();
        let caps = PointCaps {
            message: Some(10),
            child: Some(6),
        };
        let (out, _) = telemetry_within(&records, "v1/gateway/telemetry", true, 65536, caps);
        let mut ids: Vec<i64> = Vec::new();
        for p in &out {
            let c = cost(&p.topic, &p.payload, true);
            assert!(c.telemetry);
            assert!(c.points <= 10, "{} points in {:?}", c.points, c);
            assert!(c.children.iter().all(|(_, p)| *p <= 6), "{c:?}");
            assert_eq!(c.points, 3 * p.ids.len() as u64);
            ids.extend(&p.ids);
        }
        ids.sort();
        assert_eq!(ids, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn costs_name_the_children_a_gateway_message_speaks_for() {
        let c = cost("v1/gateway/connect", br#"{"device":"A","type":"t"}"#, true);
        assert_eq!(
            c,
            Cost {
                telemetry: false,
                points: 0,
                children: vec![("A".into(), 0)]
            }
        );
        let c = cost(
            "v1/gateway/telemetry",
            br#"{"A":[{"ts":1,"values":{"x":1,"y":2}}],"B":[{"ts":1,"values":{"x":1}},{"ts":2,"values":{"x":2}}]}"#,
            true,
        );
        assert_eq!(c.points, 4);
        assert_eq!(c.children, vec![("A".into(), 2), ("B".into(), 2)]);
        let c = cost(
            "v1/devices/me/telemetry",
            br#"[{"ts":1,"values":{"x":1,"y":2}}]"#,
            false,
        );
        assert_eq!((c.telemetry, c.points), (true, 2));
        let c = cost(
            "v1/devices/me/telemetry",
            br#"{"ts":1,"values":{"a":1,"b":2,"c":3}}"#,
            true,
        );
        assert_eq!(
            (c.telemetry, c.points),
            (true, 3),
            "the gateway's own telemetry"
        );
        assert!(c.children.is_empty());
        let c = cost("v1/devices/me/attributes", br#"{"x":1}"#, false);
        assert_eq!(c, Cost::message());
    }
}
