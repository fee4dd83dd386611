//! LAN clients keep full MQTT behaviour through the ingest front: QoS 1 and 2
//! between local clients, retained messages, wills, MQTT 3.1.1 and 5 on one
//! port.

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};

fn start() -> (World, Outpost, u16) {
    let w = World::new("");
    let op = w.start(&w.site().mqtt("", ""));
    let port = w.port;
    (w, op, port)
}

fn mosquitto(tool: &str, args: &[&str]) -> std::process::Output {
    require(tool, "mosquitto-clients");
    Command::new(tool).args(args).output().expect(tool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_message_reaches_another_lan_client() {
    let (_w, _op, port) = start();
    let (_sub, mut rx) = subscriber(port, "lan-sub", "cmd/#").await;
    assert_eq!(
        publish_all(
            port,
            "lan-pub",
            vec![("cmd/dev1/led".into(), b"on".to_vec())]
        )
        .await,
        1
    );
    assert_eq!(
        next(&mut rx).await,
        ("cmd/dev1/led".to_string(), b"on".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_reaches_a_late_subscriber() {
    let (_w, _op, port) = start();
    let p = port.to_string();
    let out = mosquitto(
        "mosquitto_pub",
        &[
            "-p",
            &p,
            "-q",
            "1",
            "-r",
            "-t",
            "cmd/dev1/config",
            "-m",
            "interval=5",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let out = mosquitto(
        "mosquitto_sub",
        &[
            "-p",
            &p,
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "10",
            "-t",
            "cmd/dev1/config",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "interval=5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_fires_when_a_client_drops() {
    let (_w, _op, port) = start();
    let (_sub, mut rx) = subscriber(port, "watcher", "cmd/#").await;

    let mut opts = MqttOptions::new("fragile", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10))
        .set_last_will(LastWill::new(
            "cmd/fragile/status",
            "offline",
            QoS::AtLeastOnce,
            false,
        ));
    let (_client, mut events) = AsyncClient::new(opts, 4);
    let conn = tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            if matches!(ev, Event::Incoming(Packet::ConnAck(_))) {
                break;
            }
        }
        events
    });
    let events = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("CONNACK within 10s")
        .expect("connected");
    // Drop the socket without DISCONNECT, as a sensor losing power would.
    drop(events);
    assert_eq!(
        next(&mut rx).await,
        ("cmd/fragile/status".to_string(), b"offline".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_and_311_clients_share_one_port_and_qos2_is_routed() {
    let (w, _op, port) = start();
    let up = &w.up;
    let col = Collector::start(up.port, "site1/#").await;
    let p = port.to_string();

    // A 3.1.1 subscriber sees an MQTT 5 publisher's message.
    let (_sub, mut rx) = subscriber(port, "v4-sub", "cmd/#").await;
    let out = mosquitto(
        "mosquitto_pub",
        &[
            "-V", "mqttv5", "-p", &p, "-q", "1", "-t", "cmd/x/y", "-m", "from-v5",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        next(&mut rx).await,
        ("cmd/x/y".to_string(), b"from-v5".to_vec())
    );

    // Routed readings at QoS 2 and over MQTT 5 arrive upstream.
    let out = mosquitto(
        "mosquitto_pub",
        &[
            "-p",
            &p,
            "-q",
            "2",
            "-t",
            "sensors/q2/telemetry",
            "-m",
            "{\"seq\":0}",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let out = mosquitto(
        "mosquitto_pub",
        &[
            "-V",
            "mqttv5",
            "-p",
            &p,
            "-q",
            "1",
            "-t",
            "sensors/v5/telemetry",
            "-m",
            "{\"seq\":0}",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(col.wait_for(2, Duration::from_secs(20)).await, 2);
    let mut topics: Vec<String> = col.all().into_iter().map(|s| s.topic).collect();
    topics.sort();
    assert_eq!(topics, ["site1/q2/telemetry", "site1/v5/telemetry"]);
}
