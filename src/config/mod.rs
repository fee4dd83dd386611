//! The configuration file: its types, how it is found, and how it is checked.
//!
//! The file is TOML and strict: an unknown key is an error, not a silently
//! ignored typo. Checking never stops at the first problem: every section is
//! deserialized on its own and then cross-checked (a route naming a sink that
//! does not exist, a topic template with an unknown placeholder, ...), so that
//! `outpost check-config` can print every problem with its key path at once.

pub mod overlay;
pub mod platforms;
pub mod serial;
mod units;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use serial::SerialConfig;
pub use units::{parse_duration, parse_size, ByteSize, Seconds};

use crate::route::TopicFilter;

/// The default configuration, shipped as `/etc/outpost/outpost.toml` and
/// embedded in the binary so that `outpost run` works with no file at all.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/outpost.toml");

/// Where the packaged service keeps its config.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/outpost/outpost.toml";

/// State directory used when running on the built-in default config, so a
/// newcomer's first run needs no root and writes nothing outside the cwd.
pub const LOCAL_STATE_DIR: &str = "./outpost-state";

#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub log_level: String,
    pub broker: BrokerConfig,
    pub store: StoreConfig,
    pub routes: Vec<RouteConfig>,
    pub sinks: BTreeMap<String, SinkConfig>,
    pub serial: Vec<SerialConfig>,
    pub health: HealthConfig,
    pub remote: RemoteConfig,
}

/// `[health]`: outpost's own telemetry on ThingsBoard.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Health telemetry period on outpost's own ThingsBoard device.
    #[serde(default = "default_health_interval")]
    pub interval: Seconds,
}

fn default_health_interval() -> Seconds {
    Seconds(Duration::from_secs(60))
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: default_health_interval(),
        }
    }
}

/// `[remote]`: configuration changes from ThingsBoard shared attributes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Take configuration from ThingsBoard (the first ThingsBoard sink).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A changed sink that does not connect within this is rolled back.
    #[serde(default = "default_rollback_after")]
    pub rollback_after: Seconds,
}

fn default_rollback_after() -> Seconds {
    Seconds(Duration::from_secs(60))
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            enabled: true,
            rollback_after: default_rollback_after(),
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Make room by deleting the oldest queued records (counted as dropped).
    DropOldest,
    /// Keep what is queued and refuse new records (counted as dropped).
    RejectNew,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// fsync the WAL at checkpoints only: survives a crash of outpost, may lose
    /// the last transactions on power loss.
    Normal,
    /// fsync the WAL on every commit: survives power loss.
    Full,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Outbox database file; relative paths are under `state_dir`.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    #[serde(default = "default_max_age")]
    pub max_age: Seconds,
    #[serde(default = "default_full_policy")]
    pub full_policy: FullPolicy,
    #[serde(default = "default_synchronous")]
    pub synchronous: Synchronous,
}

fn default_store_path() -> PathBuf {
    PathBuf::from("outbox.db")
}
fn default_max_bytes() -> ByteSize {
    ByteSize(512 << 20)
}
fn default_max_age() -> Seconds {
    Seconds(Duration::from_secs(30 * 86_400))
}
fn default_full_policy() -> FullPolicy {
    FullPolicy::DropOldest
}
fn default_synchronous() -> Synchronous {
    Synchronous::Full
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            max_bytes: default_max_bytes(),
            max_age: default_max_age(),
            full_policy: default_full_policy(),
            synchronous: default_synchronous(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Telemetry,
    /// Client attributes of the device.
    Attributes,
    /// A device claiming request (`{"secretKey":..,"durationMs":..}`).
    Claim,
    /// A client-side RPC request (`{"method":..,"params":..}`); the local
    /// topic's last level is the request id, and the answer is published on
    /// the same topic with `request` replaced by `response`.
    Rpc,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Telemetry => "telemetry",
            RecordKind::Attributes => "attributes",
            RecordKind::Claim => "claim",
            RecordKind::Rpc => "rpc",
        }
    }

    pub fn parse(s: &str) -> Option<RecordKind> {
        match s {
            "telemetry" => Some(RecordKind::Telemetry),
            "attributes" => Some(RecordKind::Attributes),
            "claim" => Some(RecordKind::Claim),
            "rpc" => Some(RecordKind::Rpc),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Local MQTT topic filter, e.g. `sensors/+/telemetry`.
    pub topic: String,
    /// Name of the `[sink.NAME]` the records go to.
    pub sink: String,
    /// Which topic level (0-based) names the device. Defaults to the level
    /// of the first `+` in the filter.
    #[serde(default)]
    pub device_level: Option<usize>,
    /// A fixed device name, for topics that do not carry one.
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default = "default_kind")]
    pub kind: RecordKind,
}

