//! LAN clients of outpost's local broker: QoS 1 publishers and subscribers.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Publishes every message at QoS 1 over one connection and waits for all
/// PUBACKs. Returns the number acknowledged.
pub async fn publish_all(port: u16, client_id: &str, msgs: Vec<(String, Vec<u8>)>) -> usize {
    publish_paced(port, client_id, msgs, None).await
}

/// [`publish_all`], with an optional pause between publishes.
pub async fn publish_paced(
    port: u16,
    client_id: &str,
    msgs: Vec<(String, Vec<u8>)>,
    pace: Option<Duration>,
) -> usize {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 256);
    let n = msgs.len();
    let acked = tokio::spawn(async move {
        let mut acked = 0;
        while acked < n {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        acked
    });
    for (topic, payload) in msgs {
        if let Some(p) = pace {
            tokio::time::sleep(p).await;
        }
        if client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            break;
        }
    }
    let acked = tokio::time::timeout(Duration::from_secs(120), acked)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let _ = client.try_disconnect();
    acked
}

/// `count` readings for each of `devices` devices, payload `{"seq":N}`, on
/// `sensors/dev-K/telemetry`.
pub fn readings(devices: usize, count: usize) -> BTreeMap<String, Vec<(String, Vec<u8>)>> {
    (0..devices)
        .map(|d| {
            let dev = format!("dev-{d}");
            let msgs = (0..count)
                .map(|seq| {
                    (
                        format!("sensors/{dev}/telemetry"),
                        format!("{{\"seq\":{seq}}}").into_bytes(),
                    )
                })
                .collect();
            (dev, msgs)
        })
        .collect()
}

/// Publishes `readings()` from one client per device, concurrently. Returns
/// the total acknowledged.
pub async fn publish_devices(port: u16, devices: usize, count: usize) -> usize {
    publish_devices_paced(port, devices, count, None).await
}

/// [`publish_devices`], each publisher pausing `pace` between readings.
pub async fn publish_devices_paced(
    port: u16,
    devices: usize,
    count: usize,
    pace: Option<Duration>,
) -> usize {
    let mut tasks = Vec::new();
    for (dev, msgs) in readings(devices, count) {
        tasks.push(tokio::spawn(async move {
            publish_paced(port, &format!("pub-{dev}"), msgs, pace).await
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total
}

/// A QoS 1 subscriber on `filter`; messages arrive on the receiver.
pub async fn subscriber(
    port: u16,
    id: &str,
    filter: &str,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(opts, 16);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("queue subscribe");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(ev) = events.poll().await {
            match ev {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(s) = subscribed_tx.take() {
                        let _ = s.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("SUBACK within 10s")
        .expect("subscriber running");
    (client, rx)
}

/// The next message, within 10 s.
pub async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) -> (String, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message within 10s")
        .expect("subscriber running")
}
