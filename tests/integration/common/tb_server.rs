//! ThingsBoard's MQTT transport as its source code behaves, in front of a
//! real mosquitto. Every PUBLISH outpost sends is parsed with the server's
//! rules (thingsboard/thingsboard, `common/transport/mqtt/.../
//! MqttTransportHandler.java`, `session/AbstractGatewaySessionHandler.java`,
//! `adaptors/JsonMqttAdaptor.java`, `common/proto/.../JsonConverter.java`)
//! before it reaches the broker, and the session is closed where the
//! server's code closes it. On an MQTT 3.1.1 session (outpost's uplink)
//! that is every payload the server cannot convert:
//!
//! - `processDevicePublish` catches an `AdaptorException` and, without
//!   `sendAckOnValidationException`, `sendResponseForAdaptorErrorOrCloseContext`
//!   closes the session (`PAYLOAD_FORMAT_INVALID`); other runtime
//!   exceptions escape the handler and close the channel too;
//! - `handleGatewayPublishMsg` answers a `RuntimeException` with
//!   `closeCtx(ctx, IMPLEMENTATION_SPECIFIC_ERROR)`, and a conversion that
//!   fails inside a child's message goes through `ackOrClose`, which closes
//!   the channel for any client below MQTT 5.
//!
//! A topic the server does not know is acknowledged and dropped
//! (`ack(ctx, msgId, TOPIC_NAME_INVALID)`): the fixture drops it too and
//! notes it. A gateway message for a child not connected on this session
//! is accepted (the server creates the child), and noted.
//!
//! A test's fixture fails the test when it drops (see [`TbServer`]'s
//! `Drop`) if it ever closed a session, dropped a message, or saw a
//! message for a child that was not connected on that session first.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with one PUBLISH.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Processed.
    Take,
    /// Acknowledged and dropped: a topic the server does not know.
    Ignore(String),
    /// The session is closed, with the reason the server's code has.
    Close(String),
}

/// What the fixture saw, for the test to read.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub publishes: u64,
    /// Sessions the server would have closed: `topic: why`.
    pub closed: Vec<String>,
    /// Messages it would have acknowledged and dropped.
    pub ignored: Vec<String>,
    /// Gateway messages for a child not connected on that session.
    pub unconnected: Vec<String>,
}

pub struct TbServer {
    pub port: u16,
    seen: Arc<Mutex<Seen>>,
    /// True while the server is unreachable: sessions are cut and new
    /// connections closed at once.
    down: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TbServer {
    /// Listens on a free loopback port and forwards what the server takes
    /// to the broker on `upstream_port`.
    pub async fn start(upstream_port: u16) -> TbServer {
        let port = super::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the ThingsBoard fixture");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (down, _) = tokio::sync::watch::channel(false);
        let task = tokio::spawn({
            let (seen, down) = (seen.clone(), down.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if *down.borrow() {
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                        continue;
                    };
                    tokio::spawn(session(client, server, seen.clone(), down.subscribe()));
                }
            }
        });
        TbServer {
            port,
            seen,
            down,
            task,
        }
    }

    /// Makes the server unreachable (`true`: every session cut, every new
    /// connection closed) or reachable again.
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("fixture lock").clone()
    }
}

impl Drop for TbServer {
    fn drop(&mut self) {
        self.task.abort();
        if std::thread::panicking() {
            return;
        }
        let seen = self.seen();
        assert!(
            seen.closed.is_empty(),
            "ThingsBoard's transport would have closed the session: {:?}",
            seen.closed
        );
        assert!(
            seen.ignored.is_empty(),
            "ThingsBoard's transport would have dropped these: {:?}",
            seen.ignored
        );
        assert!(
            seen.unconnected.is_empty(),
            "sent for a child before its v1/gateway/connect on that session: {:?}",
            seen.unconnected
        );
    }
}