fn default_kind() -> RecordKind {
    RecordKind::Telemetry
}

#[derive(Debug, Clone)]
pub enum SinkConfig {
    Mqtt(Box<MqttSinkConfig>),
    Thingsboard(Box<ThingsboardSinkConfig>),
    Thingspeak(Box<platforms::ThingspeakSinkConfig>),
    Thethingsio(Box<platforms::ThethingsioSinkConfig>),
    Ttn(Box<platforms::TtnSinkConfig>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TbMode {
    /// outpost is one ThingsBoard device (`v1/devices/me/...`).
    Device,
    /// outpost is a ThingsBoard gateway; each local device is a child
    /// device over the one connection (`v1/gateway/...`).
    Gateway,
}

/// `[sink.NAME] type = "thingsboard"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThingsboardSinkConfig {
    /// `mqtt://host:1883` or `mqtts://host:8883`.
    pub url: String,
    #[serde(default = "default_tb_mode")]
    pub mode: TbMode,
    /// Access-token credentials (sent as the MQTT username).
    #[serde(default)]
    pub access_token: Option<String>,
    /// MQTT basic credentials: client id, username, password.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// mTLS: the client certificate chain (leaf first, then
    /// intermediates) presented to the server, and its private key.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Device mode: use the short `v2/t`, `v2/a` topics.
    #[serde(default)]
    pub short_topics: bool,
    /// Gateway mode: the device type (profile) sent with `v1/gateway/connect`.
    #[serde(default = "default_device_type")]
    pub device_type: String,
    /// Local topic where shared attributes for a device are published
    /// (retained, merged); `{device}` is the child device (gateway mode) or
    /// `device_name` (device mode).
    #[serde(default = "default_attributes_topic")]
    pub attributes_topic: String,
    /// Local topics for server-side RPC to devices; `{device}`, `{id}`.
    #[serde(default = "default_rpc_request_topic")]
    pub rpc_request_topic: String,
    #[serde(default = "default_rpc_response_topic")]
    pub rpc_response_topic: String,
    /// How long a device has to answer an RPC before an error reply is sent.
    #[serde(default = "default_rpc_timeout")]
    pub rpc_timeout: Seconds,
    /// Device mode: the local device name shared attributes are published for.
    #[serde(default = "default_client_id")]
    pub device_name: String,
    /// Self-provisioning: with a provision key and secret (from the device
    /// profile) and no stored credentials, outpost asks ThingsBoard for its
    /// own credentials on first start and keeps them in the state directory.
    #[serde(default)]
    pub provision_device_key: Option<String>,
    #[serde(default)]
    pub provision_device_secret: Option<String>,
    /// The device name to register (default: the host name).
    #[serde(default)]
    pub provision_device_name: Option<String>,
    #[serde(default)]
    pub provision_credentials: ProvisionCredentials,
    /// How long to wait for ThingsBoard's answer.
    #[serde(default = "default_provision_timeout")]
    pub provision_timeout: Seconds,
    /// Message rate limits, `"N:seconds,..."`. Unset: ThingsBoard's
    /// documented defaults until `getSessionLimits` answers, then its answer.
    /// Set: exactly these, whatever the server says.
    #[serde(default)]
    pub rate_limits: Option<String>,
    /// ThingsBoard's `maxPayloadSize`; batches never exceed it.
    #[serde(default = "default_max_packet")]
    pub max_payload_size: ByteSize,
    /// ThingsBoard's `maxInflightMessages`.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Seconds,
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min: Seconds,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: Seconds,
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Seconds,
}

/// What credentials self-provisioning asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionCredentials {
    /// ThingsBoard generates an access token.
    #[default]
    AccessToken,
    /// outpost makes a client id, username and password.
    MqttBasic,
    /// outpost makes a key and a self-signed certificate (needs mqtts://).
    X509Certificate,
}

fn default_provision_timeout() -> Seconds {
    Seconds(Duration::from_secs(30))
}

fn default_tb_mode() -> TbMode {
    TbMode::Device
}
fn default_attributes_topic() -> String {
    "devices/{device}/attributes".into()
}
fn default_rpc_request_topic() -> String {
    "devices/{device}/rpc/request/{id}".into()
}
fn default_rpc_response_topic() -> String {
    "devices/{device}/rpc/response/{id}".into()
}
fn default_rpc_timeout() -> Seconds {
    Seconds(Duration::from_secs(10))
}
fn default_device_type() -> String {
    "default".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// `{"ts":..,"device":..,"values":..}`: the measurement time travels with the data.
    Envelope,
    /// The sensor's payload bytes, unchanged.
    Raw,
}

