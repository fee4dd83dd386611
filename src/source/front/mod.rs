//! The ingest front: sensors connect here, not to rumqttd directly.
//!
//! rumqttd acknowledges a QoS 1 PUBLISH as soon as its in-memory router has
//! it, so a sensor could be told "delivered" about a reading that a crash a
//! moment later erases. The front closes that window while keeping rumqttd as
//! the broker: it owns the sensor-facing listener, opens one loopback
//! connection to rumqttd per sensor (MQTT 3.1.1 or 5, chosen from the
//! CONNECT), relays every packet both ways unchanged, and
//!
//! - hands each PUBLISH that a route selects to the outbox, and
//! - holds rumqttd's PUBACK (or PUBREC, for QoS 2) until that record is
//!   committed, releasing acknowledgements in the order the PUBLISHes came.
//!
//! Subscriptions between LAN clients, retained messages, wills and QoS 2 stay
//! rumqttd's business. A message no route selects is relayed without touching
//! the store; its PUBACK waits only if a routed one from the same client is
//! ahead of it (MQTT's ordering rule). If a commit fails (disk full, I/O
//! error), the sensor's connection is closed without the PUBACK, so the
//! sensor sends the reading again later.

mod frame;
mod gate;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

pub use frame::{Frame, FrameError, Frames};
use gate::AckGate;

use super::Ingest;
use crate::stats::{self, Stats};
use crate::store::Tagged;

/// Everything a sensor connection needs, shared by all of them.
pub struct Front {
    pub backend_v4: SocketAddr,
    pub backend_v5: Option<SocketAddr>,
    pub ingest: Ingest,
    /// Largest packet body a sensor may send (broker.max_payload).
    pub max_body: usize,
    pub connect_timeout: Duration,
    /// Client id reserved for outpost's own link into rumqttd.
    pub reserved_client_id: String,
}

