//! `[[route]]`: which local topics become records, for which sink.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::problem::{Problem, Problems};
use super::sink::SinkConfig;
use crate::record::RecordKind;
use crate::topic::TopicFilter;

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
        (Some(d), None) if d.is_empty() => problems.add(at("device"), "must not be empty"),
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
        _ => {}
    }
}
