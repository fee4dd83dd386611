//! `/metrics`: the status snapshot in the Prometheus text format, built
//! with `prometheus-client` on every scrape. Built from the same snapshot
//! `outpost status` prints, the two can never disagree.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;

type Labels = Vec<(String, String)>;

/// Metrics of one kind, by label set, from a snapshot.
struct Metrics(Registry);

impl Metrics {
    fn gauge(&mut self, name: &str, help: &str, v: i64) {
        let g: Gauge = Gauge::default();
        g.set(v);
        self.0.register(name, help.trim_end_matches('.'), g);
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        let c: Counter = Counter::default();
        c.inc_by(v);
        self.0.register(name, help.trim_end_matches('.'), c);
    }

    fn gauges(&mut self, name: &str, help: &str, items: Vec<(Labels, i64)>) {
        let f = Family::<Labels, Gauge>::default();
        for (labels, v) in items {
            f.get_or_create(&labels).set(v);
        }
        self.0.register(name, help.trim_end_matches('.'), f);
    }

    fn counters(&mut self, name: &str, help: &str, items: Vec<(Labels, u64)>) {
        let f = Family::<Labels, Counter>::default();
        for (labels, v) in items {
            f.get_or_create(&labels).inc_by(v);
        }
        self.0.register(name, help.trim_end_matches('.'), f);
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn i(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn per_sink(snap: &Value, key: &str) -> Vec<(Labels, u64)> {
    snap["sinks"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, s)| (vec![("sink".into(), name.clone())], n(&s[key])))
        .collect()
}

fn per_port(snap: &Value, key: &str) -> Vec<(Labels, u64)> {
    snap["serial"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, p)| (vec![("port".into(), name.clone())], n(&p[key])))
        .collect()
}

fn per_slave(snap: &Value, key: &str) -> Vec<(Labels, u64)> {
    let mut out = Vec::new();
    for (port, p) in snap["serial"].as_object().into_iter().flatten() {
        for (slave, s) in p["slaves"].as_object().into_iter().flatten() {
            out.push((
                vec![
                    ("port".into(), port.clone()),
                    ("slave".into(), slave.clone()),
                ],
                n(&s[key]),
            ));
        }
    }
    out
}

/// 1 or 0 per entry of `section` (`sinks`, `serial`), labelled `label`,
/// from the entry's `key` (true, or an object, is 1).
fn flags(snap: &Value, section: &str, label: &str, key: &str) -> Vec<(Labels, i64)> {
    snap[section]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, e)| {
            let on = e[key] == true || e[key].is_object();
            (vec![(label.into(), name.clone())], i64::from(on))
        })
        .collect()
}

/// This process's resident memory (bytes) and CPU time (seconds).
fn process() -> (i64, f64) {
    let page = i64::try_from(page_size()).unwrap_or(4096);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        .map_or(0, |pages| pages.saturating_mul(page));
    let ticks = clock_ticks() as f64;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The command name may hold spaces: fields count after its `)`.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = f.get(11)?.parse().ok()?;
            let system: f64 = f.get(12)?.parse().ok()?;
            Some((user + system) / ticks.max(1.0))
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

/// The page size.
fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(4096)
}

/// Clock ticks a second, as `/proc/self/stat` counts CPU time.
fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(100)
}

