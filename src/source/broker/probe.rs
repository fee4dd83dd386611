//! Is the local broker serving? Checked every few seconds from the outside
//! in: every plain listener answers a CONNECT with CONNACK, a message
//! published through the broker comes back, and the broker's state is
//! neither wedged nor poisoned. A failed check restarts the broker in place
//! (a new state, the accept loops started again; readings are in the
//! outbox, LAN clients reconnect), counted and logged, and the systemd
//! watchdog and `outpost status` report the broker's real state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{self, Connect, Packet, Props, V311};
use super::{Broker, Listener};

/// How often the supervisor checks.
pub const EVERY: Duration = Duration::from_secs(3);

/// What is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    #[error("the local broker's state stayed locked for {0:?}")]
    Wedged(Duration),
    #[error("the local broker's state is poisoned (a panic while it was held)")]
    Poisoned,
    #[error("a message published on the local broker did not come back within {0:?}")]
    NoLoop(Duration),
    #[error("the {name} listener ({addr}) does not answer CONNECT with CONNACK: {detail}")]
    Listener {
        name: &'static str,
        addr: SocketAddr,
        detail: String,
    },
}

/// The address to dial for a listener (a wildcard address is not one).
pub fn dial(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

impl Broker {
    /// Checks the broker's state, a publish loop through it, and every
    /// plain listener in `listeners`, each within `within`.
    pub async fn check(
        &self,
        listeners: &[(&'static str, SocketAddr)],
        within: Duration,
    ) -> Result<(), Unhealthy> {
        self.state_usable(within).await?;
        self.loop_back(within).await?;
        for (name, addr) in listeners {
            self.listener_answers(name, *addr, within).await?;
        }
        Ok(())
    }

    async fn state_usable(&self, within: Duration) -> Result<(), Unhealthy> {
        let deadline = crate::units::deadline(within);
        loop {
            if self.inner.core.is_poisoned() {
                return Err(Unhealthy::Poisoned);
            }
            if self.inner.core.try_lock().is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Unhealthy::Wedged(within));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn loop_back(&self, within: Duration) -> Result<(), Unhealthy> {
        let topic = format!("$outpost/probe/{:016x}", fastrand::u64(..));
        let mut c = self.client(4);
        c.subscribe(&topic).map_err(|_| Unhealthy::NoLoop(within))?;
        c.publish(&topic, b"probe".to_vec(), false);
        match tokio::time::timeout(within, c.recv()).await {
            Ok(Some(m)) if m.topic == topic => Ok(()),
            _ => Err(Unhealthy::NoLoop(within)),
        }
    }

    async fn listener_answers(
        &self,
        name: &'static str,
        addr: SocketAddr,
        within: Duration,
    ) -> Result<(), Unhealthy> {
        let (user, pass) = self.internal_login();
        let connect = Packet::Connect(Box::new(Connect {
            level: V311,
            clean: true,
            keep_alive: 10,
            client_id: format!("outpost-probe-{:016x}", fastrand::u64(..)),
            will: None,
            username: Some(user),
            password: Some(pass.into_bytes().into()),
            props: Props::default(),
        }));
        let mut bytes = BytesMut::new();
        codec::encode(&connect, V311, &mut bytes);
        let to = dial(addr);
        let probe = async {
            let mut s = TcpStream::connect(to).await?;
            s.write_all(&bytes).await?;
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack).await?;
            let _ = s.write_all(&[0xE0, 0x00]).await;
            Ok::<_, std::io::Error>(ack)
        };
        let fail = |detail: String| Unhealthy::Listener {
            name,
            addr: to,
            detail,
        };
        match tokio::time::timeout(within, probe).await {
            Err(_) => Err(fail(format!("no answer within {within:?}"))),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Ok(Ok([0x20, 0x02, _, 0x00])) => Ok(()),
            Ok(Ok(other)) => Err(fail(format!("answered {other:02x?}"))),
        }
    }
}

/// The broker's health, as last checked.
#[derive(Debug, Default)]
pub struct Health {
    pub healthy: AtomicBool,
    pub last_problem: std::sync::Mutex<Option<String>>,
}

/// Runs the broker: the accept loops, the session sweep and the health
/// check that restarts it in place when it fails. Until `shutdown`.
pub async fn run(broker: Broker, listeners: Vec<Listener>, shutdown: CancellationToken) {
    let health = broker.inner.health.clone();
    let probed: Vec<(&'static str, SocketAddr)> = listeners
        .iter()
        .filter(|l| l.tls.is_none())
        .filter_map(|l| l.socket.local_addr().ok().map(|a| (l.name, a)))
        .collect();
    let listeners: Vec<Arc<Listener>> = listeners.into_iter().map(Arc::new).collect();
    let spawn = |l: &Arc<Listener>| -> JoinHandle<()> {
        let (b, l, s) = (broker.clone(), l.clone(), shutdown.clone());
        tokio::spawn(async move { b.serve(l, s).await })
    };
    let mut loops: Vec<JoinHandle<()>> = listeners.iter().map(spawn).collect();
    health.healthy.store(true, Ordering::Relaxed);
    let mut tick = tokio::time::interval(EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        broker.inner.core().sweep(Instant::now());
        let mut result = broker.check(&probed, Duration::from_secs(2)).await;
        if result.is_ok() {
            if let Some(i) = loops.iter().position(JoinHandle::is_finished) {
                result = Err(Unhealthy::Listener {
                    name: listeners.get(i).map_or("?", |l| l.name),
                    addr: listeners
                        .get(i)
                        .and_then(|l| l.socket.local_addr().ok())
                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                    detail: "its accept loop ended".into(),
                });
            }
        }
        match result {
            Ok(()) => {
                health.healthy.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                health.healthy.store(false, Ordering::Relaxed);
                if let Ok(mut p) = health.last_problem.lock() {
                    *p = Some(e.to_string());
                }
                broker.restart(&e.to_string());
                for (i, l) in listeners.iter().enumerate() {
                    if loops.get(i).is_some_and(JoinHandle::is_finished) {
                        if let Some(slot) = loops.get_mut(i) {
                            *slot = spawn(l);
                        }
                    }
                }
                // Serving again? Said at once, not at the next tick.
                let again = broker.check(&probed, Duration::from_secs(2)).await;
                health.healthy.store(again.is_ok(), Ordering::Relaxed);
                if let Err(e) = again {
                    tracing::error!(error = %e, "the local broker is still unhealthy after its restart");
                }
            }
        }
    }
    for l in loops {
        l.abort();
    }
}
