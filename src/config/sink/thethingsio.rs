//! `type = "thethingsio"`: one thethings.iO thing.

use std::time::Duration;

use super::{check_inflight, defaults, sink_config};
use crate::config::problem::{Problem, Problems};
use crate::units::Seconds;

sink_config! {
    /// `[sink.NAME] type = "thethingsio"`: one thing.
    pub struct ThethingsioSinkConfig {
        #[serde(default = "default_url")]
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
        #[serde(default = "defaults::inflight")]
        pub inflight: u16,
        /// A reading's keys that hold its position: sent as each value's
        /// `geo` (`{"lat":..,"long":..}`) rather than as values of their own.
        #[serde(default = "default_geo_keys")]
        pub geo_keys: [String; 2],
    }
    keep_alive = "defaults::keep_alive";
}

fn default_url() -> String {
    "mqtts://mqtt.thethings.io:8883".into()
}
fn default_realtime_topic() -> String {
    "thethingsio/{sink}/realtime".into()
}
fn default_activation_timeout() -> Seconds {
    Seconds(Duration::from_secs(30))
}

pub(super) fn check(
    at: &dyn Fn(&str) -> String,
    t: &ThethingsioSinkConfig,
    problems: &mut Vec<Problem>,
) {
    match (&t.activation_code, &t.thing_token) {
        (None, None) => problems.add(
            at("activation_code"),
            "set activation_code (activated on first start) or thing_token",
        ),
        (Some(_), Some(_)) => problems.add(
            at("thing_token"),
            "set activation_code or thing_token, not both",
        ),
        _ => {}
    }
    check_inflight(at, t.inflight, problems);
}

fn default_geo_keys() -> [String; 2] {
    ["lat".to_string(), "long".to_string()]
}
