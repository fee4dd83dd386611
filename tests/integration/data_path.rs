//! The durable data path, end to end, with real brokers: readings published
//! at outpost's embedded broker reach a real upstream mosquitto, across
//! upstream outages, upstream restarts and outpost restarts.

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use outpost::source::broker::codec::{Props, V5};

fn mosquitto_pub(port: u16, topic: &str, payload: &str) -> std::process::Output {
    require("mosquitto_pub", "mosquitto-clients");
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", payload])
        .output()
        .expect("run mosquitto_pub")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_arrives_upstream_on_the_templated_topic_with_its_ts() {
    let w = World::new("");
    let col = w.collect("site1/#").await;
    let _op = w.start(&w.site().mqtt("", ""));

    let before = outpost::record::now_ms();
    assert!(
        mosquitto_pub(w.port, "sensors/t1/telemetry", r#"{"temp":21.5}"#)
            .status
            .success()
    );
    assert!(
        mosquitto_pub(w.port, "sensors/t1/telemetry", r#"{"temp":21.6}"#)
            .status
            .success()
    );
    assert!(mosquitto_pub(
        w.port,
        "sensors/t2/telemetry",
        r#"{"ts":1700000000123,"values":{"h":40}}"#
    )
    .status
    .success());
    assert!(
        mosquitto_pub(w.port, "sensors/t3/telemetry", "21.5 C, not json")
            .status
            .success()
    );
    // Not routed: stays on the local broker.
    assert!(mosquitto_pub(w.port, "cmd/t1/led", "on").status.success());
    let after = outpost::record::now_ms();

    assert_eq!(col.wait_for(4, Duration::from_secs(20)).await, 4);
    col.settle(Duration::from_millis(500), Duration::from_secs(5))
        .await;
    let seen = col.all();
    assert_eq!(seen.len(), 4, "{seen:?}");

    let t1: Vec<_> = seen
        .iter()
        .filter(|s| s.topic == "site1/t1/telemetry")
        .map(Seen::json)
        .collect();
    assert_eq!(t1.len(), 2);
    let (ts_a, ts_b) = (
        t1[0]["ts"].as_i64().unwrap_or(0),
        t1[1]["ts"].as_i64().unwrap_or(0),
    );
    assert!(
        ts_a >= before && ts_b <= after + 1,
        "stamped at ingest: {t1:?}"
    );
    assert!(ts_a < ts_b, "one device's stamps strictly increase: {t1:?}");
    assert_eq!(t1[0]["device"], "t1");
    assert_eq!(t1[0]["values"], serde_json::json!({"temp":21.5}));

    let t2 = seen
        .iter()
        .find(|s| s.topic == "site1/t2/telemetry")
        .expect("t2")
        .json();
    assert_eq!(
        t2["ts"], 1_700_000_000_123i64,
        "the payload's own ts is kept"
    );
    assert_eq!(t2["values"], serde_json::json!({"h":40}));

    let t3 = seen
        .iter()
        .find(|s| s.topic == "site1/t3/telemetry")
        .expect("t3")
        .json();
    assert_eq!(
        t3["values"], "21.5 C, not json",
        "non-JSON kept as a string value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_readings_buffered_through_an_outage_all_arrive_in_order() {
    let mut w = World::new("");
    let col = w.collect("site1/#").await;
    w.up.stop(); // the collector's session is persisted; the uplink is down

    let op = w.start(&w.site().mqtt("", ""));

    let (devices, each) = (20, 500);
    assert_eq!(
        publish_devices(w.port, devices, each).await,
        devices * each,
        "local broker acknowledged all"
    );
    assert!(
        wait_until(Duration::from_secs(30), || op.queued()
            == (devices * each) as i64),
        "outbox holds {} of {}",
        op.queued(),
        devices * each
    );

    w.up.restart();
    let n = col.wait_for(devices * each, Duration::from_secs(120)).await;
    assert!(n >= devices * each, "only {n} arrived upstream");
    col.settle(Duration::from_millis(500), Duration::from_secs(5))
        .await;
    let dups = assert_complete_and_ordered(&col.all(), devices, each);
    eprintln!("duplicates: {dups}");
    assert!(
        wait_until(Duration::from_secs(10), || op.queued() == 0),
        "outbox drained"
    );
}

/// `format = "batch"`: a backlog goes up as arrays of envelopes, several
/// readings of one device per PUBLISH, every reading there, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_sink_drains_a_backlog_in_arrays_complete_and_in_order() {
    let mut w = World::new("");
    let col = w.collect("site1/#").await;
    w.up.stop();
    let op = w.start(&w.site().mqtt("", "format = \"batch\"\nbatch_max = 50"));
    let (devices, each) = (4, 300);
    assert_eq!(publish_devices(w.port, devices, each).await, devices * each);
    assert!(
        wait_until(Duration::from_secs(20), || op.queued()
            == (devices * each) as i64),
        "queued {}",
        op.queued()
    );

    w.up.restart();
    assert!(
        wait_until(Duration::from_secs(60), || op.queued() == 0),
        "outbox drained: {} left",
        op.queued()
    );
    col.settle(Duration::from_millis(500), Duration::from_secs(10))
        .await;
    let seen = col.all();
    assert_complete_and_ordered(&seen, devices, each);
    let sizes: Vec<usize> = seen
        .iter()
        .map(|s| s.json().as_array().map_or(0, Vec::len))
        .collect();
    assert!(
        sizes.iter().all(|n| (1..=50).contains(n)),
        "every payload is an array of 1..=50 envelopes: {sizes:?}"
    );
    assert!(
        seen.len() * 10 <= devices * each,
        "{} publishes carried {} readings: batched",
        seen.len(),
        devices * each
    );
    for s in &seen {
        let v = s.json();
        let dev = s.topic.split('/').nth(1).unwrap_or_default();
        assert!(
            v.as_array()
                .into_iter()
                .flatten()
                .all(|e| e["device"] == dev),
            "one topic's readings per batch"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_buffered_while_upstream_is_down_survive_an_outpost_restart() {
    let mut w = World::new("");
    let col = w.collect("site1/#").await;
    w.up.stop();

    let mut op = w.start(&w.site().mqtt("", ""));
    assert_eq!(publish_devices(w.port, 5, 100).await, 500);
    assert!(
        wait_until(Duration::from_secs(20), || op.queued() == 500),
        "queued {}",
        op.queued()
    );

    let status = op.terminate();
    assert!(
        status.success(),
        "SIGTERM ends outpost with exit 0, got {status:?}"
    );
    assert_eq!(op.queued(), 500, "the outbox survives the stop");

    op.restart();
    w.up.restart();
    assert!(col.wait_for(500, Duration::from_secs(60)).await >= 500);
    col.settle(Duration::from_millis(500), Duration::from_secs(5))
        .await;
    assert_complete_and_ordered(&col.all(), 5, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_restart_mid_stream_loses_nothing() {
    let mut w = World::new("");
    let col = w.collect("site1/#").await;
    let op = w.start(&w.site().mqtt("", ""));

    let (devices, each) = (10, 600);
    // About 3 s of readings; the upstream goes away for a while in the middle.
    let publishing = tokio::spawn(publish_devices_paced(
        w.port,
        devices,
        each,
        Some(Duration::from_millis(5)),
    ));
    col.wait_for(1000, Duration::from_secs(30)).await;
    w.up.stop();
    let arrived_before_outage = col.count();
    tokio::time::sleep(Duration::from_millis(700)).await;
    w.up.restart();
    assert!(
        !publishing.is_finished(),
        "readings were still flowing when the upstream came back"
    );
    assert_eq!(publishing.await.unwrap_or(0), devices * each);
    assert!(arrived_before_outage < devices * each);

    let n = col.wait_for(devices * each, Duration::from_secs(120)).await;
    assert!(
        n >= devices * each,
        "only {n} arrived; outbox still holds {}",
        op.queued()
    );
    col.settle(Duration::from_millis(500), Duration::from_secs(5))
        .await;
    let dups = assert_complete_and_ordered(&col.all(), devices, each);
    eprintln!("duplicates after the upstream restart: {dups}");
    assert!(
        op.all_logs().matches("connected upstream").count() >= 2,
        "outpost reconnected after the outage"
    );
}

/// Publishes `n` readings of one device, in order, and waits until the
/// outbox has taken all of them in (kept or dropped).
async fn fill_store(op: &Outpost, port: u16, n: usize) {
    let msgs = readings(1, n).remove("dev-0").unwrap_or_default();
    assert_eq!(publish_all(port, "filler", msgs).await, n);
    let db = op.outbox();
    assert!(
        wait_until(Duration::from_secs(20), || {
            queued(&db) + counter(&db, "up", "dropped") == n as i64
        }),
        "outbox took in {} + {} dropped of {n}",
        queued(&db),
        counter(&db, "up", "dropped")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_with_drop_oldest_keeps_the_newest_and_counts_the_dropped() {
    let mut w = World::new("");
    let col = w.collect("site1/#").await;
    w.up.stop();
    let store = "max_bytes = \"4 KiB\"\nfull_policy = \"drop_oldest\"";
    let mut op = w.start(&w.site().mqtt(store, ""));

    fill_store(&op, w.port, 200).await;
    let kept = op.queued();
    let dropped = counter(&op.outbox(), "up", "dropped");
    assert!(kept > 0 && kept < 200, "kept {kept}");
    assert_eq!(dropped, 200 - kept);
    assert!(
        wait_until(Duration::from_secs(10), || op
            .log_text()
            .contains("records dropped")),
        "the drop is logged"
    );

    // The count survives a restart.
    assert!(op.terminate().success());
    op.restart();
    assert_eq!(counter(&op.outbox(), "up", "dropped"), dropped);

    w.up.restart();
    assert!(col.wait_for(kept as usize, Duration::from_secs(30)).await >= kept as usize);
    col.settle(Duration::from_millis(500), Duration::from_secs(5))
        .await;
    let got = arrivals(&col.all()).remove("dev-0").unwrap_or_default();
    let newest: Vec<u64> = ((200 - kept) as u64..200).collect();
    assert_eq!(
        first_arrivals(&got),
        newest,
        "the newest {kept} readings are the ones delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_with_reject_new_keeps_the_oldest_and_acknowledges_nothing_it_refused() {
    let mut w = World::new("");
    let col = w.collect("site1/#").await;
    w.up.stop();
    let store = "max_bytes = \"4 KiB\"\nfull_policy = \"reject_new\"";
    let op = w.start(&w.site().mqtt(store, ""));

    // A 3.1.1 sensor cannot be told: the first reading not stored closes
    // its connection without a PUBACK, so it keeps the reading.
    let msgs = readings(1, 200).remove("dev-0").unwrap_or_default();
    let acked = publish_all(w.port, "filler", msgs).await as i64;
    let kept = op.queued();
    assert!(kept > 0 && kept < 200, "kept {kept}");
    assert!(acked <= kept, "{acked} acknowledged, {kept} stored");
    assert!(
        wait_until(Duration::from_secs(5), || op
            .log_text()
            .contains("closing so the client sends again")),
        "{}",
        op.log_text()
    );
    // MQTT 5 is told: PUBACK 0x97 (quota exceeded), nothing stored.
    let (mut c5, _) = Raw::connected(w.port, &Hello::new(V5, "filler5")).await;
    let code = c5
        .publish(
            "sensors/dev-5/telemetry",
            b"{\"seq\":0}",
            1,
            false,
            Props::default(),
        )
        .await;
    assert_eq!(code, Ok(0x97));
    assert_eq!(op.queued(), kept);

    w.up.restart();
    assert!(col.wait_for(kept as usize, Duration::from_secs(30)).await >= kept as usize);
    col.settle(Duration::from_millis(500), Duration::from_secs(5))
        .await;
    let got = arrivals(&col.all()).remove("dev-0").unwrap_or_default();
    assert_eq!(
        first_arrivals(&got),
        (0..kept as u64).collect::<Vec<_>>(),
        "the oldest {kept} readings are kept"
    );
    // Room again: the same sensor's reading is taken.
    assert_eq!(
        c5.publish(
            "sensors/dev-5/telemetry",
            b"{\"seq\":1}",
            1,
            false,
            Props::default()
        )
        .await,
        Ok(0)
    );
    assert!(
        wait_until(Duration::from_secs(10), || col
            .all()
            .iter()
            .any(|s| s.topic.contains("dev-5"))),
        "{}",
        op.log_text()
    );
}
