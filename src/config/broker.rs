//! `[broker]`: the local MQTT broker LAN sensors connect to, who may use
//! it (Mosquitto's `password_file`, `acl_file` and `allow_anonymous`), and
//! `[broker.tls]`, its TLS listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::problem::{Problem, Problems};
use crate::units::{ByteSize, Seconds};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// The listener for LAN clients (MQTT 3.1.1 and 5).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// A second listener, the same as the first (MQTT 3.1.1 and 5); kept
    /// for configs that gave MQTT 5 its own port.
    #[serde(default)]
    pub listen_v5: Option<SocketAddr>,
    /// Hold each sensor's PUBACK until its reading is committed to the
    /// outbox. `false` acknowledges at once: a little faster, but a reading
    /// acknowledged just before a crash can be lost.
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
    /// Connections that have not sent CONNECT yet, at most (more are
    /// closed at once): they hold descriptors but no connection slot.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// The same, per remote address.
    #[serde(default = "default_max_pending_per_address")]
    pub max_pending_per_address: usize,
    /// Users and their password hashes, as `mosquitto_passwd` (or
    /// `outpost passwd`) writes them. When set, every client logs in.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Who may read and write which topics, in Mosquitto's ACL format.
    #[serde(default)]
    pub acl_file: Option<PathBuf>,
    /// Clients without a username: allowed when nothing asks for a login;
    /// with `password_file` set, only if this is `true`. A listener on a
    /// non-loopback address without logins or client certificates needs
    /// it set to `true` explicitly.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// The plaintext table of earlier versions, refused with a pointer to
    /// `password_file`.
    #[serde(default)]
    pub users: Option<toml::Table>,
    /// A TLS listener for sensors on an untrusted LAN (`[broker.tls]`).
    #[serde(default)]
    pub tls: Option<BrokerTlsConfig>,
    /// Subscriptions one client may hold.
    #[serde(default = "default_max_subscriptions_per_client")]
    pub max_subscriptions_per_client: usize,
    /// Subscriptions of all clients together.
    #[serde(default = "default_max_subscriptions")]
    pub max_subscriptions: usize,
    /// Messages queued for one client that is away (persistent session)
    /// or slow; more are dropped and counted.
    #[serde(default = "default_max_queued_messages")]
    pub max_queued_messages: usize,
    #[serde(default = "default_max_queued_bytes")]
    pub max_queued_bytes: ByteSize,
    /// Messages queued for all clients together. At the bound, the client
    /// with the most queued gives up its oldest for a client with less.
    #[serde(default = "default_max_queued_bytes_total")]
    pub max_queued_bytes_total: ByteSize,
    /// QoS 1 and 2 messages in flight to one client.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Persistent sessions kept while their client is away (the longest
    /// away go first).
    #[serde(default = "default_max_offline_sessions")]
    pub max_offline_sessions: usize,
    /// How long a persistent session is kept while its client is away
    /// (MQTT 5 clients may ask for less).
    #[serde(default = "default_persistent_session_expiry")]
    pub persistent_session_expiry: Seconds,
    /// Retained messages kept, by count and by bytes.
    #[serde(default = "default_max_retained")]
    pub max_retained: usize,
    #[serde(default = "default_max_retained_bytes")]
    pub max_retained_bytes: ByteSize,
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
    /// The certificate's CN is the client's username (for the ACL, `%u`),
    /// and no password is asked.
    #[serde(default)]
    pub use_identity_as_username: bool,
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
fn default_max_pending() -> usize {
    256
}
/// A host that opens a hundred connections at once (a gateway, a reconnect
/// storm after a power cut) is not shed.
fn default_max_pending_per_address() -> usize {
    128
}
fn default_connect_timeout() -> Seconds {
    Seconds(Duration::from_secs(10))
}

fn default_max_subscriptions_per_client() -> usize {
    100
}
fn default_max_subscriptions() -> usize {
    10_000
}
fn default_max_queued_messages() -> usize {
    1000
}
fn default_max_queued_bytes() -> ByteSize {
    ByteSize(1 << 20)
}
/// Sized for a Pi with 512 MB, not for 1 MiB times 1,000 sessions.
fn default_max_queued_bytes_total() -> ByteSize {
    ByteSize(32 << 20)
}
fn default_max_inflight() -> u16 {
    20
}
fn default_max_offline_sessions() -> usize {
    1000
}
fn default_persistent_session_expiry() -> Seconds {
    Seconds(Duration::from_secs(86_400))
}
fn default_max_retained() -> usize {
    1000
}
fn default_max_retained_bytes() -> ByteSize {
    ByteSize(4 << 20)
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
            max_pending: default_max_pending(),
            max_pending_per_address: default_max_pending_per_address(),
            password_file: None,
            acl_file: None,
            allow_anonymous: None,
            users: None,
            tls: None,
            max_subscriptions_per_client: default_max_subscriptions_per_client(),
            max_subscriptions: default_max_subscriptions(),
            max_queued_messages: default_max_queued_messages(),
            max_queued_bytes: default_max_queued_bytes(),
            max_queued_bytes_total: default_max_queued_bytes_total(),
            max_inflight: default_max_inflight(),
            max_offline_sessions: default_max_offline_sessions(),
            persistent_session_expiry: default_persistent_session_expiry(),
            max_retained: default_max_retained(),
            max_retained_bytes: default_max_retained_bytes(),
        }
    }
}

