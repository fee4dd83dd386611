//! The ThingsBoard sink against a ThingsBoard fixture: a real mosquitto
//! standing in for ThingsBoard's MQTT transport, with the test playing the
//! platform (it subscribes to `v1/#` and checks topics and payload shapes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

pub(crate) fn tb_config(site: &Site, sink_extra: &str) -> String {
    format!(
        r#"{header}
[[route]]
topic = "sensors/+/telemetry"
sink = "tb"

[[route]]
topic = "sensors/+/attributes"
sink = "tb"
kind = "attributes"

[[route]]
topic = "devices/+/claim"
sink = "tb"
kind = "claim"

[[route]]
topic = "devices/+/rpc/client/request/+"
sink = "tb"
kind = "rpc"

[sink.tb]
type = "thingsboard"
url = "{url}"
reconnect_min = "200ms"
reconnect_max = "1s"
{sink_extra}
"#,
        header = site.header("", ""),
        url = site.url,
    )
}

/// Gateway telemetry as seen by the platform: device → [(ts, values)].
fn gateway_telemetry(seen: &[Seen]) -> BTreeMap<String, Vec<(i64, Value)>> {
    let mut out: BTreeMap<String, Vec<(i64, Value)>> = BTreeMap::new();
    for s in seen.iter().filter(|s| s.topic == "v1/gateway/telemetry") {
        let Value::Object(devices) = s.json() else {
            panic!(
                "gateway telemetry must be an object: {:?}",
                String::from_utf8_lossy(&s.payload)
            )
        };
        for (dev, entries) in devices {
            for e in entries.as_array().expect("an array of entries per device") {
                let ts = e["ts"].as_i64().expect("every entry carries ts");
                out.entry(dev.clone())
                    .or_default()
                    .push((ts, e["values"].clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_mode_carries_fifty_children_over_one_connection() {
    let w = World::thingsboard("").await;
    let tb = w.collect("v1/#").await;
    let extra = "mode = \"gateway\"\naccess_token = \"GW-TOKEN-1\"\ndevice_type = \"greenhouse-sensor\"\nmax_payload_size = \"4 KiB\"";
    let _op = w.start(&tb_config(&w.site(), extra));

    let (devices, each) = (50, 20);
    assert_eq!(publish_devices(w.port, devices, each).await, devices * each);
    let attrs = vec![(
        "sensors/dev-0/attributes".to_string(),
        br#"{"firmware":"1.4.2"}"#.to_vec(),
    )];
    assert_eq!(publish_all(w.port, "attr-pub", attrs).await, 1);

    let done = wait_until(Duration::from_secs(60), || {
        let t = gateway_telemetry(&tb.all());
        t.len() == devices
            && t.values().all(|v| v.len() >= each)
            && tb.all().iter().any(|s| s.topic == "v1/gateway/attributes")
    });
    assert!(done, "not everything arrived: {} messages", tb.count());
    let seen = tb.all();

    // One connect per child, before its first data, with the device type.
    let connects: Vec<Value> = seen
        .iter()
        .filter(|s| s.topic == "v1/gateway/connect")
        .map(Seen::json)
        .collect();
    let names: BTreeSet<String> = connects
        .iter()
        .map(|c| c["device"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        connects.len(),
        devices,
        "exactly one connect per child on one connection"
    );
    assert_eq!(names.len(), devices);
    assert!(connects.iter().all(|c| c["type"] == "greenhouse-sensor"));
    for d in 0..devices {
        let dev = format!("dev-{d}");
        let first_connect = seen
            .iter()
            .position(|s| s.topic == "v1/gateway/connect" && s.json()["device"] == dev.as_str());
        let first_data = seen
            .iter()
            .position(|s| s.topic == "v1/gateway/telemetry" && s.json().get(&dev).is_some());
        assert!(first_connect < first_data, "{dev}: connect before data");
    }

    // Every reading, in order per device, with strictly increasing stamps.
    for (dev, entries) in gateway_telemetry(&seen) {
        let seqs: Vec<u64> = entries
            .iter()
            .map(|(_, v)| v["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(
            first_arrivals(&seqs),
            (0..each as u64).collect::<Vec<_>>(),
            "{dev}"
        );
        let ts: Vec<i64> = entries.iter().map(|(ts, _)| *ts).collect();
        assert!(
            ts.windows(2).all(|w| w[0] < w[1]),
            "{dev}: one value per ms: {ts:?}"
        );
    }
    // Batching: many readings per PUBLISH, none above max_payload_size.
    let telemetry: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.topic == "v1/gateway/telemetry")
        .collect();
    assert!(
        telemetry.len() < devices * each / 4,
        "{} publishes for {} readings",
        telemetry.len(),
        devices * each
    );
    assert!(telemetry.iter().all(|s| s.payload.len() <= 4096));

    let attrs = seen
        .iter()
        .find(|s| s.topic == "v1/gateway/attributes")
        .expect("attributes")
        .json();
    assert_eq!(attrs, serde_json::json!({"dev-0":{"firmware":"1.4.2"}}));
    assert!(
        w.up.log().contains("u'GW-TOKEN-1'"),
        "the access token is the MQTT username"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_mode_keeps_measurement_ts_through_an_outage() {
    let mut w = World::thingsboard("").await;
    let tb = w.collect("v1/#").await;
    w.up.stop();
    let _op = w.start(&tb_config(&w.site(), "access_token = \"DEV-TOKEN\""));

    let msgs: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| {
            (
                "sensors/probe/telemetry".to_string(),
                format!(
                    "{{\"ts\":{},\"values\":{{\"seq\":{i}}}}}",
                    1_700_000_000_000i64 + i * 1000
                )
                .into_bytes(),
            )
        })
        .collect();
    assert_eq!(publish_all(w.port, "probe", msgs).await, 30);
    tokio::time::sleep(Duration::from_secs(2)).await; // the outage lasts
    w.up.restart();

    let entries = || -> Vec<(i64, u64)> {
        tb.all()
            .iter()
            .filter(|s| s.topic == "v1/devices/me/telemetry")
            .flat_map(|s| {
                s.json()
                    .as_array()
                    .cloned()
                    .expect("device telemetry is an array of ts/values")
            })
            .map(|e| {
                (
                    e["ts"].as_i64().expect("ts"),
                    e["values"]["seq"].as_u64().expect("seq"),
                )
            })
            .collect()
    };
    assert!(wait_until(Duration::from_secs(30), || entries().len() >= 30));
    let got = entries();
    for (ts, seq) in &got {
        assert_eq!(
            *ts,
            1_700_000_000_000i64 + *seq as i64 * 1000,
            "the measurement ts, not the send time"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_one_clear_error_and_no_reconnect_storm() {
    let (_pwdir, pwfile) = password_file("some-other-device", "x");
    let w = World::thingsboard(&format!(
        "allow_anonymous false\npassword_file {}",
        pwfile.display()
    ))
    .await;

    let token = "NOT-A-VALID-TOKEN";
    let text = tb_config(&w.site(), &format!("access_token = \"{token}\""))
        .replace("reconnect_max = \"1s\"", "reconnect_max = \"30s\"");
    let op = w.start(&text);
    tokio::time::sleep(Duration::from_secs(10)).await;

    let attempts = w.up.log().matches("New connection from").count();
    assert!(
        (1..=2).contains(&attempts),
        "{attempts} CONNECT attempts in 10 s"
    );
    let log = op.log_text();
    assert!(
        log.contains("sink=\"tb\"") || log.contains("sink=tb"),
        "names the sink:\n{log}"
    );
    assert!(
        log.contains("ThingsBoard 0x05"),
        "says what the code means:\n{log}"
    );
    assert!(!log.contains(token), "the token is never logged:\n{log}");
}

/// Starts a gateway-mode outpost against a fixture broker and waits until
/// its downlink subscriptions are in place.
pub(crate) async fn gateway_with_downlink(extra: &str) -> (World, Collector, Outpost, u16) {
    let w = World::thingsboard("").await;
    let tb = w.collect("v1/#").await;
    let sink = format!("mode = \"gateway\"\naccess_token = \"GW\"\n{extra}");
    let op = w.start(&tb_config(&w.site(), &sink));
    assert!(
        wait_until(Duration::from_secs(15), || w
            .up
            .log()
            .contains("v1/gateway/rpc (QoS 1)")),
        "outpost subscribed to gateway RPC:\n{}",
        w.up.log()
    );
    let port = w.port;
    (w, tb, op, port)
}

/// Plays ThingsBoard: waits for outpost's `getSessionLimits` request (seen
/// by `tb`, a collector on `v1/#`) and answers it with `limits`.
pub(crate) async fn answer_session_limits(tb: &Collector, port: u16, limits: Value) {
    let request = || {
        tb.all().into_iter().find(|s| {
            s.topic.starts_with("v1/devices/me/rpc/request/")
                && s.json()["method"] == "getSessionLimits"
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || request().is_some()),
        "outpost asks for its limits"
    );
    let id = request()
        .map(|s| s.topic.rsplit('/').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    platform_sends(port, &format!("v1/devices/me/rpc/response/{id}"), limits).await;
}

pub(crate) async fn platform_sends(port: u16, topic: &str, body: Value) {
    let msg = vec![(topic.to_string(), serde_json::to_vec(&body).expect("json"))];
    assert_eq!(
        publish_all(port, &format!("tb-platform-{}", fastrand::u32(..)), msg).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_attributes_reach_a_device_that_connects_later() {
    let (w, _tb, _op, port) = gateway_with_downlink("").await;
    platform_sends(
        w.up.port,
        "v1/gateway/attributes",
        serde_json::json!({"device":"dev-7","data":{"interval":30}}),
    )
    .await;
    platform_sends(
        w.up.port,
        "v1/gateway/attributes",
        serde_json::json!({"device":"dev-7","data":{"led":"on"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The sensor connects only now: the retained, merged settings wait for it.
    let (_s, mut rx) = subscriber(port, "dev-7", "devices/dev-7/attributes").await;
    let (topic, payload) = next(&mut rx).await;
    assert_eq!(topic, "devices/dev-7/attributes");
    let v: Value = serde_json::from_slice(&payload).expect("json");
    assert_eq!(v, serde_json::json!({"interval":30,"led":"on"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_rpc_round_trip_and_timeout() {
    let (w, tb, _op, port) = gateway_with_downlink("rpc_timeout = \"1s\"").await;

    // A device that answers its RPCs.
    let (device, mut requests) = subscriber(port, "dev-1", "devices/dev-1/rpc/request/+").await;
    platform_sends(w.up.port, "v1/gateway/rpc", serde_json::json!({"device":"dev-1","data":{"id":42,"method":"toggle","params":{"on":true}}})).await;
    let (topic, payload) = next(&mut requests).await;
    assert_eq!(topic, "devices/dev-1/rpc/request/42");
    let req: Value = serde_json::from_slice(&payload).expect("json");
    assert_eq!(
        req,
        serde_json::json!({"method":"toggle","params":{"on":true}})
    );
    device
        .publish(
            "devices/dev-1/rpc/response/42",
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"on":true}"#.to_vec(),
        )
        .await
        .expect("reply");

    // A device that never answers.
    platform_sends(
        w.up.port,
        "v1/gateway/rpc",
        serde_json::json!({"device":"dev-2","data":{"id":43,"method":"reboot"}}),
    )
    .await;

    let replies = || -> Vec<Value> {
        tb.all()
            .iter()
            .filter(|s| s.topic == "v1/gateway/rpc")
            .map(Seen::json)
            .filter(|v| v.get("id").is_some())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || replies().len() >= 2),
        "{:?}",
        replies()
    );
    let r = replies();
    let ok = r.iter().find(|v| v["id"] == 42).expect("reply to 42");
    assert_eq!(
        ok,
        &serde_json::json!({"device":"dev-1","id":42,"data":{"on":true}})
    );
    let timed_out = r.iter().find(|v| v["id"] == 43).expect("reply to 43");
    assert_eq!(timed_out["device"], "dev-2");
    assert!(
        timed_out["data"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no reply"),
        "{timed_out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outpost_answers_its_own_rpc() {
    let (w, tb, op, _port) = gateway_with_downlink("").await;
    platform_sends(
        w.up.port,
        "v1/devices/me/rpc/request/1",
        serde_json::json!({"method":"ping"}),
    )
    .await;
    platform_sends(
        w.up.port,
        "v1/devices/me/rpc/request/2",
        serde_json::json!({"method":"status","params":{}}),
    )
    .await;
    platform_sends(
        w.up.port,
        "v1/devices/me/rpc/request/3",
        serde_json::json!({"method":"set_log_level","params":{"level":"debug"}}),
    )
    .await;
    platform_sends(
        w.up.port,
        "v1/devices/me/rpc/request/4",
        serde_json::json!({"method":"self_destruct"}),
    )
    .await;
    let reply = |id: u32| {
        tb.all()
            .into_iter()
            .find(|s| s.topic == format!("v1/devices/me/rpc/response/{id}"))
            .map(|s| s.json())
    };
    assert!(wait_until(Duration::from_secs(10), || (1..=4)
        .all(|i| reply(i).is_some())));
    assert_eq!(reply(1), Some(serde_json::json!({"pong":true})));
    let status = reply(2).expect("status");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["sinks"]["tb"]["connected"], true);
    assert!(status["sinks"]["tb"]["queued"].is_u64());
    assert!(
        status["hint"].is_null(),
        "asked over ThingsBoard, yet told no platform was reached: {status}"
    );
    assert_eq!(
        reply(3),
        Some(serde_json::json!({"ok":true,"level":"debug"}))
    );
    assert!(reply(4).expect("error reply")["error"]
        .as_str()
        .unwrap_or_default()
        .contains("unknown method"));
    assert!(wait_until(Duration::from_secs(5), || op
        .log_text()
        .contains("log level changed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limits_from_get_session_limits_are_obeyed() {
    let w = World::thingsboard("").await;
    let tb = w.collect("v1/#").await;
    let extra = "mode = \"gateway\"\naccess_token = \"GW\"";
    let _op = w.start(&tb_config(&w.site(), extra));

    // Play ThingsBoard: answer getSessionLimits.
    let limits = serde_json::json!({
        "maxPayloadSize": 2048,
        "maxInflightMessages": 10,
        "rateLimits": {"messages": "50:1", "telemetryMessages": "50:1"},
        "gatewayRateLimits": {"messages": "5:1,40:10", "telemetryMessages": "5:1"}
    });
    answer_session_limits(&tb, w.up.port, limits).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start = std::time::Instant::now();
    let (devices, each) = (10, 40);
    assert_eq!(publish_devices(w.port, devices, each).await, devices * each);
    let done = wait_until(Duration::from_secs(60), || {
        let t = gateway_telemetry(&tb.all());
        t.len() == devices && t.values().all(|v| v.len() >= each)
    });
    assert!(done, "everything arrives, at the allowed rate");

    // Gateway limits apply, as ThingsBoard's own buckets count them
    // (`TbRateLimits`; see `tb_limits::check`).
    let sent: Vec<std::time::Instant> = tb
        .all()
        .iter()
        .filter(|s| s.topic.starts_with("v1/gateway/"))
        .map(|s| s.at)
        .collect();
    let events: Vec<(std::time::Instant, u64)> = sent.iter().map(|t| (*t, 1)).collect();
    let mut failures = Vec::new();
    let lines = crate::tb_limits::check("gateway", "messages", "5:1,40:10", &events, &mut failures);
    assert!(failures.is_empty(), "{failures:?}\n{lines:?}");
    assert!(
        sent.len() > 5,
        "the drain needed several seconds' worth of messages: {}",
        sent.len()
    );
    let big = tb
        .all()
        .iter()
        .filter(|s| s.at >= start)
        .map(|s| s.payload.len())
        .max()
        .unwrap_or(0);
    assert!(big <= 2048, "maxPayloadSize obeyed: {big}");
}

fn dead_letter_listing(config: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["dead-letters", "--config"])
        .arg(config)
        .output()
        .expect("outpost dead-letters");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What ThingsBoard stores of a reading is what its `JsonConverter` makes
/// of it (`parseProtoValues`, `buildNumericKeyValueProto`): a null value is
/// skipped and the other keys kept, an integer beyond 64 bits is kept as
/// its digits in a string. A reading of nulls alone would store nothing:
/// it is refused at ingest, with the reason, and the queue moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_sent_as_thingsboards_json_converter_reads_them() {
    let w = World::thingsboard("").await;
    let tb = w.collect("v1/#").await;
    let _op = w.start(&tb_config(&w.site(), "access_token = \"T\""));

    let big = "123456789012345678901234567890";
    let msgs = vec![
        ("sensors/a/telemetry".to_string(), br#"{"seq":0}"#.to_vec()),
        (
            "sensors/a/telemetry".to_string(),
            br#"{"broken":null}"#.to_vec(),
        ),
        (
            "sensors/a/telemetry".to_string(),
            br#"{"seq":2,"h":null}"#.to_vec(),
        ),
        (
            "sensors/a/telemetry".to_string(),
            format!(r#"{{"seq":3,"count":{big}}}"#).into_bytes(),
        ),
    ];
    assert_eq!(publish_all(w.port, "a", msgs).await, 4);
    let values = || -> Vec<Value> {
        tb.all()
            .iter()
            .filter(|s| s.topic == "v1/devices/me/telemetry")
            .flat_map(|s| s.json().as_array().cloned().unwrap_or_default())
            .map(|e| e["values"].clone())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), || values().len() >= 3),
        "{:?}",
        values()
    );
    assert_eq!(
        values()[..3],
        [
            serde_json::json!({"seq": 0}),
            serde_json::json!({"seq": 2}),
            serde_json::json!({"seq": 3, "count": big}),
        ],
        "the null left out, the digits kept"
    );
    let listing = dead_letter_listing(&w.path().join("outpost.toml"));
    assert!(listing.contains("1 dead letter(s)"), "{listing}");
    assert!(listing.contains("every value is null"), "{listing}");
}

/// The platform's real packet limit is smaller than the one configured: it
/// closes the connection on anything larger, as ThingsBoard does. With
/// `backlog`, everything is queued first, so the big record travels inside
/// a batch that must be split to find it.
async fn poison(backlog: bool) {
    let mut w = World::thingsboard("max_packet_size 1500").await;
    let tb = w.collect("v1/#").await;
    if backlog {
        w.up.stop();
    }
    let op = w.start(&tb_config(&w.site(), "access_token = \"T\""));
    // The big record sits in the middle of the stream; whether it goes
    // alone or in a batch depends on timing, and both must end the same.
    let mut msgs: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| {
            (
                "sensors/a/telemetry".to_string(),
                format!("{{\"seq\":{i}}}").into_bytes(),
            )
        })
        .collect();
    msgs.insert(
        5,
        (
            "sensors/a/telemetry".to_string(),
            format!("{{\"seq\":99,\"blob\":\"{}\"}}", "x".repeat(3000)).into_bytes(),
        ),
    );
    assert_eq!(publish_all(w.port, "a", msgs).await, 11);
    if backlog {
        assert!(wait_until(Duration::from_secs(10), || op.queued() == 11));
        w.up.restart();
    }

    let seqs = || -> Vec<u64> {
        tb.all()
            .iter()
            .filter(|s| s.topic == "v1/devices/me/telemetry")
            .flat_map(|s| s.json().as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["values"]["seq"].as_u64())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(60), || first_arrivals(&seqs()).len()
            >= 10),
        "{:?}",
        seqs()
    );
    let mut got = first_arrivals(&seqs());
    got.sort();
    assert_eq!(got, (0..10).collect::<Vec<u64>>());
    let listing = dead_letter_listing(&w.path().join("outpost.toml"));
    assert!(listing.contains("1 dead letter(s)"), "{listing}");
    assert!(listing.contains("closed the connection"), "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_makes_the_platform_hang_up_is_found_and_moved_aside() {
    poison(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_inside_a_batch_is_found_by_splitting_the_batch() {
    poison(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_and_client_side_rpc_from_a_local_device_are_relayed() {
    let (w, tb, _op, port) = gateway_with_downlink("").await;

    let claim = vec![(
        "devices/dev-3/claim".to_string(),
        br#"{"secretKey":"abc","durationMs":60000}"#.to_vec(),
    )];
    assert_eq!(publish_all(port, "dev-3-claim", claim).await, 1);
    assert!(wait_until(Duration::from_secs(10), || tb
        .all()
        .iter()
        .any(|s| s.topic == "v1/gateway/claim")));
    let c = tb
        .all()
        .into_iter()
        .find(|s| s.topic == "v1/gateway/claim")
        .expect("claim")
        .json();
    assert_eq!(
        c,
        serde_json::json!({"dev-3":{"secretKey":"abc","durationMs":60000}})
    );

    // The device asks ThingsBoard something; the test answers as the platform.
    let (device, mut answers) =
        subscriber(port, "dev-3", "devices/dev-3/rpc/client/response/+").await;
    device
        .publish(
            "devices/dev-3/rpc/client/request/7",
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"method":"getTime","params":{}}"#.to_vec(),
        )
        .await
        .expect("request");
    let request = || {
        tb.all().into_iter().find(|s| {
            s.topic.starts_with("v1/devices/me/rpc/request/") && s.json()["method"] == "getTime"
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || request().is_some()),
        "the request reaches the platform"
    );
    let id = request()
        .map(|s| s.topic.rsplit('/').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    platform_sends(
        w.up.port,
        &format!("v1/devices/me/rpc/response/{id}"),
        serde_json::json!({"time": 1700000000000i64}),
    )
    .await;
    let (topic, payload) = next(&mut answers).await;
    assert_eq!(
        topic, "devices/dev-3/rpc/client/response/7",
        "the device's own request id"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).expect("json"),
        serde_json::json!({"time": 1700000000000i64})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_readings_are_not_starved_by_a_draining_backlog() {
    let mut w = World::thingsboard("").await;
    let tb = w.collect("v1/#").await;
    w.up.stop();
    // A slow platform: two messages a second, about 15 readings each.
    let extra = "mode = \"gateway\"\naccess_token = \"GW\"\nrate_limits = \"2:1\"\nmax_payload_size = \"1 KiB\"";
    let op = w.start(&tb_config(&w.site(), extra));
    let backlog: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| {
            (
                "sensors/old/telemetry".to_string(),
                format!("{{\"seq\":{i}}}").into_bytes(),
            )
        })
        .collect();
    assert_eq!(publish_all(w.port, "old", backlog).await, 300);
    assert!(wait_until(Duration::from_secs(10), || op.queued() == 300));
    w.up.restart();

    // The drain takes several seconds; a live reading sent two seconds in
    // must overtake what is left of it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let live = vec![(
        "sensors/live/telemetry".to_string(),
        br#"{"seq":0}"#.to_vec(),
    )];
    assert_eq!(publish_all(w.port, "live", live).await, 1);
    assert!(
        wait_until(Duration::from_secs(30), || gateway_telemetry(&tb.all())
            .contains_key("live")),
        "the live reading arrives"
    );
    let old_so_far = gateway_telemetry(&tb.all())
        .get("old")
        .map(Vec::len)
        .unwrap_or(0);
    assert!(
        old_so_far < 300,
        "the backlog was still draining ({old_so_far}/300) when the live reading arrived"
    );

    // And the backlog completes.
    assert!(wait_until(Duration::from_secs(60), || {
        gateway_telemetry(&tb.all())
            .get("old")
            .map(Vec::len)
            .unwrap_or(0)
            >= 300
    }));
}

/// ThingsBoard numbers server-side RPCs per device from small integers
/// (`DeviceActorMessageProcessor` keeps `rpcSeq` per device), and outpost
/// numbers its client-side ones from 1: the two meet. A client-side RPC the
/// platform never answers (its default rule chain does not answer unknown
/// methods) must not hide a server RPC with the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_rpc_with_the_id_of_a_pending_client_rpc_is_answered() {
    let (w, tb, _op, port) = gateway_with_downlink("").await;
    let (device, _answers) = subscriber(port, "dev-4", "devices/dev-4/rpc/client/response/+").await;
    device
        .publish(
            "devices/dev-4/rpc/client/request/1",
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"method":"unknownToTheRuleChain","params":{}}"#.to_vec(),
        )
        .await
        .expect("request");
    let request = || {
        tb.all().into_iter().find(|s| {
            s.topic.starts_with("v1/devices/me/rpc/request/")
                && s.json()["method"] == "unknownToTheRuleChain"
        })
    };
    assert!(wait_until(Duration::from_secs(10), || request().is_some()));
    let id = request()
        .map(|s| s.topic.rsplit('/').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    // Never answered. The server's own RPC with that same id:
    platform_sends(
        w.up.port,
        &format!("v1/devices/me/rpc/request/{id}"),
        serde_json::json!({"method":"ping"}),
    )
    .await;
    let reply = || {
        tb.all()
            .into_iter()
            .find(|s| s.topic == format!("v1/devices/me/rpc/response/{id}"))
            .map(|s| s.json())
    };
    assert!(
        wait_until(Duration::from_secs(10), || reply().is_some()),
        "the server RPC {id} was dropped as if it were outpost's own request"
    );
    assert_eq!(reply(), Some(serde_json::json!({"pong":true})));
}
