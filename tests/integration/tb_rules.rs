//! ThingsBoard's rules for what a device or gateway sends, read from its
//! MQTT transport source (thingsboard/thingsboard,
//! `common/transport/mqtt/.../session/AbstractGatewaySessionHandler.java`
//! and `MqttTransportHandler.java`). Where a message breaks one, the
//! server throws, and `MqttTransportHandler.handleGatewayPublishMsg`
//! answers a `RuntimeException` by closing the whole gateway session
//! (`closeCtx(ctx, IMPLEMENTATION_SPECIFIC_ERROR)`): every child goes
//! offline with it.

use serde_json::Value;

/// `AbstractGatewaySessionHandler.onDeviceAttributesRequestJson`: reads
/// `id` with `getAsInt()`, `device` with `getAsString()`, `client` with
/// `getAsBoolean()` (one scope per request), then the names from `key` (a
/// string) or else `keys` (an array of strings). A `client` that is a list
/// throws (or, with one element, is read as `false`); a request without
/// `key` and `keys` throws a NullPointerException.
pub fn gateway_attributes_request(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not a JSON object")?;
    o.get("id")
        .and_then(Value::as_i64)
        .filter(|id| i32::try_from(*id).is_ok())
        .ok_or("`id` is not an int")?;
    o.get("device")
        .and_then(Value::as_str)
        .ok_or("`device` is not a string")?;
    o.get("client")
        .and_then(Value::as_bool)
        .ok_or("`client` is not a boolean (one scope per request)")?;
    match (o.get("key"), o.get("keys")) {
        (Some(Value::String(_)), _) => Ok(()),
        (Some(_), _) => Err("`key` is not a string".into()),
        (None, Some(Value::Array(keys))) if keys.iter().all(Value::is_string) => Ok(()),
        (None, Some(_)) => Err("`keys` is not an array of strings".into()),
        (None, None) => Err("neither `key` nor `keys`".into()),
    }
}

#[test]
fn the_rules_refuse_what_the_server_throws_on() {
    use serde_json::json;
    let old = json!({"id":1,"device":"A","client":["fwv"],"shared":["setpoint","mode"]});
    assert!(gateway_attributes_request(&old).is_err());
    let ok = json!({"id":1,"device":"A","client":false,"keys":["setpoint"]});
    assert!(gateway_attributes_request(&ok).is_ok());
    assert!(
        gateway_attributes_request(&json!({"id":1,"device":"A","client":true,"key":"fwv"})).is_ok()
    );
}