impl BrokerConfig {
    /// Are clients without a username let in?
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.password_file.is_none())
    }
}

/// Who may log in and what they may do: the password file, the ACL file,
/// and Mosquitto 2.0's rule that a listener others can reach asks for a
/// login unless told otherwise.
fn check_access(b: &BrokerConfig, problems: &mut Vec<Problem>) {
    if b.users.is_some() {
        problems.add(
            "broker.users",
            "plaintext passwords are not taken any more: put the users in a password file (`outpost passwd FILE USER`, or Mosquitto's `mosquitto_passwd`) and set broker.password_file",
        );
    }
    if let Some(p) = &b.password_file {
        if let Err(e) = crate::access::PasswordFile::load(p) {
            problems.add("broker.password_file", e.to_string());
        }
    }
    if let Some(p) = &b.acl_file {
        if let Err(e) = crate::access::Acl::load(p) {
            problems.add("broker.acl_file", e.to_string());
        }
    }
    if let Some(t) = &b.tls {
        if t.use_identity_as_username && t.client_ca_file.is_none() {
            problems.add(
                "broker.tls.use_identity_as_username",
                "needs client certificates: set broker.tls.client_ca_file",
            );
        }
    }
    if b.password_file.is_some() || b.allow_anonymous == Some(true) {
        return;
    }
    let mut open = vec![("broker.listen", b.listen)];
    open.extend(b.listen_v5.map(|a| ("broker.listen_v5", a)));
    open.extend(
        b.tls
            .iter()
            .filter(|t| t.client_ca_file.is_none())
            .map(|t| ("broker.tls.listen", t.listen)),
    );
    for (key, addr) in open {
        if !addr.ip().is_loopback() {
            problems.add(
                key,
                format!(
                    "{addr} accepts clients from the network without a login: set broker.password_file (see `outpost passwd`), or broker.allow_anonymous = true to let anyone in"
                ),
            );
        }
    }
}

pub(super) fn check(b: &BrokerConfig, problems: &mut Vec<Problem>) {
    check_access(b, problems);
    if b.max_connections == 0 {
        problems.add("broker.max_connections", "must be at least 1");
    }
    if b.max_pending == 0 {
        problems.add("broker.max_pending", "must be at least 1");
    }
    if b.max_pending_per_address == 0 || b.max_pending_per_address > b.max_pending {
        problems.add(
            "broker.max_pending_per_address",
            "must be at least 1 and at most broker.max_pending",
        );
    }
    if b.max_payload.0 == 0 || b.max_payload.0 > 256 << 20 {
        problems.add(
            "broker.max_payload",
            "must be between 1 byte and 256 MiB (the MQTT limit)",
        );
    }
    if let Some(t) = &b.tls {
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
    for (key, n, max) in [
        (
            "max_subscriptions_per_client",
            b.max_subscriptions_per_client,
            100_000,
        ),
        ("max_subscriptions", b.max_subscriptions, 1_000_000),
        ("max_queued_messages", b.max_queued_messages, 1_000_000),
        ("max_offline_sessions", b.max_offline_sessions, 1_000_000),
        ("max_retained", b.max_retained, 1_000_000),
        ("max_inflight", usize::from(b.max_inflight), 65_535),
    ] {
        if n == 0 || n > max {
            problems.add(
                format!("broker.{key}"),
                format!("must be between 1 and {max}"),
            );
        }
    }
    for (key, size) in [
        ("max_queued_bytes", b.max_queued_bytes),
        ("max_queued_bytes_total", b.max_queued_bytes_total),
        ("max_retained_bytes", b.max_retained_bytes),
    ] {
        if size.0 < 1024 || size.0 > 1 << 30 {
            problems.add(format!("broker.{key}"), "must be between 1 KiB and 1 GiB");
        }
    }
    let expiry = b.persistent_session_expiry.0;
    if expiry.is_zero() || expiry > Duration::from_secs(365 * 86_400) {
        problems.add(
            "broker.persistent_session_expiry",
            "must be between 1s and 365d",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let b: BrokerConfig = toml::from_str(text).expect("toml");
        let mut p = Vec::new();
        check(&b, &mut p);
        p.into_iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect()
    }

    #[test]
    fn a_listener_others_can_reach_needs_a_login_or_an_explicit_yes() {
        let p = problems("listen = \"0.0.0.0:1883\"");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("broker.listen: 0.0.0.0:1883 accepts clients"),
            "{p:?}"
        );
        assert!(p[0].contains("broker.allow_anonymous = true"));
        assert!(problems("listen = \"0.0.0.0:1883\"\nallow_anonymous = true").is_empty());
        assert!(problems("listen = \"127.0.0.1:1883\"").is_empty());
        // TLS with client certificates is a login.
        let tls = "[tls]\nlisten = \"0.0.0.0:8883\"\ncert_file = \"c\"\nkey_file = \"k\"";
        assert_eq!(problems(tls).len(), 1);
        assert!(problems(&format!("{tls}\nclient_ca_file = \"ca\"")).is_empty());
        let old = problems("[users]\nsensor1 = \"pw\"");
        assert!(old[0].contains("outpost passwd"), "{old:?}");
    }
}