/// One MQTT connection: the client's packets judged, the broker's copied.
async fn session(
    client: TcpStream,
    server: TcpStream,
    seen: Arc<Mutex<Seen>>,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    });
    let mut state = Session::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    'outer: loop {
        let read = tokio::select! {
            r = cr.read(&mut chunk) => r,
            _ = cut.wait_for(|d| *d) => break,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some((header, len)) = super::proxy::packet_len_header(&buf) {
            let packet: Vec<u8> = buf.drain(..len).collect();
            let body = &packet[header..];
            match packet[0] >> 4 {
                1 => state.level = connect_level(body),
                3 => {
                    let Some((topic, payload)) = publish_parts(packet[0], body, state.level) else {
                        seen.lock()
                            .expect("lock")
                            .closed
                            .push("a PUBLISH that does not parse".into());
                        break 'outer;
                    };
                    let verdict = state.judge(&topic, payload);
                    let mut s = seen.lock().expect("lock");
                    s.publishes += 1;
                    s.unconnected.append(&mut state.unconnected);
                    match verdict {
                        Verdict::Take => {}
                        Verdict::Ignore(why) => {
                            s.ignored.push(format!("{topic}: {why}"));
                            continue;
                        }
                        Verdict::Close(why) => {
                            s.closed.push(format!("{topic}: {why}"));
                            break 'outer;
                        }
                    }
                }
                _ => {}
            }
            if sw.write_all(&packet).await.is_err() {
                break 'outer;
            }
        }
    }
    // Closing both sides is what the client sees of `closeCtx`.
    down.abort();
    let _ = sw.shutdown().await;
}

fn connect_level(body: &[u8]) -> u8 {
    let name_len = body
        .get(..2)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    body.get(2 + name_len).copied().unwrap_or(4)
}

