//! The local side of a sink's downlink, through outpost's own client on the
//! local broker: settings for devices are published retained (a sensor that
//! connects later still gets them, merged with earlier ones), RPC requests
//! are forwarded and the first answer, or a timeout error, goes back up.
//! Pending RPCs and the settings kept per device are bounded. Messages on
//! the `watch` topics (a firmware agent's result) go up to the sink's
//! platform as they are.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sink::session::Inbox;
use crate::sink::{Downlink, Reply, Upstream};
use crate::source::broker::Broker;

/// RPC requests waiting for a device's answer, at most; more are answered
/// with an error at once.
const PENDING_RPC: usize = 256;

/// Devices whose merged settings are kept; beyond, the least recently
/// changed ones are forgotten (their retained message stays on the broker).
const SETTINGS_KEPT: usize = 10_000;

/// An hour from now: a deadline that is not due.
fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(3600)).unwrap_or(now)
}

struct Pending {
    deadline: Instant,
    reply: Reply,
}

/// Runs until `shutdown`; commands come on `commands`, upstream replies go
/// to `replies`.
pub async fn run(
    broker: Broker,
    response_filter: Option<String>,
    watch: Vec<String>,
    timeout: Duration,
    commands: Inbox<Downlink>,
    replies: mpsc::Sender<Upstream>,
    shutdown: CancellationToken,
) {
    let mut commands = commands.lock_owned().await;
    let mut client = broker.client(256);
    if let Some(filter) = &response_filter {
        if let Err(e) = client.subscribe(filter) {
            tracing::error!(error = %e, "RPC answers from devices cannot be subscribed");
        }
    }
    for topic in &watch {
        if let Err(e) = client.subscribe(topic) {
            tracing::error!(%topic, error = %e, "a local topic the sink needs cannot be subscribed");
        }
    }
    let mut settings: BTreeMap<String, (u64, Map<String, Value>)> = BTreeMap::new();
    let mut changes: u64 = 0;
    let mut pending: HashMap<String, Pending> = HashMap::new();
    loop {
        let next_deadline = pending
            .values()
            .map(|p| p.deadline)
            .min()
            .unwrap_or_else(far_future);
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => break,
                Some(Downlink::Publish { topic, payload }) => client.publish(&topic, payload, false),
                Some(Downlink::Settings { topic, mut values }) => {
                    changes = changes.wrapping_add(1);
                    let entry = settings.entry(topic.clone()).or_default();
                    entry.0 = changes;
                    // Attributes deleted in ThingsBoard leave the retained
                    // settings (`{"deleted":[..]}`, JsonConverter.toJson).
                    if let Some(Value::Array(deleted)) = values.remove("deleted") {
                        for key in deleted.iter().filter_map(Value::as_str) {
                            entry.1.remove(key);
                        }
                    }
                    entry.1.extend(values);
                    let payload = serde_json::to_vec(&Value::Object(entry.1.clone())).unwrap_or_default();
                    client.publish(&topic, payload, true);
                    if settings.len() > SETTINGS_KEPT {
                        if let Some(oldest) = settings.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone()) {
                            settings.remove(&oldest);
                        }
                    }
                }
                Some(Downlink::Rpc { request_topic, request, response_topic, reply }) => {
                    if pending.len() >= PENDING_RPC {
                        let answer = reply(Err("too many RPC requests are waiting for devices".into()));
                        let _ = replies.send(Upstream::Publish(answer)).await;
                        continue;
                    }
                    let deadline = Instant::now().checked_add(timeout).unwrap_or_else(far_future);
                    pending.insert(response_topic, Pending { deadline, reply });
                    client.publish(&request_topic, request, false);
                }
            },
            m = client.recv() => match m {
                Some(m) if watch.contains(&m.topic) => {
                    let _ = replies.send(Upstream::Local { topic: m.topic.clone(), payload: m.payload.to_vec() }).await;
                }
                Some(m) => {
                    if let Some(pend) = pending.remove(&m.topic) {
                        let answer = serde_json::from_slice(&m.payload)
                            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&m.payload).into_owned()));
                        let _ = replies.send(Upstream::Publish((pend.reply)(Ok(answer)))).await;
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(next_deadline), if !pending.is_empty() => {
                let now = Instant::now();
                let expired: Vec<String> = pending.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| k.clone()).collect();
                for topic in expired {
                    if let Some(p) = pending.remove(&topic) {
                        tracing::warn!(%topic, timeout_ms = timeout.as_millis() as u64, "no RPC reply from the device in time");
                        let e = format!("no reply from the device within {}ms", timeout.as_millis());
                        let _ = replies.send(Upstream::Publish((p.reply)(Err(e)))).await;
                    }
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
}
