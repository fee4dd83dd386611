//! The serial sources' client on the local broker: it shows serial readings
//! to LAN subscribers (dashboards), and it carries RPC requests and shared
//! attributes addressed to serial devices to the port that owns them, so a
//! serial device answers ThingsBoard exactly like an MQTT device would.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Control, ControlKind};
use crate::source::broker::Broker;
use crate::topic::{captures, fill, DeviceTopics};

/// RPC requests for serial devices waiting for their answer, at most.
const PENDING_RPC: usize = 64;

type Answer = Pin<Box<dyn Future<Output = (String, Value)> + Send>>;

/// Runs until `shutdown`.
pub async fn run(
    broker: Broker,
    topics: DeviceTopics,
    ports: HashMap<String, mpsc::Sender<Control>>,
    mut readings: mpsc::Receiver<(String, Vec<u8>)>,
    ready: Option<std::sync::Arc<crate::stats::Stats>>,
    shutdown: CancellationToken,
) {
    let mut client = broker.client(1024);
    for device in ports.keys() {
        for filter in [
            fill(&topics.rpc_request, device, "+"),
            fill(&topics.attributes, device, ""),
        ] {
            if let Err(e) = client.subscribe(&filter) {
                tracing::warn!(%device, error = %e, "serial device topics cannot be subscribed");
            }
        }
    }
    if let Some(s) = &ready {
        s.ingest
            .serial_control
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let mut applied: HashMap<String, Map<String, Value>> = HashMap::new();
    let mut answers: FuturesUnordered<Answer> = FuturesUnordered::new();
    loop {
        tokio::select! {
            r = readings.recv() => match r {
                // For LAN subscribers; the outbox already has the reading.
                Some((topic, payload)) => client.publish(&topic, payload, false),
                None => break,
            },
            m = client.recv() => match m {
                Some(m) => {
                    if let Some((device, id)) = captures(&topics.rpc_request, &m.topic) {
                        let response = fill(&topics.rpc_response, &device, &id);
                        if answers.len() >= PENDING_RPC {
                            let busy = serde_json::json!({"error": "too many RPC requests waiting for serial devices"});
                            client.publish(&response, busy.to_string().into_bytes(), false);
                            continue;
                        }
                        answers.push(rpc(&ports, device, response, &m.payload));
                    } else if let Some((device, _)) = captures(&topics.attributes, &m.topic) {
                        attributes(&ports, &mut applied, device, &m.payload).await;
                    }
                }
                None => break,
            },
            Some((response, body)) = answers.next(), if !answers.is_empty() => {
                client.publish(&response, serde_json::to_vec(&body).unwrap_or_default(), false);
            }
            _ = shutdown.cancelled() => break,
        }
    }
}

/// Hands an RPC request to the device's port (a full port queue is an
/// error answer at once); resolves to the answer for `response`.
fn rpc(
    ports: &HashMap<String, mpsc::Sender<Control>>,
    device: String,
    response: String,
    payload: &[u8],
) -> Answer {
    let request: Result<Value, String> =
        serde_json::from_slice(payload).map_err(|e| format!("the RPC request is not JSON: {e}"));
    let port = ports.get(&device).cloned();
    let error = |e: String| serde_json::json!({ "error": e });
    let (req, port) = match (request, port) {
        (Err(e), _) => return Box::pin(std::future::ready((response, error(e)))),
        (Ok(_), None) => {
            let e = format!("no serial port serves device `{device}`");
            return Box::pin(std::future::ready((response, error(e))));
        }
        (Ok(req), Some(port)) => (req, port),
    };
    let method = req
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let params = req.get("params").cloned().unwrap_or(Value::Null);
    let (reply, answer) = oneshot::channel();
    let sent = port.try_send(Control {
        device,
        kind: ControlKind::Rpc {
            method,
            params,
            reply,
        },
    });
    if sent.is_err() {
        let e = "the serial port is busy or shutting down".to_string();
        return Box::pin(std::future::ready((response, error(e))));
    }
    Box::pin(async move {
        let body = match answer.await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => error(e),
            Err(_) => error("the serial port dropped the request".into()),
        };
        (response, body)
    })
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
