//! `type = "thingspeak"`: one ThingSpeak channel.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::sink_config;
use crate::config::problem::{Problem, Problems};
use crate::units::Seconds;

sink_config! {
    /// `[sink.NAME] type = "thingspeak"`: one channel.
    pub struct ThingspeakSinkConfig {
        #[serde(default = "default_url")]
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
        #[serde(default = "default_interval")]
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
    }
    keep_alive = "default_keep_alive";
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

fn default_url() -> String {
    "mqtts://mqtt3.thingspeak.com:8883".into()
}
fn default_interval() -> Seconds {
    Seconds(Duration::from_secs(15))
}
fn default_keep_alive() -> Seconds {
    Seconds(Duration::from_secs(15))
}

pub(super) fn check(
    at: &dyn Fn(&str) -> String,
    t: &ThingspeakSinkConfig,
    problems: &mut Vec<Problem>,
) {
    let interval = t.interval.0;
    if interval < std::time::Duration::from_secs(1)
        || interval > std::time::Duration::from_secs(86_400)
    {
        problems.add(at("interval"), "must be between 1s and 1d");
    }
    if t.fields.is_empty() {
        problems.add(
            at("fields"),
            "map at least one reading key to a field, e.g. { temp = \"field1\" }",
        );
    }
    for (key, field) in &t.fields {
        if !THINGSPEAK_FIELDS.contains(&field.as_str()) {
            problems.add(
                at(&format!("fields.{key}")),
                format!(
                    "`{field}` is not a ThingSpeak field (known: {})",
                    THINGSPEAK_FIELDS.join(", ")
                ),
            );
        }
    }
    if t.publish == PublishMode::Field
        && (t.fields.len() != 1 || !t.fields.values().all(|f| f.starts_with("field")))
    {
        problems.add(
            at("publish"),
            "publish = \"field\" sends one field: map exactly one key to a field1..field8",
        );
    }
    let secs = t.interval.0;
    if secs < Duration::from_secs(1) || secs.subsec_nanos() != 0 {
        problems.add(
            at("interval"),
            "must be whole seconds, at least 1s (15s on a free licence)",
        );
    }
}
