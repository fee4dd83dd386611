//! The status page: one HTML document rendered on the server from the
//! status snapshot, with its charts as inline SVG. It needs nothing from
//! the internet (a site often has none), works without JavaScript, and
//! reloads itself every few seconds. Everything a device or a platform
//! could have named (device ids, reasons, errors) is escaped.

use std::fmt::Write;

use serde_json::Value;

use crate::control::history::Series;
use crate::control::journal::Line;
use crate::control::status::uptime;
use crate::store::DeadLetter;
use crate::units::human_bytes;

/// Seconds between reloads.
pub const REFRESH_S: u32 = 5;

/// What the page is made of.
pub struct View<'a> {
    pub snap: &'a Value,
    pub accepted: &'a Series,
    pub delivered: &'a Series,
    pub queued: &'a Series,
    pub warnings: &'a [Line],
    pub dead: &'a [DeadLetter],
    /// The form token, when the buttons are on (a password file guards
    /// the page); `None` shows why they are off.
    pub csrf: Option<&'a str>,
    /// A line about the last button pressed.
    pub notice: Option<&'a str>,
}

/// HTML-escapes text for element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;padding:0.6rem;background:#f4f5f7;color:#1d2330;max-width:60rem}
h1{font-size:1.2rem;margin:0.2rem 0} h2{font-size:1rem;margin:1rem 0 0.3rem}
.card{background:#fff;border-radius:6px;padding:0.5rem 0.7rem;margin:0.4rem 0;box-shadow:0 1px 2px #0002}
.ok{color:#176b2c;font-weight:600} .bad{color:#a3161b;font-weight:600}
.hint{background:#fff6d6;border-left:4px solid #e0a800;padding:0.5rem}
.muted{color:#5b6372;font-size:0.9rem} table{border-collapse:collapse;width:100%;font-size:0.9rem}
td,th{text-align:left;padding:0.15rem 0.3rem;border-bottom:1px solid #e4e6eb;vertical-align:top}
svg.chart{width:100%;height:7rem;background:#fff;border-radius:6px}
.WARN{color:#8a5a00} .ERROR{color:#a3161b} button{font-size:0.85rem}
code{word-break:break-all}
";

/// Renders the page.
pub fn render(v: &View<'_>) -> String {
    let s = v.snap;
    let mut o = String::with_capacity(16 << 10);
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <title>outpost status</title><style>{STYLE}</style></head><body>"
    );
    let free = s["disk_free_bytes"]
        .as_u64()
        .map(human_bytes)
        .unwrap_or_else(|| "?".into());
    let _ = write!(
        o,
        "<h1>outpost {}</h1><div class=\"muted\" id=\"summary\">up <span id=\"uptime\">{}</span> · pid {} · \
         {} accepted · {} refused (not stored: outbox or disk full) · {} undeliverable · state directory {} with {} free</div>",
        esc(s["version"].as_str().unwrap_or("?")),
        uptime(s["uptime_s"].as_i64().unwrap_or(0)),
        s["pid"],
        s["accepted"],
        s["refused"],
        s["undeliverable"],
        esc(s["state_dir"].as_str().unwrap_or("?")),
        free
    );
    if let Some(hint) = s["hint"].as_str() {
        let _ = write!(o, "<p class=\"hint\" id=\"hint\">{}</p>", esc(hint));
    }
    if let Some(n) = v.notice {
        let _ = write!(o, "<p class=\"hint\" id=\"notice\">{}</p>", esc(n));
    }
    let clock = s.get("clock");
    let state = clock
        .and_then(|c| c.get("state"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    if clock.and_then(|c| c.get("synchronized")) == Some(&Value::Bool(false)) {
        let _ = write!(
            o,
            "<p class=\"hint\" id=\"clock\">The system clock is {}.</p>",
            esc(state)
        );
    } else {
        let _ = write!(
            o,
            "<p class=\"muted\" id=\"clock\">Clock: {}.</p>",
            esc(state)
        );
    }
    if let Some(why) = s["reload_refused"].as_str() {
        let _ = write!(
            o,
            "<p class=\"hint ERROR\" id=\"reload\">Reload refused (the running config stays until a good file is loaded): {}</p>",
            esc(why)
        );
    }
    if let Some(line) = crate::control::status::outbox_line(&s["outbox"]) {
        let _ = write!(o, "<p class=\"hint\" id=\"outbox\">{}</p>", esc(&line));
    }
    for line in crate::control::status::alarm_lines(&s["outbox"]) {
        let _ = write!(o, "<p class=\"hint ERROR alarm\">{}</p>", esc(&line));
    }
    sinks(&mut o, s, v.delivered);
    charts(&mut o, v);
    local(&mut o, s);
    serial(&mut o, s);
    dead(&mut o, s, v.dead, v.csrf);
    warnings(&mut o, v.warnings);
    o.push_str(
        "<p class=\"muted\">Also: <a href=\"/metrics\">/metrics</a> (Prometheus) · \
         <a href=\"/api/status\">/api/status</a> (as <code>outpost status --json</code>)</p></body></html>",
    );
    o
}

/// Readings a second over the last minute of `series` (0 if none).
fn recent_rate(series: &Series) -> f64 {
    let last: Vec<f64> = series
        .iter()
        .filter(|(ago, _)| *ago <= 60.0)
        .map(|(_, r)| *r)
        .collect();
    if last.is_empty() {
        0.0
    } else {
        last.iter().sum::<f64>() / last.len() as f64
    }
}

fn sinks(o: &mut String, s: &Value, delivered: &Series) {
    o.push_str("<h2>Sinks</h2>");
    let rate = recent_rate(delivered);
    for (name, k) in s["sinks"].as_object().into_iter().flatten() {
        let up = k["connected"] == true;
        let state = match (up, k["stalled"] == true) {
            (_, true) => "stalled",
            (true, false) => "connected",
            (false, false) => "not connected",
        };
        let _ = write!(
            o,
            "<div class=\"card sink\" data-sink=\"{n}\" data-state=\"{state}\"><b>{n}</b> \
             <span class=\"{cls}\">{state}</span><br>\
             <span class=\"queued\" data-value=\"{q}\">{q}</span> queued ({qb}",
            n = esc(name),
            cls = if up { "ok" } else { "bad" },
            q = k["queued"],
            qb = human_bytes(k["queued_bytes"].as_u64().unwrap_or(0)),
        );
        if let Some(age) = k["oldest_queued_age_s"].as_i64() {
            let _ = write!(o, ", oldest waiting {}", uptime(age));
        }
        let _ = write!(
            o,
            ") · <span class=\"delivered\" data-value=\"{d}\">{d}</span> delivered · {} dropped · {} refused (not stored: outbox or disk full) · {} dead-lettered",
            k["dropped"],
            k["refused"],
            k["undeliverable"],
            d = k["delivered"],
        );
        let queued = k["queued"].as_u64().unwrap_or(0);
        if let Some(by) = k
            .get("held_back")
            .and_then(|h| h.get("by"))
            .and_then(Value::as_str)
        {
            let _ = write!(
                o,
                "<br><span class=\"held\">held back by the platform's rate limit ({})</span>",
                esc(by)
            );
            if let Some(secs) = k["drain_estimate_s"].as_i64() {
                let _ = write!(
                    o,
                    ": the backlog drains in about {} at that budget",
                    uptime(secs)
                );
            }
        } else if queued > 0 && up && rate > 0.0 {
            let _ = write!(
                o,
                "<br>drains in about {} at the last minute's {:.1} readings/s",
                uptime((queued as f64 / rate).ceil() as i64),
                rate
            );
        }
        if !up {
            let next = match k["next_attempt_in_ms"].as_i64() {
                Some(ms) => format!("next attempt in {:.1} s", ms as f64 / 1000.0),
                None => "connecting".into(),
            };
            let _ = write!(
                o,
                "<br><span class=\"muted\">{next}; last error: {}</span>",
                esc(k["last_error"].as_str().unwrap_or("none yet"))
            );
        }
        o.push_str("</div>");
    }
}

/// One chart: lines of (seconds ago, value), newest on the right, over
/// the last hour or the time since start if shorter (a minute at least),
/// averaged into at most 360 points.
fn chart(o: &mut String, id: &str, title: &str, lines: &[(&str, &str, &Series)]) {
    const W: f64 = 720.0;
    const H: f64 = 100.0;
    const POINTS: usize = 360;
    let span = lines
        .iter()
        .flat_map(|(_, _, s)| s.iter().map(|(ago, _)| *ago))
        .fold(0.0_f64, f64::max)
        .clamp(60.0, 3600.0);
    let width = span / POINTS as f64;
    let thin = |s: &Series| -> Vec<(f64, f64)> {
        let mut buckets: Vec<(f64, f64, u32)> = vec![(0.0, 0.0, 0); POINTS + 1];
        for (ago, v) in s {
            if !(0.0..=span).contains(ago) {
                continue;
            }
            if let Some(e) = buckets.get_mut((*ago / width) as usize) {
                e.0 += *ago;
                e.1 += *v;
                e.2 = e.2.saturating_add(1);
            }
        }
        buckets
            .into_iter()
            .filter(|b| b.2 > 0)
            .map(|(a, v, n)| (a / f64::from(n), v / f64::from(n)))
            .collect()
    };
    let thinned: Vec<Vec<(f64, f64)>> = lines.iter().map(|(_, _, s)| thin(s)).collect();
    let max = thinned
        .iter()
        .flatten()
        .map(|(_, v)| *v)
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let _ = write!(
        o,
        "<div class=\"card\"><b>{title}</b> <span class=\"muted\">last {}, max {max:.1}</span>\
         <svg class=\"chart\" id=\"{id}\" viewBox=\"0 0 {W} {H}\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{title}\">",
        uptime(span as i64)
    );
    for ((name, colour, _), pts) in lines.iter().zip(&thinned) {
        let mut points = String::new();
        for (ago, v) in pts {
            let x = W - ago / span * W;
            let y = H - v / max * (H - 4.0) - 2.0;
            let _ = write!(points, "{x:.1},{y:.1} ");
        }
        let _ = write!(
            o,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" stroke-linejoin=\"round\" \
             stroke-linecap=\"round\" vector-effect=\"non-scaling-stroke\" \
             data-series=\"{name}\" data-points=\"{}\" points=\"{}\"/>",
            pts.len(),
            points.trim_end()
        );
    }
    o.push_str("</svg><div class=\"muted\">");
    for (name, colour, _) in lines {
        let _ = write!(o, "<span style=\"color:{colour}\">■</span> {name} ");
    }
    o.push_str("</div></div>");
}

fn charts(o: &mut String, v: &View<'_>) {
    o.push_str("<h2>Last hour</h2>");
    chart(
        o,
        "chart-rates",
        "Readings per second",
        &[
            ("accepted", "#1f5fbf", v.accepted),
            ("delivered", "#1c8c3a", v.delivered),
        ],
    );
    chart(
        o,
        "chart-queue",
        "Queued in the outbox",
        &[("queued", "#b25b00", v.queued)],
    );
}

fn local(o: &mut String, s: &Value) {
    let Some(b) = s["broker"].as_object() else {
        return;
    };
    let healthy = b.get("healthy") == Some(&Value::Bool(true));
    let _ = write!(
        o,
        "<h2>Local broker</h2><div class=\"card\" id=\"local\"><span class=\"{}\">{}</span> · \
         <span id=\"clients\">{}</span> client(s) connected, {} session(s), {} subscription(s), {} retained · \
         {} refused, {} protocol violations, {} denied by the ACL, {} restarts</div>",
        if healthy { "ok" } else { "bad" },
        if healthy { "healthy" } else { "UNHEALTHY" },
        b["connected"],
        b["sessions"],
        b["subscriptions"],
        b["retained"],
        b["refused"],
        b["violations"],
        b["denied"],
        b["restarts"],
    );
}

fn serial(o: &mut String, s: &Value) {
    let Some(ports) = s["serial"].as_object().filter(|p| !p.is_empty()) else {
        return;
    };
    o.push_str("<h2>Serial and Modbus</h2>");
    for (name, p) in ports {
        let open = p["open"] == true;
        let _ = write!(
            o,
            "<div class=\"card port\" data-port=\"{}\"><b>{}</b> <span class=\"{}\">{}</span> · {} readings · {} garbage lines · opened {} time(s)",
            esc(name),
            esc(name),
            if open { "ok" } else { "bad" },
            if open { "open" } else { "not open" },
            p["readings"],
            p["garbage"],
            p["opens"]
        );
        for (id, sl) in p["slaves"].as_object().into_iter().flatten() {
            let _ = write!(
                o,
                "<br>slave {}: {} polls, {} timeouts, {} exceptions",
                esc(id),
                sl["polls"],
                sl["timeouts"],
                sl["exceptions"]
            );
        }
        o.push_str("</div>");
    }
}

fn dead(o: &mut String, s: &Value, rows: &[DeadLetter], csrf: Option<&str>) {
    let d = &s["dead_letters"];
    let _ = write!(
        o,
        "<h2>Dead letters</h2><div class=\"card\" id=\"dead\"><span id=\"dead-count\">{}</span> kept ({}), {} dropped to stay within store.dead_letters_max_bytes",
        d["count"],
        human_bytes(d["bytes"].as_u64().unwrap_or(0)),
        d["dropped"]
    );
    let button = |o: &mut String, action: &str, id: &str, label: &str, token: &str| {
        let _ = write!(
            o,
            "<form method=\"post\" action=\"/dead-letters/{action}\" style=\"display:inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"id\" value=\"{id}\">\
             <button>{label}</button></form> ",
            esc(token)
        );
    };
    if rows.is_empty() {
        o.push_str("</div>");
        return;
    }
    match csrf {
        Some(t) => {
            o.push_str("<br>");
            button(o, "retry", "all", "Retry all", t);
            button(o, "purge", "all", "Purge all", t);
        }
        None => o.push_str(
            "<br><span class=\"muted\">Retry and purge buttons need <code>[http] password_file</code>; \
             or use <code>outpost dead-letters --retry ID</code>.</span>",
        ),
    }
    o.push_str("<table><tr><th>id</th><th>sink</th><th>device</th><th>reason</th><th>payload</th><th></th></tr>");
    for r in rows {
        let payload = String::from_utf8_lossy(&r.payload);
        let shown: String = payload.chars().take(80).collect();
        let _ = write!(
            o,
            "<tr class=\"dead-letter\" data-id=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>",
            r.id,
            r.id,
            esc(&r.sink),
            esc(&r.device),
            esc(&r.reason),
            esc(&shown)
        );
        if let Some(t) = csrf {
            let id = r.id.to_string();
            button(o, "retry", &id, "Retry", t);
            button(o, "purge", &id, "Purge", t);
        }
        o.push_str("</td></tr>");
    }
    o.push_str("</table></div>");
}

fn warnings(o: &mut String, lines: &[Line]) {
    o.push_str("<h2>Recent warnings and errors</h2><div class=\"card\" id=\"warnings\">");
    if lines.is_empty() {
        o.push_str("<span class=\"muted\">none since start</span>");
    }
    for l in lines.iter().take(20) {
        let when = crate::units::utc_text(l.at_ms / 1000, "-", " ", ":");
        let _ = write!(
            o,
            "<div class=\"{}\"><span class=\"muted\">{when} UTC</span> {} {}</div>",
            l.level,
            l.level,
            esc(&l.text)
        );
    }
    o.push_str("</div>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_devices_cannot_inject_markup() {
        assert_eq!(
            esc("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
        let snap = serde_json::json!({
            "version": "0", "uptime_s": 1, "pid": 1, "accepted": 0, "refused": 0, "undeliverable": 0,
            "sinks": {"up": {"connected": false, "queued": 0, "queued_bytes": 0, "delivered": 0,
                "dropped": 0, "undeliverable": 0, "last_error": "<img src=x onerror=alert(1)>"}},
            "dead_letters": {"count": 1, "bytes": 10, "dropped": 0},
        });
        let dead = [DeadLetter {
            id: 7,
            sink: "up".into(),
            device: "<b>dev</b>".into(),
            ts: 0,
            reason: "r".into(),
            moved_at: 0,
            payload: b"</td><script>".to_vec(),
        }];
        let html = render(&View {
            snap: &snap,
            accepted: &Vec::new(),
            delivered: &Vec::new(),
            queued: &Vec::new(),
            warnings: &[],
            dead: &dead,
            csrf: None,
            notice: None,
        });
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>dev"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("data-points=\"0\""));
    }
}
