//! The serial sources' client on the local broker: it shows serial readings
//! to LAN subscribers (dashboards), and it carries RPC requests and shared
//! attributes addressed to serial devices to the port that owns them, so a
//! serial device answers ThingsBoard exactly like an MQTT device would.

use std::collections::HashMap;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Control, ControlKind};
use crate::source::broker::LocalBroker;
use crate::topic::{captures, fill, DeviceTopics};

/// Runs until `shutdown`.
pub async fn run(
    local: LocalBroker,
    topics: DeviceTopics,
    ports: HashMap<String, mpsc::Sender<Control>>,
    mut readings: mpsc::Receiver<(String, Vec<u8>)>,
    ready: Option<std::sync::Arc<crate::stats::Stats>>,
    shutdown: CancellationToken,
) {
    let (client, mut eventloop) = AsyncClient::new(local.options("-serial"), 1024);
    let mut applied: HashMap<String, Map<String, Value>> = HashMap::new();
    loop {
        tokio::select! {
            r = readings.recv() => match r {
                Some((topic, payload)) => {
                    // Best effort: the outbox already has the reading.
                    let _ = client.try_publish(topic, QoS::AtMostOnce, false, payload);
                }
                None => break,
            },
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = &ready {
                        s.ingest.serial_control.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for device in ports.keys() {
                        let _ = client.try_subscribe(fill(&topics.rpc_request, device, "+"), QoS::AtLeastOnce);
                        let _ = client.try_subscribe(fill(&topics.attributes, device, ""), QoS::AtLeastOnce);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some((device, id)) = captures(&topics.rpc_request, &p.topic) {
                        rpc(&client, &topics, &ports, device, id, &p.payload);
                    } else if let Some((device, _)) = captures(&topics.attributes, &p.topic) {
                        attributes(&ports, &mut applied, device, &p.payload).await;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "serial sources lost the local broker; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        }
    }
    let _ = client.try_disconnect();
}

/// Hands an RPC request to the device's port; the answer is published on
/// the response topic when it comes.
fn rpc(
    client: &AsyncClient,
    topics: &DeviceTopics,
    ports: &HashMap<String, mpsc::Sender<Control>>,
    device: String,
    id: String,
    payload: &[u8],
) {
    let response = fill(&topics.rpc_response, &device, &id);
    let client = client.clone();
    let request: Result<Value, String> =
        serde_json::from_slice(payload).map_err(|e| format!("the RPC request is not JSON: {e}"));
    let port = ports.get(&device).cloned();
    tokio::spawn(async move {
        let answer = match (request, port) {
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err(format!("no serial port serves device `{device}`")),
            (Ok(req), Some(port)) => {
                let method = req["method"].as_str().unwrap_or_default().to_string();
                let params = req.get("params").cloned().unwrap_or(Value::Null);
                let (reply, answer) = oneshot::channel();
                let sent = port
                    .send(Control {
                        device: device.clone(),
                        kind: ControlKind::Rpc {
                            method,
                            params,
                            reply,
                        },
                    })
                    .await;
                match sent {
                    Err(_) => Err("the serial port is shutting down".into()),
                    Ok(()) => answer
                        .await
                        .unwrap_or_else(|_| Err("the serial port dropped the request".into())),
                }
            }
        };
        let body = match answer {
            Ok(v) => v,
            Err(e) => serde_json::json!({ "error": e }),
        };
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        if let Err(e) = client
            .publish(response.clone(), QoS::AtLeastOnce, false, payload)
            .await
        {
            tracing::warn!(topic = %response, error = %e, "cannot publish a serial RPC answer");
        }
    });
}

/// Passes on the attributes that changed since the last message.
async fn attributes(
    ports: &HashMap<String, mpsc::Sender<Control>>,
    applied: &mut HashMap<String, Map<String, Value>>,
    device: String,
    payload: &[u8],
) {
    let Some(port) = ports.get(&device) else {
        return;
    };
    let Ok(Value::Object(all)) = serde_json::from_slice::<Value>(payload) else {
        tracing::warn!(%device, "shared attributes for a serial device are not a JSON object");
        return;
    };
    let before = applied.entry(device.clone()).or_default();
    let changed: Map<String, Value> = all
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    *before = all;
    if changed.is_empty() {
        return;
    }
    let _ = port
        .send(Control {
            device,
            kind: ControlKind::Attributes(changed),
        })
        .await;
}
