//! The local MQTT broker LAN sensors connect to: rumqttd, embedded.
//!
//! rumqttd runs its router and each listener on threads of its own. outpost
//! talks to it through an in-process link, which is how records are taken off
//! the local bus. Two traps shape this file:
//! - an outside client that connects with the link's client id silently
//!   replaces the link (rumqttd drops the older of two duplicate ids), so the
//!   link's id is random per process and, when logins are configured, refused
//!   by the auth handler;
//! - a listener that cannot bind only logs inside rumqttd's thread, so the
//!   addresses are probed here first and a clear error is returned.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use rumqttc::MqttOptions;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::config::BrokerConfig;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr} for {what}: {source} (is another MQTT broker, e.g. mosquitto, running? change broker.{key})")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("the local broker did not start listening on {0} within 5s")]
    NotListening(SocketAddr),
    #[error("cannot attach to the local broker: {0}")]
    Link(String),
    #[error("cannot start the local broker thread: {0}")]
    Thread(std::io::Error),
}

/// The running rumqttd and outpost's link into it.
pub struct RumqttdBroker {
    pub listen: Listeners,
    /// How outpost's own MQTT client (downlink to local devices) logs in.
    pub control: ControlLogin,
    pub link_tx: LinkTx,
    pub link_rx: LinkRx,
    pub link_id: String,
}

/// Where rumqttd itself listens: the configured addresses when sensors talk
/// to it directly, private loopback ports when the ingest front sits before it.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    pub v4: SocketAddr,
    pub v5: Option<SocketAddr>,
}

impl Listeners {
    /// The configured, sensor-facing addresses (checked to be free).
    pub fn public(cfg: &BrokerConfig) -> Result<Listeners, BrokerError> {
        probe_bind(cfg.listen, "MQTT 3.1.1", "listen")?;
        if let Some(v5) = cfg.listen_v5 {
            probe_bind(v5, "MQTT 5", "listen_v5")?;
        }
        Ok(Listeners {
            v4: cfg.listen,
            v5: cfg.listen_v5,
        })
    }

    /// Two free ports on 127.0.0.1, reachable only from this machine.
    pub fn private() -> Result<Listeners, BrokerError> {
        let v4 = private_port(None)?;
        let v5 = private_port(Some(v4.port()))?;
        Ok(Listeners { v4, v5: Some(v5) })
    }
}

/// Credentials of outpost's own client on the local broker (random per
/// process; the password is accepted only when logins are configured).
#[derive(Clone)]
pub struct ControlLogin {
    pub client_id: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for ControlLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlLogin")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
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

/// Starts rumqttd and waits until its listeners accept.
pub fn start(cfg: &BrokerConfig, listen: Listeners) -> Result<RumqttdBroker, BrokerError> {
    let link_id = format!(
        "outpost-link-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    );
    let control = ControlLogin {
        client_id: format!("outpost-control-{:016x}", fastrand::u64(..)),
        username: "outpost-control".into(),
        password: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
    };
    let connections = connection_settings(cfg, &link_id, &control);
    let server = |name: &str, listen| ServerSettings {
        name: name.to_string(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: connections.clone(),
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: cfg.max_connections + 1,
            max_outgoing_packet_count: 200,
            // Segments must hold the largest payload; rumqttd keeps at most
            // max_segment_count of them per filter in memory.
            max_segment_size: (cfg.max_payload.0 as usize * 2).max(1 << 20),
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([(
            "v4".to_string(),
            server("mqtt-v4", listen.v4),
        )])),
        v5: listen
            .v5
            .map(|a| HashMap::from([("v5".to_string(), server("mqtt-v5", a))])),
        ..Default::default()
    };

    let mut broker = Broker::new(config);
    let (link_tx, link_rx) = broker
        .link(&link_id)
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "local broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;

    wait_listening(listen.v4)?;
    if let Some(v5) = listen.v5 {
        wait_listening(v5)?;
    }
    tracing::debug!(v4 = %listen.v4, v5 = ?listen.v5, auth = cfg.users.is_some(), "rumqttd listening");
    Ok(RumqttdBroker {
        listen,
        control,
        link_tx,
        link_rx,
        link_id,
    })
}

fn connection_settings(
    cfg: &BrokerConfig,
    link_id: &str,
    control: &ControlLogin,
) -> ConnectionSettings {
    let mut settings = ConnectionSettings {
        connection_timeout_ms: cfg.connect_timeout.0.as_millis().min(u16::MAX as u128) as u16,
        max_payload_size: cfg.max_payload.0 as usize,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    if let Some(mut users) = cfg.users.clone() {
        // outpost's own downlink client logs in with a secret made per process.
        users.insert(control.username.clone(), control.password.clone());
        let reserved = link_id.to_string();
        settings.set_auth_handler(move |client_id: String, user: String, pass: String| {
            let ok = client_id != reserved
                && users
                    .get(&user)
                    .is_some_and(|expected| constant_time_eq(expected.as_bytes(), pass.as_bytes()));
            if !ok {
                tracing::warn!(client_id = %client_id, user = %user, "local client refused: bad username or password");
            }
            async move { ok }
        });
    }
    settings
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A free loopback port for rumqttd's private listeners.
fn private_port(not: Option<u16>) -> Result<SocketAddr, BrokerError> {
    crate::net::free_loopback_port(not)
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .map_err(|source| BrokerError::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            what: "the local broker's private port",
            key: "listen",
            source,
        })
}

fn probe_bind(addr: SocketAddr, what: &'static str, key: &'static str) -> Result<(), BrokerError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| BrokerError::Bind {
            addr,
            what,
            key,
            source,
        })
}

/// Waits until rumqttd's listener holds the address. It looks in the
/// kernel's socket table instead of connecting (a probe connection makes
/// rumqttd log an aborted client) or binding (which could steal the port
/// from rumqttd for a moment).
fn wait_listening(addr: SocketAddr) -> Result<(), BrokerError> {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if crate::net::is_listening(addr.port()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(BrokerError::NotListening(addr))
}
