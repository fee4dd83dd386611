//! The gateway API beyond data, against the ThingsBoard fixture (a real
//! mosquitto, the test playing the platform): a child's attribute request
//! and its answer, the refresh of known children's shared keys after a
//! reconnect, `v1/gateway/disconnect` for an idle child and for one whose
//! connection, will or serial port says it went away, and device mode's
//! RPC relay to the local device.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

use crate::thingsboard::{gateway_with_downlink, platform_sends};

const EXTRA: &str = r#"child_idle = "2s"
shared_keys = ["mode"]

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
    gateway_attributes_request(&r).expect("a request ThingsBoard accepts");
    assert_eq!(r["device"], "dev-5");
    assert_eq!(r["keys"], json!(["interval"]));
    assert_eq!(r["client"], json!(false));
    platform_sends(
        w.up.port,
        "v1/gateway/attributes/response",
        json!({"id": r["id"], "device": "dev-5", "value": 30}),
    )
    .await;
    let (topic, payload) = answer(&mut rx).await;
    assert_eq!(topic, "devices/dev-5/attributes/response/3", "its own id");
    assert_eq!(payload, json!({"interval": 30}));

    // Another child that only sends data.
    let reading = vec![(
        "sensors/dev-6/telemetry".to_string(),
        br#"{"t":1}"#.to_vec(),
    )];
    assert_eq!(publish_all(port, "dev-6", reading).await, 1);
    assert!(wait_until(Duration::from_secs(10), || seen(
        &tb,
        "v1/gateway/telemetry"
    )
    .iter()
    .any(|v| v.get("dev-6").is_some())));

    // The uplink drops and comes back: outpost asks again, per child, for
    // what it asked for or received and for the configured `shared_keys`;
    // the answer becomes the child's retained settings.
    w.up.restart();
    let refresh = |device: &str| {
        requests()
            .into_iter()
            .skip(1)
            .find(|r| r["device"] == device)
    };
    assert!(
        wait_until(Duration::from_secs(15), || refresh("dev-5").is_some()
            && refresh("dev-6").is_some()),
        "asked again after the reconnect: {:?}",
        requests()
    );
    // Each child is connected on the new session before its request.
    let order: Vec<(String, Value)> = tb
        .all()
        .into_iter()
        .filter(|s| s.topic == "v1/gateway/connect" || s.topic == "v1/gateway/attributes/request")
        .map(|s| (s.topic.clone(), s.json()))
        .collect();
    for device in ["dev-5", "dev-6"] {
        let last_request = order
            .iter()
            .rposition(|(t, v)| t.ends_with("/request") && v["device"] == device)
            .expect("a refresh request");
        let connect_before = order[..last_request]
            .iter()
            .rposition(|(t, v)| t.ends_with("/connect") && v["device"] == device);
        let previous_request = order[..last_request]
            .iter()
            .rposition(|(t, v)| t.ends_with("/request") && v["device"] == device);
        assert!(
            connect_before.is_some_and(|c| previous_request.is_none_or(|p| c > p)),
            "{device} was not connected on the new session before its request: {order:?}"
        );
    }
    let again = refresh("dev-5").unwrap_or_default();
    for r in requests() {
        gateway_attributes_request(&r).expect("a request ThingsBoard accepts");
    }
    assert_eq!(again["keys"], json!(["interval", "mode"]));
    assert_eq!(again["client"], json!(false));
    assert_eq!(
        refresh("dev-6").unwrap_or_default()["keys"],
        json!(["mode"])
    );
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
async fn a_request_for_both_scopes_is_one_request_per_scope_and_one_answer() {
    let (w, tb, _op, port) = gateway_with_downlink(EXTRA).await;
    let (device, mut rx) = subscriber(port, "dev-7", "devices/dev-7/attributes/#").await;
    device
        .publish(
            "devices/dev-7/attributes/request/9",
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"clientKeys":"fwv","sharedKeys":"setpoint,mode"}"#.to_vec(),
        )
        .await
        .expect("request");
    let requests = || seen(&tb, "v1/gateway/attributes/request");
    assert!(
        wait_until(Duration::from_secs(10), || requests().len() >= 2),
        "{:?}",
        requests()
    );
    let rs = requests();
    for r in &rs {
        gateway_attributes_request(r).expect("a request ThingsBoard accepts");
    }
    let client = rs
        .iter()
        .find(|r| r["client"] == true)
        .expect("client scope");
    let shared = rs
        .iter()
        .find(|r| r["client"] == false)
        .expect("shared scope");
    assert_eq!(client["keys"], json!(["fwv"]));
    assert_eq!(shared["keys"], json!(["setpoint", "mode"]));
    // ThingsBoard answers each (one key: `value`; several: `values`).
    platform_sends(
        w.up.port,
        "v1/gateway/attributes/response",
        json!({"id": client["id"], "device": "dev-7", "value": "1.2"}),
    )
    .await;
    platform_sends(
        w.up.port,
        "v1/gateway/attributes/response",
        json!({"id": shared["id"], "device": "dev-7", "values": {"setpoint": 21, "mode": "eco"}}),
    )
    .await;
    let (topic, payload) = answer(&mut rx).await;
    assert_eq!(topic, "devices/dev-7/attributes/response/9");
    assert_eq!(
        payload,
        json!({"fwv": "1.2", "setpoint": 21, "mode": "eco"})
    );
}

