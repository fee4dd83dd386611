//! `[broker]`: the local MQTT broker LAN sensors connect to, and
//! `[broker.tls]`, its TLS listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::problem::{Problem, Problems};
use crate::units::{ByteSize, Seconds};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// MQTT 3.1.1 listener for LAN sensors.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// A second listener. With `ack_after_commit` (the default) both
    /// listeners accept MQTT 3.1.1 and 5; without it rumqttd serves 3.1.1 on
    /// `listen` and MQTT 5 only here.
    #[serde(default)]
    pub listen_v5: Option<SocketAddr>,
    /// Hold each sensor's PUBACK until its reading is committed to the
    /// outbox (outpost's ingest front relays to rumqttd). `false` lets rumqttd
    /// acknowledge at once: a little faster, but a reading acknowledged just
    /// before a crash can be lost.
    #[serde(default = "default_true")]
    pub ack_after_commit: bool,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest PUBLISH payload a LAN client may send.
    #[serde(default = "default_max_payload")]
    pub max_payload: ByteSize,
    /// Time a new connection has to send its CONNECT.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Seconds,
    /// Optional username → password table. When set, every client must log in.
    #[serde(default)]
    pub users: Option<HashMap<String, String>>,
    /// A TLS listener for sensors on an untrusted LAN (`[broker.tls]`).
    #[serde(default)]
    pub tls: Option<BrokerTlsConfig>,
}

/// `[broker.tls]`: MQTT over TLS for sensors, optionally mutual.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerTlsConfig {
    #[serde(default = "default_tls_listen")]
    pub listen: SocketAddr,
    /// The gateway's certificate chain (leaf first) and its private key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Sensors must present a certificate issued by a CA in this file.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

fn default_tls_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8883))
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}
fn default_true() -> bool {
    true
}
fn default_max_connections() -> usize {
    1000
}
fn default_max_payload() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_connect_timeout() -> Seconds {
    Seconds(Duration::from_secs(10))
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: default_listen(),
            listen_v5: None,
            ack_after_commit: true,
            max_connections: default_max_connections(),
            max_payload: default_max_payload(),
            connect_timeout: default_connect_timeout(),
            users: None,
            tls: None,
        }
    }
}

pub(super) fn check(b: &BrokerConfig, problems: &mut Vec<Problem>) {
    if b.max_connections == 0 {
        problems.add("broker.max_connections", "must be at least 1");
    }
    if b.max_payload.0 == 0 || b.max_payload.0 > 256 << 20 {
        problems.add(
            "broker.max_payload",
            "must be between 1 byte and 256 MiB (the MQTT limit)",
        );
    }
    if let Some(t) = &b.tls {
        if !b.ack_after_commit {
            problems.add(
                "broker.tls",
                "the TLS listener is part of the ingest front: needs ack_after_commit = true",
            );
        }
        if t.listen == b.listen || Some(t.listen) == b.listen_v5 {
            problems.add(
                "broker.tls.listen",
                "must differ from broker.listen and broker.listen_v5",
            );
        }
    }
    if Some(b.listen) == b.listen_v5 {
        problems.add("broker.listen_v5", "must differ from broker.listen");
    }
    let millis = b.connect_timeout.0.as_millis();
    if millis == 0 || millis > u128::from(u16::MAX) {
        problems.add("broker.connect_timeout", "must be between 1ms and 65s");
    }
}
