//! Remote configuration and health reporting against a ThingsBoard fixture:
//! a real mosquitto, with the test playing the platform on outpost's own
//! device topics (shared attributes down, client attributes and telemetry
//! up, and the attributes request made on connect).

use std::time::Duration;

use crate::common::*;
use rumqttc::QoS;
use serde_json::{json, Value};

pub fn tb_config(site: &Site, extra: &str) -> String {
    format!(
        r#"{header}
[remote]
rollback_after = "2s"

[[route]]
topic = "sensors/+/telemetry"
sink = "tb"

[sink.tb]
type = "thingsboard"
url = "{url}"
access_token = "gw-token"
reconnect_min = "200ms"
reconnect_max = "500ms"
{extra}
"#,
        // The tests change the log level remotely from plain `info`.
        header = site
            .header("", "")
            .replace("log_level = \"info,outpost=debug\"", "log_level = \"info\""),
        url = site.url,
    )
}

/// The platform's side: publishes shared attributes to the device and
/// collects what the device sends.
pub struct Platform {
    client: rumqttc::AsyncClient,
    attributes: Collector,
    telemetry: Collector,
}

impl Platform {
    pub async fn start(up: &Upstream) -> Platform {
        let (client, _rx) = subscriber(
            up.port,
            &format!("tb-{}", fastrand::u32(..)),
            "v1/devices/me/attributes/request/+",
        )
        .await;
        Platform {
            client,
            attributes: Collector::start(up.port, "v1/devices/me/attributes").await,
            telemetry: Collector::start(up.port, "v1/devices/me/telemetry").await,
        }
    }

    /// Waits for outpost's connect report: from then on it is subscribed
    /// to its shared attributes (it subscribes before it reports).
    pub fn wait_connected(&self, op: &Outpost) {
        assert!(
            wait_until(Duration::from_secs(10), || self
                .attributes
                .all()
                .iter()
                .any(|s| s.json()["outpost_version"].is_string())),
            "no connect report from outpost:\n{}",
            op.log_text()
        );
    }

