//! Firmware updates of outpost's own device, end to end against the
//! ThingsBoard fixture (a real mosquitto; the test plays ThingsBoard: it
//! offers the image in shared attributes and answers chunk requests with
//! the image's bytes). Checked: every chunk arrives in a file whose
//! checksum the test computed, the fw_state sequence, the local agent's
//! notice and answer, a broken checksum ending in FAILED, and a download
//! cut by the platform going away resumed where it stopped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

use crate::common::*;
use crate::thingsboard::{platform_sends, tb_config};

const CHUNK: usize = 1024;

/// What the fixture saw: chunk requests (request id, chunk) in order.
type Asked = Arc<Mutex<Vec<(String, usize)>>>;

/// Plays ThingsBoard's firmware side on the upstream broker: answers the
/// `fw_*` attribute request with `offer`, and chunk requests with `image`
/// (chunks from `hold_from` on are not answered while `hold` is set).
fn fixture(
    port: u16,
    offer: Value,
    image: Vec<u8>,
    hold: Arc<Mutex<Option<usize>>>,
) -> (Asked, tokio::task::JoinHandle<()>) {
    let asked: Asked = Arc::default();
    let seen = asked.clone();
    let task = tokio::spawn(async move {
        let mut opts = MqttOptions::new(format!("tb-fw-{}", fastrand::u32(..)), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(opts, 64);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe("v2/fw/request/+/chunk/+", QoS::AtLeastOnce);
                    let _ = client
                        .try_subscribe("v1/devices/me/attributes/request/+", QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let parts: Vec<&str> = p.topic.split('/').collect();
                    if p.topic.starts_with("v1/devices/me/attributes/request/") {
                        let ask: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                        if ask["sharedKeys"]
                            .as_str()
                            .is_some_and(|k| k.contains("fw_title"))
                        {
                            let id = parts.last().copied().unwrap_or_default();
                            let _ = client.try_publish(
                                format!("v1/devices/me/attributes/response/{id}"),
                                QoS::AtLeastOnce,
                                false,
                                serde_json::to_vec(&json!({"shared": offer})).unwrap_or_default(),
                            );
                        }
                    } else if let [_, _, _, req, _, n] = parts.as_slice() {
                        let n: usize = n.parse().unwrap_or(0);
                        let size: usize = std::str::from_utf8(&p.payload)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        assert_eq!(size, CHUNK, "the payload is the configured chunk size");
                        seen.lock().unwrap().push((req.to_string(), n));
                        if hold.lock().unwrap().is_some_and(|h| n >= h) {
                            continue;
                        }
                        let start = (n * size).min(image.len());
                        let end = (start + size).min(image.len());
                        let _ = client.try_publish(
                            format!("v2/fw/response/{req}/chunk/{n}"),
                            QoS::AtLeastOnce,
                            false,
                            image[start..end].to_vec(),
                        );
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    (asked, task)
}

fn fw_states(tb: &Collector) -> Vec<Value> {
    tb.all()
        .iter()
        .filter(|s| s.topic == "v1/devices/me/telemetry")
        .filter_map(|s| {
            let v = s.json();
            v["values"].get("fw_state").map(|_| v["values"].clone())
        })
        .collect()
}

fn states(tb: &Collector) -> Vec<String> {
    fw_states(tb)
        .iter()
        .map(|v| v["fw_state"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The update agent answers UPDATED on `topic`; the platform hears it.
async fn report_updated(local: &AsyncClient, topic: &str, tb: &Collector) {
    local
        .publish(
            topic,
            QoS::AtLeastOnce,
            false,
            br#"{"state":"UPDATED"}"#.to_vec(),
        )
        .await
        .expect("publish");
    assert!(
        wait_until(Duration::from_secs(10), || states(tb)
            .last()
            .map(String::as_str)
            == Some("UPDATED")),
        "UPDATED reaches the platform: {:?}",
        states(tb)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_downloaded_resumed_verified_handed_over_and_a_bad_one_fails() {
    let mut w = World::thingsboard("").await;
    let tb = w.collect("v1/devices/me/telemetry").await;
    let image: Vec<u8> = (0..10 * CHUNK + 300)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let sha = outpost_sha256(&image);
    let offer = json!({
        "fw_title": "gw-fw", "fw_version": "2.0.1", "fw_checksum": sha,
        "fw_checksum_algorithm": "SHA256", "fw_size": image.len(),
    });
    let hold = Arc::new(Mutex::new(Some(5)));
    let (asked, fixture_task) = fixture(w.up.port, offer.clone(), image.clone(), hold.clone());
    let extra = "access_token = \"DEV-TOKEN\"\n[sink.tb.firmware]\nchunk_size = \"1 KiB\"\nchunk_timeout = \"2s\"";
    let op = w.start(&tb_config(&w.site(), extra));
    let (local, mut notices) = subscriber(w.port, "fw-agent", "outpost/firmware").await;

    // Chunks 0..4 come; the platform then goes away mid-download.
    assert!(
        wait_until(Duration::from_secs(15), || asked
            .lock()
            .unwrap()
            .iter()
            .any(|(_, n)| *n == 5)),
        "chunks asked: {:?}\n{}",
        asked.lock().unwrap(),
        op.log_text()
    );
    assert_eq!(states(&tb).first().map(String::as_str), Some("DOWNLOADING"));
    let first_request = asked.lock().unwrap()[0].0.clone();
    w.up.stop();
    *hold.lock().unwrap() = None;
    w.up.restart();
    let done = wait_until(Duration::from_secs(30), || {
        states(&tb).iter().any(|s| s == "UPDATING")
    });
    assert!(
        done,
        "states {:?}; asked {:?}\n{}",
        states(&tb),
        asked.lock().unwrap(),
        op.log_text()
    );
    let asked_now = asked.lock().unwrap().clone();
    let after: Vec<usize> = asked_now
        .iter()
        .filter(|(r, _)| *r != first_request)
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(
        after.first(),
        Some(&5),
        "resumed at the chunk that was not answered: {asked_now:?}"
    );
    assert!(
        !after.contains(&0),
        "nothing asked twice from the start: {asked_now:?}"
    );
    assert_eq!(
        states(&tb),
        ["DOWNLOADING", "DOWNLOADED", "VERIFIED", "UPDATING"]
    );

    // The agent gets the image and says it is installed.
    let (topic, payload) = next(&mut notices).await;
    assert_eq!(topic, "outpost/firmware");
    let notice: Value = serde_json::from_slice(&payload).expect("json");
    assert_eq!(notice["version"], "2.0.1");
    let path = notice["path"].as_str().expect("path");
    assert_eq!(
        std::fs::read(path).expect("the image file"),
        image,
        "byte for byte"
    );
    report_updated(&local, "outpost/firmware/result", &tb).await;
    let last = fw_states(&tb).last().cloned().unwrap_or_default();
    assert_eq!(last["current_fw_title"], "gw-fw");
    assert_eq!(last["current_fw_version"], "2.0.1");

    // A broken checksum: FAILED with the reason, nothing handed over.
    let before = states(&tb).len();
    let bad = json!({
        "fw_title": "gw-fw", "fw_version": "2.0.2", "fw_checksum": "0123456789abcdef0123456789abcdef",
        "fw_checksum_algorithm": "MD5", "fw_size": image.len(),
    });
    platform_sends(w.up.port, "v1/devices/me/attributes", bad).await;
    assert!(
        wait_until(Duration::from_secs(20), || states(&tb)
            .last()
            .map(String::as_str)
            == Some("FAILED")),
        "states {:?}\n{}",
        states(&tb),
        op.log_text()
    );
    assert_eq!(
        states(&tb)[before..],
        ["DOWNLOADING", "DOWNLOADED", "FAILED"]
    );
    let failed = fw_states(&tb).last().cloned().unwrap_or_default();
    assert!(
        failed["fw_error"]
            .as_str()
            .is_some_and(|e| e.contains("MD5 checksum mismatch")),
        "{failed}"
    );
    fixture_task.abort();
}

fn outpost_sha256(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A child device's firmware: ThingsBoard's gateway API has no firmware
/// transfer, so a child whose token the site gives gets a device session
/// of its own for it (the fixture sees it log in with that token); the
/// image reaches the child's own local topic and its answer goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_with_its_own_token_is_updated_over_its_own_device_session() {
    let w = World::thingsboard("").await;
    let tb = w.collect("v1/devices/me/telemetry").await;
    let image: Vec<u8> = (0..3 * CHUNK + 10).map(|i| (i * 7 % 253) as u8).collect();
    // As ThingsBoard prints it (`BaseOtaPackageService.generateChecksum`:
    // Guava's `Hashing.crc32()`, `HashCode.toString()`): the int's bytes
    // little-endian, so not the conventional `{:08x}`.
    let crc: String = crc32(&image)
        .to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let offer = json!({
        "fw_title": "valve-fw", "fw_version": "1.1", "fw_checksum": crc,
        "fw_checksum_algorithm": "CRC32", "fw_size": image.len(),
    });
    let (_asked, fixture_task) = fixture(w.up.port, offer, image.clone(), Arc::default());
    let extra = "mode = \"gateway\"\naccess_token = \"GW\"\n[sink.tb.firmware]\nenabled = false\nchunk_size = \"1 KiB\"\nchunk_timeout = \"2s\"\n[sink.tb.firmware.child_tokens]\nvalve-1 = \"VALVE-TOKEN\"";
    let op = w.start(&tb_config(&w.site(), extra));
    let (local, mut notices) = subscriber(w.port, "valve-1", "devices/valve-1/firmware").await;
    assert!(
        wait_until(Duration::from_secs(20), || states(&tb)
            .iter()
            .any(|s| s == "UPDATING")),
        "states {:?}\n{}",
        states(&tb),
        op.log_text()
    );
    assert!(
        w.up.log().contains("u'VALVE-TOKEN'"),
        "the child's own session logs in with its token"
    );
    let (_, payload) = next(&mut notices).await;
    let notice: Value = serde_json::from_slice(&payload).expect("json");
    let path = notice["path"].as_str().expect("path");
    assert!(path.contains("children/valve-1/"), "{path}");
    assert_eq!(std::fs::read(path).expect("image"), image);
    report_updated(&local, "devices/valve-1/firmware/result", &tb).await;
    assert!(
        !op.log_text().contains("VALVE-TOKEN"),
        "the token is never logged"
    );
    fixture_task.abort();
}

fn crc32(data: &[u8]) -> u32 {
    // The IEEE CRC-32 ThingsBoard uses, computed here independently.
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `MqttTransportHandler.sendOtaPackageError`: a package the server cannot
/// serve (withdrawn, unknown: `NOT_FOUND`; a chunk too large) is answered
/// with the reason on `v2/fw/error`, and the server closes the session.
/// outpost ends FAILED with that reason and does not ask again when the
/// next session's connect-time request brings the same offer back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_the_server_refuses_ends_failed_with_its_reason_and_no_request_loop() {
    let mut w = World::thingsboard("").await;
    let tb = w.collect("v1/devices/me/telemetry").await;
    let image = vec![7u8; 3 * CHUNK];
    let offer = json!({
        "fw_title": "gone-fw", "fw_version": "9", "fw_checksum": "00",
        "fw_checksum_algorithm": "SHA256", "fw_size": image.len(),
    });
    // No chunk is answered: the server refuses instead.
    let hold = Arc::new(Mutex::new(Some(0)));
    let (asked, _task) = fixture(w.up.port, offer, image, hold);
    let extra = "access_token = \"DEV-TOKEN\"\n[sink.tb.firmware]\nchunk_size = \"1 KiB\"\nchunk_timeout = \"2s\"";
    let op = w.start(&tb_config(&w.site(), extra));
    assert!(
        wait_until(Duration::from_secs(15), || !asked
            .lock()
            .unwrap()
            .is_empty()),
        "{}",
        op.log_text()
    );
    let refusal = vec![("v2/fw/error".to_string(), b"NOT_FOUND".to_vec())];
    assert_eq!(publish_all(w.up.port, "tb-fw-error", refusal).await, 1);
    let failed = || {
        fw_states(&tb).iter().any(|v| {
            v["fw_state"] == "FAILED"
                && v["fw_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("NOT_FOUND"))
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), failed),
        "{:?}\n{}",
        fw_states(&tb),
        op.log_text()
    );
    // The server closes the session; the next one asks for the `fw_*`
    // attributes again and gets the same offer.
    let connects = || {
        op.status_json()["sinks"]["tb"]["connects"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = connects();
    let chunks = asked.lock().unwrap().len();
    w.up.restart();
    assert!(
        wait_until(Duration::from_secs(15), || connects() > before),
        "{}",
        op.log_text()
    );
    // Bounded: a retry would ask at once (and every chunk_timeout after).
    assert!(
        !wait_until(Duration::from_secs(4), || asked.lock().unwrap().len()
            > chunks),
        "the refused package was asked for again: {:?}",
        asked.lock().unwrap()
    );
    assert_eq!(
        states(&tb).iter().filter(|s| *s == "DOWNLOADING").count(),
        1,
        "{:?}",
        states(&tb)
    );
}
