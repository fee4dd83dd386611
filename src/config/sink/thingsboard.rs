//! `type = "thingsboard"`: ThingsBoard's device or gateway API.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{check_inflight, defaults, sink_config};
use crate::config::problem::{Problem, Problems};
use crate::units::{ByteSize, RateSpec, Seconds};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TbMode {
    /// outpost is one ThingsBoard device (`v1/devices/me/...`).
    Device,
    /// outpost is a ThingsBoard gateway; each local device is a child
    /// device over the one connection (`v1/gateway/...`).
    Gateway,
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

sink_config! {
    /// `[sink.NAME] type = "thingsboard"`.
    pub struct ThingsboardSinkConfig {
        /// `mqtt://host:1883` or `mqtts://host:8883`.
        pub url: String,
        #[serde(default = "default_tb_mode")]
        pub mode: TbMode,
        /// Access-token credentials (sent as the MQTT username).
        #[serde(default)]
        pub access_token: Option<String>,
        /// MQTT basic credentials: client id (with `username` and
        /// `password`); or X.509 with `cert_file` and `key_file`.
        #[serde(default)]
        pub client_id: Option<String>,
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
        /// Gateway mode: a child not heard from for this long is
        /// disconnected (`v1/gateway/disconnect`); "0s": never.
        #[serde(default = "default_child_idle")]
        pub child_idle: Seconds,
        /// Gateway mode: shared keys asked for, for every child (of this
        /// sink's `device_type`), after each reconnect, beside those a
        /// child received or asked for itself.
        #[serde(default)]
        pub shared_keys: Vec<String>,
        /// Device mode: the local device name shared attributes are published for.
        #[serde(default = "defaults::client_id")]
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
        #[serde(default = "defaults::max_packet")]
        pub max_payload_size: ByteSize,
        /// ThingsBoard's `maxInflightMessages`.
        #[serde(default = "defaults::inflight")]
        pub inflight: u16,
        /// Firmware updates (OTA) of outpost's own device.
        #[serde(default)]
        pub firmware: FirmwareConfig,
    }
    keep_alive = "defaults::keep_alive";
    credentials;
}

/// `[sink.NAME.firmware]`: ThingsBoard firmware updates of outpost's own
/// device, downloaded in chunks, checked, and handed to a local agent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareConfig {
    /// `false`: the `fw_*` attributes are passed on, nothing is downloaded.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Bytes asked for per `v2/fw/request/{id}/chunk/{n}` (at most
    /// `max_payload_size`).
    #[serde(default = "default_fw_chunk")]
    pub chunk_size: ByteSize,
    /// A chunk not answered within this is asked for again.
    #[serde(default = "default_fw_chunk_timeout")]
    pub chunk_timeout: Seconds,
    /// A larger image (`fw_size`) is refused: FAILED, nothing downloaded.
    #[serde(default = "default_fw_max")]
    pub max_size: ByteSize,
    /// A verified image is announced here (retained JSON: title, version,
    /// path, size, checksum), for the agent that installs it.
    #[serde(default = "default_fw_notice")]
    pub notice_topic: String,
    /// The agent answers here: `{"state":"UPDATED"}` or
    /// `{"state":"FAILED","error":"..."}`.
    #[serde(default = "default_fw_result")]
    pub result_topic: String,
    /// Gateway mode: children whose firmware outpost downloads, with their
    /// own ThingsBoard access tokens (the gateway API has no firmware
    /// transfer: each such child gets a device session of its own).
    #[serde(default)]
    pub child_tokens: BTreeMap<String, String>,
    /// Where a child's verified image is announced (`{device}`).
    #[serde(default = "default_fw_child_notice")]
    pub child_notice_topic: String,
    /// Where the child (or its agent) answers (`{device}`).
    #[serde(default = "default_fw_child_result")]
    pub child_result_topic: String,
}

fn default_true() -> bool {
    true
}
fn default_fw_chunk() -> ByteSize {
    ByteSize(16 << 10)
}
fn default_fw_child_notice() -> String {
    "devices/{device}/firmware".into()
}
fn default_fw_child_result() -> String {
    "devices/{device}/firmware/result".into()
}
fn default_fw_chunk_timeout() -> Seconds {
    Seconds(Duration::from_secs(10))
}
fn default_fw_max() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_fw_notice() -> String {
    "outpost/firmware".into()
}
fn default_fw_result() -> String {
    "outpost/firmware/result".into()
}

