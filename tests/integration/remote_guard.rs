//! Remote configuration cannot brick the box: against the ThingsBoard
//! fixture (a real mosquitto playing the platform), changes that would move
//! files, weaken TLS or overflow a clock are refused with the reason, and a
//! change that stops outpost from starting is set aside, at the next start
//! at the latest, with outpost running on the last good configuration and
//! reporting `config_status = rolled_back`. After each case a reading must
//! still reach the platform.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::remote::{tb_config, Platform};

/// A reading from a sensor reaches the platform.
async fn canary(w: &World, tb: &Platform, op: &Outpost, n: u64) {
    let msgs = vec![(
        "sensors/canary/telemetry".to_string(),
        format!("{{\"canary\":{n}}}").into_bytes(),
    )];
    assert_eq!(publish_all(w.port, &format!("canary-{n}"), msgs).await, 1);
    assert!(
        wait_until(Duration::from_secs(15), || tb
            .readings()
            .contains(&json!({"canary": n}))),
        "canary {n} did not arrive:\n{}",
        op.all_logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_changes_cannot_move_files_weaken_tls_or_overflow_a_clock() {
    let w = World::thingsboard("").await;
    let tb = Platform::start(&w.up).await;
    let dead = free_port();
    // A second sink over TLS (it never connects here; its settings count).
    let extra = format!(
        "\n[[route]]\ntopic = \"meters/+/telemetry\"\nsink = \"archive\"\n\n[sink.archive]\ntype = \"mqtt\"\nurl = \"mqtts://127.0.0.1:{dead}\"\n"
    );
    let op = w.start(&tb_config(&w.site(), &extra));
    tb.wait_connected(&op);
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"store": {"path": "/etc/outpost/outbox.db"}}),
            "store.path: a file path cannot be set remotely",
        ),
        (
            json!({"sinks": {"tb": {"ca_file": "/tmp/ca.pem"}}}),
            "sink.tb.ca_file: a file path cannot be set remotely",
        ),
        (
            json!({"sinks": {"archive": {"url": format!("mqtt://127.0.0.1:{dead}")}}}),
            "sink.archive.url: the cloud cannot move a sink from mqtts:// to mqtt://",
        ),
        (
            json!({"health": {"interval": "100000d"}}),
            "health.interval",
        ),
        (json!({"health": {"interval": 1e30}}), "health.interval"),
        (
            json!({"sinks": {"tb": {"rpc_timeout": "30d"}}}),
            "sink.tb.rpc_timeout",
        ),
        (
            json!({"readings": {"max_ts_ahead": "9999d"}}),
            "readings.max_ts_ahead",
        ),
    ];
    for (i, (change, why)) in cases.into_iter().enumerate() {
        let version = json!(100 + i);
        let mut shared = change.as_object().cloned().unwrap_or_default();
        shared.insert("config_version".into(), version.clone());
        tb.set_shared(Value::Object(shared)).await;
        let report = tb.report(version).await;
        assert_eq!(report["config_status"], "rejected", "{change}: {report}");
        assert!(
            report["config_error"]
                .as_str()
                .is_some_and(|e| e.contains(why)),
            "{change}: want `{why}` in {report}"
        );
        canary(&w, &tb, &op, i as u64).await;
    }
    assert!(op.log_text().contains("remote configuration rejected"));
    assert!(
        !w.path().join("remote-config.json").exists(),
        "nothing was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_run_is_refused_or_set_aside_and_the_last_good_one_runs() {
    let w = World::thingsboard("").await;
    let tb = Platform::start(&w.up).await;
    let file = tb_config(&w.site(), "").replace("[remote]\n", "[remote]\nallow_paths = true\n");
    let mut op = w.start(&file);
    let pid = op.pid();
    tb.wait_connected(&op);

    // A good change first: it becomes the last good overlay.
    tb.set_shared(json!({"config_version": 1, "routes": [
        {"topic": "sensors/+/telemetry", "sink": "tb"},
        {"topic": "barn/+/telemetry", "sink": "tb"}]}))
        .await;
    assert_eq!(tb.report(json!(1)).await["config_status"], "ok");

    // A new sink whose CA file is inside the state directory (allowed) but
    // missing: checked as check-config checks a file, so refused before it
    // runs (once it needed a restart in place that failed, then a fall
    // back), and nothing restarts.
    let missing = w.path().join("missing-ca.pem");
    tb.set_shared(json!({"config_version": 2, "sinks": {"extra": {
        "type": "mqtt", "url": format!("mqtts://127.0.0.1:{}", free_port()),
        "ca_file": missing.display().to_string()}}}))
        .await;
    let report = tb.report(json!(2)).await;
    assert_eq!(report["config_status"], "rejected", "{report}");
    assert!(
        report["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("sink.extra.ca_file") && e.contains("CA file")),
        "{report}"
    );
    assert_eq!(op.pid(), pid);
    assert!(op.alive());
    assert_eq!(
        op.log_text().matches("outpost running").count(),
        1,
        "no restart"
    );
    // The last good overlay runs: its route works.
    publish_all(
        w.port,
        "barn",
        vec![("barn/cow/telemetry".into(), b"{\"moo\":1}".to_vec())],
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(10), || tb
            .readings()
            .contains(&json!({"moo": 1}))),
        "{}",
        op.log_text()
    );
    let good = std::fs::read_to_string(w.path().join("remote-config.json")).expect("last good");
    assert!(
        good.contains("barn/+/telemetry") && !good.contains("extra"),
        "{good}"
    );

    // Power lost while a change was on trial: the next start sets it aside.
    assert!(op.terminate().success());
    let trying =
        json!({"overlay": {"version": 3, "sections": {"log_level": "debug"}}, "started": true});
    std::fs::write(
        w.path().join("remote-config.trying.json"),
        trying.to_string(),
    )
    .expect("write");
    op.restart();
    tb.wait_connected(&op);
    assert!(
        wait_until(Duration::from_secs(5), || op
            .log_text()
            .contains("the last good configuration runs")
            || std::fs::read_to_string(
                w.path().join("remote-config.failed.json")
            )
            .is_ok_and(
                |t| t.contains("stopped before this change was confirmed")
            )),
        "{}",
        op.log_text()
    );
    assert!(!w.path().join("remote-config.trying.json").exists());
    canary(&w, &tb, &op, 1).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["check-config", "--config"])
        .arg(&op.config)
        .output()
        .expect("check-config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("the last remote change was set aside"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_needs_a_restart_is_kept_only_once_its_sinks_connected() {
    let w = World::thingsboard("").await;
    let tb = Platform::start(&w.up).await;
    let op = w.start(&tb_config(&w.site(), ""));
    let pid = op.pid();
    tb.wait_connected(&op);
    // A new sink on a port nobody listens on: outpost restarts in place to
    // add it, the sink never connects, and the change is undone.
    let dead = free_port();
    tb.set_shared(json!({"config_version": "add-1", "sinks": {"extra": {
        "type": "mqtt", "url": format!("mqtt://127.0.0.1:{dead}")}}}))
        .await;
    let report = tb.report(json!("add-1")).await;
    assert_eq!(report["config_status"], "rolled_back", "{report}");
    assert!(
        report["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("sink extra did not connect")),
        "{report}"
    );
    assert_eq!(op.pid(), pid);
    assert!(
        !w.path().join("remote-config.json").exists(),
        "never the last good one"
    );
    let st = op.status_json();
    assert!(st["sinks"].get("extra").is_none(), "back without it: {st}");
    canary(&w, &tb, &op, 7).await;
}