/// Connection settings shared by every MQTT-speaking sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`.
    pub url: String,
    #[serde(default = "default_client_id")]
    pub client_id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// PEM file of CA certificates to verify the server; system roots if unset.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// mTLS: the client certificate chain (leaf first, then
    /// intermediates) presented to the server, and its private key.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Publishes awaiting PUBACK at most.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// Upstream topic; placeholders `{device}`, `{kind}`, `{sink}`, `{topic}`.
    #[serde(default = "default_topic_template")]
    pub topic: String,
    #[serde(default = "default_format")]
    pub format: PayloadFormat,
    #[serde(default = "default_max_packet")]
    pub max_packet_size: ByteSize,
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Seconds,
    /// First wait before reconnecting; doubles up to `reconnect_max`.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min: Seconds,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: Seconds,
    /// How long shutdown waits for in-flight publishes to be acknowledged.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Seconds,
}

fn default_client_id() -> String {
    "outpost".to_string()
}
fn default_qos() -> u8 {
    1
}
fn default_inflight() -> u16 {
    100
}
fn default_topic_template() -> String {
    "outpost/{device}/{kind}".to_string()
}
fn default_format() -> PayloadFormat {
    PayloadFormat::Envelope
}
fn default_max_packet() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_keep_alive() -> Seconds {
    Seconds(Duration::from_secs(30))
}
fn default_reconnect_min() -> Seconds {
    Seconds(Duration::from_secs(1))
}
fn default_reconnect_max() -> Seconds {
    Seconds(Duration::from_secs(60))
}
fn default_shutdown_grace() -> Seconds {
    Seconds(Duration::from_secs(3))
}

/// One thing wrong with a config file, located by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {count} problem(s):\n{list}", count = problems.len(), list = list(problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a config came from, for messages and for the state-dir rule.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    BuiltIn,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::BuiltIn => f.write_str("built-in default config"),
        }
    }
}

/// A loaded config, with what the remote overlay contributed.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: Source,
    /// The file (or built-in) table the overlay is merged onto.
    pub base: toml::Table,
    pub overlay: overlay::Overlay,
    /// Why a stored overlay was not used (the file's config runs).
    pub overlay_error: Option<String>,
}

/// Loads the config (see [`load`]) and merges the remote overlay stored in
/// its state directory. A stored overlay that no longer fits the file (the
/// file changed since) is set aside with the reason, and the file's config
/// runs.
pub fn load_full(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
    let (base_config, source) = load(explicit)?;
    let text = match &source {
        Source::File(path) => std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.clone(),
            source: e,
        })?,
        Source::BuiltIn => DEFAULT_CONFIG.to_string(),
    };
    let mut base = parse_toml(&text, &source.to_string())?;
    if matches!(source, Source::BuiltIn) {
        base.insert(
            "state_dir".into(),
            toml::Value::String(LOCAL_STATE_DIR.to_string()),
        );
    }
    let mut loaded = Loaded {
        config: base_config,
        source,
        base,
        overlay: overlay::Overlay::default(),
        overlay_error: None,
    };
    match overlay::Overlay::load(&loaded.config.state_dir) {
        Ok(o) if o.is_empty() => {}
        Ok(o) => {
            let merged = o
                .merge(&loaded.base)
                .map_err(|e| e.to_string())
                .and_then(|t| parse_table(&t, "remote overlay").map_err(|e| e.to_string()));
            match merged {
                Ok(c) => {
                    loaded.config = c;
                    loaded.overlay = o;
                }
                Err(e) => loaded.overlay_error = Some(e),
            }
        }
        Err(e) => loaded.overlay_error = Some(e),
    }
    Ok(loaded)
}

/// Loads the config named on the command line, else the system one, else the
/// built-in default (whose state then lives under `./outpost-state`).
pub fn load(explicit: Option<&Path>) -> Result<(Config, Source), ConfigError> {
    let source = match explicit {
        Some(p) => Source::File(p.to_path_buf()),
        None if Path::new(SYSTEM_CONFIG_PATH).exists() => {
            Source::File(PathBuf::from(SYSTEM_CONFIG_PATH))
        }
        None => Source::BuiltIn,
    };
    let config = match &source {
        Source::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.clone(),
                source: e,
            })?;
            parse(&text, &source.to_string())?
        }
        Source::BuiltIn => {
            let mut c = parse(DEFAULT_CONFIG, &source.to_string())?;
            c.state_dir = PathBuf::from(LOCAL_STATE_DIR);
            c
        }
    };
    Ok((config, source))
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "state_dir",
    "log_level",
    "broker",
    "store",
    "route",
    "sink",
    "serial",
    "health",
    "remote",
];

