//! `[http]`: the status page in a real browser (Debian's chromium,
//! headless), `/metrics` read as Prometheus reads it, the rules for who
//! may see and press what, and dead letters acted on from the CLI and the
//! page. Everything against the real binary and a real upstream mosquitto.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use outpost::source::broker::codec::{Props, V311};

use crate::common::*;

/// The default test config with the page on `http_port` and `http` keys.
fn config(w: &World, sink: &str, http_port: u16, http: &str) -> String {
    format!(
        "{}\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n{http}\n",
        w.site().mqtt("", sink)
    )
}

/// What headless chromium renders for `url` (its DOM after load).
fn browser_dom(url: &str, profile: &Path) -> String {
    require("chromium", "chromium");
    let out = Command::new("timeout")
        .arg("90")
        .arg("chromium")
        .args(chromium_flags(profile))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chromium_flags(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// The number in `data-value` of the element of `class` inside the sink's card.
fn sink_number(dom: &str, sink: &str, class: &str) -> u64 {
    let card = dom
        .split(&format!("data-sink=\"{sink}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("no card for sink {sink} in the page:\n{dom}"));
    let card = card.split("</div>").next().unwrap_or(card);
    card.split(&format!("class=\"{class}\" data-value=\""))
        .nth(1)
        .and_then(|v| v.split('"').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {class} count in the card of {sink}:\n{card}"))
}

/// `data-points` of a chart's series.
fn chart_points(dom: &str, series: &str) -> usize {
    dom.split(&format!("data-series=\"{series}\" data-points=\""))
        .nth(1)
        .and_then(|v| v.split('"').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no chart series {series} in the page"))
}

fn post_reading(port: u16, device: &str, body: &str) -> Answer {
    request(
        port,
        "POST",
        &format!("/ingest/{device}"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_a_real_browser_shows_the_sink_its_counts_and_charts() {
    let w = World::new("");
    let hp = free_port();
    let col = w.collect("site1/#").await;
    let mut op = w.start(&config(&w, "", hp, ""));
    assert!(wait_port(hp, Duration::from_secs(5)), "{}", op.log_text());
    assert_eq!(post_reading(hp, "b1", "{\"t\":1}").status, 200);
    assert_eq!(col.wait_for(1, Duration::from_secs(15)).await, 1);
    // Two samples a second apart make a rate.
    assert!(wait_until(Duration::from_secs(10), || {
        get(hp, "/api/history").body.contains("[[") && {
            let v: serde_json::Value =
                serde_json::from_str(&get(hp, "/api/history").body).unwrap_or_default();
            v["seconds_ago_and_value"]["delivered_per_s"]
                .as_array()
                .is_some_and(|a| a.len() >= 2)
        }
    }));

    let profile = tempfile::tempdir().expect("profile");
    let url = format!("http://127.0.0.1:{hp}/");
    let dom = browser_dom(&url, profile.path());
    assert!(
        dom.contains("data-sink=\"up\" data-state=\"connected\""),
        "the sink and its state:\n{dom}"
    );
    let before = sink_number(&dom, "up", "delivered");
    assert!(before >= 1, "{dom}");
    assert!(
        chart_points(&dom, "delivered") >= 1,
        "the chart has data points"
    );
    assert!(
        chart_points(&dom, "queued") >= 1,
        "the chart has data points"
    );
    assert!(dom.contains("id=\"chart-rates\"") && dom.contains("<polyline"));
    assert!(
        !dom.contains("src=\"http") && !dom.contains("href=\"http"),
        "no external resources"
    );

    for i in 0..3 {
        assert_eq!(
            post_reading(hp, "b1", &format!("{{\"t\":{}}}", i + 2)).status,
            200
        );
    }
    assert_eq!(col.wait_for(4, Duration::from_secs(15)).await, 4);
    let dom = browser_dom(&url, profile.path());
    let after = sink_number(&dom, "up", "delivered");
    assert!(after >= before + 3, "delivered grew: {before} → {after}");

    // The screenshot is kept for a person to look at.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&shots).expect("artifacts dir");
    let png = shots.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    let out = Command::new("timeout")
        .arg("90")
        .arg("chromium")
        .args(chromium_flags(profile.path()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=412,1600")
        .arg(&url)
        .output()
        .expect("chromium screenshot");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000,
        "a real PNG: {} bytes",
        bytes.len()
    );
    op.terminate();
}

/// Prometheus' text format, checked line by line: every sample belongs to
/// a family declared with `# TYPE`, counters' samples end in `_total`,
/// labels are `name="value"`, values are numbers. Returns each sample
/// (`name{labels}` → value).
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                [
                    "counter",
                    "gauge",
                    "histogram",
                    "summary",
                    "info",
                    "unknown"
                ]
                .contains(&kind),
                "type {kind}"
            );
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment line {line:?}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let name = series.split('{').next().unwrap_or(series);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("labels in {line:?}"));
                for pair in inner.split(',') {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("label {pair:?}"));
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(v.starts_with('"') && v.ends_with('"'), "label value {v}");
                }
            }
        }
        let family = types
            .keys()
            .find(|f| {
                name == f.as_str() || name.strip_prefix(f.as_str()).is_some_and(|s| s == "_total")
            })
            .unwrap_or_else(|| panic!("{name} has no # TYPE before it"))
            .clone();
        if types[&family] == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter sample {name} ends in _total"
            );
        }
        samples.insert(series.to_string(), value);
    }
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    samples
}

fn metrics(port: u16) -> BTreeMap<String, f64> {
    let a = get(port, "/metrics");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.header("content-type").is_some_and(|c| c.contains("text")));
    parse_exposition(&a.body)
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in /metrics: {m:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_readings_outages_and_dead_letters() {
    let mut w = World::new("");
    let hp = free_port();
    let col = w.collect("site1/#").await;
    let mut op = w.start(&config(&w, "max_packet_size = \"4 KiB\"", hp, ""));
    assert!(wait_port(hp, Duration::from_secs(5)));
    assert!(wait_until(Duration::from_secs(10), || {
        metrics(hp).get("outpost_sink_connected{sink=\"up\"}") == Some(&1.0)
    }));
    let m = metrics(hp);
    for key in [
        "outpost_records_accepted_total",
        "outpost_records_queued{sink=\"up\"}",
        "outpost_records_delivered_total{sink=\"up\"}",
        "outpost_records_dropped_total{sink=\"up\"}",
        "outpost_records_dead_lettered_total{sink=\"up\"}",
        "outpost_records_refused_total",
        "outpost_dead_letters",
        "outpost_outbox_bytes",
        "outpost_local_clients",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(m.contains_key(key), "{key} missing: {m:?}");
    }
    assert!(metric(&m, "process_resident_memory_bytes") > 1e6);

    let msgs = (0..5)
        .map(|i| {
            (
                "sensors/m1/telemetry".to_string(),
                format!("{{\"i\":{i}}}").into_bytes(),
            )
        })
        .collect();
    assert_eq!(publish_all(w.port, "m1", msgs).await, 5);
    assert_eq!(col.wait_for(5, Duration::from_secs(15)).await, 5);
    assert!(wait_until(Duration::from_secs(5), || {
        metrics(hp).get("outpost_records_delivered_total{sink=\"up\"}") == Some(&5.0)
    }));
    assert_eq!(metric(&metrics(hp), "outpost_records_accepted_total"), 5.0);

    // A dead letter: too large for the sink, from a 3.1.1 sensor.
    let (mut c, _) = Raw::connected(w.port, &Hello::new(V311, "big")).await;
    let code = c
        .publish(
            "sensors/big/telemetry",
            &[b'"'; 3000],
            1,
            false,
            Props::default(),
        )
        .await;
    assert_eq!(code, Ok(0));
    c.disconnect().await;
    let m = metrics(hp);
    assert_eq!(metric(&m, "outpost_dead_letters"), 1.0);
    assert_eq!(
        metric(&m, "outpost_records_dead_lettered_total{sink=\"up\"}"),
        1.0
    );
    assert_eq!(metric(&m, "outpost_records_undeliverable_total"), 1.0);

    // An outage: not connected, and readings queue.
    w.up.stop();
    assert!(wait_until(Duration::from_secs(10), || {
        metrics(hp).get("outpost_sink_connected{sink=\"up\"}") == Some(&0.0)
    }));
    for i in 0..2 {
        assert_eq!(
            post_reading(hp, "m2", &format!("{{\"o\":{i}}}")).status,
            200
        );
    }
    let m = metrics(hp);
    assert_eq!(metric(&m, "outpost_records_queued{sink=\"up\"}"), 2.0);
    assert!(metric(&m, "outpost_outbox_bytes") > 0.0);
    w.up.restart();
    assert!(
        wait_until(Duration::from_secs(20), || {
            metrics(hp).get("outpost_records_delivered_total{sink=\"up\"}") == Some(&7.0)
        }),
        "{}",
        op.log_text()
    );
    assert_eq!(
        metric(&metrics(hp), "outpost_sink_connects_total{sink=\"up\"}"),
        2.0
    );
    op.terminate();
}

#[test]
fn binding_the_page_beyond_loopback_without_a_password_file_refuses_to_start() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let text = format!(
        "state_dir = \"{}\"\n[broker]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"0.0.0.0:{port}\"\n",
        dir.path().display(),
        free_port()
    );
    let cfg = dir.path().join("outpost.toml");
    std::fs::write(&cfg, text).expect("write");
    let check = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("check-config");
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert!(
        err.contains("http.listen") && err.contains("http.password_file"),
        "names the key and the fix: {err}"
    );
    let run = Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_outpost"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!run.status.success(), "refused to start");
    assert!(String::from_utf8_lossy(&run.stderr).contains("http.listen"));
    assert!(
        !wait_port(port, Duration::from_millis(200)),
        "nothing was bound"
    );
}

/// Rewrites the config with the sink's packet limit raised from 4 to 64
/// KiB (what makes the test's dead letters sendable).
fn raise_the_sinks_limit(op: &Outpost, text: &str) {
    let raised = text.replace(
        "max_packet_size = \"4 KiB\"",
        "max_packet_size = \"64 KiB\"",
    );
    assert_ne!(raised, text, "the config has the 4 KiB limit");
    std::fs::write(&op.config, raised).expect("config");
}

/// Runs `outpost dead-letters ARGS --config CFG`; (success, stdout + stderr).
fn dead_letters_cli(cfg: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("dead-letters")
        .args(args)
        .arg("--config")
        .arg(cfg)
        .output()
        .expect("dead-letters");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_password_file_the_page_needs_a_login_and_its_buttons_a_token_and_a_host() {
    let w = World::new("");
    let hp = free_port();
    let (_pw_dir, pw) = password_file("admin", "s3cret-pass");
    let http = format!("password_file = \"{}\"", pw.display());
    let col = w.collect("site1/#").await;
    let text = config(&w, "max_packet_size = \"4 KiB\"", hp, &http);
    let mut op = w.start(&text);
    assert!(wait_port(hp, Duration::from_secs(5)));

    for path in ["/", "/metrics", "/api/status"] {
        let a = get(hp, path);
        assert_eq!(a.status, 401, "{path} without a login");
        assert!(a
            .header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic")));
        let wrong = request(
            hp,
            "GET",
            path,
            &[("Authorization", &basic("admin", "nope"))],
            b"",
        );
        assert_eq!(wrong.status, 401, "{path} with a wrong password");
    }
    let login = basic("admin", "s3cret-pass");
    let auth = [("Authorization", login.as_str())];
    let a = request(hp, "GET", "/api/status", &auth, b"");
    assert_eq!(a.status, 200);
    let snap: serde_json::Value = serde_json::from_str(&a.body).expect("json");
    assert!(
        snap["sinks"]["up"].is_object(),
        "the status snapshot: {snap}"
    );

    // Three dead letters (too large for the sink, from 3.1.1 sensors).
    for d in ["d1", "d2", "d3"] {
        let (mut c, _) = Raw::connected(w.port, &Hello::new(V311, d)).await;
        let topic = format!("sensors/{d}/telemetry");
        assert_eq!(
            c.publish(&topic, &[b'"'; 3000], 1, false, Props::default())
                .await,
            Ok(0)
        );
        c.disconnect().await;
    }
    let dead = outpost::store::dead_letters(&op.outbox()).expect("dead letters");
    assert_eq!(dead.len(), 3);

    let page = request(hp, "GET", "/", &auth, b"").body;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .expect("the page carries the form token")
        .to_string();
    assert!(page.contains("data-id=\"") && page.contains("Purge all"));
    let form = |token: &str, id: &str| format!("csrf={token}&id={id}");
    let form_type = ("Content-Type", "application/x-www-form-urlencoded");
    let id0 = dead[0].id.to_string();
    let bad_token = request(
        hp,
        "POST",
        "/dead-letters/purge",
        &[auth[0], form_type],
        form("0000", &id0).as_bytes(),
    );
    assert_eq!(bad_token.status, 403, "{}", bad_token.body);
    let bad_host = request(
        hp,
        "POST",
        "/dead-letters/purge",
        &[auth[0], form_type, ("Host", "evil.example:8088")],
        form(&csrf, &id0).as_bytes(),
    );
    assert_eq!(bad_host.status, 403, "{}", bad_host.body);
    let no_login = request(
        hp,
        "POST",
        "/dead-letters/purge",
        &[form_type],
        form(&csrf, &id0).as_bytes(),
    );
    assert_eq!(no_login.status, 401);
    assert_eq!(
        outpost::store::dead_letters(&op.outbox())
            .expect("dead")
            .len(),
        3,
        "none of those did anything"
    );

    let ok = request(
        hp,
        "POST",
        "/dead-letters/purge",
        &[auth[0], form_type],
        form(&csrf, &id0).as_bytes(),
    );
    assert_eq!(ok.status, 303, "{}", ok.body);
    let left = outpost::store::dead_letters(&op.outbox()).expect("dead");
    assert_eq!(
        left.iter().map(|d| d.id).collect::<Vec<_>>(),
        [dead[1].id, dead[2].id]
    );

    // The sink's limit is raised; the CLI asks the running daemon to retry one.
    op.terminate();
    raise_the_sinks_limit(&op, &text);
    op.restart();
    let (ok, out) = dead_letters_cli(&op.config, &["--retry", &dead[1].id.to_string()]);
    assert!(ok, "{out}");
    assert!(out.contains("1 dead letter(s) retried"), "{out}");
    assert_eq!(
        col.wait_for(1, Duration::from_secs(15)).await,
        1,
        "{}",
        op.log_text()
    );
    assert_eq!(col.all()[0].topic, "site1/d2/telemetry");
    let st = op.status_json();
    assert_eq!(
        st["dead_letters"]["count"], 1,
        "the daemon's own count: {st}"
    );

    // The last one through the page's "Purge all", then nothing is left.
    let ok = request(
        hp,
        "POST",
        "/dead-letters/purge",
        &[auth[0], form_type],
        form(&csrf_of(hp, &auth), "all").as_bytes(),
    );
    assert_eq!(ok.status, 303);
    assert!(outpost::store::dead_letters(&op.outbox())
        .expect("dead")
        .is_empty());
    let (ok, out) = dead_letters_cli(&op.config, &["--retry", "--all"]);
    assert!(!ok && out.contains("no such dead letter"), "{out}");
    let (ok, out) = dead_letters_cli(&op.config, &["--retry"]);
    assert!(!ok && out.contains("--all"), "{out}");
    op.terminate();
}

fn csrf_of(hp: u16, auth: &[(&str, &str)]) -> String {
    request(hp, "GET", "/", auth, b"")
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_retried_from_the_cli_with_outpost_stopped() {
    let w = World::new("");
    let col = w.collect("site1/#").await;
    let text = w.site().mqtt("", "max_packet_size = \"4 KiB\"");
    let mut op = w.start(&text);
    let (mut c, _) = Raw::connected(w.port, &Hello::new(V311, "late")).await;
    assert_eq!(
        c.publish(
            "sensors/late/telemetry",
            &[b'"'; 3000],
            1,
            false,
            Props::default()
        )
        .await,
        Ok(0)
    );
    c.disconnect().await;
    op.terminate();
    raise_the_sinks_limit(&op, &text);
    let (ok, out) = dead_letters_cli(&op.config, &["--retry", "--all"]);
    assert!(ok, "{out}");
    assert!(out.contains("1 dead letter(s) retried"), "{out}");
    op.restart();
    assert_eq!(
        col.wait_for(1, Duration::from_secs(15)).await,
        1,
        "{}",
        op.log_text()
    );
    assert!(outpost::store::dead_letters(&op.outbox())
        .expect("dead")
        .is_empty());
    op.terminate();
}
