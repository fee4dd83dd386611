//! Remote changes converge: a change rolled back is not applied again when
//! ThingsBoard offers it again (it does, at every reconnect), a trial
//! judges only what the change touched, and adding a sink leaves the local
//! broker and its clients alone.

use std::time::Duration;

use outpost::source::broker::codec::{Props, V5};
use serde_json::json;

use crate::common::*;
use crate::remote::{tb_config, Platform};

/// Reports of `config_status = status` for `version` so far.
fn reports(tb: &Platform, version: i64, status: &str) -> usize {
    tb.attribute_reports()
        .iter()
        .filter(|v| v["config_version"] == version && v["config_status"] == status)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_change_offered_again_is_not_applied_again_and_is_reported_each_time() {
    let w = World::thingsboard("").await;
    let tb = Platform::start(&w.up).await;
    let op = w.start(&tb_config(&w.site(), ""));
    tb.wait_connected(&op);
    let dead = free_port();
    let bad =
        json!({"config_version": 5, "sinks": {"tb": {"url": format!("mqtt://127.0.0.1:{dead}")}}});
    tb.set_shared(bad.clone()).await;
    assert_eq!(tb.report(json!(5)).await["config_status"], "rolled_back");
    let applied = op
        .log_text()
        .matches("remote configuration applied")
        .count();
    assert_eq!(applied, 1);

    // ThingsBoard offers the same value again (as it does on every
    // connect): answered, not applied.
    for offer in 1..=3 {
        tb.set_shared(bad.clone()).await;
        assert!(
            wait_until(Duration::from_secs(10), || reports(&tb, 5, "rolled_back")
                > offer),
            "offer {offer} was not answered with rolled_back:\n{}",
            op.log_text()
        );
    }
    assert_eq!(
        op.log_text()
            .matches("remote configuration applied")
            .count(),
        applied,
        "the rolled-back change was applied again:\n{}",
        op.log_text()
    );
    // The sink stayed on the working upstream all along.
    assert_eq!(publish_devices(w.port, 1, 3).await, 3);
    assert!(wait_until(Duration::from_secs(10), || tb.readings().len() >= 3));

    // A different value is tried.
    tb.set_shared(json!({"config_version": 6, "log_level": "debug"}))
        .await;
    assert_eq!(tb.report(json!(6)).await["config_status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_added_while_another_is_down_is_kept_and_the_broker_never_restarts() {
    let w = World::thingsboard("").await;
    let tb = Platform::start(&w.up).await;
    let col = w.collect("archive/#").await;
    // A second sink that is down from the start.
    let down = format!(
        "\n[[route]]\ntopic = \"meters/+/telemetry\"\nsink = \"down\"\n\n[sink.down]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\nreconnect_min = \"200ms\"\nreconnect_max = \"500ms\"\n",
        free_port()
    );
    // Room for the new sink to connect on a loaded machine.
    let file =
        tb_config(&w.site(), "").replace("rollback_after = \"2s\"", "rollback_after = \"8s\"");
    let op = w.start(&format!("{file}{down}"));
    tb.wait_connected(&op);
    // A LAN client, connected before the change.
    let (mut lan, _) = Raw::connected(w.port, &Hello::new(V5, "lan-client")).await;

    tb.set_shared(json!({
        "config_version": 7,
        "routes": [
            {"topic": "sensors/+/telemetry", "sink": "tb"},
            {"topic": "meters/+/telemetry", "sink": "down"},
            {"topic": "archive/+/telemetry", "sink": "archive"}
        ],
        // Its own client id: the ThingsBoard sink reaches the same
        // mosquitto (through the fixture) as `outpost`.
        "sinks": {"archive": {"type": "mqtt", "url": w.up.url(), "topic": "archive/{device}",
                               "client_id": "outpost-archive",
                               "reconnect_min": "200ms", "reconnect_max": "500ms"}}
    }))
    .await;
    // Reported once the trial ends: kept, although `down` is still down.
    let report = tb.report(json!(7)).await;
    assert_eq!(report["config_status"], "ok", "{report}\n{}", op.log_text());
    assert_eq!(reports(&tb, 7, "rolled_back"), 0, "{}", op.log_text());

    // The broker never restarted: one start, and the LAN client's own
    // connection carries a reading to the new sink.
    assert_eq!(op.log_text().matches("outpost running").count(), 1);
    let code = lan
        .publish(
            "archive/m1/telemetry",
            b"{\"kwh\":1}",
            1,
            false,
            Props::default(),
        )
        .await
        .expect("the LAN client's connection is still open");
    assert_eq!(code, 0);
    assert!(
        col.wait_for(1, Duration::from_secs(10)).await >= 1,
        "the added sink did not deliver:\n{}",
        op.log_text()
    );
    assert_eq!(
        op.status_json()["broker"]["connected"],
        1,
        "the LAN client is still connected"
    );
}

/// Deleting a shared attribute in ThingsBoard sends `{"deleted":[..]}`
/// (`JsonConverter.toJson(AttributeUpdateNotificationMsg)`): the remote
/// setting goes back to the file's value, reported like any change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_shared_attribute_takes_the_setting_back_to_the_file() {
    let w = World::thingsboard("").await;
    let tb = Platform::start(&w.up).await;
    let op = w.start(&tb_config(&w.site(), ""));
    tb.wait_connected(&op);
    tb.set_shared(json!({"config_version": 8, "log_level": "debug"}))
        .await;
    assert_eq!(tb.report(json!(8)).await["config_status"], "ok");
    let kept = || std::fs::read_to_string(w.path().join("remote-config.json")).unwrap_or_default();
    assert!(kept().contains("debug"), "{}", kept());
    let oks = reports(&tb, 8, "ok");

    tb.set_shared(json!({"deleted": ["log_level"]})).await;
    assert!(
        wait_until(Duration::from_secs(10), || !kept().contains("debug")
            && reports(&tb, 8, "ok") > oks),
        "the deleted attribute still applies: {}\n{}",
        kept(),
        op.log_text()
    );
}
