//! The local side of a sink's downlink: outpost's own client on the local
//! broker publishes settings to devices (retained, so a sensor that
//! connects later still gets them), forwards RPC requests and waits for the
//! first reply, or answers with a timeout error.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sink::{Downlink, Reply, Upstream};
use crate::source::broker::LocalBroker;

struct Pending {
    deadline: Instant,
    reply: Reply,
}

/// Runs until `shutdown`; commands come on `commands`, upstream replies go
/// to `replies`.
pub async fn run(
    local: LocalBroker,
    response_filter: Option<String>,
    timeout: Duration,
    mut commands: mpsc::Receiver<Downlink>,
    replies: mpsc::Sender<Upstream>,
    shutdown: CancellationToken,
) {
    let (client, mut eventloop) = AsyncClient::new(local.options(""), 256);
    let (events_tx, mut events) = mpsc::channel(256);
    let driver = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(ev) => {
                    if events_tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control client lost the local broker; reconnecting");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });

    let mut settings: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut pending: HashMap<String, Pending> = HashMap::new();
    loop {
        let next_deadline = pending
            .values()
            .map(|p| p.deadline)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => break,
                Some(Downlink::Publish { topic, payload }) => {
                    if let Err(e) = client.publish(topic.clone(), QoS::AtLeastOnce, false, payload).await {
                        tracing::warn!(%topic, error = %e, "cannot publish on the local broker");
                    }
                }
                Some(Downlink::Settings { topic, values }) => {
                    let merged = settings.entry(topic.clone()).or_default();
                    merged.extend(values);
                    let payload = serde_json::to_vec(&Value::Object(merged.clone())).unwrap_or_default();
                    if let Err(e) = client.publish(topic.clone(), QoS::AtLeastOnce, true, payload).await {
                        tracing::warn!(%topic, error = %e, "cannot publish settings on the local broker");
                    }
                }
                Some(Downlink::Rpc { request_topic, request, response_topic, reply }) => {
                    pending.insert(response_topic, Pending { deadline: Instant::now() + timeout, reply });
                    if let Err(e) = client.publish(request_topic.clone(), QoS::AtLeastOnce, false, request).await {
                        tracing::warn!(topic = %request_topic, error = %e, "cannot forward an RPC to the local broker");
                    }
                }
            },
            ev = events.recv() => match ev {
                Some(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(filter) = &response_filter {
                        let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                }
                Some(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(pend) = pending.remove(&p.topic) {
                        let answer = serde_json::from_slice(&p.payload)
                            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&p.payload).into_owned()));
                        let _ = replies.send(Upstream::Publish((pend.reply)(Ok(answer)))).await;
                    }
                }
                Some(_) => {}
                None => break,
            },
            _ = tokio::time::sleep_until(next_deadline), if !pending.is_empty() => {
                let now = Instant::now();
                let expired: Vec<String> = pending.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| k.clone()).collect();
                for topic in expired {
                    if let Some(p) = pending.remove(&topic) {
                        tracing::warn!(%topic, timeout_ms = timeout.as_millis() as u64, "no RPC reply from the device in time");
                        let _ = replies.send(Upstream::Publish((p.reply)(Err(format!("no reply from the device within {}ms", timeout.as_millis()))))).await;
                    }
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    let _ = client.try_disconnect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    driver.abort();
}
