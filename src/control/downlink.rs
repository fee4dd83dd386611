//! outpost's own client on the local broker: publishes settings to devices
//! (retained, so a sensor that connects later still gets them), forwards RPC
//! requests and waits for the first reply, or answers with a timeout error.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sink::Publish;
use crate::source::broker::ControlLogin;

/// Builds the upstream reply from the device's answer or an error text.
pub type Reply = Box<dyn FnOnce(Result<Value, String>) -> Publish + Send>;

pub enum Downlink {
    /// Publish once (not retained) on the local broker.
    Publish { topic: String, payload: Vec<u8> },
    /// Merge these values into the device's settings and publish them,
    /// retained, on `topic`.
    Settings {
        topic: String,
        values: Map<String, Value>,
    },
    /// Publish `request` on `request_topic`; the first message on
    /// `response_topic` (or a timeout) answers upstream through `reply`.
    Rpc {
        request_topic: String,
        request: Vec<u8>,
        response_topic: String,
        reply: Reply,
    },
}

/// Where and how to reach the local broker.
#[derive(Debug, Clone)]
pub struct LocalBroker {
    pub addr: SocketAddr,
    pub login: ControlLogin,
    /// Local logins are configured: send the control credentials.
    pub authenticate: bool,
}

impl LocalBroker {
    /// The loopback address to dial (a wildcard listen address is not one).
    pub fn dial_addr(&self) -> SocketAddr {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        addr
    }

    /// Options for one of outpost's own clients: the control login, with
    /// `suffix` appended to the client id so that each client has its own.
    pub fn options(&self, suffix: &str) -> MqttOptions {
        let addr = self.dial_addr();
        let mut opts = MqttOptions::new(
            format!("{}{suffix}", self.login.client_id),
            addr.ip().to_string(),
            addr.port(),
        );
        opts.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        if self.authenticate {
            opts.set_credentials(self.login.username.clone(), self.login.password.clone());
        }
        opts
    }
}

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
    replies: mpsc::Sender<Publish>,
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
                        let _ = replies.send((pend.reply)(Ok(answer))).await;
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
                        let _ = replies.send((p.reply)(Err(format!("no reply from the device within {}ms", timeout.as_millis())))).await;
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

/// `devices/{device}/rpc/response/{id}` → `devices/+/rpc/response/+`.
pub fn filter_of(template: &str) -> String {
    template.replace("{device}", "+").replace("{id}", "+")
}

pub fn fill(template: &str, device: &str, id: &str) -> String {
    template.replace("{device}", device).replace("{id}", id)
}
