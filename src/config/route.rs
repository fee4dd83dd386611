//! `[[route]]`: which local topics become records, for which sink;
//! `[readings]`: how their times are taken.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::problem::{Problem, Problems};
use super::sink::SinkConfig;
use std::time::Duration;

use crate::record::{device_name_problem, RecordKind};
use crate::topic::TopicFilter;
use crate::units::Seconds;

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

/// `[readings]`: how readings are stamped.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingsConfig {
    /// A payload's own `ts` further ahead of the gateway clock than this is
    /// not used (the reading is stamped at ingest, and counted).
    #[serde(default = "default_max_ts_ahead")]
    pub max_ts_ahead: Seconds,
    /// A file whose existence says the system clock is synchronized,
    /// besides the kernel's own state (systemd-timesyncd creates this one
    /// when it has set the clock). Until one of them says so, automatic
    /// stamps are provisional and corrected before they leave.
    #[serde(default = "default_synchronized_file")]
    pub synchronized_file: std::path::PathBuf,
}

fn default_synchronized_file() -> std::path::PathBuf {
    std::path::PathBuf::from(crate::clock::TIMESYNCD_FLAG)
}

fn default_max_ts_ahead() -> Seconds {
    Seconds(Duration::from_secs(86_400))
}

impl Default for ReadingsConfig {
    fn default() -> Self {
        ReadingsConfig {
            max_ts_ahead: default_max_ts_ahead(),
            synchronized_file: default_synchronized_file(),
        }
    }
}

pub(super) fn check_readings(r: &ReadingsConfig, problems: &mut Vec<Problem>) {
    if r.max_ts_ahead.0 > Duration::from_secs(365 * 86_400) {
        problems.add("readings.max_ts_ahead", "must be at most 365d");
    }
}

pub(super) fn check(
    i: usize,
    r: &RouteConfig,
    sinks: &BTreeMap<String, SinkConfig>,
    problems: &mut Vec<Problem>,
) {
    let at = |k: &str| format!("route[{i}].{k}");
    let filter = match TopicFilter::parse(&r.topic) {
        Ok(f) => Some(f),
        Err(e) => {
            problems.add(at("topic"), e);
            None
        }
    };
    if !sinks.contains_key(&r.sink) {
        let known: Vec<&str> = sinks.keys().map(String::as_str).collect();
        problems.add(
            at("sink"),
            if known.is_empty() {
                format!("no sink named `{}` (no [sink.NAME] is defined)", r.sink)
            } else {
                format!("no sink named `{}` (defined: {})", r.sink, known.join(", "))
            },
        );
    }
    match (&r.device, r.device_level) {
        (Some(_), Some(_)) => problems.add(
            at("device"),
            "set either `device` or `device_level`, not both",
        ),
        (Some(d), None) => {
            if let Some(why) = device_name_problem(d) {
                problems.add(at("device"), format!("cannot be {why}"));
            }
        }
        (None, level) => {
            if let Some(f) = &filter {
                if let Err(e) = f.device_level(level) {
                    let key = if level.is_some() {
                        "device_level"
                    } else {
                        "topic"
                    };
                    problems.add(at(key), e);
                }
            }
        }
    }
}