    pub async fn set_shared(&self, values: Value) {
        self.client
            .publish(
                "v1/devices/me/attributes",
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&values).expect("json"),
            )
            .await
            .expect("publish");
    }

    /// The device's report for `version`, within 15 s.
    pub async fn report(&self, version: Value) -> Value {
        for _ in 0..150 {
            if let Some(r) = self
                .attributes
                .all()
                .iter()
                .map(|s| s.json())
                .find(|v| v.get("config_status").is_some() && v["config_version"] == version)
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no report for config_version {version}: {:?}",
            self.attributes
                .all()
                .iter()
                .map(|s| s.json())
                .collect::<Vec<_>>()
        );
    }

    /// Every client-attributes message the device sent.
    pub fn attribute_reports(&self) -> Vec<Value> {
        self.attributes.all().iter().map(|s| s.json()).collect()
    }

    /// Readings (not health) that reached the platform: their values.
    pub fn readings(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for s in self.telemetry.all() {
            match s.json() {
                Value::Array(a) => out.extend(a.into_iter().map(|e| e["values"].clone())),
                v if v["values"].get("uptime_s").is_none() => out.push(v["values"].clone()),
                _ => {}
            }
        }
        out
    }

    pub fn health(&self) -> Vec<Value> {
        self.telemetry
            .all()
            .iter()
            .map(|s| s.json())
            .filter(|v| v["values"].get("uptime_s").is_some())
            .map(|v| v["values"].clone())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_added_remotely_forwards_without_restart_and_a_bad_change_is_rejected() {
    let w = World::thingsboard("").await;
    let tb = Platform::start(&w.up).await;
    let mut op = w.start(&tb_config(&w.site(), ""));
    let pid = op.pid();
    // Box facts once per connect.
    tb.wait_connected(&op);

    publish_all(
        w.port,
        "g1",
        vec![("greenhouse/g1/telemetry".into(), b"{\"t\":1}".to_vec())],
    )
    .await;
    tb.set_shared(json!({
        "config_version": 2,
        "routes": [{"topic": "sensors/+/telemetry", "sink": "tb"}, {"topic": "greenhouse/+/telemetry", "sink": "tb"}],
        "log_level": "info,outpost=debug",
    }))
    .await;
    let report = tb.report(json!(2)).await;
    assert_eq!(report["config_status"], "ok", "{report}");
    assert_eq!(report["config_error"], "");
    assert!(
        report["config_hash"]
            .as_str()
            .is_some_and(|h| h.len() == 16),
        "{report}"
    );

    publish_all(
        w.port,
        "g1",
        vec![("greenhouse/g1/telemetry".into(), b"{\"t\":2}".to_vec())],
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(10), || tb
            .readings()
            .contains(&json!({"t": 2}))),
        "{:?}\n{}",
        tb.readings(),
        op.log_text()
    );
    assert!(
        !tb.readings().contains(&json!({"t": 1})),
        "routed only from the change on"
    );
    assert_eq!(op.pid(), pid, "applied without a restart");
    assert!(op.log_text().contains("log level changed"));

    // Invalid: named with the file's key path; the running config stays.
    tb.set_shared(json!({"config_version": 3, "store": {"full_policy": "sometimes"}}))
        .await;
    let report = tb.report(json!(3)).await;
    assert_eq!(report["config_status"], "rejected", "{report}");
    assert!(
        report["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("store.full_policy")),
        "{report}"
    );
    publish_all(
        w.port,
        "g1",
        vec![("greenhouse/g1/telemetry".into(), b"{\"t\":3}".to_vec())],
    )
    .await;
    assert!(wait_until(Duration::from_secs(10), || tb
        .readings()
        .contains(&json!({"t": 3}))));

    // Broken JSON in a section is rejected too.
    tb.set_shared(json!({"config_version": 4, "routes": "[{\"topic\":"}))
        .await;
    let report = tb.report(json!(4)).await;
    assert_eq!(report["config_status"], "rejected");
    assert!(
        report["config_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("routes: not JSON")),
        "{report}"
    );
    assert_eq!(op.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overlay_holds_after_a_restart_with_the_upstream_down() {
    let mut w = World::thingsboard("").await;
    let tb = Platform::start(&w.up).await;
    let mut op = w.start(&tb_config(&w.site(), ""));
    tb.wait_connected(&op);
    tb.set_shared(
        json!({"config_version": "v7", "routes": [{"topic": "barn/+/telemetry", "sink": "tb"}]}),
    )
    .await;
    assert_eq!(tb.report(json!("v7")).await["config_status"], "ok");
    assert_eq!(op.terminate().code(), Some(0));

    w.up.stop();
    op.restart();
    assert_eq!(
        publish_devices(w.port, 1, 2).await,
        2,
        "sensors/ no longer routed"
    );
    publish_all(
        w.port,
        "b",
        vec![("barn/cow-1/telemetry".into(), b"{\"t\":9}".to_vec())],
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(5), || op.queued() == 1),
        "queued {}",
        op.queued()
    );
    assert!(op
        .log_text()
        .contains("running with the remote configuration stored from ThingsBoard"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["check-config", "--config"])
        .arg(&op.config)
        .output()
        .expect("check-config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("config_version \"v7\"") && text.contains("  route\n"),
        "{text}"
    );
    assert!(text.contains("barn/+/telemetry"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_breaks_the_uplink_is_rolled_back_and_reported() {
    let w = World::thingsboard("").await;
    let tb = Platform::start(&w.up).await;
    let op = w.start(&tb_config(&w.site(), ""));
    tb.wait_connected(&op);
    // An upstream nobody listens on.
    let dead = free_port();
    tb.set_shared(
        json!({"config_version": 5, "sinks": {"tb": {"url": format!("mqtt://127.0.0.1:{dead}")}}}),
    )
    .await;
    let report = tb.report(json!(5)).await;
    assert_eq!(report["config_status"], "rolled_back", "{report}");
    assert!(
        report["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("did not connect within 2s")),
        "{report}"
    );
    // Back on the working upstream: readings flow.
    assert_eq!(publish_devices(w.port, 1, 3).await, 3);
    assert!(
        wait_until(Duration::from_secs(10), || tb.readings().len() >= 3),
        "{}",
        op.log_text()
    );
    let log = op.log_text();
    assert!(log.contains("rolling back"), "{log}");
    assert!(!log.contains("gw-token"), "the token is never logged");
    // Never made the last good configuration; kept aside with its reason.
    let kept = std::fs::read_to_string(w.path().join("remote-config.json")).unwrap_or_default();
    assert!(
        !kept.contains(&dead.to_string()),
        "the broken overlay is not the last good one: {kept}"
    );
    let aside = std::fs::read_to_string(w.path().join("remote-config.failed.json"))
        .expect("the change set aside");
    assert!(
        aside.contains(&dead.to_string()) && aside.contains("did not connect"),
        "{aside}"
    );
    assert!(!w.path().join("remote-config.trying.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_telemetry_shows_a_queue_rising_while_an_upstream_is_down_then_falling_to_zero() {
    let w = World::thingsboard("").await;
    let mut second = Upstream::start("");
    second.stop();
    let tb = Platform::start(&w.up).await;
    let extra = format!(
        "\n[health]\ninterval = \"1s\"\n\n[[route]]\ntopic = \"meters/+/telemetry\"\nsink = \"archive\"\n\n[sink.archive]\ntype = \"mqtt\"\nurl = \"{}\"\nreconnect_min = \"200ms\"\nreconnect_max = \"500ms\"\n",
        second.url()
    );
    let text = tb_config(&w.site(), "").replace("[remote]", &format!("{extra}\n[remote]"));
    let op = w.start(&text);
    let readings: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                "meters/m1/telemetry".to_string(),
                format!("{{\"kwh\":{i}}}").into_bytes(),
            )
        })
        .collect();
    assert_eq!(publish_all(w.port, "m1", readings).await, 20);
    assert!(
        wait_until(Duration::from_secs(10), || tb
            .health()
            .iter()
            .any(|h| h["queued_archive"] == 20)),
        "{:?}\n{}",
        tb.health(),
        op.log_text()
    );
    let h = tb
        .health()
        .into_iter()
        .find(|h| h["queued_archive"] == 20)
        .expect("sample");
    assert_eq!(h["connected_tb"], true, "{h}");
    assert_eq!(h["connected_archive"], false, "{h}");
    assert!(
        h["oldest_queued_s_archive"]
            .as_i64()
            .is_some_and(|s| (0..60).contains(&s)),
        "{h}"
    );
    assert!(
        h["rss_bytes"]
            .as_u64()
            .is_some_and(|r| r > 1 << 20 && r < 1 << 30),
        "{h}"
    );
    assert!(h["disk_free_bytes"].as_u64().is_some_and(|d| d > 0), "{h}");
    assert!(h["outbox_bytes"].as_u64().is_some_and(|b| b > 0), "{h}");
    assert!(h["accepted"].as_u64() >= Some(20), "{h}");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert!(h["uptime_s"].as_u64().is_some_and(|u| u < 120), "{h}");
    assert!(
        h.get("cpu_percent").is_some() || tb.health().len() < 2,
        "{h}"
    );

    second.restart();
    assert!(
        wait_until(Duration::from_secs(15), || tb.health().last().is_some_and(
            |h| h["queued_archive"] == 0 && h["connected_archive"] == true
        )),
        "{:?}",
        tb.health().last()
    );
    // The gateway's own telemetry is not mixed with device readings.
    assert!(tb.readings().is_empty(), "{:?}", tb.readings());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_ports_and_store_bounds_change_live() {
    let w = World::thingsboard("").await;
    let tb = Platform::start(&w.up).await;
    let pty = Pty::new(w.path(), "uart");
    let serial = format!(
        "\n[health]\ninterval = \"1s\"\n\n[[route]]\ntopic = \"devices/+/telemetry\"\nsink = \"tb\"\n\n[[serial]]\nname = \"uart\"\npath = \"{}\"\nprotocol = \"kv\"\ndevice = \"tank\"\n",
        pty.device.display()
    );
    let text = tb_config(&w.site(), "").replace("[remote]", &format!("{serial}\n[remote]"));
    let op = w.start(&text);
    assert!(wait_until(Duration::from_secs(10), || op.status_json()
        ["serial"]["uart"]["open"]
        == true));
    let mut sensor = pty.sensor_file();
    std::io::Write::write_all(&mut sensor, b"level=1\n").expect("write");
    assert!(wait_until(Duration::from_secs(10), || tb
        .readings()
        .contains(&json!({"level": 1}))));

    // The port is switched off from the platform, and the outbox bounds
    // changed; neither needs a restart.
    let pid = op.pid();
    tb.wait_connected(&op);
    tb.set_shared(json!({
        "config_version": 11,
        "serial": [{"name": "uart", "path": pty.device.display().to_string(), "protocol": "kv", "device": "tank", "enabled": false}],
        "store": {"max_bytes": "8 MiB", "full_policy": "reject_new"},
    }))
    .await;
    assert_eq!(tb.report(json!(11)).await["config_status"], "ok");
    assert!(
        wait_until(Duration::from_secs(10), || op.status_json()["serial"]
            ["uart"]["open"]
            == false),
        "{}",
        op.log_text()
    );
    let log = op.log_text();
    assert!(
        log.contains("serial port disabled") && log.contains("outbox bounds changed"),
        "{log}"
    );
    assert!(log.contains("max_bytes=8388608"), "{log}");
    assert!(
        wait_until(Duration::from_secs(5), || tb.health().last().is_some_and(
            |h| h["serial_open_uart"] == false && h["serial_readings_uart"] == 1
        )),
        "serial counters in the health telemetry: {:?}",
        tb.health().last()
    );
    assert_eq!(op.pid(), pid);

    // And on again.
    tb.set_shared(json!({"config_version": 12, "serial": null}))
        .await;
    assert_eq!(tb.report(json!(12)).await["config_status"], "ok");
    assert!(wait_until(Duration::from_secs(10), || op.status_json()
        ["serial"]["uart"]["open"]
        == true));
    let mut sensor = pty.sensor_file();
    std::io::Write::write_all(&mut sensor, b"level=2\n").expect("write");
    assert!(
        wait_until(Duration::from_secs(10), || tb
            .readings()
            .contains(&json!({"level": 2}))),
        "{}",
        op.log_text()
    );
}