impl Default for FirmwareConfig {
    fn default() -> Self {
        FirmwareConfig {
            enabled: true,
            chunk_size: default_fw_chunk(),
            chunk_timeout: default_fw_chunk_timeout(),
            max_size: default_fw_max(),
            notice_topic: default_fw_notice(),
            result_topic: default_fw_result(),
            child_tokens: BTreeMap::new(),
            child_notice_topic: default_fw_child_notice(),
            child_result_topic: default_fw_child_result(),
        }
    }
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
fn default_child_idle() -> Seconds {
    Seconds(Duration::from_secs(600))
}
fn default_device_type() -> String {
    "default".to_string()
}

impl ThingsboardSinkConfig {
    /// The local device topics this sink's downlink uses.
    pub fn device_topics(&self) -> crate::topic::DeviceTopics {
        crate::topic::DeviceTopics {
            rpc_request: self.rpc_request_topic.clone(),
            rpc_response: self.rpc_response_topic.clone(),
            attributes: self.attributes_topic.clone(),
        }
    }
}

pub(super) fn check(
    at: &dyn Fn(&str) -> String,
    t: &ThingsboardSinkConfig,
    problems: &mut Vec<Problem>,
) {
    let fw = &t.firmware;
    if fw.chunk_size.0 == 0 || fw.chunk_size.0 > 16 << 20 {
        problems.add(
            at("firmware.chunk_size"),
            "must be between 1 byte and 16 MiB (chunks are also kept within max_payload_size)",
        );
    }
    if !fw.child_tokens.is_empty() && t.mode != TbMode::Gateway {
        problems.add(
            at("firmware.child_tokens"),
            "children exist in gateway mode only (mode = \"gateway\")",
        );
    }
    for (key, topic) in [
        ("firmware.notice_topic", &fw.notice_topic),
        ("firmware.result_topic", &fw.result_topic),
        ("firmware.child_notice_topic", &fw.child_notice_topic),
        ("firmware.child_result_topic", &fw.child_result_topic),
    ] {
        if topic.is_empty() || topic.contains(['+', '#']) {
            problems.add(at(key), "a topic name (no wildcards)");
        }
    }
    let tls = t.url.starts_with("mqtts://");
    let provisioning = t.provision_device_key.is_some() || t.provision_device_secret.is_some();
    if provisioning {
        if t.provision_device_key.is_none() || t.provision_device_secret.is_none() {
            problems.add(
                at("provision_device_secret"),
                "provisioning needs both provision_device_key and provision_device_secret",
            );
        }
        if t.access_token.is_some() || t.username.is_some() || t.cert_file.is_some() {
            problems.add(at("provision_device_key"), "set either provisioning or credentials (access_token, username/password, cert_file), not both");
        }
        if t.provision_credentials == ProvisionCredentials::X509Certificate && !tls {
            problems.add(
                at("provision_credentials"),
                "x509_certificate credentials need TLS: use an mqtts:// url",
            );
        }
    }
    match (&t.access_token, &t.username) {
        _ if provisioning => {}
        (Some(_), Some(_)) => problems.add(
            at("access_token"),
            "set either access_token or username/password (MQTT basic), not both",
        ),
        // MQTT Basic may be a client id alone (ThingsBoard's "Client ID
        // only"); over TLS the credentials may be a certificate.
        (None, None) if !tls && t.client_id.is_none() => problems.add(
            at("access_token"),
            "ThingsBoard needs credentials: access_token, or MQTT basic (client_id alone, username/password, or all three)",
        ),
        (Some(tok), None) if tok.is_empty() => problems.add(
            at("access_token"),
            "must not be empty (ThingsBoard answers CONNACK 0x04)",
        ),
        _ => {}
    }
    if let Some(Err(e)) = t.rate_limits.as_deref().map(RateSpec::parse) {
        problems.add(at("rate_limits"), e);
    }
    check_inflight(at, t.inflight, problems);
    if t.max_payload_size.0 < 1024 || t.max_payload_size.0 > 256 << 20 {
        problems.add(at("max_payload_size"), "must be between 1 KiB and 256 MiB");
    }
    let hour = std::time::Duration::from_secs(3600);
    if t.rpc_timeout.0.is_zero() || t.rpc_timeout.0 > hour {
        problems.add(at("rpc_timeout"), "must be above zero and at most 1h");
    }
    if t.provision_timeout.0.is_zero() || t.provision_timeout.0 > hour {
        problems.add(at("provision_timeout"), "must be above zero and at most 1h");
    }
}

#[cfg(test)]
mod tests {
    fn problems(sink: &str) -> Vec<String> {
        let text = format!(
            "[[route]]\ntopic = \"s/+/t\"\nsink = \"tb\"\n[sink.tb]\ntype = \"thingsboard\"\nurl = \"mqtt://tb.local\"\n{sink}"
        );
        match crate::config::parse(&text, "t") {
            Ok(_) => Vec::new(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn mqtt_basic_may_be_a_client_id_alone() {
        assert!(problems("client_id = \"dev-42\"").is_empty());
        assert!(problems("username = \"u\"\npassword = \"p\"").is_empty());
        let none = problems("");
        assert!(
            none.first().is_some_and(|e| e.contains("client_id alone")),
            "{none:?}"
        );
    }
}
