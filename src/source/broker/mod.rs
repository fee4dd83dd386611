//! The local MQTT broker LAN sensors and actuators connect to: MQTT 3.1.1
//! and 5 on every listener, owned by outpost.
//!
//! It replaced the embedded rumqttd (see the README's design notes for the
//! measurements): every packet is decoded strictly here anyway, the PUBACK
//! of a routed reading must wait for the outbox, and no LAN client may be
//! able to break the broker for the others. So the broker is small and
//! outpost's own:
//!
//! - [`codec`]: the packets, decoded by the specifications' rules;
//! - `conn`: one client connection (CONNECT first, then strict checks,
//!   held acknowledgements, exactly-once QoS 2 into the outbox);
//! - `core`: sessions, subscriptions (`trie`), retained messages
//!   (`retain`), all bounded;
//! - [`auth`]: logins and the ACL (Mosquitto's files), reloaded on SIGHUP;
//! - [`local`]: outpost's own in-process clients (downlink, serial, ...);
//! - `probe`: the health probe, and restarting the broker in place when it
//!   fails.

pub mod auth;
pub mod codec;
mod conn;
mod core;
mod gate;
mod io;
pub mod local;
pub mod pending;
mod probe;
mod retain;
mod session;
pub mod tls;
mod trie;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use self::auth::Auth;
pub use self::core::{CoreStats, Limits, LocalMessage};
pub use local::LocalClient;
pub use probe::{run, Health, Unhealthy};

use self::core::Core;
use self::session::PendingWill;
use self::trie::Subscriber;
use super::Ingest;
use crate::config::BrokerConfig;
use crate::stats;
use crate::throttle::Throttle;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    // The OS error is part of the message (not a `source`), so it is
    // printed once.
    #[error("cannot listen on {addr} for {what}: {error} (is another MQTT broker, e.g. mosquitto, running? change broker.{key})")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        key: &'static str,
        error: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
}

/// What every connection is served with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest packet body a client may send (`broker.max_payload`).
    pub max_body: usize,
    pub connect_timeout: Duration,
    pub max_connections: usize,
    pub ack_after_commit: bool,
    pub max_pending: usize,
    pub max_pending_per_address: usize,
}

impl Settings {
    pub fn of(cfg: &BrokerConfig) -> Settings {
        Settings {
            max_body: usize::try_from(cfg.max_payload.0).unwrap_or(usize::MAX),
            connect_timeout: cfg.connect_timeout.0,
            max_connections: cfg.max_connections,
            ack_after_commit: cfg.ack_after_commit,
            max_pending: cfg.max_pending,
            max_pending_per_address: cfg.max_pending_per_address,
        }
    }
}

/// Counters of the broker itself.
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Restarts in place after a failed health probe.
    pub restarts: AtomicU64,
    /// CONNECTs refused (bad login, `max_connections`, bad id).
    pub refused: AtomicU64,
    /// Connections ended for breaking the protocol.
    pub violations: AtomicU64,
    /// Connections closed as they came, unread: too many waiting for
    /// their CONNECT, or no descriptor left to serve them.
    pub shed: AtomicU64,
    /// Publishes and wills the ACL did not allow (dropped).
    pub denied: AtomicU64,
}

/// One listening socket and how its connections start.
pub struct Listener {
    pub name: &'static str,
    pub socket: Arc<TcpListener>,
    pub tls: Option<rumqttc::tokio_rustls::TlsAcceptor>,
    /// TLS: the client certificate's CN is the username.
    pub use_identity: bool,
}

pub(crate) struct Inner {
    core: Mutex<Core>,
    settings: Settings,
    /// Logins and ACL, swapped whole when SIGHUP reloads the files.
    auth: RwLock<Arc<Auth>>,
    ingest: Ingest,
    /// outpost's own login (health probes), made per process.
    internal_login: (String, String),
    live: AtomicUsize,
    /// Connections that have not sent CONNECT yet.
    pending: pending::Pending,
    pub(crate) stats: BrokerStats,
    /// Connections of the current broker generation stop with this.
    generation: Mutex<CancellationToken>,
    logs: Mutex<Throttle>,
    health: Arc<Health>,
    /// Debug builds: a test asked for a fault (see `faults`).
    #[cfg(debug_assertions)]
    fault: std::sync::atomic::AtomicU8,
}

/// The broker; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

