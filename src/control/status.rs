//! What outpost says about itself: one snapshot, read by the `status` RPC,
//! the status socket (`outpost status`) and health telemetry, and its
//! rendering for a person at a terminal.

use std::sync::Arc;

use serde_json::{json, Value};

use super::first_start::FirstStart;
use crate::source::broker::Broker;
use crate::stats::{self, Stats};
use crate::store::Outbox;

/// A cheap, cloneable source of status snapshots.
#[derive(Clone)]
pub struct StatusSource {
    pub stats: Arc<Stats>,
    pub outbox: Outbox,
    pub broker: Option<Broker>,
    /// The first-start line, while no sink has connected once.
    pub first_start: Option<Arc<FirstStart>>,
    /// The state directory (its free space is reported).
    pub state_dir: Option<std::path::PathBuf>,
    /// Where the status page is served, once it is (`None`: off, or its
    /// address could not be bound; `http_error` says why).
    pub http: Arc<std::sync::Mutex<HttpState>>,
}

/// What became of `[http] listen`.
#[derive(Debug, Clone, Default)]
pub struct HttpState {
    pub url: Option<String>,
    pub error: Option<String>,
}

/// Bytes free to outpost on the filesystem holding `dir`.
fn disk_free(dir: &std::path::Path) -> Option<u64> {
    let v = nix::sys::statvfs::statvfs(dir).ok()?;
    (v.blocks_available() as u64).checked_mul(v.fragment_size() as u64)
}

/// Why the last reload was refused, until a good file is loaded.
static RELOAD_REFUSED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Records (or, with `None`, clears) why a reload was refused.
pub fn set_reload_refused(why: Option<String>) {
    *RELOAD_REFUSED.lock().unwrap_or_else(|p| p.into_inner()) = why;
}