/// Parses and checks a config text, collecting every problem.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    parse_table(&parse_toml(text, origin)?, origin)
}

/// The TOML text as a table (the base a remote overlay is merged onto).
pub fn parse_toml(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Invalid {
        origin: origin.to_string(),
        problems: vec![Problem {
            path: String::new(),
            message: format!("not valid TOML: {}", e.to_string().trim_end()),
        }],
    })
}

/// Checks a config table, collecting every problem.
pub fn parse_table(table: &toml::Table, origin: &str) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        origin: origin.to_string(),
        problems,
    };
    let mut problems = Vec::new();

    for key in table.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            problems.push(Problem {
                path: key.clone(),
                message: format!(
                    "unknown key (expected one of: {})",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            });
        }
    }

    let state_dir = section::<PathBuf>(table, "state_dir", &mut problems)
        .unwrap_or_else(|| PathBuf::from("/var/lib/outpost"));
    let log_level =
        section::<String>(table, "log_level", &mut problems).unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        problems.push(Problem {
            path: "log_level".into(),
            message: format!(
                "`{log_level}` is not a log filter (try `info` or `outpost=debug,warn`)"
            ),
        });
    }
    let broker = section::<BrokerConfig>(table, "broker", &mut problems).unwrap_or_default();
    let store = section::<StoreConfig>(table, "store", &mut problems).unwrap_or_default();
    let health = section::<HealthConfig>(table, "health", &mut problems).unwrap_or_default();
    let remote = section::<RemoteConfig>(table, "remote", &mut problems).unwrap_or_default();
    if health.interval.0 < Duration::from_secs(1) {
        problems.push(Problem {
            path: "health.interval".into(),
            message: "must be at least 1s".into(),
        });
    }

    let mut routes = Vec::new();
    match table.get("route") {
        None => {}
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(r) = value::<RouteConfig>(item, &format!("route[{i}]"), &mut problems) {
                    routes.push((i, r));
                }
            }
        }
        Some(_) => problems.push(Problem {
            path: "route".into(),
            message: "must be an array of tables, written as [[route]]".into(),
        }),
    }

    let mut sinks = BTreeMap::new();
    match table.get("sink") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (name, item) in t {
                let path = format!("sink.{name}");
                if !valid_name(name) {
                    problems.push(Problem {
                        path: path.clone(),
                        message: "a sink name may use only letters, digits, `-` and `_`".into(),
                    });
                }
                if let Some(s) = sink(item, &path, &mut problems) {
                    sinks.insert(name.clone(), s);
                }
            }
        }
        Some(_) => problems.push(Problem {
            path: "sink".into(),
            message: "must be a table of sinks, written as [sink.NAME]".into(),
        }),
    }

    let mut serial = Vec::new();
    match table.get("serial") {
        None => {}
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(s) = value::<SerialConfig>(item, &format!("serial[{i}]"), &mut problems)
                {
                    serial.push((i, s));
                }
            }
        }
        Some(_) => problems.push(Problem {
            path: "serial".into(),
            message: "must be an array of tables, written as [[serial]]".into(),
        }),
    }
    serial::check(&serial, &mut problems);
    if !broker.ack_after_commit && !serial.is_empty() {
        problems.push(Problem {
            path: "broker.ack_after_commit".into(),
            message: "serial sources need the ingest front (ack_after_commit = true)".into(),
        });
    }

    check_broker(&broker, &mut problems);
    check_store(&store, &mut problems);
    for (i, r) in &routes {
        check_route(*i, r, &sinks, &mut problems);
    }
    for (name, s) in &sinks {
        check_sink(name, s, &mut problems);
    }

    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    Ok(Config {
        state_dir,
        log_level,
        broker,
        store,
        routes: routes.into_iter().map(|(_, r)| r).collect(),
        sinks,
        serial: serial.into_iter().map(|(_, s)| s).collect(),
        health,
        remote,
    })
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn section<T: DeserializeOwned>(
    table: &toml::Table,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let v = table.get(key)?;
    value(v, key, problems)
}

