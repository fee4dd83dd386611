//! The gateway API beyond data, against the ThingsBoard fixture (a real
//! mosquitto, the test playing the platform): a child's attribute request
//! and its answer, the refresh of known children's shared keys after a
//! reconnect, and `v1/gateway/disconnect` for an idle child.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::thingsboard::{gateway_with_downlink, platform_sends};

const EXTRA: &str = r#"child_idle = "2s"

[[route]]
topic = "devices/+/attributes/request/+"
sink = "tb"
kind = "attributes_request""#;

/// The next message to the device that is not its own request.
async fn answer(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) -> (String, Value) {
    loop {
        let (topic, payload) = next(rx).await;
        if !topic.contains("/request/") {
            return (topic, serde_json::from_slice(&payload).expect("json"));
        }
    }
}

/// The platform's view: the payloads seen on `topic`.
fn seen(tb: &Collector, topic: &str) -> Vec<Value> {
    tb.all()
        .into_iter()
        .filter(|s| s.topic == topic)
        .map(|s| s.json())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_asks_for_attributes_and_gets_them_again_after_a_reconnect() {
    let (mut w, tb, _op, port) = gateway_with_downlink(EXTRA).await;
    let (device, mut rx) = subscriber(port, "dev-5", "devices/dev-5/attributes/#").await;
    device
        .publish(
            "devices/dev-5/attributes/request/3",
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"sharedKeys":"interval"}"#.to_vec(),
        )
        .await
        .expect("request");
    let requests = || seen(&tb, "v1/gateway/attributes/request");
    assert!(
        wait_until(Duration::from_secs(10), || !requests().is_empty()),
        "the request reaches the platform"
    );
    let r = requests().remove(0);
    assert_eq!(r["device"], "dev-5");
    assert_eq!(r["shared"], json!(["interval"]));
    assert_eq!(r["client"], json!([]));
    platform_sends(
        w.up.port,
        "v1/gateway/attributes/response",
        json!({"id": r["id"], "device": "dev-5", "value": 30}),
    )
    .await;
    let (topic, payload) = answer(&mut rx).await;
    assert_eq!(topic, "devices/dev-5/attributes/response/3", "its own id");
    assert_eq!(payload, json!({"interval": 30}));

    // The uplink drops and comes back: outpost asks again for what dev-5
    // asked for, and the answer becomes its retained settings.
    w.up.restart();
    assert!(
        wait_until(Duration::from_secs(15), || requests().len() >= 2),
        "asked again after the reconnect: {:?}",
        requests()
    );
    let again = requests().remove(1);
    assert_eq!(again["device"], "dev-5");
    assert_eq!(again["shared"], json!(["interval"]));
    platform_sends(
        w.up.port,
        "v1/gateway/attributes/response",
        json!({"id": again["id"], "device": "dev-5", "values": {"interval": 60}}),
    )
    .await;
    let (topic, payload) = answer(&mut rx).await;
    assert_eq!(topic, "devices/dev-5/attributes");
    assert_eq!(payload, json!({"interval": 60}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_child_is_disconnected_and_connected_again_when_it_returns() {
    let (_w, tb, op, port) = gateway_with_downlink(EXTRA).await;
    let reading = || {
        vec![(
            "sensors/dev-9/telemetry".to_string(),
            br#"{"t":1}"#.to_vec(),
        )]
    };
    assert_eq!(publish_all(port, "dev-9", reading()).await, 1);
    let connects = || {
        seen(&tb, "v1/gateway/connect")
            .into_iter()
            .filter(|v| v["device"] == "dev-9")
            .count()
    };
    assert!(wait_until(Duration::from_secs(10), || connects() == 1));
    assert!(
        wait_until(Duration::from_secs(10), || seen(
            &tb,
            "v1/gateway/disconnect"
        )
        .contains(&json!({"device": "dev-9"}))),
        "disconnected after 2 s idle; log:\n{}",
        op.log_text()
    );
    assert_eq!(publish_all(port, "dev-9", reading()).await, 1);
    assert!(
        wait_until(Duration::from_secs(10), || connects() == 2),
        "announced again when it returns"
    );
}