/// The gateway form of a delete: `{"device":..,"data":{"deleted":[..]}}`
/// (`JsonConverter.getJsonObjectForGateway`): the key leaves the child's
/// retained settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_deleted_shared_attribute_leaves_its_settings() {
    let (w, _tb, _op, port) = gateway_with_downlink(EXTRA).await;
    platform_sends(
        w.up.port,
        "v1/gateway/attributes",
        json!({"device": "dev-8", "data": {"interval": 30, "mode": "eco"}}),
    )
    .await;
    let (_c, mut rx) = subscriber(port, "dev-8", "devices/dev-8/attributes").await;
    let (_, first) = answer(&mut rx).await;
    assert_eq!(first, json!({"interval": 30, "mode": "eco"}));
    platform_sends(
        w.up.port,
        "v1/gateway/attributes",
        json!({"device": "dev-8", "data": {"deleted": ["mode"]}}),
    )
    .await;
    let (_, after) = answer(&mut rx).await;
    assert_eq!(after, json!({"interval": 30}));
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

/// Device mode: server-side RPC that is not one of outpost's own methods
/// goes to the local device behind the session (`device_name`), and its
/// answer, or a timeout error, goes back on the device API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_mode_relays_rpc_to_the_local_device_with_a_timeout_reply() {
    let w = World::thingsboard("").await;
    let tb = w.collect("v1/#").await;
    let sink = "access_token = \"DEV\"\ndevice_name = \"pump-1\"\nrpc_timeout = \"1s\"";
    let _op = w.start(&crate::thingsboard::tb_config(&w.site(), sink));
    assert!(
        wait_until(Duration::from_secs(15), || w
            .up
            .log()
            .contains("v1/devices/me/rpc/request/+ (QoS 1)")),
        "{}",
        w.up.log()
    );
    let (device, mut requests) = subscriber(w.port, "pump-1", "devices/pump-1/rpc/request/+").await;
    platform_sends(
        w.up.port,
        "v1/devices/me/rpc/request/5",
        json!({"method": "setSpeed", "params": {"rpm": 900}}),
    )
    .await;
    let (topic, payload) = next(&mut requests).await;
    assert_eq!(topic, "devices/pump-1/rpc/request/5");
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).expect("json"),
        json!({"method": "setSpeed", "params": {"rpm": 900}})
    );
    device
        .publish(
            "devices/pump-1/rpc/response/5",
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"rpm":900}"#.to_vec(),
        )
        .await
        .expect("reply");
    // outpost's own methods stay outpost's; an unanswered one times out.
    platform_sends(
        w.up.port,
        "v1/devices/me/rpc/request/6",
        json!({"method": "ping"}),
    )
    .await;
    platform_sends(
        w.up.port,
        "v1/devices/me/rpc/request/7",
        json!({"method": "reboot"}),
    )
    .await;
    let reply = |id: u32| {
        seen(&tb, &format!("v1/devices/me/rpc/response/{id}"))
            .into_iter()
            .next()
    };
    assert!(
        wait_until(Duration::from_secs(10), || (5..=7)
            .all(|i| reply(i).is_some())),
        "{:?}",
        tb.all().iter().map(|s| s.topic.clone()).collect::<Vec<_>>()
    );
    assert_eq!(reply(5), Some(json!({"rpm": 900})));
    assert_eq!(reply(6), Some(json!({"pong": true})));
    let timed_out = reply(7).unwrap_or_default();
    assert!(
        timed_out["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no reply"),
        "{timed_out}"
    );
}

