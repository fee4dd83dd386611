//! Sinks for the platforms beyond plain MQTT and ThingsBoard: ThingSpeak,
//! The Things Stack (TTN) and thethings.iO.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Seconds;

/// `[sink.NAME] type = "thingspeak"`: one channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThingspeakSinkConfig {
    #[serde(default = "default_thingspeak_url")]
    pub url: String,
    /// The MQTT device's credentials (ThingSpeak: Devices > MQTT).
    pub client_id: String,
    pub username: String,
    pub password: String,
    pub channel_id: u64,
    /// Reading key → `field1`..`field8`, `status`, `lat`, `long` or
    /// `elevation`.
    pub fields: BTreeMap<String, String>,
    /// The channel's update interval: 15 s on a free licence, 1 s paid.
    #[serde(default = "default_thingspeak_interval")]
    pub interval: Seconds,
    /// How the readings of one interval become one update.
    #[serde(default)]
    pub merge: Merge,
    /// After an outage: every interval's update (`all`), or only one
    /// update with the latest values (`latest_only`).
    #[serde(default)]
    pub replay: Replay,
    /// `feed`: `channels/<id>/publish`, form-encoded with `created_at`;
    /// `field`: the one mapped field alone on
    /// `channels/<id>/publish/fields/fieldN` (ThingSpeak stamps it on
    /// arrival).
    #[serde(default)]
    pub publish: PublishMode,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_thingspeak_keep_alive")]
    pub keep_alive: Seconds,
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min: Seconds,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: Seconds,
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Seconds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Merge {
    /// The last value of each field.
    #[default]
    Latest,
    Mean,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PublishMode {
    #[default]
    Feed,
    Field,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Replay {
    #[default]
    All,
    LatestOnly,
}

/// ThingSpeak's feed fields.
pub const THINGSPEAK_FIELDS: &[&str] = &[
    "field1",
    "field2",
    "field3",
    "field4",
    "field5",
    "field6",
    "field7",
    "field8",
    "status",
    "lat",
    "long",
    "elevation",
];

fn default_thingspeak_url() -> String {
    "mqtts://mqtt3.thingspeak.com:8883".into()
}
fn default_thingspeak_interval() -> Seconds {
    Seconds(Duration::from_secs(15))
}
fn default_thingspeak_keep_alive() -> Seconds {
    Seconds(Duration::from_secs(15))
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

/// `[sink.NAME] type = "thethingsio"`: one thing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThethingsioSinkConfig {
    #[serde(default = "default_thethingsio_url")]
    pub url: String,
    /// Activate on first start with this code (the thing token is then
    /// stored in the state directory and used from then on) ...
    #[serde(default)]
    pub activation_code: Option<String>,
    /// ... or use this thing token.
    #[serde(default)]
    pub thing_token: Option<String>,
    /// Realtime updates of the thing are published here on the local
    /// broker (`{sink}` is the sink's name); empty: not relayed.
    #[serde(default = "default_realtime_topic")]
    pub realtime_topic: String,
    #[serde(default = "default_activation_timeout")]
    pub activation_timeout: Seconds,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
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

fn default_thethingsio_url() -> String {
    "mqtts://mqtt.thethings.io:8883".into()
}
fn default_realtime_topic() -> String {
    "thethingsio/{sink}/realtime".into()
}
fn default_activation_timeout() -> Seconds {
    Seconds(Duration::from_secs(30))
}
fn default_inflight() -> u16 {
    100
}
fn default_keep_alive() -> Seconds {
    Seconds(Duration::from_secs(30))
}

/// `[sink.NAME] type = "ttn"`: one application on The Things Stack, both a
/// source (uplinks become readings) and a sink (records routed here are
/// downlink requests).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtnSinkConfig {
    /// e.g. `mqtts://eu1.cloud.thethings.network:8883`.
    pub url: String,
    pub application_id: String,
    /// `ttn` on The Things Network; none on The Things Stack Open Source.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// An API key of the application (the MQTT password).
    pub api_key: String,
    /// Local topic an uplink becomes (`{device}`); routes select it.
    #[serde(default = "default_ttn_uplink_topic")]
    pub uplink_topic: String,
    /// More events to take: `join`, `down/queued`, `down/sent`,
    /// `down/ack`, `down/nack`, `down/failed`, `location/solved`,
    /// `service/data`.
    #[serde(default)]
    pub events: Vec<String>,
    /// Local topic of those events (`{device}`, `{event}`).
    #[serde(default = "default_ttn_event_topic")]
    pub event_topic: String,
    /// Server-side RPC to a LoRaWAN device (one that has sent an uplink)
    /// becomes a downlink request on `downlink_topic`; route that topic to
    /// this sink.
    #[serde(default = "default_true")]
    pub rpc: bool,
    #[serde(default = "default_ttn_downlink_topic")]
    pub downlink_topic: String,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Seconds,
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min: Seconds,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: Seconds,
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Seconds,
}

pub const TTN_EVENTS: &[&str] = &[
    "join",
    "down/queued",
    "down/sent",
    "down/ack",
    "down/nack",
    "down/failed",
    "location/solved",
    "service/data",
];

fn default_ttn_uplink_topic() -> String {
    "ttn/{device}/up".into()
}
fn default_ttn_event_topic() -> String {
    "ttn/{device}/{event}".into()
}
fn default_ttn_downlink_topic() -> String {
    "ttn/{device}/down".into()
}
fn default_true() -> bool {
    true
}
