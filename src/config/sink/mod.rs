//! `[sink.NAME]`: where records go. One file per sink type, each with its
//! struct, its defaults and its checks; the connection fields every type
//! shares (CA file, keep-alive, reconnect backoff, shutdown grace) are
//! declared, defaulted and checked once, here.

mod mqtt;
mod thethingsio;
mod thingsboard;
mod thingspeak;
mod ttn;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use mqtt::{MqttSinkConfig, PayloadFormat};
pub use thethingsio::ThethingsioSinkConfig;
pub use thingsboard::{FirmwareConfig, ProvisionCredentials, TbMode, ThingsboardSinkConfig};
pub use thingspeak::{Merge, PublishMode, Replay, ThingspeakSinkConfig, THINGSPEAK_FIELDS};
pub use ttn::{TtnSinkConfig, TTN_EVENTS};

use super::problem::{Problem, Problems};
use super::read::value;
use crate::net::BrokerUrl;

/// Declares a sink type's config struct with the connection fields every
/// sink type has appended (serde's `flatten` cannot be combined with
/// `deny_unknown_fields`, so the shared fields are spliced in here).
/// `keep_alive` names the type's default keep-alive function; `credentials`
/// adds optional `username`, `password`, `cert_file` and `key_file`.
macro_rules! sink_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($fields:tt)*
        }
        keep_alive = $keep_alive:literal;
        credentials;
    ) => {
        $crate::config::sink::sink_config! {
            $(#[$meta])*
            pub struct $name {
                $($fields)*
                #[serde(default)]
                pub username: Option<String>,
                #[serde(default)]
                pub password: Option<String>,
                /// mTLS: the client certificate chain (leaf first, then
                /// intermediates) presented to the server, and its private key.
                #[serde(default)]
                pub cert_file: Option<std::path::PathBuf>,
                #[serde(default)]
                pub key_file: Option<std::path::PathBuf>,
            }
            keep_alive = $keep_alive;
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($fields:tt)*
        }
        keep_alive = $keep_alive:literal;
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($fields)*
            /// PEM file of CA certificates to verify an `mqtts://` server;
            /// the system roots if unset.
            #[serde(default)]
            pub ca_file: Option<std::path::PathBuf>,
            /// MQTT keep-alive.
            #[serde(default = $keep_alive)]
            pub keep_alive: crate::units::Seconds,
            /// First wait before reconnecting; doubles up to `reconnect_max`.
            #[serde(default = "crate::config::sink::defaults::reconnect_min")]
            pub reconnect_min: crate::units::Seconds,
            #[serde(default = "crate::config::sink::defaults::reconnect_max")]
            pub reconnect_max: crate::units::Seconds,
            /// How long a stop waits for in-flight publishes to be acknowledged.
            #[serde(default = "crate::config::sink::defaults::shutdown_grace")]
            pub shutdown_grace: crate::units::Seconds,
            /// A publish unacknowledged this long ends the connection: the
            /// session reconnects and sends again from the oldest row.
            /// Default: twice `keep_alive`, at least 10s.
            #[serde(default)]
            pub ack_timeout: Option<crate::units::Seconds>,
        }

        impl $name {
            /// The connection fields every sink type shares.
            pub fn connection(&self) -> $crate::config::sink::Connection<'_> {
                $crate::config::sink::Connection {
                    url: &self.url,
                    ca_file: self.ca_file.as_deref(),
                    keep_alive: self.keep_alive.0,
                    reconnect_min: self.reconnect_min.0,
                    reconnect_max: self.reconnect_max.0,
                    shutdown_grace: self.shutdown_grace.0,
                    ack_timeout: self.ack_timeout.map_or_else(
                        || $crate::config::sink::defaults::ack_timeout(self.keep_alive.0),
                        |t| t.0,
                    ),
                }
            }
        }
    };
}
pub(crate) use sink_config;

/// Defaults shared by every sink type.
pub mod defaults {
    use std::time::Duration;

    use crate::units::Seconds;

    pub fn keep_alive() -> Seconds {
        Seconds(Duration::from_secs(30))
    }
    pub fn reconnect_min() -> Seconds {
        Seconds(Duration::from_secs(1))
    }
    pub fn reconnect_max() -> Seconds {
        Seconds(Duration::from_secs(60))
    }
    pub fn shutdown_grace() -> Seconds {
        Seconds(Duration::from_secs(3))
    }
    /// Twice the keep-alive, at least 10 s: a broker that answers pings but
    /// acknowledges nothing for that long has stalled.
    pub fn ack_timeout(keep_alive: Duration) -> Duration {
        keep_alive.saturating_mul(2).max(Duration::from_secs(10))
    }
    pub fn inflight() -> u16 {
        100
    }
    pub fn max_packet() -> crate::units::ByteSize {
        crate::units::ByteSize(64 * 1024)
    }
    pub fn client_id() -> String {
        "outpost".to_string()
    }
    pub fn yes() -> bool {
        true
    }
}

