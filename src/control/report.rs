//! What outpost reports about itself: the outcome of the last remote
//! configuration change and facts about the box as client attributes (once
//! per connection and after each change), and health telemetry every
//! `health.interval`.

use std::time::Instant;

use serde_json::{json, Map, Value};

use super::status::StatusSource;
use crate::stats;

/// How the last remote change went.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub version: Option<Value>,
    pub hash: String,
    /// `ok`, `rejected` or `rolled_back`.
    pub status: &'static str,
    pub error: Option<String>,
}

impl Outcome {
    /// The outcome for `overlay`.
    pub fn of(
        overlay: &crate::config::overlay::Overlay,
        status: &'static str,
        error: Option<String>,
    ) -> Outcome {
        Outcome {
            version: overlay.version.clone().filter(|v| !v.is_null()),
            hash: crate::config::overlay::hash(
                &serde_json::to_value(&overlay.sections).unwrap_or_default(),
            ),
            status,
            error,
        }
    }

    /// The client attributes reporting it.
    pub fn attributes(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "config_version".into(),
            self.version.clone().unwrap_or(Value::Null),
        );
        m.insert("config_hash".into(), json!(self.hash));
        m.insert("config_status".into(), json!(self.status));
        m.insert(
            "config_error".into(),
            json!(self.error.clone().unwrap_or_default()),
        );
        m
    }
}

/// Facts about the box, sent once per connection.
pub fn system_attributes() -> Map<String, Value> {
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string());
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut m = Map::new();
    m.insert("outpost_version".into(), json!(env!("CARGO_PKG_VERSION")));
    m.insert("hostname".into(), json!(hostname));
    m.insert("os".into(), json!(os));
    m.insert("arch".into(), json!(std::env::consts::ARCH));
    m
}

/// Health telemetry: counters, queues, resources.
pub struct Health {
    started: Instant,
    /// (CPU ticks used, when) at the last sample.
    last_cpu: Option<(u64, Instant)>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            last_cpu: None,
        }
    }
}