/// The topic and payload of a PUBLISH body.
fn publish_parts(first: u8, body: &[u8], level: u8) -> Option<(String, &[u8])> {
    let tlen = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let topic = std::str::from_utf8(body.get(2..2 + tlen)?)
        .ok()?
        .to_string();
    let mut at = 2 + tlen;
    if (first >> 1) & 3 > 0 {
        at += 2;
    }
    if level == 5 {
        let mut props: usize = 0;
        for i in 0..4 {
            let b = *body.get(at)?;
            at += 1;
            props |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        at += props;
    }
    Some((topic, body.get(at..)?))
}

/// One session's state: its MQTT level and the children connected on it.
#[derive(Default)]
struct Session {
    level: u8,
    children: HashSet<String>,
    unconnected: Vec<String>,
}

impl Session {
    fn judge(&mut self, topic: &str, payload: &[u8]) -> Verdict {
        let verdict = if topic.starts_with("v1/gateway") {
            self.gateway(topic, payload)
        } else {
            device(topic, payload)
        };
        match verdict {
            Ok(v) => v,
            Err(why) => Verdict::Close(why),
        }
    }

    /// `MqttTransportHandler.handleGatewayPublishMsg`.
    fn gateway(&mut self, topic: &str, payload: &[u8]) -> Result<Verdict, String> {
        match topic {
            "v1/gateway/telemetry" => {
                let names = per_child(payload, Value::is_array)?;
                for (name, entries) in &names {
                    gateway_telemetry(entries)?;
                    self.uses(topic, name);
                }
            }
            "v1/gateway/attributes" => {
                for (name, _) in per_child(payload, Value::is_object)? {
                    self.uses(topic, &name);
                }
            }
            "v1/gateway/claim" => {
                for (name, claim) in per_child(payload, Value::is_object)? {
                    claim_body(&claim)?;
                    self.uses(topic, &name);
                }
            }
            "v1/gateway/attributes/request" => {
                let v = json(payload)?;
                gateway_attributes_request(&v)?;
                self.uses(topic, v["device"].as_str().unwrap_or_default());
            }
            "v1/gateway/rpc" => {
                // `onDeviceRpcResponseJson`: device, id and data, each read
                // without a null check.
                let v = json(payload)?;
                let o = v.as_object().ok_or("not a JSON object")?;
                let device = string(o, "device")?;
                int(o, "id")?;
                o.get("data").ok_or("no `data`")?;
                self.uses(topic, &device);
            }
            "v1/gateway/connect" => {
                // `onDeviceConnectJson`: `checkDeviceName`, and `type`
                // read with `getAsString` unless absent or null.
                let v = json(payload)?;
                let o = v.as_object().ok_or("not a JSON object")?;
                let device = string(o, "device")?;
                if device.is_empty() {
                    return Err("Device name is empty!".into());
                }
                match o.get("type") {
                    None | Some(Value::Null) | Some(Value::String(_)) => {}
                    Some(_) => return Err("`type` is not a string".into()),
                }
                self.children.insert(device);
            }
            "v1/gateway/disconnect" => {
                let v = json(payload)?;
                let o = v.as_object().ok_or("not a JSON object")?;
                let device = string(o, "device")?;
                if device.is_empty() {
                    return Err("Device name is empty!".into());
                }
                self.children.remove(&device);
            }
            _ => return Ok(Verdict::Ignore("not a gateway API topic".into())),
        }
        Ok(Verdict::Take)
    }

    fn uses(&mut self, topic: &str, child: &str) {
        if !self.children.contains(child) {
            self.unconnected.push(format!("{topic} for {child}"));
        }
    }
}

/// `MqttTransportHandler.processDevicePublish`, JSON payloads.
fn device(topic: &str, payload: &[u8]) -> Result<Verdict, String> {
    const RPC_RESPONSE: &str = "v1/devices/me/rpc/response/";
    const RPC_REQUEST: &str = "v1/devices/me/rpc/request/";
    const ATTR_REQUEST: &str = "v1/devices/me/attributes/request/";
    match topic {
        "v1/devices/me/telemetry" => telemetry(&json(payload)?)?,
        "v1/devices/me/attributes" => {
            json(payload)?
                .as_object()
                .ok_or("attributes are not a JSON object")?;
        }
        "v1/devices/me/claim" => {
            if !payload.is_empty() {
                claim_body(&json(payload)?)?;
            }
        }
        "/provision/request" => {
            json(payload)?.as_object().ok_or("not a JSON object")?;
        }
        t if t.starts_with(ATTR_REQUEST) => {
            // `processGetAttributeRequestMsg`: an int id in the topic, an
            // object with `clientKeys` / `sharedKeys` as strings.
            request_id(&t[ATTR_REQUEST.len()..])?;
            let v = serde_json::from_slice::<Value>(payload).map_err(|e| e.to_string())?;
            let o = v.as_object().ok_or("not a JSON object")?;
            for k in ["clientKeys", "sharedKeys"] {
                if o.get(k).is_some_and(|v| !v.is_string()) {
                    return Err(format!("`{k}` is not a string"));
                }
            }
        }
        t if t.starts_with(RPC_RESPONSE) => request_id(&t[RPC_RESPONSE.len()..])?,
        t if t.starts_with(RPC_REQUEST) => {
            // `convertToServerRpcRequest`: `method` read with `getAsString`.
            request_id(&t[RPC_REQUEST.len()..])?;
            let v = json(payload)?;
            string(v.as_object().ok_or("not a JSON object")?, "method")?;
        }
        t if firmware_request(t) => {
            // `getOtaPackageCallback`: `Integer.parseInt` of the payload.
            let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
            if !text.is_empty() && text.parse::<i32>().is_err() {
                return Err(format!("chunk size `{text}` is not an int"));
            }
        }
        _ => return Ok(Verdict::Ignore("not a device API topic".into())),
    }
    Ok(Verdict::Take)
}

/// `FW_REQUEST_PATTERN` / `SW_REQUEST_PATTERN`:
/// `v2/(fw|sw)/request/\d+/chunk/\d+`.
fn firmware_request(topic: &str) -> bool {
    let parts: Vec<&str> = topic.split('/').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    matches!(parts.as_slice(), ["v2", "fw" | "sw", "request", id, "chunk", n] if digits(id) && digits(n))
}

fn request_id(text: &str) -> Result<(), String> {
    text.parse::<i32>()
        .map(|_| ())
        .map_err(|_| format!("request id `{text}` is not an int"))
}

/// `JsonMqttAdaptor.validateJsonPayload`: not empty, and JSON.
fn json(payload: &[u8]) -> Result<Value, String> {
    if payload.is_empty() {
        return Err("Payload is empty".into());
    }
    serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))
}

fn string(o: &Map<String, Value>, key: &str) -> Result<String, String> {
    o.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("`{key}` is not a string"))
}

fn int(o: &Map<String, Value>, key: &str) -> Result<i32, String> {
    o.get(key)
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
        .ok_or_else(|| format!("`{key}` is not an int"))
}