/// The connection fields of any sink, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    pub url: &'a str,
    pub ca_file: Option<&'a Path>,
    pub keep_alive: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub shutdown_grace: Duration,
    pub ack_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum SinkConfig {
    Mqtt(Box<MqttSinkConfig>),
    Thingsboard(Box<ThingsboardSinkConfig>),
    Thingspeak(Box<ThingspeakSinkConfig>),
    Thethingsio(Box<ThethingsioSinkConfig>),
    Ttn(Box<TtnSinkConfig>),
}

impl SinkConfig {
    pub fn connection(&self) -> Connection<'_> {
        match self {
            SinkConfig::Mqtt(c) => c.connection(),
            SinkConfig::Thingsboard(c) => c.connection(),
            SinkConfig::Thingspeak(c) => c.connection(),
            SinkConfig::Thethingsio(c) => c.connection(),
            SinkConfig::Ttn(c) => c.connection(),
        }
    }

    /// The client certificate chain and key, for the types that take one.
    pub fn client_cert(&self) -> (Option<&PathBuf>, Option<&PathBuf>) {
        match self {
            SinkConfig::Mqtt(m) => (m.cert_file.as_ref(), m.key_file.as_ref()),
            SinkConfig::Thingsboard(t) => (t.cert_file.as_ref(), t.key_file.as_ref()),
            _ => (None, None),
        }
    }
}

/// Two sinks that reach the same broker with the same client id take each
/// other's session over and over (MQTT 3.1.1 §3.1.4, step 2): the second
/// to connect is refused here. ThingsBoard keys its sessions by device
/// credentials, and The Things Stack and thethings.iO sinks use a random
/// id, so only `mqtt` and `thingspeak` sinks are compared.
pub(super) fn check_client_ids(
    sinks: &std::collections::BTreeMap<String, SinkConfig>,
    problems: &mut Vec<Problem>,
) {
    let mut seen: std::collections::BTreeMap<(String, u16, String), &str> =
        std::collections::BTreeMap::new();
    for (name, s) in sinks {
        let (url, id) = match s {
            SinkConfig::Mqtt(m) => (&m.url, &m.client_id),
            SinkConfig::Thingspeak(t) => (&t.url, &t.client_id),
            _ => continue,
        };
        let Ok(u) = crate::net::BrokerUrl::parse(url) else {
            continue;
        };
        let key = (u.host.to_ascii_lowercase(), u.port, id.clone());
        match seen.get(&key) {
            Some(first) => problems.add(
                format!("sink.{name}.client_id"),
                format!(
                    "sinks `{first}` and `{name}` both connect to {}:{} as client id `{id}`: the broker would disconnect each when the other connects; give one its own client_id",
                    key.0, key.1
                ),
            ),
            None => {
                seen.insert(key, name);
            }
        }
    }
}

pub const SINK_TYPES: &[&str] = &["mqtt", "thingsboard", "thingspeak", "thethingsio", "ttn"];