/// Accepts sensors until `shutdown`; each connection runs in its own task.
pub async fn serve(listener: TcpListener, front: Arc<Front>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let front = front.clone();
                    let shutdown = shutdown.clone();
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let (rx, tx) = stream.into_split();
                        if let Err(e) = connection(rx, tx, peer, &front, shutdown).await {
                            tracing::debug!(%peer, error = %e, "sensor connection ended");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "cannot accept a sensor connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Counts a connected sensor for as long as it lives.
struct ClientGauge(Arc<Stats>);

impl ClientGauge {
    fn up(stats: &Arc<Stats>) -> ClientGauge {
        stats::add(&stats.ingest.clients, 1);
        ClientGauge(stats.clone())
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        self.0
            .ingest
            .clients
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] FrameError),
    #[error("no CONNECT within the connect timeout")]
    ConnectTimeout,
    #[error("closed before CONNECT")]
    Closed,
    #[error("refused: {0}")]
    Refused(String),
}

/// One sensor connection, relayed to rumqttd. Plain TCP passes its owned
/// halves (no lock between reader and writer); TLS passes a split stream.
async fn connection<R, W>(
    sensor_rx: R,
    mut sensor_tx: W,
    peer: SocketAddr,
    front: &Front,
    shutdown: CancellationToken,
) -> Result<(), ConnError>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let mut from_sensor = FramedRead::new(
        sensor_rx,
        Frames {
            max_body: front.max_body,
        },
    );

    let first = match tokio::time::timeout(front.connect_timeout, from_sensor.next()).await {
        Err(_) => return Err(ConnError::ConnectTimeout),
        Ok(None) => return Err(ConnError::Closed),
        Ok(Some(f)) => f.map_err(|e| classify(e, peer, "?"))?,
    };
    let connect = frame::parse_connect(&first)?;
    if connect.client_id == front.reserved_client_id {
        tracing::warn!(%peer, "refused a client using outpost's reserved client id");
        return Err(ConnError::Refused("reserved client id".into()));
    }
    let v5 = connect.level == 5;
    let backend = match (v5, front.backend_v5) {
        (true, Some(a)) => a,
        (true, None) => return Err(ConnError::Refused("MQTT 5 is not enabled".into())),
        (false, _) => front.backend_v4,
    };
    let broker = TcpStream::connect(backend).await?;
    let _ = broker.set_nodelay(true);
    let (broker_rx, mut broker_tx) = broker.into_split();
    broker_tx.write_all(&first.bytes).await?;
    let mut from_broker = FramedRead::new(
        broker_rx,
        Frames {
            max_body: usize::MAX,
        },
    );
    let client = connect.client_id;
    tracing::debug!(%peer, client_id = %client, level = connect.level, "sensor connected");
    let _connected = ClientGauge::up(front.ingest.stats());

    let (commits_tx, mut commits) = mpsc::unbounded_channel::<Tagged>();
    let mut gate = AckGate::default();
    let mut aliases: HashMap<u16, String> = HashMap::new();
    let mut next_commit: u64 = 0;
    let mut reading = true;

    loop {
        if !reading && gate.awaiting_commit() == 0 {
            break;
        }
        tokio::select! {
            f = from_sensor.next(), if reading => match f {
                Some(Ok(f)) => {
                    if f.kind() == frame::PUBLISH {
                        let p = frame::parse_publish(&f, v5)?;
                        let topic = resolve_topic(&mut aliases, &p)?;
                        let records = front.ingest.route(&topic, p.payload);
                        match (records.is_empty(), p.pkid) {
                            (true, Some(pkid)) => gate.published(pkid, None),
                            (true, None) => {}
                            (false, Some(pkid)) => {
                                next_commit += 1;
                                gate.published(pkid, Some(next_commit));
                                if front.ingest.store_held(records, commits_tx.clone(), next_commit).await.is_err() {
                                    break;
                                }
                            }
                            (false, None) => {
                                if front.ingest.store(records).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    broker_tx.write_all(&f.bytes).await?;
                    if f.kind() == frame::DISCONNECT {
                        reading = false;
                    }
                }
                Some(Err(e)) => return Err(classify(e, peer, &client)),
                None => reading = false,
            },
            f = from_broker.next() => match f {
                Some(Ok(f)) => {
                    let held = matches!(f.kind(), frame::PUBACK | frame::PUBREC)
                        && f.ack_pkid().is_some_and(|pkid| gate.acked(pkid, f.bytes.clone()));
                    if held {
                        for ack in gate.release() {
                            sensor_tx.write_all(&ack).await?;
                        }
                    } else {
                        sensor_tx.write_all(&f.bytes).await?;
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
            Some((tag, outcome)) = commits.recv() => {
                match outcome {
                    Ok(done) => {
                        front.ingest.count(&done);
                        gate.committed(tag);
                        for ack in gate.release() {
                            sensor_tx.write_all(&ack).await?;
                        }
                    }
                    Err(e) => {
                        // Not stored: no PUBACK. Closing makes the sensor resend.
                        tracing::error!(%peer, client_id = %client, error = %e, "reading not stored; closing the sensor's connection so it resends");
                        return Err(ConnError::Refused(e.to_string()));
                    }
                }
            },
            _ = shutdown.cancelled(), if reading => reading = false,
        }
    }
    let _ = sensor_tx.shutdown().await;
    let _ = broker_tx.shutdown().await;
    Ok(())
}

/// MQTT 5 topic aliases: a PUBLISH may set an alias with its topic, or send
/// the alias alone with an empty topic.
fn resolve_topic(
    aliases: &mut HashMap<u16, String>,
    p: &frame::Publish<'_>,
) -> Result<String, FrameError> {
    match (p.topic.is_empty(), p.topic_alias) {
        (false, Some(a)) => {
            aliases.insert(a, p.topic.to_string());
            Ok(p.topic.to_string())
        }
        (false, None) => Ok(p.topic.to_string()),
        (true, Some(a)) => aliases
            .get(&a)
            .cloned()
            .ok_or(FrameError::Malformed("unknown topic alias")),
        (true, None) => Err(FrameError::Malformed("empty topic without an alias")),
    }
}

/// Oversized and malformed packets are the sensor's fault: say so once, in
/// words, at warn.
fn classify(e: std::io::Error, peer: SocketAddr, client: &str) -> ConnError {
    if e.kind() == std::io::ErrorKind::InvalidData {
        if let Some(fe) = e.get_ref().and_then(|i| i.downcast_ref::<FrameError>()) {
            tracing::warn!(%peer, client_id = %client, error = %fe, "sensor disconnected: bad packet");
            return ConnError::Protocol(fe.clone());
        }
    }
    ConnError::Io(e)
}
