//! The connection settings of one sink's session, resolved from its config.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::sink::Connection;

/// The connection settings every MQTT-speaking sink type has.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// mTLS: (certificate chain, private key).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub inflight: u16,
    pub max_packet: usize,
    pub keep_alive: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub grace: Duration,
    /// A publish unacknowledged this long ends the connection.
    pub ack_timeout: Duration,
}

impl Settings {
    /// Settings from a sink's shared connection fields, with the default
    /// window (100) and packet limit (64 KiB) and no credentials; each
    /// platform sets what is its own.
    pub fn new(c: Connection<'_>, client_id: impl Into<String>) -> Settings {
        Settings {
            url: c.url.to_string(),
            client_id: client_id.into(),
            username: None,
            password: None,
            ca_file: c.ca_file.map(PathBuf::from),
            client_cert: None,
            inflight: 100,
            max_packet: 64 * 1024,
            keep_alive: c.keep_alive,
            reconnect_min: c.reconnect_min,
            reconnect_max: c.reconnect_max,
            grace: c.shutdown_grace,
            ack_timeout: c.ack_timeout,
        }
    }

    /// With MQTT credentials.
    pub fn login(mut self, username: Option<String>, password: Option<String>) -> Settings {
        self.username = username;
        self.password = password;
        self
    }

    /// With a client certificate chain and key (mTLS), when both are set.
    pub fn client_cert(mut self, cert: Option<&PathBuf>, key: Option<&PathBuf>) -> Settings {
        self.client_cert = cert.cloned().zip(key.cloned());
        self
    }

    /// With this in-flight window and packet limit.
    pub fn window(mut self, inflight: u16, max_packet: usize) -> Settings {
        self.inflight = inflight;
        self.max_packet = max_packet;
        self
    }
}