/// Sinks are tagged by `type`; each type's table is then read as its own
/// struct so that error paths point at the key (`sink.up.inflight`).
pub(super) fn parse(
    item: &toml::Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<SinkConfig> {
    let Some(table) = item.as_table() else {
        problems.add(path, "must be a table");
        return None;
    };
    let mut rest = table.clone();
    let kind = rest.remove("type");
    let rest = toml::Value::Table(rest);
    match kind {
        Some(toml::Value::String(t)) => match t.as_str() {
            "mqtt" => value(&rest, path, problems).map(|c| SinkConfig::Mqtt(Box::new(c))),
            "thingsboard" => {
                value(&rest, path, problems).map(|c| SinkConfig::Thingsboard(Box::new(c)))
            }
            "thingspeak" => {
                value(&rest, path, problems).map(|c| SinkConfig::Thingspeak(Box::new(c)))
            }
            "thethingsio" => {
                value(&rest, path, problems).map(|c| SinkConfig::Thethingsio(Box::new(c)))
            }
            "ttn" => value(&rest, path, problems).map(|c| SinkConfig::Ttn(Box::new(c))),
            other => {
                problems.add(
                    format!("{path}.type"),
                    format!(
                        "unknown sink type `{other}` (known: {})",
                        SINK_TYPES.join(", ")
                    ),
                );
                None
            }
        },
        Some(_) => {
            problems.add(format!("{path}.type"), "must be a string");
            None
        }
        None => {
            problems.add(
                format!("{path}.type"),
                format!("missing (known: {})", SINK_TYPES.join(", ")),
            );
            None
        }
    }
}

/// Checks what serde cannot, for sink `name`.
pub(super) fn check(name: &str, s: &SinkConfig, problems: &mut Vec<Problem>) {
    let at = |k: &str| format!("sink.{name}.{k}");
    check_connection(&at, &s.connection(), problems);
    check_client_cert(&at, s, problems);
    match s {
        SinkConfig::Mqtt(c) => mqtt::check(&at, c, problems),
        SinkConfig::Thingsboard(c) => thingsboard::check(&at, c, problems),
        SinkConfig::Thingspeak(c) => thingspeak::check(&at, c, problems),
        SinkConfig::Thethingsio(c) => thethingsio::check(&at, c, problems),
        SinkConfig::Ttn(c) => ttn::check(&at, c, problems),
    }
}

fn check_connection(at: &dyn Fn(&str) -> String, c: &Connection<'_>, problems: &mut Vec<Problem>) {
    if let Err(e) = BrokerUrl::parse(c.url) {
        problems.add(at("url"), e);
    }
    // MQTT carries the keep-alive as 16-bit seconds.
    if c.keep_alive < Duration::from_secs(1) || c.keep_alive > Duration::from_secs(65_535) {
        problems.add(at("keep_alive"), "must be between 1s and 65535s");
    }
    if c.reconnect_min > c.reconnect_max || c.reconnect_min.is_zero() {
        problems.add(
            at("reconnect_min"),
            "must be above zero and at most reconnect_max",
        );
    }
    if c.reconnect_max > Duration::from_secs(86_400) {
        problems.add(at("reconnect_max"), "must be at most 1d");
    }
    if c.shutdown_grace > Duration::from_secs(600) {
        problems.add(at("shutdown_grace"), "must be at most 10m");
    }
    if c.ack_timeout < Duration::from_secs(1) || c.ack_timeout > Duration::from_secs(86_400) {
        problems.add(at("ack_timeout"), "must be between 1s and 1d");
    }
}

fn check_client_cert(at: &dyn Fn(&str) -> String, s: &SinkConfig, problems: &mut Vec<Problem>) {
    match s.client_cert() {
        (Some(_), None) => problems.add(
            at("key_file"),
            "cert_file needs the private key: set key_file",
        ),
        (None, Some(_)) => problems.add(
            at("cert_file"),
            "key_file needs its certificate chain: set cert_file",
        ),
        (Some(_), Some(_)) if !s.connection().url.starts_with("mqtts://") => problems.add(
            at("cert_file"),
            "a client certificate needs TLS: use an mqtts:// url",
        ),
        _ => {}
    }
}

/// `inflight` is at least one.
fn check_inflight(at: &dyn Fn(&str) -> String, inflight: u16, problems: &mut Vec<Problem>) {
    if inflight == 0 {
        problems.add(at("inflight"), "must be at least 1");
    }
}

const TEMPLATE_KEYS: &[&str] = &["device", "kind", "sink", "topic"];

/// Checks an upstream topic template's `{placeholders}`.
pub fn check_template(t: &str) -> Result<(), String> {
    for key in crate::topic::placeholders(t)? {
        if !TEMPLATE_KEYS.contains(&key) {
            return Err(format!(
                "unknown placeholder `{{{key}}}` (known: {{device}}, {{kind}}, {{sink}}, {{topic}})"
            ));
        }
    }
    if t.is_empty() || t.contains('+') || t.contains('#') {
        return Err("must be a non-empty topic name without wildcards".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    fn problems(sinks: &str) -> Vec<String> {
        let text = format!("state_dir = \"/tmp/x\"\n{sinks}");
        match super::super::parse(&text, "test") {
            Ok(_) => Vec::new(),
            Err(super::super::ConfigError::Invalid { problems, .. }) => problems
                .into_iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn two_sinks_may_not_share_a_client_id_on_one_broker() {
        let same = "[sink.a]\ntype = \"mqtt\"\nurl = \"mqtt://Broker.lan\"\n\
                    [sink.b]\ntype = \"mqtt\"\nurl = \"mqtt://broker.lan:1883\"\n";
        let p = problems(same);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("sink.b.client_id: sinks `a` and `b` both connect"),
            "{p:?}"
        );
        let own = "[sink.a]\ntype = \"mqtt\"\nurl = \"mqtt://broker.lan\"\n\
                   [sink.b]\ntype = \"mqtt\"\nurl = \"mqtt://broker.lan\"\nclient_id = \"archive\"\n";
        assert!(problems(own).is_empty());
        let apart = "[sink.a]\ntype = \"mqtt\"\nurl = \"mqtt://one.lan\"\n\
                     [sink.b]\ntype = \"mqtt\"\nurl = \"mqtt://two.lan\"\n";
        assert!(problems(apart).is_empty());
    }
}
