//! `type = "mqtt"`: any MQTT broker.

use serde::Deserialize;

use super::{check_inflight, check_template, defaults, sink_config};
use crate::config::problem::{Problem, Problems};
use crate::units::ByteSize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// `{"ts":..,"device":..,"values":..}`: the measurement time travels with the data.
    Envelope,
    /// The sensor's payload bytes, unchanged.
    Raw,
    /// A JSON array of envelopes: several readings of one upstream topic in
    /// one PUBLISH (up to `batch_max`, within `max_packet_size`), so a
    /// backlog drains at several readings per round trip.
    Batch,
}

sink_config! {
    /// `[sink.NAME] type = "mqtt"`.
    pub struct MqttSinkConfig {
        /// `mqtt://host[:1883]` or `mqtts://host[:8883]`.
        pub url: String,
        #[serde(default = "defaults::client_id")]
        pub client_id: String,
        #[serde(default = "default_qos")]
        pub qos: u8,
        /// Publishes awaiting PUBACK at most.
        #[serde(default = "defaults::inflight")]
        pub inflight: u16,
        /// Upstream topic; placeholders `{device}`, `{kind}`, `{sink}`, `{topic}`.
        #[serde(default = "default_topic_template")]
        pub topic: String,
        #[serde(default = "default_format")]
        pub format: PayloadFormat,
        #[serde(default = "defaults::max_packet")]
        pub max_packet_size: ByteSize,
        /// Readings per PUBLISH at most with `format = "batch"`.
        #[serde(default = "default_batch_max")]
        pub batch_max: usize,
    }
    keep_alive = "defaults::keep_alive";
    credentials;
}

fn default_qos() -> u8 {
    1
}
fn default_topic_template() -> String {
    "outpost/{device}/{kind}".to_string()
}
fn default_format() -> PayloadFormat {
    PayloadFormat::Envelope
}
fn default_batch_max() -> usize {
    100
}

/// More readings per PUBLISH than this gain nothing measurable and hold
/// more rows on one acknowledgement.
const BATCH_MAX: usize = 10_000;

pub(super) fn check(at: &dyn Fn(&str) -> String, m: &MqttSinkConfig, problems: &mut Vec<Problem>) {
    if m.qos != 1 {
        problems.add(
            at("qos"),
            "must be 1: outpost deletes a record only when the broker acknowledges it",
        );
    }
    check_inflight(at, m.inflight, problems);
    if m.client_id.is_empty() {
        problems.add(at("client_id"), "must not be empty");
    }
    if m.password.is_some() && m.username.is_none() {
        problems.add(at("password"), "a password needs a username");
    }
    if let Err(e) = check_template(&m.topic) {
        problems.add(at("topic"), e);
    }
    if m.batch_max == 0 || m.batch_max > BATCH_MAX {
        problems.add(
            at("batch_max"),
            format!("must be between 1 and {BATCH_MAX}"),
        );
    } else if m.format != PayloadFormat::Batch && m.batch_max != default_batch_max() {
        problems.add(at("batch_max"), "only applies with format = \"batch\"");
    }
    if m.max_packet_size.0 < 128 || m.max_packet_size.0 > 256 << 20 {
        problems.add(
            at("max_packet_size"),
            "must be between 128 bytes and 256 MiB",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let m: MqttSinkConfig =
            toml::from_str(&format!("url = \"mqtt://localhost\"\n{text}")).expect("toml");
        let mut p = Vec::new();
        check(&|k: &str| format!("sink.up.{k}"), &m, &mut p);
        p.into_iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect()
    }

    #[test]
    fn batch_max_is_bounded_and_belongs_to_the_batch_format() {
        assert!(problems("format = \"batch\"").is_empty());
        assert!(problems("format = \"batch\"\nbatch_max = 500").is_empty());
        assert_eq!(
            problems("format = \"batch\"\nbatch_max = 0"),
            ["sink.up.batch_max: must be between 1 and 10000"]
        );
        assert_eq!(
            problems("batch_max = 5"),
            ["sink.up.batch_max: only applies with format = \"batch\""]
        );
    }
}