/// Deserializes one section. serde stops at the first error, so after each
/// error the offending key is taken out and the rest is tried again: every
/// bad key of a section is reported, not only the first.
fn value<T: DeserializeOwned>(
    v: &toml::Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let mut v = v.clone();
    for _ in 0..64 {
        let e = match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let inner = e.path().to_string();
        let full = if inner == "." || inner.is_empty() {
            path.to_string()
        } else {
            format!("{path}.{inner}")
        };
        let message = clean_message(&e.into_inner().to_string());
        // A key taken out after its own error is then "missing": said already.
        let repeat = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
            .is_some_and(|k| problems.iter().any(|p| p.path == format!("{full}.{k}")));
        if !repeat {
            problems.push(Problem {
                path: full,
                message,
            });
        }
        let first = inner
            .split(['.', '['])
            .next()
            .unwrap_or_default()
            .to_string();
        let removed = match v.as_table_mut() {
            Some(t) if !first.is_empty() => t.remove(&first).is_some(),
            _ => false,
        };
        if !removed {
            return None;
        }
    }
    None
}

/// toml's messages end with a location line that the key path already gives.
fn clean_message(m: &str) -> String {
    m.lines().next().unwrap_or_default().trim().to_string()
}

/// Sinks are tagged by `type`; each type's table is then read as its own
/// struct so that error paths point at the key (`sink.up.inflight`).
fn sink(item: &toml::Value, path: &str, problems: &mut Vec<Problem>) -> Option<SinkConfig> {
    let Some(table) = item.as_table() else {
        problems.push(Problem {
            path: path.to_string(),
            message: "must be a table".into(),
        });
        return None;
    };
    let mut rest = table.clone();
    match rest.remove("type") {
        Some(toml::Value::String(t)) if t == "mqtt" => {
            value::<MqttSinkConfig>(&toml::Value::Table(rest), path, problems)
                .map(|m| SinkConfig::Mqtt(Box::new(m)))
        }
        Some(toml::Value::String(t)) if t == "ttn" => {
            value::<platforms::TtnSinkConfig>(&toml::Value::Table(rest), path, problems)
                .map(|t| SinkConfig::Ttn(Box::new(t)))
        }
        Some(toml::Value::String(t)) if t == "thethingsio" => {
            value::<platforms::ThethingsioSinkConfig>(&toml::Value::Table(rest), path, problems)
                .map(|t| SinkConfig::Thethingsio(Box::new(t)))
        }
        Some(toml::Value::String(t)) if t == "thingspeak" => {
            value::<platforms::ThingspeakSinkConfig>(&toml::Value::Table(rest), path, problems)
                .map(|t| SinkConfig::Thingspeak(Box::new(t)))
        }
        Some(toml::Value::String(t)) if t == "thingsboard" => {
            value::<ThingsboardSinkConfig>(&toml::Value::Table(rest), path, problems)
                .map(|t| SinkConfig::Thingsboard(Box::new(t)))
        }
        Some(toml::Value::String(t)) => {
            problems.push(Problem {
                path: format!("{path}.type"),
                message: format!("unknown sink type `{t}` (known: {})", SINK_TYPES.join(", ")),
            });
            None
        }
        Some(_) => {
            problems.push(Problem {
                path: format!("{path}.type"),
                message: "must be a string".into(),
            });
            None
        }
        None => {
            problems.push(Problem {
                path: format!("{path}.type"),
                message: format!("missing (known: {})", SINK_TYPES.join(", ")),
            });
            None
        }
    }
}

const SINK_TYPES: &[&str] = &["mqtt", "thingsboard", "thingspeak", "thethingsio", "ttn"];

fn check_broker(b: &BrokerConfig, problems: &mut Vec<Problem>) {
    if b.max_connections == 0 {
        problems.push(Problem {
            path: "broker.max_connections".into(),
            message: "must be at least 1".into(),
        });
    }
    if b.max_payload.0 == 0 || b.max_payload.0 > 256 << 20 {
        problems.push(Problem {
            path: "broker.max_payload".into(),
            message: "must be between 1 byte and 256 MiB (the MQTT limit)".into(),
        });
    }
    if let Some(t) = &b.tls {
        if !b.ack_after_commit {
            problems.push(Problem {
                path: "broker.tls".into(),
                message:
                    "the TLS listener is part of the ingest front: needs ack_after_commit = true"
                        .into(),
            });
        }
        if t.listen == b.listen || Some(t.listen) == b.listen_v5 {
            problems.push(Problem {
                path: "broker.tls.listen".into(),
                message: "must differ from broker.listen and broker.listen_v5".into(),
            });
        }
    }
    if Some(b.listen) == b.listen_v5 {
        problems.push(Problem {
            path: "broker.listen_v5".into(),
            message: "must differ from broker.listen".into(),
        });
    }
    let secs = b.connect_timeout.0.as_millis();
    if secs == 0 || secs > u16::MAX as u128 {
        problems.push(Problem {
            path: "broker.connect_timeout".into(),
            message: "must be between 1ms and 65s".into(),
        });
    }
}