/// One of `max_connections`, given back when dropped.
pub(crate) struct Slot(Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
        self.0
            .ingest
            .stats()
            .ingest
            .clients
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Broker {
    pub fn new(cfg: &BrokerConfig, limits: Limits, ingest: Ingest, auth: Auth) -> Broker {
        let internal_login = (
            format!("outpost-internal-{:016x}", fastrand::u64(..)),
            format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
        );
        Broker {
            inner: Arc::new(Inner {
                core: Mutex::new(Core::new(limits, auth.acl())),
                settings: Settings::of(cfg),
                auth: RwLock::new(Arc::new(auth)),
                ingest,
                internal_login,
                live: AtomicUsize::new(0),
                pending: pending::Pending::new(cfg.max_pending, cfg.max_pending_per_address),
                stats: BrokerStats::default(),
                generation: Mutex::new(CancellationToken::new()),
                logs: Mutex::new(Throttle::default()),
                health: Arc::new(Health::default()),
                #[cfg(debug_assertions)]
                fault: std::sync::atomic::AtomicU8::new(0),
            }),
        }
    }

    /// Serves a listener bound after the broker started (its address was
    /// taken at first) until `shutdown`.
    pub async fn serve_listener(&self, listener: Listener, shutdown: CancellationToken) {
        self.clone().serve(Arc::new(listener), shutdown).await;
    }

    /// Accepts on `listener` until `shutdown`. A connection over the
    /// pending bounds is closed unread; when the process is out of
    /// descriptors, a spare one is given up to take the waiting connection
    /// off the queue and close it, so that clients are refused rather than
    /// left hanging, and the clients already connected go on being served.
    async fn serve(self, listener: Arc<Listener>, shutdown: CancellationToken) {
        let mut spare = spare_descriptor();
        loop {
            #[cfg(debug_assertions)]
            faults::accept_loop(&self.inner);
            let accepted = tokio::select! {
                a = listener.socket.accept() => a,
                _ = shutdown.cancelled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    if spare.is_none() {
                        spare = spare_descriptor();
                    }
                    let ticket = match self.inner.pending.take(peer.ip()) {
                        Ok(t) => t,
                        Err(full) => {
                            self.inner.note_shed(listener.name, &full.reason());
                            drop(stream);
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let inner = self.inner.clone();
                    // A clone, not a child token: no allocation per client.
                    let stop = self.inner.generation();
                    // Spawned apart: a plain client's task must not be
                    // sized for TLS state.
                    match listener.tls.clone() {
                        None => tokio::spawn(conn::run(stream, peer, None, inner, stop, ticket)),
                        Some(acceptor) => tokio::spawn(tls::run(
                            stream,
                            peer,
                            acceptor,
                            listener.use_identity,
                            inner,
                            stop,
                            ticket,
                        )),
                    };
                }
                Err(e) if out_of_descriptors(&e) => {
                    // Give the spare back to the system, take the waiting
                    // connection and close it, keep a spare again.
                    drop(spare.take());
                    if let Ok((stream, _)) = listener.socket.accept().await {
                        drop(stream);
                    }
                    spare = spare_descriptor();
                    self.inner.note_shed(
                        listener.name,
                        &format!("the process is out of file descriptors ({e}); new connections are closed"),
                    );
                    if spare.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(e) => {
                    // Do not spin on an error that repeats.
                    self.inner.log_limited(format!("accept {}", listener.name), |n| {
                        tracing::warn!(listener = listener.name, error = %e, count = n, "cannot accept a connection on the {} listener: {e}", listener.name)
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// A new in-process client of outpost's own (see [`local`]).
    pub fn client(&self, capacity: usize) -> LocalClient {
        LocalClient::new(self.inner.clone(), capacity)
    }

    /// Publishes on the local broker as outpost itself (not routed).
    pub fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        let msg = session::Message::new(topic, payload.into(), 1, retain);
        self.inner.core().publish(Arc::new(msg));
    }

    pub fn stats(&self) -> CoreStats {
        self.inner.core().stats()
    }

    pub fn counters(&self) -> &BrokerStats {
        &self.inner.stats
    }

    /// How outpost's own probes log in.
    pub fn internal_login(&self) -> (String, String) {
        self.inner.internal_login.clone()
    }

    /// Restarts the broker in place after a failed health check: counted
    /// and logged; a poisoned state is cleared, and with `cut` every
    /// connection ends (LAN clients reconnect). Sessions, subscriptions and
    /// retained messages are kept: a persistent session is there for its
    /// client when it comes back.
    pub fn restart(&self, why: &str, cut: bool) {
        stats::add(&self.inner.stats.restarts, 1);
        let what = if cut {
            "connections end and clients reconnect"
        } else {
            "connected clients stay"
        };
        tracing::error!(reason = %why, restarts = stats::get(&self.inner.stats.restarts),
            "the local broker failed its health check ({why}); restarting it in place: {what}; sessions, subscriptions and retained messages are kept, no reading is lost");
        if cut {
            let old = {
                let mut g = self
                    .inner
                    .generation
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                std::mem::replace(&mut *g, CancellationToken::new())
            };
            old.cancel();
            // Every connection of the old generation wakes, sees its
            // token cancelled and ends.
            self.inner.core().wake_all();
        }
        self.inner.core.clear_poison();
    }

    /// Reads the password and ACL files again (SIGHUP): new logins and
    /// every message from now on follow them, messages already queued
    /// included; a client whose user was removed or whose password changed
    /// is disconnected (MQTT 5: 0x87) and its session ends. A file with a
    /// problem leaves the running rules in place.
    pub fn reload_access(&self) -> Result<String, crate::access::FileError> {
        let next = self.inner.auth().reload()?;
        let revoked = self.inner.auth().revoked_in(&next);
        let what = next.describe();
        self.inner.core().set_acl(next.acl());
        *self.inner.auth.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        // Logins taken away end their connections and sessions.
        let ended = self.inner.core().revoke(&revoked);
        if ended > 0 {
            tracing::info!(
                clients = ended,
                "{ended} client(s) disconnected: their user was removed from the password file or their password changed"
            );
        }
        Ok(what)
    }

    /// The logins and ACL in force (another door into the broker, such as
    /// HTTP ingest, asks them as a CONNECT and a PUBLISH would).
    pub fn auth(&self) -> Arc<Auth> {
        self.inner.auth()
    }

    /// The broker's health as last checked, for status and the watchdog.
    pub fn health(&self) -> &Health {
        &self.inner.health
    }
}

/// Out of descriptors: the process's (EMFILE) or the system's (ENFILE).
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == libc::EMFILE || code == libc::ENFILE
    )
}

/// A descriptor kept in reserve (`/dev/null`), given up when the process
/// runs out so that a waiting connection can be accepted and closed.
fn spare_descriptor() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

impl Inner {
    /// The broker state. A panic while it was held (a bug) leaves it
    /// poisoned; the health probe sees that and restarts the broker.
    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn limits(&self) -> Limits {
        self.core().limits().clone()
    }

    fn generation(&self) -> CancellationToken {
        self.generation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Debug builds: faults a test asked for.
    fn fault_hook(&self, _client_id: &str) {
        #[cfg(debug_assertions)]
        faults::on_connect(self, _client_id);
    }

    fn is_internal(&self, c: &codec::Connect) -> bool {
        let (user, pass) = &self.internal_login;
        c.username.as_deref() == Some(user.as_str())
            && c.password
                .as_ref()
                .is_some_and(|p| crate::access::passwd::constant_time_eq(p, pass.as_bytes()))
    }

    fn auth(&self) -> Arc<Auth> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One of `max_connections`, if any is free.
    /// A connection slot for a client of `owner`. At `max_connections`, the
    /// newest connection of an owner with more connections than `owner`
    /// would have is ended to make room (see `Core::evict_connection_for`);
    /// it gives its slot back as it goes.
    fn take_slot(self: &Arc<Self>, owner: &core::Owner) -> Option<Slot> {
        let max = self.settings.max_connections;
        let taken = self
            .live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then(|| n.saturating_add(1))
            });
        if taken.is_err() {
            if !self.core().evict_connection_for(owner) {
                return None;
            }
            self.live.fetch_add(1, Ordering::SeqCst);
        }
        stats::add(&self.ingest.stats().ingest.clients, 1);
        Some(Slot(self.clone()))
    }

    /// A PUBLISH delivered to the local subscribers.
    fn deliver(&self, topic: &str, p: &codec::Publish, from: Option<Subscriber>) {
        let msg = conn::message(topic, p, from);
        self.core().publish(Arc::new(msg));
    }

    /// A will: routed and stored like a reading, delivered locally, after
    /// its delay unless the client is back by then.
    fn publish_will(
        self: &Arc<Self>,
        client: Arc<str>,
        username: Option<Arc<str>>,
        conn_id: u64,
        w: PendingWill,
    ) {
        let inner = self.clone();
        tokio::spawn(async move {
            if !w.delay.is_zero() {
                tokio::time::sleep(w.delay).await;
                if inner.core().reconnected(&client, conn_id) {
                    return;
                }
            }
            // Wills obey `write`, checked when they go (the ACL may have
            // been reloaded since the CONNECT).
            let topic = &w.will.topic;
            let access = crate::access::Access::Write;
            if !inner
                .auth()
                .may(username.as_deref(), &client, topic, access)
            {
                inner.note_denied(&client, topic);
                return;
            }
            let p = codec::Publish {
                dup: false,
                qos: w.will.qos,
                retain: w.will.retain,
                topic: w.will.topic.clone(),
                pkid: 0,
                payload: w.will.payload.clone(),
                props: w.will.props.clone(),
            };
            let routed = inner.ingest.route(&p.topic, &p.payload);
            if !routed.records.is_empty() || !routed.refused.is_empty() {
                let _ = inner.ingest.store(routed).await;
            }
            inner.deliver(&w.will.topic, &p, Some(Subscriber::Client(client)));
        });
    }

    /// A commit failed (disk full, I/O error): said once a minute, at error
    /// (a person has to free space or fix the disk).
    fn note_store_failure(&self, e: &crate::store::StoreError) {
        self.log_limited("store failure".into(), |n| {
            tracing::error!(error = %e, count = n, "readings not stored: clients are refused (MQTT 5: 0x97) or disconnected until the outbox can write again");
        });
    }

    fn note_violation(&self, peer: SocketAddr, client: &str, why: &str) {
        stats::add(&self.stats.violations, 1);
        self.log_limited(
            format!("violation {peer}"),
            |n| tracing::warn!(%peer, client_id = %client, reason = %why, count = n, "client disconnected: it broke the MQTT protocol"),
        );
    }

    /// A connection closed as it came (see [`Broker::serve`]): counted, and
    /// logged once a minute per listener and reason with the count.
    fn note_shed(&self, listener: &'static str, why: &str) {
        stats::add(&self.stats.shed, 1);
        let waiting = self.pending.waiting();
        let live = self.live.load(Ordering::Relaxed);
        self.log_limited(format!("shed {listener} {why}"), |n| {
            tracing::warn!(
                listener,
                reason = %why,
                count = n,
                waiting_for_connect = waiting,
                connected = live,
                "new connections closed on the {listener} listener: {why} ({n} in the last minute; {live} clients connected and served, {waiting} waiting for CONNECT)"
            )
        });
    }

    fn note_refused(&self, peer: SocketAddr, client: &str, why: &str) {
        stats::add(&self.stats.refused, 1);
        self.log_limited(
            format!("refused {} {why}", peer.ip()),
            |n| tracing::warn!(%peer, client_id = %client, reason = %why, count = n, "client refused"),
        );
    }

    /// A publish or will the ACL does not allow: dropped, counted, and
    /// logged once a minute per client.
    fn note_denied(&self, client: &str, topic: &str) {
        stats::add(&self.stats.denied, 1);
        self.log_limited(format!("denied {client}"), |n| {
            let topic: String = topic.chars().take(128).collect();
            tracing::warn!(client_id = %client, %topic, count = n, "publish not allowed by the ACL: dropped")
        });
    }

    fn log_limited(&self, key: String, log: impl FnOnce(u64)) {
        let due = self
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due(&key);
        if let Some(n) = due {
            log(n);
        }
    }
}

/// Faults the integration tests inject into a debug build (never in a
/// release build): with `OUTPOST_TEST_FAULTS=1`, a client id
/// `outpost-fault-poison` panics while holding the broker's state, and
/// `outpost-fault-listener` ends the accept loop it came through, the way
/// rumqttd's listeners died.
#[cfg(debug_assertions)]
mod faults {
    use std::sync::atomic::Ordering;

    use super::Inner;

    const LISTENER: u8 = 1;

    fn enabled() -> bool {
        std::env::var_os("OUTPOST_TEST_FAULTS").is_some()
    }

    pub(super) fn on_connect(inner: &Inner, client_id: &str) {
        if !enabled() {
            return;
        }
        match client_id {
            "outpost-fault-poison" => {
                let _held = inner.core.lock();
                panic!("test fault: a panic while the broker state is held");
            }
            "outpost-fault-listener" => inner.fault.store(LISTENER, Ordering::SeqCst),
            _ => {}
        }
    }

    pub(super) fn accept_loop(inner: &Inner) {
        if enabled() && inner.fault.swap(0, Ordering::SeqCst) == LISTENER {
            panic!("test fault: the accept loop ends");
        }
    }
}

/// Binds a listener, with a clear error when the address is taken.
pub async fn bind(
    addr: SocketAddr,
    what: &'static str,
    key: &'static str,
) -> Result<TcpListener, BrokerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| BrokerError::Bind {
            addr,
            what,
            key,
            error,
        })
}