/// Why the last reload was refused, if the running config is still the
/// one from before it.
pub fn reload_refused() -> Option<String> {
    RELOAD_REFUSED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Listeners of the local broker that are not listening, by key path,
/// with why.
static LISTENERS: std::sync::Mutex<std::collections::BTreeMap<&'static str, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Records (or, with `None`, clears) why a listener is not listening;
/// a new reason is logged as an ERROR once.
pub fn set_listener_problem(key: &'static str, why: Option<String>) {
    let mut l = LISTENERS.lock().unwrap_or_else(|p| p.into_inner());
    match why {
        Some(why) => {
            if l.get(key) != Some(&why) {
                tracing::error!(key, "{why}; outpost runs on and tries again");
                l.insert(key, why);
            }
        }
        None => {
            l.remove(key);
        }
    }
}

/// Listeners not listening, with why.
pub fn listener_problems() -> Vec<(String, String)> {
    LISTENERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect()
}

impl StatusSource {
    pub fn snapshot(&self) -> Value {
        // Ages and waits on outpost's clock: a wall-clock step moves none.
        let now = crate::clock::mono_ms();
        let queues = self.outbox.stats();
        let oldest = self.outbox.oldest_ingested();
        let dead = self.outbox.dead_stats();
        let sinks: serde_json::Map<String, Value> = self
            .stats
            .sinks
            .iter()
            .map(|(name, s)| {
                let q = queues.get(&name).copied().unwrap_or_default();
                (
                    name.clone(),
                    json!({
                        "connected": s.connected.load(std::sync::atomic::Ordering::Relaxed),
                        "connects": stats::get(&s.connects),
                        "queued": q.waiting(),
                        "delivered_undeleted": q.delivered_undeleted,
                        "last_puback_age_s": match s.last_ack_ms.load(std::sync::atomic::Ordering::Relaxed) {
                            0 => None,
                            at => Some(now.saturating_sub(at).max(0) / 1000),
                        },
                        "stalled": s.stalled.load(std::sync::atomic::Ordering::Relaxed),
                        "stalls": stats::get(&s.stalls),
                        "queued_bytes": q.depth.bytes,
                        "oldest_queued_age_s": oldest.get(&name).map(|at| now.saturating_sub(*at).max(0) / 1000),
                        "dropped": q.dropped,
                        "refused": q.refused,
                        "delivered": stats::get(&s.delivered),
                        "undeliverable": stats::get(&s.undeliverable),
                        "ts_clashes": stats::get(&s.ts_clashes),
                        "ts_corrected": stats::get(&s.ts_corrected),
                        "ts_estimated": stats::get(&s.ts_estimated),
                        "ts_provisional": stats::get(&s.ts_provisional),
                        "restarts": stats::get(&s.restarts),
                        "tasks_running": stats::get(&s.running),
                        "last_error": s.last_error.lock().ok().and_then(|e| e.clone()),
                        "held_back": s.held_back(now).map(|(by, ms)| json!({"by": by, "for_ms": ms})),
                        "drain_estimate_s": s.drain_estimate_s(q.waiting(), now),
                        "next_attempt_in_ms": match s.next_attempt_ms.load(std::sync::atomic::Ordering::Relaxed) {
                            0 => None,
                            at => Some(at.saturating_sub(now).max(0)),
                        },
                    }),
                )
            })
            .collect();
        let serial: serde_json::Map<String, Value> = self
            .stats
            .serial
            .iter()
            .map(|(name, p)| {
                let slaves: serde_json::Map<String, Value> = p
                    .slaves
                    .iter()
                    .map(|(id, s)| {
                        (
                            id.to_string(),
                            json!({
                                "polls": stats::get(&s.polls),
                                "timeouts": stats::get(&s.timeouts),
                                "exceptions": stats::get(&s.exceptions),
                            }),
                        )
                    })
                    .collect();
                (
                    name.clone(),
                    json!({
                        "open": p.open.load(std::sync::atomic::Ordering::Relaxed),
                        "opens": stats::get(&p.opens),
                        "readings": stats::get(&p.readings),
                        "garbage": stats::get(&p.garbage),
                        "slaves": slaves,
                    }),
                )
            })
            .collect();
        let broker = self.broker.as_ref().map(|b| {
            let st = b.stats();
            let c = b.counters();
            json!({
                "healthy": b.health().healthy.load(std::sync::atomic::Ordering::Relaxed),
                "restarts": stats::get(&c.restarts),
                "full": b.health().full.lock().ok().and_then(|f| f.clone()),
                "shed": stats::get(&c.shed),
                "refused": stats::get(&c.refused),
                "violations": stats::get(&c.violations),
                "denied": stats::get(&c.denied),
                "sessions": st.sessions,
                "connected": st.connected,
                "subscriptions": st.subscriptions,
                "subscriptions_evicted": st.subscriptions_evicted,
                "retained": st.retained,
                "retained_bytes": st.retained_bytes,
                "queued": st.queued,
                "dropped": st.dropped,
            })
        });
        let http = self.http.lock().map(|h| h.clone()).unwrap_or_default();
        let sync = crate::clock::sync_state();
        let disk = self.outbox.disk();
        json!({
            "clock": {
                "synchronized": sync.trusted(),
                "state": sync.describe(),
                "wall_ms": crate::clock::wall_ms(),
            },
            "outbox": {
                "condition": disk.condition.as_str(),
                "ok": disk.condition == crate::store::Condition::Ok,
                "detail": disk.detail,
                "for_s": (disk.condition != crate::store::Condition::Ok)
                    .then(|| now.saturating_sub(disk.since_ms).max(0) / 1000),
                "reserve_held": disk.reserve_held,
                "reserve_bytes": disk.reserve_bytes,
                "alarms": self.outbox.alarms().iter().map(|a| json!({
                    "summary": a.summary,
                    "report": a.report.display().to_string(),
                })).collect::<Vec<_>>(),
            },
            "reload_refused": reload_refused(),
            "listeners_down": listener_problems()
                .into_iter()
                .map(|(k, why)| json!({"key": k, "error": why}))
                .collect::<Vec<_>>(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.stats.started.elapsed().as_secs(),
            "hint": self.first_start.as_ref().and_then(|f| f.hint(&self.stats)),
            "state_dir": self.state_dir.as_ref().map(|d| d.display().to_string()),
            "disk_free_bytes": self.state_dir.as_deref().and_then(disk_free),
            "http": {
                "url": http.url,
                "error": http.error,
            },
            "broker": broker,
            "pid": std::process::id(),
            "accepted": stats::get(&self.stats.ingest.accepted),
            "refused": stats::get(&self.stats.ingest.refused),
            "undeliverable": stats::get(&self.stats.ingest.undeliverable),
            "ts_replaced": stats::get(&self.stats.ingest.ts_replaced),
            "dead_letters": {
                "count": dead.count,
                "bytes": dead.bytes,
                "dropped": dead.dropped,
            },
            "sinks": sinks,
            "serial": serial,
            "serial_control": self.stats.ingest.serial_control.load(std::sync::atomic::Ordering::Relaxed),
        })
    }
}

/// `3d 4h`, `2h 5m`, `4m 10s` or `9s`.
pub fn uptime(secs: i64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// What `status` says about the outbox's disk: nothing when all is well.
pub fn outbox_line(o: &Value) -> Option<String> {
    let condition = o.get("condition").and_then(Value::as_str)?;
    let since = o["for_s"]
        .as_i64()
        .map(|s| format!(" for {}", uptime(s)))
        .unwrap_or_default();
    let detail = o["detail"]
        .as_str()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    match condition {
        "ok" if o["reserve_held"] == true || o["reserve_bytes"] == 0 => None,
        "ok" => Some(
            "outbox: ok, but the space store.disk_reserve holds back could not be reserved"
                .to_string(),
        ),
        "disk full" => Some(format!(
            "outbox: DISK FULL{since}: new readings are refused, queued ones still drain (the reserved space was released for that); free space on its filesystem"
        )),
        "read-only filesystem" => Some(format!(
            "outbox: READ-ONLY FILESYSTEM{since}: new readings are refused, queued ones are kept; outpost opens the outbox again by itself once the filesystem is writable (see dmesg)"
        )),
        other => Some(format!(
            "outbox: {}{since}{detail}: new readings are refused; outpost tries again every 2 s (see dmesg)",
            other.to_uppercase()
        )),
    }
}

/// The outbox's alarms, one line each: what happened and where the report
/// is (deleting the report clears the alarm).
pub fn alarm_lines(o: &Value) -> Vec<String> {
    o.get("alarms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|a| {
            format!(
                "OUTBOX ALARM: {} (report: {}; delete it once read)",
                a["summary"].as_str().unwrap_or("?"),
                a["report"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// The snapshot as `outpost status` prints it for a person.
pub fn render(v: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "outpost {} (pid {}, up {}): {} accepted, {} refused (not stored: outbox or disk full), {} undeliverable, {} with an implausible ts restamped",
        v["version"].as_str().unwrap_or("?"),
        v["pid"],
        uptime(v["uptime_s"].as_i64().unwrap_or(0)),
        v["accepted"],
        v["refused"],
        v["undeliverable"],
        v["ts_replaced"]
    );
    if let Some(hint) = v["hint"].as_str() {
        let _ = writeln!(out, "  {hint}");
    }
    if let Some(why) = v["reload_refused"].as_str() {
        let _ = writeln!(
            out,
            "  RELOAD REFUSED (the running config stays until a good file is loaded): {}",
            why.replace('\n', "\n    ")
        );
    }
    if let Some(state) = v
        .get("clock")
        .and_then(|c| c.get("state"))
        .and_then(Value::as_str)
    {
        let _ = writeln!(out, "  clock: {state}");
    }
    if let Some(line) = outbox_line(&v["outbox"]) {
        let _ = writeln!(out, "  {line}");
    }
    for line in alarm_lines(&v["outbox"]) {
        let _ = writeln!(out, "  {line}");
    }
    let http = v.get("http");
    let field = |k: &str| http.and_then(|h| h.get(k)).and_then(Value::as_str);
    match (field("url"), field("error")) {
        (Some(url), _) => {
            let _ = writeln!(out, "  status page: {url}");
        }
        (None, Some(e)) => {
            let _ = writeln!(out, "  status page NOT served: {e}");
        }
        (None, None) => {}
    }
    if let Some(free) = v["disk_free_bytes"].as_u64() {
        let _ = writeln!(
            out,
            "  state directory {}: {} free",
            v["state_dir"].as_str().unwrap_or("?"),
            crate::units::human_bytes(free)
        );
    }
    let d = &v["dead_letters"];
    let _ = writeln!(
        out,
        "  dead letters: {} ({} bytes), {} dropped to stay within store.dead_letters_max_bytes",
        d["count"], d["bytes"], d["dropped"]
    );
    for l in v["listeners_down"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  local broker NOT listening ({}): {}",
            l["key"].as_str().unwrap_or("?"),
            l["error"].as_str().unwrap_or("?")
        );
    }
    if let Some(b) = v["broker"].as_object() {
        let state = if b["healthy"] == true {
            "healthy"
        } else {
            "UNHEALTHY"
        };
        let _ = writeln!(
            out,
            "  local broker: {state}, {} clients, {} subscriptions, {} retained, {} restarts, {} refused, {} protocol violations, {} denied by the ACL",
            b["connected"], b["subscriptions"], b["retained"], b["restarts"], b["refused"], b["violations"], b["denied"]
        );
        if let Some(full) = b["full"].as_str() {
            let _ = writeln!(
                out,
                "    FULL, new connections are refused ({} closed unread so far): {full}",
                b["shed"]
            );
        }
    }
    for (name, s) in v["sinks"].as_object().into_iter().flatten() {
        let state = match (s["connected"] == true, s["stalled"] == true) {
            (true, true) => "connected but STALLED (the broker acknowledges nothing)",
            (true, false) => "connected",
            (false, true) => "NOT connected (STALLED: the broker acknowledged nothing)",
            (false, false) => "NOT connected",
        };
        let last_ack = match s["last_puback_age_s"].as_i64() {
            Some(age) => format!(", last PUBACK {} ago", uptime(age)),
            None => String::new(),
        };
        let oldest = match s["oldest_queued_age_s"].as_i64() {
            Some(age) => format!(", oldest waiting {}", uptime(age)),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "  sink {name}: {state}, {} queued ({} bytes{oldest}), {} delivered{last_ack}, {} dropped (accepted, then removed by a bound), {} refused (not stored: outbox or disk full), {} undeliverable",
            s["queued"], s["queued_bytes"], s["delivered"], s["dropped"], s["refused"], s["undeliverable"]
        );
        if s["connected"] != true {
            let next = match s["next_attempt_in_ms"].as_i64() {
                Some(ms) => format!("next attempt in {:.1} s", ms as f64 / 1000.0),
                None => "connecting".to_string(),
            };
            let why = s["last_error"].as_str().unwrap_or("none yet");
            let _ = writeln!(out, "    {next}; last error: {why}");
        }
        if let Some(by) = s
            .get("held_back")
            .and_then(|h| h.get("by"))
            .and_then(Value::as_str)
        {
            let drain = match s["drain_estimate_s"].as_i64() {
                Some(secs) => format!(
                    "; the backlog drains in about {} at that budget",
                    uptime(secs)
                ),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "    held back by the platform's rate limit ({by}){drain}"
            );
        }
        let (fixed, guessed, raw) = (
            s["ts_corrected"].as_u64().unwrap_or(0),
            s["ts_estimated"].as_u64().unwrap_or(0),
            s["ts_provisional"].as_u64().unwrap_or(0),
        );
        if fixed.saturating_add(guessed).saturating_add(raw) > 0 {
            let _ = writeln!(
                out,
                "    stamped while the clock was not synchronized: {fixed} corrected before sending, {guessed} estimated (stamped before a restart), {raw} sent as stamped"
            );
        }
        if s["restarts"].as_u64().unwrap_or(0) > 0 {
            let _ = writeln!(
                out,
                "    its tasks stopped unexpectedly and were restarted {} time(s) (see the log)",
                s["restarts"]
            );
        }
    }
    for (name, p) in v["serial"].as_object().into_iter().flatten() {
        let state = if p["open"] == true {
            "open"
        } else {
            "NOT open"
        };
        let _ = writeln!(
            out,
            "  serial {name}: {state}, {} readings, {} garbage lines, opened {} time(s)",
            p["readings"], p["garbage"], p["opens"]
        );
        for (id, s) in p["slaves"].as_object().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    modbus slave {id}: {} polls, {} timeouts, {} exceptions",
                s["polls"], s["timeouts"], s["exceptions"]
            );
        }
    }
    out
}
