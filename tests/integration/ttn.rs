//! The Things Stack (TTN) source and sink against a fixture: a real
//! mosquitto with the application's API key in its password file; the test
//! plays the Application Server on the `v3/{app}@{tenant}/...` topics.

use std::time::Duration;

use crate::common::*;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};

const API_KEY: &str = "NNSXS.VEEBURF3KR77ZR.TESTKEY";

/// The seed's uplink (The Things Stack docs), with a payload formatter's
/// output added for the first device.
fn uplink(device: &str, decoded: Option<Value>) -> Value {
    let mut up = json!({
        "end_device_ids": {"device_id": device, "application_ids": {"application_id": "app1"},
                           "dev_eui": "4200000000000000", "join_eui": "4200000000000000", "dev_addr": "01DA1F15"},
        "received_at": "2026-11-22T08:00:01.250Z",
        "uplink_message": {
            "session_key_id": "AWiZpAyXrAfEkUNkBljRoA==", "f_port": 15, "f_cnt": 42,
            "frm_payload": "VGVtcGVyYXR1cmUgPSAwLjA=",
            "rx_metadata": [
                {"gateway_ids": {"gateway_id": "eui-0242020000247803"}, "rssi": -35, "snr": 5},
                {"gateway_ids": {"gateway_id": "eui-0242020000247804"}, "rssi": -80, "snr": 7.25}
            ],
            "settings": {"data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 7}}, "frequency": "868500000"}
        }
    });
    if let Some(d) = decoded {
        up["uplink_message"]["decoded_payload"] = d;
    }
    up
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplinks_become_readings_for_another_sink_and_downlinks_are_pushed() {
    let (_pw, file) = password_file("app1@ttn", API_KEY);
    let w = World::new(&format!(
        "allow_anonymous true\npassword_file {}",
        file.display()
    ));
    let readings = w.collect("site1/#").await;
    let pushes = w.collect("v3/app1@ttn/devices/+/down/#").await;
    let ttn = format!(
        r#"
[sink.ttn]
type = "ttn"
url = "{}"
application_id = "app1"
tenant_id = "ttn"
api_key = "{API_KEY}"
keep_alive = "1s"
reconnect_min = "200ms"
reconnect_max = "1s"

[[route]]
topic = "ttn/+/up"
sink = "up"

[[route]]
topic = "ttn/+/down"
sink = "ttn"
"#,
        w.up.url()
    );
    let op = w.start(&w.site().mqtt("", &ttn));
    assert!(
        wait_until(Duration::from_secs(10), || w
            .up
            .log()
            .contains("u'app1@ttn'")),
        "{}\n{}",
        op.log_text(),
        w.up.log()
    );
    // Subscribed to the uplinks at QoS 0, the only QoS The Things Stack
    // supports (mosquitto logs each subscription with its QoS).
    assert!(
        wait_until(Duration::from_secs(10), || w
            .up
            .log()
            .contains("v3/app1@ttn/devices/+/up (QoS 0)")),
        "{}",
        w.up.log()
    );

    // The Application Server publishes two uplinks (QoS 0).
    let mut opts = MqttOptions::new("as", "127.0.0.1", w.up.port);
    opts.set_credentials("app1@ttn", API_KEY);
    let (server, mut events) = AsyncClient::new(opts, 8);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    for (device, decoded) in [
        ("dev1", Some(json!({"temperature": 21.3, "battery": 3.61}))),
        ("dev2", None),
    ] {
        server
            .publish(
                format!("v3/app1@ttn/devices/{device}/up"),
                QoS::AtMostOnce,
                false,
                uplink(device, decoded).to_string(),
            )
            .await
            .expect("publish");
    }
    assert_eq!(
        readings.wait_for(2, Duration::from_secs(10)).await,
        2,
        "{}",
        op.log_text()
    );
    let mut got: Vec<Value> = readings.all().iter().map(|s| s.json()).collect();
    got.sort_by_key(|v| v["device"].as_str().unwrap_or_default().to_string());
    let received_at = 1_795_334_401_250i64; // 2026-11-22T08:00:01.250Z
    assert_eq!(
        got[0],
        json!({"ts": received_at, "device": "dev1", "values": {
            "temperature": 21.3, "battery": 3.61, "f_port": 15, "f_cnt": 42, "rssi": -35.0, "snr": 7.25}})
    );
    assert_eq!(
        got[1]["values"],
        json!({"frm_payload": "VGVtcGVyYXR1cmUgPSAwLjA=", "f_port": 15, "f_cnt": 42, "rssi": -35.0, "snr": 7.25})
    );

    // A downlink request on the local broker becomes a valid down/push; a
    // bad one goes to the dead letters with the reason.
    publish_all(
        w.port,
        "app",
        vec![
            (
                "ttn/dev1/down".into(),
                br#"{"f_port":234,"payload_hex":"BEEF"}"#.to_vec(),
            ),
            (
                "ttn/dev1/down".into(),
                br#"{"f_port":15,"payload_hex":"BEEF","priority":"NORMAL","confirmed":true}"#
                    .to_vec(),
            ),
        ],
    )
    .await;
    assert_eq!(
        pushes.wait_for(1, Duration::from_secs(10)).await,
        1,
        "{}",
        op.log_text()
    );
    pushes
        .settle(Duration::from_millis(500), Duration::from_secs(3))
        .await;
    let push = &pushes.all()[0];
    assert_eq!(push.topic, "v3/app1@ttn/devices/dev1/down/push");
    assert_eq!(
        push.json(),
        json!({"downlinks": [{"f_port": 15, "frm_payload": "vu8=", "priority": "NORMAL", "confirmed": true}]})
    );
    assert_eq!(pushes.count(), 1, "the bad request is not sent");

    // A clear request empties the device's queue: an empty down/replace.
    publish_all(
        w.port,
        "app-clear",
        vec![("ttn/dev1/down".into(), br#"{"clear":true}"#.to_vec())],
    )
    .await;
    assert_eq!(
        pushes.wait_for(2, Duration::from_secs(10)).await,
        2,
        "{}",
        op.log_text()
    );
    let clear = &pushes.all()[1];
    assert_eq!(clear.topic, "v3/app1@ttn/devices/dev1/down/replace");
    assert_eq!(clear.json(), json!({"downlinks": []}));
    assert!(
        op.log_text().contains("f_port 234 is outside 1..=233"),
        "{}",
        op.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(5), || op.queued() == 0),
        "queued {}",
        op.queued()
    );
    assert!(
        !op.log_text().contains(API_KEY),
        "the API key is never logged"
    );

    // Server-side RPC to a LoRaWAN device (as the ThingsBoard sink hands it
    // to local devices) becomes a downlink, answered at once.
    let (rpc, mut answers) = subscriber(w.port, "platform", "devices/+/rpc/response/+").await;
    for (id, params) in [
        (77, json!({"f_port": 2, "payload_base64": "AQI="})),
        (78, json!({"f_port": 0, "payload_hex": "01"})),
    ] {
        rpc.publish(
            format!("devices/dev1/rpc/request/{id}"),
            QoS::AtLeastOnce,
            false,
            json!({"method": "downlink", "params": params}).to_string(),
        )
        .await
        .expect("publish");
    }
    let mut replies = Vec::new();
    for _ in 0..2 {
        let (topic, payload) = next(&mut answers).await;
        replies.push((
            topic,
            serde_json::from_slice::<Value>(&payload).expect("json"),
        ));
    }
    replies.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        replies[0],
        (
            "devices/dev1/rpc/response/77".to_string(),
            json!({"queued": true, "f_port": 2})
        )
    );
    assert_eq!(replies[1].0, "devices/dev1/rpc/response/78");
    assert!(
        replies[1].1["error"]
            .as_str()
            .is_some_and(|e| e.contains("f_port 0")),
        "{:?}",
        replies[1]
    );
    assert_eq!(pushes.wait_for(3, Duration::from_secs(10)).await, 3);
    assert_eq!(
        pushes.all()[2].json(),
        json!({"downlinks": [{"f_port": 2, "frm_payload": "AQI="}]})
    );
}
