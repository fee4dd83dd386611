//! Routes: which local messages become records, for which sink and device.
//!
//! A route is a topic filter (`sensors/+/telemetry`) bound to a sink. A message
//! that matches no route is left to the local broker alone, so LAN pub/sub is
//! untouched. The router also stamps measurement times: a payload's own `ts`
//! is kept; otherwise the ingest time is used, nudged so that each device's
//! stamps are strictly increasing (platforms keep one value per device, key
//! and millisecond, so two readings stamped alike would overwrite each other).

use std::collections::HashMap;

use crate::config::RouteConfig;
use crate::record::{now_ms, Reading, Record, RecordKind};
use crate::topic::TopicFilter;

#[derive(Debug, Clone)]
enum DeviceFrom {
    Level(usize),
    Fixed(String),
}

#[derive(Debug, Clone)]
struct Route {
    filter: TopicFilter,
    sink: String,
    device: DeviceFrom,
    kind: RecordKind,
}

/// Turns local messages into records. One per process; not shared.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    last_ts: HashMap<String, i64>,
}

impl Router {
    /// Builds the router from checked route configs.
    pub fn new(configs: &[RouteConfig]) -> Result<Router, String> {
        let mut routes = Vec::with_capacity(configs.len());
        for c in configs {
            let filter = TopicFilter::parse(&c.topic)?;
            let device = match &c.device {
                Some(d) => DeviceFrom::Fixed(d.clone()),
                None => DeviceFrom::Level(filter.device_level(c.device_level)?),
            };
            routes.push(Route {
                filter,
                sink: c.sink.clone(),
                device,
                kind: c.kind,
            });
        }
        Ok(Router {
            routes,
            last_ts: HashMap::new(),
        })
    }

    /// Replaces the routes (a remote configuration change), keeping each
    /// device's last stamp so stamps keep increasing.
    pub fn reconfigure(&mut self, configs: &[RouteConfig]) -> Result<(), String> {
        let next = Router::new(configs)?;
        self.routes = next.routes;
        Ok(())
    }

    /// The topic filters to listen on.
    pub fn filters(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.filter.text()).collect()
    }

    /// Does any route select this topic? Cheap; used to keep unrouted
    /// messages off the store's path.
    pub fn selects(&self, topic: &str) -> bool {
        self.routes.iter().any(|r| r.filter.matches(topic))
    }

    /// The next automatic stamp for `device`: now, or just after the
    /// device's last stamp, so that each device's stamps strictly increase.
    pub fn stamp(&mut self, device: &str) -> i64 {
        self.stamp_at(device, now_ms())
    }

    fn stamp_at(&mut self, device: &str, now: i64) -> i64 {
        stamp(&mut self.last_ts, device, now)
    }

    /// The records a message becomes: one per sink whose route matches
    /// (the first matching route per sink wins). Empty if no route matches.
    pub fn route(&mut self, topic: &str, payload: &[u8]) -> Vec<Record> {
        self.route_at(topic, payload, now_ms())
    }

    fn route_at(&mut self, topic: &str, payload: &[u8], now: i64) -> Vec<Record> {
        let mut out: Vec<Record> = Vec::new();
        let mut reading: Option<Reading> = None;
        for r in &self.routes {
            if !r.filter.matches(topic) || out.iter().any(|o| o.sink == r.sink) {
                continue;
            }
            let device = match &r.device {
                DeviceFrom::Fixed(d) => d.clone(),
                DeviceFrom::Level(l) => match topic.split('/').nth(*l) {
                    Some(d) if !d.is_empty() => d.to_string(),
                    _ => continue,
                },
            };
            let reading = reading.get_or_insert_with(|| Reading::parse(payload));
            let ts = match reading.ts {
                Some(ts) => {
                    let last = self.last_ts.entry(device.clone()).or_insert(i64::MIN);
                    *last = (*last).max(ts);
                    ts
                }
                None => stamp(&mut self.last_ts, &device, now),
            };
            out.push(Record {
                id: 0,
                sink: r.sink.clone(),
                device,
                kind: r.kind,
                ts,
                topic: topic.to_string(),
                payload: payload.to_vec(),
            });
        }
        out
    }
}

/// Now, or just after `device`'s last stamp.
fn stamp(last_ts: &mut HashMap<String, i64>, device: &str, now: i64) -> i64 {
    let last = last_ts.entry(device.to_string()).or_insert(i64::MIN);
    let ts = now.max(last.saturating_add(1));
    *last = ts;
    ts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(topic: &str, sink: &str) -> RouteConfig {
        RouteConfig {
            topic: topic.into(),
            sink: sink.into(),
            device_level: None,
            device: None,
            kind: RecordKind::Telemetry,
        }
    }

    #[test]
    fn stamps_are_strictly_increasing_per_device() {
        let mut r = Router::new(&[route("s/+/t", "up")]).unwrap();
        let a = r.route_at("s/d1/t", b"{}", 1000);
        let b = r.route_at("s/d1/t", b"{}", 1000);
        let c = r.route_at("s/d2/t", b"{}", 1000);
        assert_eq!(a[0].ts, 1000);
        assert_eq!(b[0].ts, 1001);
        assert_eq!(c[0].ts, 1000);
        assert_eq!(a[0].device, "d1");
    }

    #[test]
    fn payload_ts_is_kept() {
        let mut r = Router::new(&[route("s/+/t", "up")]).unwrap();
        let a = r.route_at("s/d1/t", br#"{"ts":42,"v":1}"#, 1000);
        assert_eq!(a[0].ts, 42);
        assert!(r.route_at("other", b"x", 1000).is_empty());
    }

    #[test]
    fn one_record_per_sink() {
        let mut r = Router::new(&[
            route("s/+/t", "a"),
            route("s/+/#", "a"),
            route("s/+/t", "b"),
        ])
        .unwrap();
        let recs = r.route_at("s/d/t", b"1", 5);
        let sinks: Vec<&str> = recs.iter().map(|r| r.sink.as_str()).collect();
        assert_eq!(sinks, ["a", "b"]);
    }
}