fn check_store(s: &StoreConfig, problems: &mut Vec<Problem>) {
    if s.max_bytes.0 < 4096 {
        problems.push(Problem {
            path: "store.max_bytes".into(),
            message: "must be at least 4 KiB".into(),
        });
    }
    if s.max_age.0 < Duration::from_secs(1) {
        problems.push(Problem {
            path: "store.max_age".into(),
            message: "must be at least 1s".into(),
        });
    }
}

fn check_route(
    i: usize,
    r: &RouteConfig,
    sinks: &BTreeMap<String, SinkConfig>,
    problems: &mut Vec<Problem>,
) {
    let at = |k: &str| format!("route[{i}].{k}");
    let filter = match TopicFilter::parse(&r.topic) {
        Ok(f) => Some(f),
        Err(e) => {
            problems.push(Problem {
                path: at("topic"),
                message: e,
            });
            None
        }
    };
    if !sinks.contains_key(&r.sink) {
        let known: Vec<&str> = sinks.keys().map(String::as_str).collect();
        problems.push(Problem {
            path: at("sink"),
            message: if known.is_empty() {
                format!("no sink named `{}` (no [sink.NAME] is defined)", r.sink)
            } else {
                format!("no sink named `{}` (defined: {})", r.sink, known.join(", "))
            },
        });
    }
    match (&r.device, r.device_level) {
        (Some(_), Some(_)) => problems.push(Problem {
            path: at("device"),
            message: "set either `device` or `device_level`, not both".into(),
        }),
        (Some(d), None) if d.is_empty() => problems.push(Problem {
            path: at("device"),
            message: "must not be empty".into(),
        }),
        (None, level) => {
            if let Some(f) = &filter {
                if let Err(e) = f.device_level(level) {
                    problems.push(Problem {
                        path: at(if level.is_some() {
                            "device_level"
                        } else {
                            "topic"
                        }),
                        message: e,
                    });
                }
            }
        }
        _ => {}
    }
}

const TEMPLATE_KEYS: &[&str] = &["device", "kind", "sink", "topic"];