/// `onDeviceTelemetryJson` / `onDeviceAttributesJson` / `onDeviceClaimJson`:
/// an object of children; entries of the wrong shape are skipped, and a
/// message with none left throws.
fn per_child(payload: &[u8], shape: fn(&Value) -> bool) -> Result<Vec<(String, Value)>, String> {
    let v = json(payload)?;
    let o = v
        .as_object()
        .ok_or("Can't parse value: not a JSON object")?;
    let kept: Vec<(String, Value)> = o
        .iter()
        .filter(|(_, v)| shape(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if kept.is_empty() {
        return Err("Devices message is empty".into());
    }
    Ok(kept)
}

/// `JsonConverter.convertToGatewayTelemetry`: an array of objects, each
/// with an optional `metadata` object.
fn gateway_telemetry(entries: &Value) -> Result<(), String> {
    for e in entries.as_array().ok_or("not an array")? {
        let mut o = e
            .as_object()
            .ok_or("Can't parse value: not an object")?
            .clone();
        if let Some(meta) = o.remove("metadata") {
            let m = meta.as_object().ok_or("Can't parse gateway metadata")?;
            for k in ["connector", "receivedTs", "publishedTs"] {
                if !m.get(k).is_some_and(|v| !v.is_null()) {
                    return Err(format!("Can't parse gateway element in metadata: {k}"));
                }
            }
        }
        parse_object(&o)?;
    }
    Ok(())
}

/// `JsonConverter.convertToTelemetry`: an object, or an array of objects.
fn telemetry(v: &Value) -> Result<(), String> {
    match v {
        Value::Object(o) => parse_object(o),
        Value::Array(a) => a.iter().try_for_each(|e| {
            parse_object(e.as_object().ok_or("Can't parse value: not an object")?)
        }),
        _ => Err(format!("Can't parse value: {v}")),
    }
}

/// `JsonConverter.parseObject`: `ts` read with `getAsLong` and `values`
/// with `getAsJsonObject` when both are there, else the object is the
/// values.
fn parse_object(o: &Map<String, Value>) -> Result<(), String> {
    match (o.get("ts"), o.get("values")) {
        (Some(ts), Some(values)) => {
            let long = match ts {
                Value::Number(n) => n.as_i64().is_some() || n.as_f64().is_some(),
                Value::String(s) => s.parse::<i64>().is_ok(),
                _ => false,
            };
            if !long {
                return Err(format!("`ts` {ts} is not a long"));
            }
            // `parseProtoValues` takes every JSON value and skips nulls
            // (with the default `maxStringValueLength` of 0: no limit).
            values.as_object().ok_or("`values` is not an object")?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `JsonConverter.convertToClaimDeviceProto`: an object, with `secretKey`
/// a string and `durationMs` a long where present.
fn claim_body(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("Can't parse value: not an object")?;
    if o.get("secretKey").is_some_and(|s| !s.is_string()) {
        return Err("`secretKey` is not a string".into());
    }
    if o.get("durationMs").is_some_and(|d| d.as_i64().is_none()) {
        return Err("`durationMs` is not a long".into());
    }
    Ok(())
}

/// `AbstractGatewaySessionHandler.onDeviceAttributesRequestJson`: reads
/// `id` with `getAsInt()`, `device` with `getAsString()`, `client` with
/// `getAsBoolean()` (one scope per request), then the names from `key` (a
/// string) or else `keys` (an array of strings). A `client` that is a list
/// throws (or, with one element, is read as `false`); a request without
/// `key` and `keys` throws a NullPointerException.
pub fn gateway_attributes_request(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not a JSON object")?;
    int(o, "id")?;
    string(o, "device")?;
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

/// What the server does with one PUBLISH on a fresh session (tests of the
/// fixture itself).
pub fn judge(topic: &str, payload: &[u8]) -> Verdict {
    Session::default().judge(topic, payload)
}

/// For a test whose uplink is TLS to mosquitto (the fixture judges plain
/// MQTT only): every message `seen` by a collector on uplink-only topics
/// must be one the server takes. Panics naming the first it would not.
pub fn assert_taken(seen: &[super::Seen]) {
    for s in seen {
        let verdict = judge(&s.topic, &s.payload);
        assert_eq!(
            verdict,
            Verdict::Take,
            "ThingsBoard's transport would not take {}: {}",
            s.topic,
            String::from_utf8_lossy(&s.payload)
        );
    }
}