/// A child goes away the moment its source says so, not only after
/// `child_idle`: its MQTT connection ends (a DISCONNECT), its will fires
/// (the connection drops), or its serial port disappears. Each is told to
/// ThingsBoard with `v1/gateway/disconnect`, and a child that returns is
/// announced again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_whose_connection_ends_will_fires_or_port_vanishes_is_disconnected_at_once() {
    use outpost::source::broker::codec::{Props, Will, V311};
    let dir = tempfile::tempdir().expect("dir");
    let mut pty = Pty::new(dir.path(), "probe");
    let extra = format!(
        r#"child_idle = "10m"

[[route]]
topic = "devices/+/telemetry"
sink = "tb"

[[serial]]
name = "probe"
path = "{}"
protocol = "json"
device = "soil-probe"
reopen_min = "200ms"
reopen_max = "1s""#,
        pty.device.display()
    );
    let (_w, tb, op, port) = gateway_with_downlink(&extra).await;
    let disconnected = |device: &str| {
        seen(&tb, "v1/gateway/disconnect")
            .iter()
            .filter(|v| v["device"] == device)
            .count()
    };
    let connects = |device: &str| {
        seen(&tb, "v1/gateway/connect")
            .iter()
            .filter(|v| v["device"] == device)
            .count()
    };

    // A DISCONNECT ends the session.
    let (mut a, _) = Raw::connected(port, &Hello::new(V311, "cl-a")).await;
    assert_eq!(
        a.publish(
            "sensors/cl-a/telemetry",
            b"{\"t\":1}",
            1,
            false,
            Props::default()
        )
        .await,
        Ok(0)
    );
    assert!(wait_until(Duration::from_secs(10), || connects("cl-a") == 1));
    a.disconnect().await;
    assert!(
        wait_until(Duration::from_secs(5), || disconnected("cl-a") == 1),
        "disconnected when its session ended; log:\n{}",
        op.log_text()
    );

    // A dropped connection fires the will.
    let mut hello = Hello::new(V311, "cl-b");
    hello.will = Some(Will {
        topic: "devices/cl-b/status".into(),
        payload: bytes::Bytes::from_static(b"offline"),
        qos: 0,
        retain: false,
        props: Props::default(),
    });
    let (mut b, _) = Raw::connected(port, &hello).await;
    assert_eq!(
        b.publish(
            "sensors/cl-b/telemetry",
            b"{\"t\":2}",
            1,
            false,
            Props::default()
        )
        .await,
        Ok(0)
    );
    assert!(wait_until(Duration::from_secs(10), || connects("cl-b") == 1));
    drop(b);
    assert!(
        wait_until(Duration::from_secs(5), || disconnected("cl-b") == 1),
        "disconnected when its will fired; log:\n{}",
        op.log_text()
    );
    assert!(
        op.log_text().contains("its will fired"),
        "{}",
        op.log_text()
    );

    // The serial port goes away.
    assert!(wait_until(Duration::from_secs(10), || op.status_json()
        ["serial"]["probe"]["open"]
        == true));
    let mut sensor = pty.sensor_file();
    std::io::Write::write_all(&mut sensor, b"{\"moisture\":31}\n").expect("write");
    assert!(wait_until(Duration::from_secs(10), || connects(
        "soil-probe"
    ) == 1));
    drop(sensor);
    pty.unplug();
    assert!(
        wait_until(Duration::from_secs(10), || disconnected("soil-probe") == 1),
        "disconnected when its port disappeared; log:\n{}",
        op.log_text()
    );

    // Back: announced again. Nobody else was disconnected.
    let (mut a, _) = Raw::connected(port, &Hello::new(V311, "cl-a")).await;
    assert_eq!(
        a.publish(
            "sensors/cl-a/telemetry",
            b"{\"t\":3}",
            1,
            false,
            Props::default()
        )
        .await,
        Ok(0)
    );
    assert!(
        wait_until(Duration::from_secs(10), || connects("cl-a") == 2),
        "announced again"
    );
    assert_eq!(
        seen(&tb, "v1/gateway/disconnect").len(),
        3,
        "{:?}",
        seen(&tb, "v1/gateway/disconnect")
    );
    a.disconnect().await;
}
