//! Is the local broker serving? Checked every few seconds from the outside
//! in: every plain listener answers a CONNECT with CONNACK, a message
//! published through the broker comes back, and the broker's state is
//! neither wedged nor poisoned.
//!
//! A broker that is *full* is not broken: when the probe cannot connect
//! because the process is out of descriptors, or its connection was closed
//! unread because too many wait for their CONNECT, the clients already
//! connected are still served. That is reported (`outpost status`, the log
//! once a minute) and nothing is restarted.
//!
//! A broken one is restarted in place, counted and logged: an ended accept
//! loop is started again; a poisoned state is cleared; a state that stays
//! locked, or a publish that does not come back, ends the connections (LAN
//! clients reconnect). Sessions, subscriptions and retained messages are
//! kept through all of it, and readings are in the outbox anyway. The
//! systemd watchdog and `outpost status` report the broker's real state.

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
    /// Set while new connections are refused for want of descriptors or
    /// pending places (the broker is full, not broken): why.
    pub full: std::sync::Mutex<Option<String>>,
}

impl Health {
    fn set_full(&self, why: Option<String>) {
        if let Ok(mut f) = self.full.lock() {
            *f = why;
        }
    }
}

/// Whether a failed listener check means "full": the probe itself found no
/// descriptor, or connections were shed while it ran.
fn full(e: &Unhealthy, shed_during: bool) -> bool {
    match e {
        Unhealthy::Listener { detail, .. } => {
            shed_during
                || detail.contains("Too many open files")
                || detail.contains("(os error 23)")
        }
        _ => false,
    }
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
    let keep_alive = tokio::spawn(keep_alive_sweep(broker.clone()));
    health.healthy.store(true, Ordering::Relaxed);
    let mut tick = tokio::time::interval(EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        broker.inner.core().sweep(Instant::now());
        let shed_before = crate::stats::get(&broker.inner.stats.shed);
        let mut result = broker.check(&probed, Duration::from_secs(2)).await;
        let shed_during = crate::stats::get(&broker.inner.stats.shed) > shed_before;
        let mut dead_loop = None;
        if result.is_ok() {
            if let Some(i) = loops.iter().position(JoinHandle::is_finished) {
                dead_loop = Some(i);
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
                health.set_full(None);
            }
            Err(e) if dead_loop.is_none() && full(&e, shed_during) => {
                // Full, not broken: the clients in are served; new ones
                // are refused until descriptors or places free up.
                health.healthy.store(true, Ordering::Relaxed);
                health.set_full(Some(e.to_string()));
            }
            Err(e) => {
                health.healthy.store(false, Ordering::Relaxed);
                if let Ok(mut p) = health.last_problem.lock() {
                    *p = Some(e.to_string());
                }
                // Only what is broken is started again: a dead accept loop
                // alone, a poisoned state cleared, connections ended only
                // when the state stays locked or messages do not flow.
                let cut = match &e {
                    Unhealthy::Poisoned => false,
                    Unhealthy::Listener { .. } => {
                        dead_loop.is_none() && !loops.iter().any(JoinHandle::is_finished)
                    }
                    Unhealthy::Wedged(_) | Unhealthy::NoLoop(_) => true,
                };
                broker.restart(&e.to_string(), cut);
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
                    tracing::error!(error = %e, "the local broker is still unhealthy after its restart: {e}");
                }
            }
        }
    }
    for l in loops {
        l.abort();
    }
    keep_alive.abort();
}

/// How often silent clients are looked for.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(1);

/// Once a second, wakes the connections whose client has been silent past
/// 1.5 keep-alives, which then end. One sweep for every client instead of
/// a timer in each client's task, rearmed at every packet. A state held
/// locked (the health check's business) skips a sweep, never blocks.
async fn keep_alive_sweep(broker: Broker) {
    let mut tick = tokio::time::interval(KEEP_ALIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let core = match broker.inner.core.try_lock() {
            Ok(core) => core,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => continue,
        };
        core.wake_overdue(Instant::now());
    }
}