impl Health {
    /// One health sample as ThingsBoard telemetry values.
    pub async fn values(
        &mut self,
        status: &StatusSource,
        state_dir: &std::path::Path,
        store_path: &std::path::Path,
    ) -> Map<String, Value> {
        let mut v = Map::new();
        let queues = status.outbox.stats();
        let now_ms = crate::clock::mono_ms();
        let oldest_at = status.outbox.oldest_ingested();
        let mut queued_total: u64 = 0;
        v.insert(
            "clock_synchronized".into(),
            json!(crate::clock::sync_state().trusted()),
        );
        v.insert(
            "outbox_condition".into(),
            json!(status.outbox.disk().condition.as_str()),
        );
        if let Some(why) = super::status::reload_refused() {
            v.insert("reload_refused".into(), json!(why));
        }
        let alarms = status.outbox.alarms();
        v.insert("outbox_alarms".into(), json!(alarms.len()));
        if let Some(a) = alarms.last() {
            v.insert("outbox_alarm".into(), json!(a.summary));
        }
        for (name, s) in &status.stats.sinks {
            let q = queues.get(&name).copied().unwrap_or_default();
            queued_total = queued_total.saturating_add(q.waiting());
            v.insert(format!("queued_{name}"), json!(q.waiting()));
            v.insert(format!("dropped_{name}"), json!(q.dropped));
            v.insert(format!("refused_{name}"), json!(q.refused));
            v.insert(format!("delivered_{name}"), json!(stats::get(&s.delivered)));
            v.insert(
                format!("connected_{name}"),
                json!(s.connected.load(std::sync::atomic::Ordering::Relaxed)),
            );
            let oldest = oldest_at
                .get(&name)
                .map_or(0, |at| now_ms.saturating_sub(*at).max(0) / 1000);
            v.insert(format!("oldest_queued_s_{name}"), json!(oldest));
            let held = s.held_back(now_ms);
            v.insert(format!("held_back_{name}"), json!(held.is_some()));
            if let Some((by, _)) = held {
                v.insert(format!("held_back_by_{name}"), json!(by));
            }
            if let Some(secs) = s.drain_estimate_s(q.waiting(), now_ms) {
                v.insert(format!("drain_estimate_s_{name}"), json!(secs));
            }
        }
        for (name, p) in &status.stats.serial {
            v.insert(
                format!("serial_open_{name}"),
                json!(p.open.load(std::sync::atomic::Ordering::Relaxed)),
            );
            v.insert(
                format!("serial_readings_{name}"),
                json!(stats::get(&p.readings)),
            );
            v.insert(
                format!("serial_garbage_{name}"),
                json!(stats::get(&p.garbage)),
            );
            for (id, s) in &p.slaves {
                v.insert(
                    format!("modbus_timeouts_{name}_{id}"),
                    json!(stats::get(&s.timeouts)),
                );
                v.insert(
                    format!("modbus_exceptions_{name}_{id}"),
                    json!(stats::get(&s.exceptions)),
                );
            }
        }
        v.insert("queued".into(), json!(queued_total));
        v.insert(
            "accepted".into(),
            json!(stats::get(&status.stats.ingest.accepted)),
        );
        v.insert(
            "refused".into(),
            json!(stats::get(&status.stats.ingest.refused)),
        );
        v.insert(
            "undeliverable".into(),
            json!(stats::get(&status.stats.ingest.undeliverable)),
        );
        v.insert(
            "ts_replaced".into(),
            json!(stats::get(&status.stats.ingest.ts_replaced)),
        );
        let dead = status.outbox.dead_stats();
        v.insert("dead_letters".into(), json!(dead.count));
        v.insert("dead_letters_dropped".into(), json!(dead.dropped));
        let restarts: u64 = status
            .stats
            .sinks
            .values()
            .map(|s| stats::get(&s.restarts))
            .sum();
        v.insert("sink_restarts".into(), json!(restarts));
        v.insert(
            "local_clients".into(),
            json!(stats::get(&status.stats.ingest.clients)),
        );
        if let Some(b) = &status.broker {
            let c = b.counters();
            let st = b.stats();
            v.insert(
                "broker_healthy".into(),
                json!(b
                    .health()
                    .healthy
                    .load(std::sync::atomic::Ordering::Relaxed)),
            );
            v.insert("broker_restarts".into(), json!(stats::get(&c.restarts)));
            v.insert("broker_refused".into(), json!(stats::get(&c.refused)));
            v.insert("broker_violations".into(), json!(stats::get(&c.violations)));
            v.insert("broker_denied".into(), json!(stats::get(&c.denied)));
            v.insert("broker_subscriptions".into(), json!(st.subscriptions));
            v.insert("broker_retained".into(), json!(st.retained));
        }
        v.insert("uptime_s".into(), json!(self.started.elapsed().as_secs()));
        if let Some(rss) = rss_bytes() {
            v.insert("rss_bytes".into(), json!(rss));
        }
        if let Some(cpu) = self.cpu_percent() {
            v.insert("cpu_percent".into(), json!(cpu));
        }
        if let Some(free) = free_bytes(state_dir) {
            v.insert("disk_free_bytes".into(), json!(free));
        }
        let size: u64 = ["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                let mut p = store_path.as_os_str().to_owned();
                p.push(suffix);
                std::fs::metadata(p).ok().map(|m| m.len())
            })
            .sum();
        v.insert("outbox_bytes".into(), json!(size));
        v.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
        v
    }

    /// CPU use of this process since the last sample, in percent of one core.
    fn cpu_percent(&mut self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces).
        let (_, rest) = stat.rsplit_once(')')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime: fields 14 and 15, the 12th and 13th after the name.
        let ticks = f
            .get(11)?
            .parse::<u64>()
            .ok()?
            .saturating_add(f.get(12)?.parse::<u64>().ok()?);
        let now = Instant::now();
        let last = self.last_cpu.replace((ticks, now));
        let (t0, at) = last?;
        let secs = now.duration_since(at).as_secs_f64();
        (secs > 0.0).then(|| {
            // Linux reports in clock ticks of 1/100 s (USER_HZ) on every
            // architecture outpost targets.
            let used = (ticks.saturating_sub(t0)) as f64 / 100.0;
            (used / secs * 1000.0).round() / 10.0
        })
    }
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(4096))
}

fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}
