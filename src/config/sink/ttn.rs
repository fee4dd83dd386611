//! `type = "ttn"`: one application on The Things Stack, both a source
//! (uplinks become readings) and a sink (records routed here are downlink
//! requests).

use super::{defaults, sink_config};
use crate::config::problem::{Problem, Problems};

sink_config! {
    /// `[sink.NAME] type = "ttn"`.
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
        #[serde(default = "default_uplink_topic")]
        pub uplink_topic: String,
        /// More events to take: `join`, `down/queued`, `down/sent`,
        /// `down/ack`, `down/nack`, `down/failed`, `location/solved`,
        /// `service/data`.
        #[serde(default)]
        pub events: Vec<String>,
        /// Local topic of those events (`{device}`, `{event}`).
        #[serde(default = "default_event_topic")]
        pub event_topic: String,
        /// Server-side RPC to a LoRaWAN device (one that has sent an uplink)
        /// becomes a downlink request on `downlink_topic`; route that topic to
        /// this sink.
        #[serde(default = "defaults::yes")]
        pub rpc: bool,
        #[serde(default = "default_downlink_topic")]
        pub downlink_topic: String,
    }
    keep_alive = "defaults::keep_alive";
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

fn default_uplink_topic() -> String {
    "ttn/{device}/up".into()
}
fn default_event_topic() -> String {
    "ttn/{device}/{event}".into()
}
fn default_downlink_topic() -> String {
    "ttn/{device}/down".into()
}

pub(super) fn check(at: &dyn Fn(&str) -> String, t: &TtnSinkConfig, problems: &mut Vec<Problem>) {
    if t.application_id.is_empty() || t.application_id.contains(['/', '+', '#', '@']) {
        problems.add(
            at("application_id"),
            "must be the application's id (no `/`, `+`, `#`, `@`)",
        );
    }
    for (i, e) in t.events.iter().enumerate() {
        if !TTN_EVENTS.contains(&e.as_str()) {
            problems.add(
                at(&format!("events[{i}]")),
                format!("unknown event `{e}` (known: {})", TTN_EVENTS.join(", ")),
            );
        }
    }
}
