//! The ThingsBoard fixture's rules (`common/tb_server.rs`) refuse what the
//! server's transport code throws on, and take what it takes. Each case
//! names the method of thingsboard/thingsboard it stands for.

use crate::common::{gateway_attributes_request, judge, Verdict};
use serde_json::json;

fn closes(topic: &str, payload: &str) -> bool {
    matches!(judge(topic, payload.as_bytes()), Verdict::Close(_))
}

#[test]
fn the_gateway_attribute_request_is_one_scope_per_request() {
    // AbstractGatewaySessionHandler.onDeviceAttributesRequestJson
    let old = json!({"id":1,"device":"A","client":["fwv"],"shared":["setpoint","mode"]});
    assert!(gateway_attributes_request(&old).is_err());
    assert!(closes("v1/gateway/attributes/request", &old.to_string()));
    let ok = json!({"id":1,"device":"A","client":false,"keys":["setpoint"]});
    assert!(gateway_attributes_request(&ok).is_ok());
    assert!(
        gateway_attributes_request(&json!({"id":1,"device":"A","client":true,"key":"fwv"})).is_ok()
    );
}

#[test]
fn gateway_messages_the_server_cannot_convert_close_the_session() {
    // MqttTransportHandler.handleGatewayPublishMsg → closeCtx, and
    // AbstractGatewaySessionHandler.ackOrClose below MQTT 5.
    assert!(closes("v1/gateway/telemetry", "[1]"), "not an object");
    assert!(
        closes("v1/gateway/telemetry", r#"{"A":{"t":1}}"#),
        "no array left"
    );
    assert!(
        closes("v1/gateway/telemetry", r#"{"A":[1]}"#),
        "entry not an object"
    );
    assert!(closes(
        "v1/gateway/telemetry",
        r#"{"A":[{"ts":"soon","values":{"t":1}}]}"#
    ));
    assert!(closes("v1/gateway/attributes", r#"{"A":[1]}"#));
    assert!(closes("v1/gateway/connect", r#"{"device":""}"#));
    assert!(closes("v1/gateway/connect", r#"{"name":"A"}"#));
    assert!(
        closes("v1/gateway/rpc", r#"{"device":"A","id":1}"#),
        "no data"
    );
    assert!(closes("v1/gateway/telemetry", ""), "empty payload");
    assert_eq!(
        judge(
            "v1/gateway/telemetry",
            br#"{"A":[{"ts":1,"values":{"t":1,"h":null}}],"B":{"x":1}}"#
        ),
        Verdict::Take,
        "a null is skipped, a child of the wrong shape is skipped"
    );
    assert_eq!(
        judge("v1/gateway/connect", br#"{"device":"A","type":"default"}"#),
        Verdict::Take
    );
    assert!(matches!(
        judge("v1/gateway/whatever", b"{}"),
        Verdict::Ignore(_)
    ));
}

#[test]
fn device_messages_the_server_cannot_convert_close_the_session() {
    // MqttTransportHandler.processDevicePublish →
    // sendResponseForAdaptorErrorOrCloseContext.
    assert!(closes("v1/devices/me/telemetry", "21.5"));
    assert!(closes("v1/devices/me/telemetry", "[1,2]"));
    assert!(closes("v1/devices/me/telemetry", "{not json"));
    assert!(closes("v1/devices/me/attributes", "[]"));
    assert!(closes("v1/devices/me/rpc/request/1", r#"{"params":{}}"#));
    assert!(closes("v1/devices/me/attributes/request/x", r#"{}"#));
    assert!(closes("v2/fw/request/1/chunk/0", "lots"));
    assert!(closes("v1/devices/me/claim", r#"{"durationMs":"long"}"#));
    assert_eq!(
        judge(
            "v1/devices/me/telemetry",
            br#"[{"ts":1,"values":{"t":1}},{"h":2}]"#
        ),
        Verdict::Take
    );
    assert_eq!(judge("v2/fw/request/7/chunk/3", b"16384"), Verdict::Take);
    assert_eq!(judge("v1/devices/me/claim", b""), Verdict::Take);
    assert!(matches!(
        judge("v1/devices/me/telemetryx", b"{}"),
        Verdict::Ignore(_)
    ));
}
