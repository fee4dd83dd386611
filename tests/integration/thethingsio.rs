//! The thethings.iO sink against a fixture: a real mosquitto, with the test
//! playing the platform: it answers the activation on the channel the
//! device subscribed to (read from mosquitto's log), and reads the thing's
//! topic.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use rumqttc::QoS;
use serde_json::{json, Value};

fn tio_config(dir: &Path, port: u16, up: &Upstream) -> String {
    format!(
        r#"state_dir = "{dir}"
log_level = "info,outpost=debug"

[broker]
listen = "127.0.0.1:{port}"

[store]
synchronous = "normal"

[[route]]
topic = "sensors/+/telemetry"
sink = "tio"

[sink.tio]
type = "thethingsio"
url = "{url}"
activation_code = "ACT-CODE-1"
activation_timeout = "5s"
reconnect_min = "200ms"
reconnect_max = "1s"
"#,
        dir = dir.display(),
        url = up.url()
    )
}

/// The activation channels devices subscribed to, from mosquitto's log
/// (each once, in order; mosquitto names a subscription on two lines).
fn activation_channels(up: &Upstream) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in up.log().split_whitespace() {
        if w.starts_with("v2/activations/ACT-CODE-1/") && !out.iter().any(|o| o == w) {
            out.push(w.to_string());
        }
    }
    out
}

/// Answers the next activation with `answer`.
async fn answer_activation(
    up: &Upstream,
    platform: &rumqttc::AsyncClient,
    answer: Value,
    seen: usize,
) {
    assert!(
        wait_until(Duration::from_secs(10), || activation_channels(up).len()
            > seen),
        "no activation subscription: {}",
        up.log()
    );
    let channel = activation_channels(up)[seen].clone();
    platform
        .publish(
            channel,
            QoS::AtLeastOnce,
            false,
            answer.to_string().into_bytes(),
        )
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_once_then_values_on_the_thing_topic_and_realtime_relayed() {
    let w = World::new("");
    let (platform, _rx) = subscriber(w.up.port, "tio-platform", "v2/nothing").await;
    let col = w.collect("v2/things/TOKEN-abc").await;
    let mut op = w.start(&tio_config(w.path(), w.port, &w.up));
    answer_activation(&w.up, &platform, json!({"thingToken": "TOKEN-abc"}), 0).await;

    let before = time::OffsetDateTime::now_utc();
    assert_eq!(publish_devices(w.port, 1, 2).await, 2);
    assert!(
        col.wait_for(1, Duration::from_secs(10)).await >= 1,
        "{}",
        op.log_text()
    );
    col.settle(Duration::from_millis(500), Duration::from_secs(5))
        .await;
    let entries: Vec<Value> = col
        .all()
        .iter()
        .flat_map(|s| s.json()["values"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    for e in &entries {
        assert_eq!(e["key"], "seq");
        let dt = e["datetime"].as_str().expect("datetime");
        assert_eq!(dt.len(), 14, "YYYYMMDDHHmmss: {dt}");
        assert!(
            dt.starts_with(&format!(
                "{:04}{:02}{:02}",
                before.year(),
                u8::from(before.month()),
                before.day()
            )),
            "{dt}"
        );
    }
    assert_eq!(
        entries
            .iter()
            .map(|e| e["value"].clone())
            .collect::<Vec<_>>(),
        [json!(0), json!(1)]
    );
    let stored = w.path().join("credentials/tio.json");
    let mode = std::fs::metadata(&stored)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("stored token");
    assert_eq!(mode, 0o600);

    // Realtime updates of the thing reach the local broker.
    let (_local, mut realtime) = subscriber(w.port, "dashboard", "thethingsio/tio/realtime").await;
    platform
        .publish(
            "v2/things/TOKEN-abc",
            QoS::AtLeastOnce,
            false,
            br#"{"values":[{"key":"setpoint","value":7}]}"#.to_vec(),
        )
        .await
        .expect("publish");
    let mut got = Vec::new();
    for _ in 0..5 {
        let (_, payload) = next(&mut realtime).await;
        got.push(String::from_utf8_lossy(&payload).into_owned());
        if got.iter().any(|g| g.contains("setpoint")) {
            break;
        }
    }
    assert!(got.iter().any(|g| g.contains("setpoint")), "{got:?}");

    // A restart uses the stored token: no second activation.
    assert_eq!(op.terminate().code(), Some(0));
    op.restart();
    assert_eq!(publish_devices(w.port, 1, 1).await, 1);
    assert!(wait_until(Duration::from_secs(10), || op
        .log_text()
        .contains("using the thing token stored by activation")));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(activation_channels(&w.up).len(), 1, "activated twice");
    assert!(
        !op.all_logs().contains("TOKEN-abc"),
        "the thing token is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_activation_is_reported_and_bad_keys_are_named() {
    let w = World::new("");
    let (platform, _rx) = subscriber(w.up.port, "tio-platform", "v2/nothing").await;
    let op = w.start(&tio_config(w.path(), w.port, &w.up));
    answer_activation(
        &w.up,
        &platform,
        json!({"status": "error", "message": "Activation code not valid"}),
        0,
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(10), || op.log_text().contains(
            "thethings.iO refused the activation: Activation code not valid"
        )),
        "{}",
        op.log_text()
    );
    assert_eq!(publish_devices(w.port, 1, 3).await, 3);
    assert!(
        wait_until(Duration::from_secs(5), || op.queued() == 3),
        "records wait for activation"
    );

    // Activated on the next attempt; a reading with a key thethings.iO
    // cannot take goes to the dead letters with the key named.
    let col = w.collect("v2/things/TOKEN-2").await;
    answer_activation(&w.up, &platform, json!({"thingToken": "TOKEN-2"}), 1).await;
    publish_all(
        w.port,
        "bad",
        vec![("sensors/bad/telemetry".into(), br#"{"temp C":1}"#.to_vec())],
    )
    .await;
    assert!(col.wait_for(1, Duration::from_secs(10)).await >= 1);
    assert!(
        wait_until(Duration::from_secs(10), || op
            .log_text()
            .contains("key `temp C`")),
        "{}",
        op.log_text()
    );
    assert!(wait_until(Duration::from_secs(5), || op.queued() == 0));
}