/// Checks a topic template's `{placeholders}`.
pub fn check_template(t: &str) -> Result<(), String> {
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{t}`"))?;
        let key = &after[..close];
        if !TEMPLATE_KEYS.contains(&key) {
            return Err(format!(
                "unknown placeholder `{{{key}}}` (known: {{device}}, {{kind}}, {{sink}}, {{topic}})"
            ));
        }
        rest = &after[close + 1..];
    }
    if t.is_empty() || t.contains('+') || t.contains('#') {
        return Err("must be a non-empty topic name without wildcards".into());
    }
    Ok(())
}

fn check_sink(name: &str, s: &SinkConfig, problems: &mut Vec<Problem>) {
    let at = |k: &str| format!("sink.{name}.{k}");
    let (url, cert, key) = match s {
        SinkConfig::Thingsboard(t) => (&t.url, &t.cert_file, &t.key_file),
        SinkConfig::Mqtt(m) => (&m.url, &m.cert_file, &m.key_file),
        SinkConfig::Thingspeak(t) => (&t.url, &None, &None),
        SinkConfig::Thethingsio(t) => (&t.url, &None, &None),
        SinkConfig::Ttn(t) => (&t.url, &None, &None),
    };
    match (cert, key) {
        (Some(_), None) => problems.push(Problem {
            path: at("key_file"),
            message: "cert_file needs the private key: set key_file".into(),
        }),
        (None, Some(_)) => problems.push(Problem {
            path: at("cert_file"),
            message: "key_file needs its certificate chain: set cert_file".into(),
        }),
        (Some(_), Some(_)) if !url.starts_with("mqtts://") => problems.push(Problem {
            path: at("cert_file"),
            message: "a client certificate needs TLS: use an mqtts:// url".into(),
        }),
        _ => {}
    }
    match s {
        SinkConfig::Ttn(t) => {
            if let Err(e) = crate::sink::uplink::BrokerUrl::parse(&t.url) {
                problems.push(Problem {
                    path: at("url"),
                    message: e,
                });
            }
            if t.application_id.is_empty() || t.application_id.contains(['/', '+', '#', '@']) {
                problems.push(Problem {
                    path: at("application_id"),
                    message: "must be the application's id (no `/`, `+`, `#`, `@`)".into(),
                });
            }
            for (i, e) in t.events.iter().enumerate() {
                if !platforms::TTN_EVENTS.contains(&e.as_str()) {
                    problems.push(Problem {
                        path: at(&format!("events[{i}]")),
                        message: format!(
                            "unknown event `{e}` (known: {})",
                            platforms::TTN_EVENTS.join(", ")
                        ),
                    });
                }
            }
        }
        SinkConfig::Thethingsio(t) => {
            if let Err(e) = crate::sink::uplink::BrokerUrl::parse(&t.url) {
                problems.push(Problem {
                    path: at("url"),
                    message: e,
                });
            }
            match (&t.activation_code, &t.thing_token) {
                (None, None) => problems.push(Problem {
                    path: at("activation_code"),
                    message: "set activation_code (activated on first start) or thing_token".into(),
                }),
                (Some(_), Some(_)) => problems.push(Problem {
                    path: at("thing_token"),
                    message: "set activation_code or thing_token, not both".into(),
                }),
                _ => {}
            }
        }
        SinkConfig::Thingspeak(t) => {
            if let Err(e) = crate::sink::uplink::BrokerUrl::parse(&t.url) {
                problems.push(Problem {
                    path: at("url"),
                    message: e,
                });
            }
            if t.fields.is_empty() {
                problems.push(Problem {
                    path: at("fields"),
                    message: "map at least one reading key to a field, e.g. { temp = \"field1\" }"
                        .into(),
                });
            }
            for (key, field) in &t.fields {
                if !platforms::THINGSPEAK_FIELDS.contains(&field.as_str()) {
                    problems.push(Problem {
                        path: at(&format!("fields.{key}")),
                        message: format!(
                            "`{field}` is not a ThingSpeak field (known: {})",
                            platforms::THINGSPEAK_FIELDS.join(", ")
                        ),
                    });
                }
            }
            if t.publish == platforms::PublishMode::Field
                && (t.fields.len() != 1 || !t.fields.values().all(|f| f.starts_with("field")))
            {
                problems.push(Problem {
                    path: at("publish"),
                    message: "publish = \"field\" sends one field: map exactly one key to a field1..field8".into(),
                });
            }
            let secs = t.interval.0;
            if secs < Duration::from_secs(1) || secs.subsec_nanos() != 0 {
                problems.push(Problem {
                    path: at("interval"),
                    message: "must be whole seconds, at least 1s (15s on a free licence)".into(),
                });
            }
        }
        SinkConfig::Thingsboard(t) => {
            if let Err(e) = crate::sink::uplink::BrokerUrl::parse(&t.url) {
                problems.push(Problem {
                    path: at("url"),
                    message: e,
                });
            }
            let provisioning =
                t.provision_device_key.is_some() || t.provision_device_secret.is_some();
            if provisioning {
                if t.provision_device_key.is_none() || t.provision_device_secret.is_none() {
                    problems.push(Problem {
                        path: at("provision_device_secret"),
                        message: "provisioning needs both provision_device_key and provision_device_secret".into(),
                    });
                }
                if t.access_token.is_some() || t.username.is_some() || t.cert_file.is_some() {
                    problems.push(Problem {
                        path: at("provision_device_key"),
                        message: "set either provisioning or credentials (access_token, username/password, cert_file), not both".into(),
                    });
                }
                if t.provision_credentials == ProvisionCredentials::X509Certificate
                    && !t.url.starts_with("mqtts://")
                {
                    problems.push(Problem {
                        path: at("provision_credentials"),
                        message: "x509_certificate credentials need TLS: use an mqtts:// url"
                            .into(),
                    });
                }
            }
            match (&t.access_token, &t.username) {
                _ if provisioning => {}
                (Some(_), Some(_)) => problems.push(Problem {
                    path: at("access_token"),
                    message: "set either access_token or username/password (MQTT basic), not both".into(),
                }),
                (None, None) if !t.url.starts_with("mqtts://") => problems.push(Problem {
                    path: at("access_token"),
                    message: "ThingsBoard needs credentials: access_token, or client_id/username/password".into(),
                }),
                (Some(tok), None) if tok.is_empty() => problems.push(Problem {
                    path: at("access_token"),
                    message: "must not be empty (ThingsBoard answers CONNACK 0x04)".into(),
                }),
                _ => {}
            }
            if let Some(Err(e)) = t
                .rate_limits
                .as_deref()
                .map(crate::sink::rate::RateLimit::parse)
            {
                problems.push(Problem {
                    path: at("rate_limits"),
                    message: e,
                });
            }
            if t.inflight == 0 {
                problems.push(Problem {
                    path: at("inflight"),
                    message: "must be at least 1".into(),
                });
            }
            if t.max_payload_size.0 < 1024 || t.max_payload_size.0 > 256 << 20 {
                problems.push(Problem {
                    path: at("max_payload_size"),
                    message: "must be between 1 KiB and 256 MiB".into(),
                });
            }
            if t.reconnect_min.0 > t.reconnect_max.0 || t.reconnect_min.0.is_zero() {
                problems.push(Problem {
                    path: at("reconnect_min"),
                    message: "must be above zero and at most reconnect_max".into(),
                });
            }
        }
        SinkConfig::Mqtt(m) => {
            if let Err(e) = crate::sink::uplink::BrokerUrl::parse(&m.url) {
                problems.push(Problem {
                    path: at("url"),
                    message: e,
                });
            }
            if m.qos != 1 {
                problems.push(Problem {
                    path: at("qos"),
                    message:
                        "must be 1: outpost deletes a record only when the broker acknowledges it"
                            .into(),
                });
            }
            if m.inflight == 0 {
                problems.push(Problem {
                    path: at("inflight"),
                    message: "must be at least 1".into(),
                });
            }
            if m.client_id.is_empty() {
                problems.push(Problem {
                    path: at("client_id"),
                    message: "must not be empty".into(),
                });
            }
            if m.password.is_some() && m.username.is_none() {
                problems.push(Problem {
                    path: at("password"),
                    message: "a password needs a username".into(),
                });
            }
            if let Err(e) = check_template(&m.topic) {
                problems.push(Problem {
                    path: at("topic"),
                    message: e,
                });
            }
            if m.max_packet_size.0 < 128 || m.max_packet_size.0 > 256 << 20 {
                problems.push(Problem {
                    path: at("max_packet_size"),
                    message: "must be between 128 bytes and 256 MiB".into(),
                });
            }
            if m.keep_alive.0 < Duration::from_secs(1) {
                problems.push(Problem {
                    path: at("keep_alive"),
                    message: "must be at least 1s".into(),
                });
            }
            if m.reconnect_min.0 > m.reconnect_max.0 || m.reconnect_min.0.is_zero() {
                problems.push(Problem {
                    path: at("reconnect_min"),
                    message: "must be above zero and at most reconnect_max".into(),
                });
            }
        }
    }
}

