//! `[http]`: the local status page, `/metrics`, `/api/status`, and HTTP
//! ingest for devices that do not speak MQTT.
//!
//! The page shows the site and its buttons change it, so it is on loopback
//! unless a password file guards it: binding anywhere else without
//! `password_file` is a config error, not a warning.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::problem::{Problem, Problems};
use crate::units::ByteSize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where the page listens; `""` turns the HTTP server off.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Logins for the page, `/metrics` and `/api` (Mosquitto's password
    /// file format, made with `outpost passwd`). Needed off loopback, and
    /// for the dead-letter buttons.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Host names the page may be reached by besides IP addresses and
    /// `localhost` (a button's request with another `Host` is refused: a
    /// defence against DNS rebinding).
    #[serde(default)]
    pub host_names: Vec<String>,
    /// Accept `POST /ingest/{device}`.
    #[serde(default = "default_true")]
    pub ingest: bool,
    /// The local topic an HTTP reading is published on (`{device}`).
    #[serde(default = "default_ingest_topic")]
    pub ingest_topic: String,
    /// The largest body `POST /ingest` takes.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Per-device tokens: a device listed here must also send
    /// `X-Device-Token: TOKEN`.
    #[serde(default)]
    pub device_tokens: BTreeMap<String, String>,
}

fn default_listen() -> String {
    "127.0.0.1:8088".into()
}
fn default_true() -> bool {
    true
}
fn default_ingest_topic() -> String {
    "sensors/{device}/telemetry".into()
}
fn default_max_body() -> ByteSize {
    ByteSize(64 << 10)
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            password_file: None,
            host_names: Vec::new(),
            ingest: true,
            ingest_topic: default_ingest_topic(),
            max_body: default_max_body(),
            device_tokens: BTreeMap::new(),
        }
    }
}

impl HttpConfig {
    /// The address to bind, or `None` when the server is off (`listen`
    /// was checked at load).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

/// HTTP ingest logs in as an MQTT client does: off loopback, a broker that
/// lets anyone in without a login would let anyone on the LAN post
/// readings (a page password does not guard `/ingest`).
pub(super) fn check_ingest_exposure(
    h: &HttpConfig,
    broker: &super::BrokerConfig,
    problems: &mut Vec<Problem>,
) {
    let Ok(addr) = h.listen.parse::<SocketAddr>() else {
        return;
    };
    if h.ingest && !addr.ip().is_loopback() && broker.anonymous_allowed() {
        problems.add(
            "http.ingest",
            format!(
                "HTTP ingest on {addr} takes readings from anyone on the network: the local broker lets clients in without a login, and /ingest logs in as they do. Set broker.password_file (devices then post with HTTP Basic), set http.ingest = false, or listen on 127.0.0.1"
            ),
        );
    }
}

pub(super) fn check(h: &HttpConfig, problems: &mut Vec<Problem>) {
    if !h.listen.is_empty() {
        match h.listen.parse::<SocketAddr>() {
            Err(_) => problems.add(
                "http.listen",
                format!(
                    "`{}` is not an address with a port (like 127.0.0.1:8088); \"\" turns the page off",
                    h.listen
                ),
            ),
            Ok(a) if !a.ip().is_loopback() && h.password_file.is_none() => problems.add(
                "http.listen",
                format!(
                    "{a} shows the status page to the network without a login: set http.password_file (see `outpost passwd`), or listen on 127.0.0.1"
                ),
            ),
            Ok(_) => {}
        }
    }
    if let Some(p) = &h.password_file {
        if let Err(e) = crate::access::PasswordFile::load(p) {
            problems.add("http.password_file", e.to_string());
        }
    }
    match crate::topic::placeholders(&h.ingest_topic) {
        Ok(p) if p.iter().all(|p| *p == "device") && !h.ingest_topic.contains(['+', '#']) => {}
        Ok(_) => problems.add(
            "http.ingest_topic",
            "a topic name with {device} (no other placeholder, no wildcard)",
        ),
        Err(e) => problems.add("http.ingest_topic", e),
    }
    if h.max_body.0 == 0 || h.max_body.0 > 16 << 20 {
        problems.add("http.max_body", "must be between 1 byte and 16 MiB");
    }
    for (device, token) in &h.device_tokens {
        if token.len() < 8 {
            problems.add(
                format!("http.device_tokens.{device}"),
                "a token must be at least 8 characters",
            );
        }
    }
}