/// The exposition text for `snap` (a status snapshot).
pub fn render(snap: &Value) -> String {
    let mut m = Metrics(Registry::default());
    m.counter(
        "outpost_records_accepted",
        "Readings accepted into the outbox since outpost started.",
        n(&snap["accepted"]),
    );
    m.counter(
        "outpost_records_refused",
        "Readings refused because the outbox or its disk was full, or the disk failing (the sender was told, or kept them).",
        n(&snap["refused"]),
    );
    m.counter(
        "outpost_records_undeliverable",
        "Readings no sink could ever send (refused at ingest or moved to the dead letters).",
        n(&snap["undeliverable"]),
    );
    m.gauges(
        "outpost_records_queued",
        "Records waiting in the outbox for the sink.",
        per_sink(snap, "queued")
            .into_iter()
            .map(|(l, v)| (l, i64::try_from(v).unwrap_or(i64::MAX)))
            .collect(),
    );
    m.gauges(
        "outpost_records_queued_bytes",
        "Bytes the sink's queued records take in the outbox.",
        per_sink(snap, "queued_bytes")
            .into_iter()
            .map(|(l, v)| (l, i64::try_from(v).unwrap_or(i64::MAX)))
            .collect(),
    );
    m.gauges(
        "outpost_records_oldest_age_seconds",
        "How long the sink's oldest queued record has waited (0 with an empty queue).",
        per_sink(snap, "oldest_queued_age_s")
            .into_iter()
            .map(|(l, v)| (l, i64::try_from(v).unwrap_or(i64::MAX)))
            .collect(),
    );
    m.counters(
        "outpost_records_delivered",
        "Records the sink's platform acknowledged since outpost started.",
        per_sink(snap, "delivered"),
    );
    m.counters(
        "outpost_records_dropped",
        "Records the outbox bounds (max_bytes, max_age) removed, since the outbox was created.",
        per_sink(snap, "dropped"),
    );
    m.counters(
        "outpost_records_refused",
        "Records refused because the outbox was full: never acknowledged, since the outbox was created.",
        per_sink(snap, "refused"),
    );
    m.counters(
        "outpost_records_dead_lettered",
        "Records of the sink moved to the dead letters since outpost started.",
        per_sink(snap, "undeliverable"),
    );
    m.gauges(
        "outpost_sink_connected",
        "1 while the sink is connected to its platform.",
        flags(snap, "sinks", "sink", "connected"),
    );
    m.gauges(
        "outpost_sink_stalled",
        "1 while a publish of the sink has waited for its PUBACK past ack_timeout.",
        flags(snap, "sinks", "sink", "stalled"),
    );
    m.gauges(
        "outpost_sink_last_puback_age_seconds",
        "Seconds since the sink's platform last acknowledged a publish (absent before the first).",
        snap["sinks"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(name, s)| {
                let age = s["last_puback_age_s"].as_i64()?;
                Some((vec![("sink".into(), name.clone())], age))
            })
            .collect(),
    );
    m.gauges(
        "outpost_sink_held_back",
        "1 while the platform's rate limit holds the sink's next publish back.",
        flags(snap, "sinks", "sink", "held_back"),
    );
    m.counters(
        "outpost_sink_connects",
        "Connections the sink made to its platform.",
        per_sink(snap, "connects"),
    );
    let dead = &snap["dead_letters"];
    m.gauge(
        "outpost_dead_letters",
        "Dead letters kept (see `outpost dead-letters`).",
        i(&dead["count"]),
    );
    m.gauge(
        "outpost_dead_letters_bytes",
        "Bytes the dead letters take.",
        i(&dead["bytes"]),
    );
    m.counter(
        "outpost_dead_letters_dropped",
        "Dead letters removed to stay within store.dead_letters_max_bytes.",
        n(&dead["dropped"]),
    );
    let outbox: u64 = per_sink(snap, "queued_bytes").iter().map(|(_, v)| v).sum();
    m.gauge(
        "outpost_outbox_bytes",
        "Bytes of records queued in the outbox, all sinks.",
        i64::try_from(outbox.saturating_add(n(&dead["bytes"]))).unwrap_or(i64::MAX),
    );
    let condition = snap
        .get("outbox")
        .and_then(|o| o.get("condition"))
        .and_then(Value::as_str)
        .unwrap_or("ok");
    m.gauges(
        "outpost_outbox_condition",
        "1 for the outbox filesystem's condition now (ok, disk full, read-only filesystem, I/O errors).",
        ["ok", "disk full", "read-only filesystem", "I/O errors"]
            .iter()
            .map(|c| {
                (
                    vec![("condition".to_string(), (*c).to_string())],
                    i64::from(*c == condition),
                )
            })
            .collect(),
    );
    m.gauge(
        "outpost_outbox_alarms",
        "Alarms about the outbox (damaged and salvaged, or short of what it held) whose reports have not been deleted.",
        snap.get("outbox")
            .and_then(|o| o.get("alarms"))
            .and_then(Value::as_array)
            .map_or(0, |a| i64::try_from(a.len()).unwrap_or(i64::MAX)),
    );
    let b = &snap["broker"];
    m.gauge(
        "outpost_local_clients",
        "MQTT clients connected to the local broker.",
        i(&b["connected"]),
    );
    m.gauge(
        "outpost_local_subscriptions",
        "Subscriptions on the local broker.",
        i(&b["subscriptions"]),
    );
    m.counter(
        "outpost_local_refused",
        "Local connections refused (login, limits).",
        n(&b["refused"]),
    );
    m.counter(
        "outpost_local_violations",
        "Local connections closed for a protocol violation.",
        n(&b["violations"]),
    );
    m.counter(
        "outpost_local_denied",
        "Local publishes the ACL did not allow.",
        n(&b["denied"]),
    );
    m.gauges(
        "outpost_serial_open",
        "1 while the serial port is open.",
        flags(snap, "serial", "port", "open"),
    );
    m.counters(
        "outpost_serial_readings",
        "Readings taken from the port.",
        per_port(snap, "readings"),
    );
    m.counters(
        "outpost_serial_garbage",
        "Lines on the port that were not readings.",
        per_port(snap, "garbage"),
    );
    m.counters(
        "outpost_modbus_polls",
        "Polls of the Modbus slave.",
        per_slave(snap, "polls"),
    );
    m.counters(
        "outpost_modbus_timeouts",
        "Polls of the Modbus slave that timed out.",
        per_slave(snap, "timeouts"),
    );
    m.counters(
        "outpost_modbus_exceptions",
        "Modbus exception answers from the slave.",
        per_slave(snap, "exceptions"),
    );
    m.gauge(
        "outpost_uptime_seconds",
        "Seconds since outpost started.",
        i(&snap["uptime_s"]),
    );
    if let Some(free) = snap["disk_free_bytes"].as_u64() {
        m.gauge(
            "outpost_state_dir_free_bytes",
            "Bytes free on the filesystem of the state directory.",
            i64::try_from(free).unwrap_or(i64::MAX),
        );
    }
    let (rss, cpu) = process();
    m.gauge(
        "process_resident_memory_bytes",
        "Resident memory of the outpost process.",
        rss,
    );
    let c: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
    c.inc_by(cpu);
    m.0.register(
        "process_cpu_seconds",
        "CPU time (user and system) the outpost process used",
        c,
    );
    let mut out = String::new();
    let _ = encode(&mut out, &m.0);
    out
}