impl Config {
    /// The outbox file, resolved against the state directory.
    pub fn store_path(&self) -> PathBuf {
        if self.store.path.is_absolute() {
            self.store.path.clone()
        } else {
            self.state_dir.join(&self.store.path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_examples_are_valid() {
        let tb = parse(
            include_str!("../../config/thingsboard.toml"),
            "thingsboard.toml",
        )
        .expect("config/thingsboard.toml must be valid");
        assert!(tb
            .sinks
            .values()
            .any(|s| matches!(s, SinkConfig::Thingsboard(_))));
        let serial = parse(include_str!("../../config/serial.toml"), "serial.toml")
            .expect("config/serial.toml must be valid");
        assert_eq!(serial.serial.len(), 3);
        assert_eq!(serial.serial[2].slave.len(), 2);
        let platforms = parse(
            include_str!("../../config/platforms.toml"),
            "platforms.toml",
        )
        .expect("config/platforms.toml must be valid");
        assert_eq!(platforms.sinks.len(), 3);
    }

    #[test]
    fn built_in_default_is_valid() {
        let c = parse(DEFAULT_CONFIG, "default").expect("default config must be valid");
        assert!(!c.routes.is_empty());
        assert!(!c.sinks.is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
            colour = "blue"
            [broker]
            max_conections = 5
            [store]
            max_bytes = "lots"
            full_policy = "panic"
            [[route]]
            topic = "a/#/b"
            sink = "nowhere"
            [sink.up]
            type = "mqtt"
            url = "http://example"
            inflight = "many"
        "#;
        let Err(ConfigError::Invalid { problems, .. }) = parse(text, "t") else {
            panic!("expected problems")
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "colour",
            "broker.max_conections",
            "store.max_bytes",
            "store.full_policy",
            "route[0].topic",
            "route[0].sink",
            "sink.up.inflight",
        ] {
            assert!(paths.contains(&want), "missing {want} in {problems:?}");
        }
    }

    #[test]
    fn sink_url_and_template_are_checked() {
        let text = r#"
            [sink.up]
            type = "mqtt"
            url = "http://example"
            topic = "site/{devcie}/t"
        "#;
        let Err(ConfigError::Invalid { problems, .. }) = parse(text, "t") else {
            panic!("expected problems")
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"sink.up.url"), "{problems:?}");
        assert!(paths.contains(&"sink.up.topic"), "{problems:?}");
    }
}
