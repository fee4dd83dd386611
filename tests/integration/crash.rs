//! Durability under SIGKILL: every reading a sensor saw acknowledged reaches
//! the upstream broker, however abruptly outpost dies.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

type Acked = Arc<Mutex<BTreeSet<(usize, u64)>>>;

/// Publishes `{"seq":N}` for device `dev` as fast as the broker acknowledges,
/// from `first_seq` on, until the connection breaks or `limit` passes.
/// Records every (device, seq) whose PUBACK arrived.
async fn hammer(port: u16, dev: usize, first_seq: u64, acked: Acked, limit: Duration) {
    let mut opts = MqttOptions::new(format!("crash-pub-{dev}-{first_seq}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(opts, 64);
    let mut queued: VecDeque<u64> = VecDeque::new();
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let mut seq = first_seq;
    let until = Instant::now() + limit;
    while Instant::now() < until {
        while queued.len() + in_flight.len() < 32 {
            let payload = format!("{{\"seq\":{seq}}}");
            if client
                .try_publish(
                    format!("sensors/dev-{dev}/telemetry"),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .is_err()
            {
                break;
            }
            queued.push_back(seq);
            seq += 1;
        }
        match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                if let Some(s) = queued.pop_front() {
                    in_flight.insert(pkid, s);
                }
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                if let Some(s) = in_flight.remove(&ack.pkid) {
                    if let Ok(mut a) = acked.lock() {
                        a.insert((dev, s));
                    }
                }
            }
            Ok(Ok(_)) => {}
            // Killed outpost: the connection is gone. Stop; what was not
            // acknowledged was never promised.
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// POSTs `{"seq":N}` for device `dev` to HTTP ingest, one after the
/// other, until a request fails or `limit` passes. Records every (device,
/// seq) answered 200: outpost said it was committed.
fn post_until_killed(http_port: u16, dev: usize, first_seq: u64, acked: Acked, limit: Duration) {
    let until = Instant::now() + limit;
    let mut seq = first_seq;
    while Instant::now() < until {
        let body = format!("{{\"seq\":{seq}}}");
        let answered = try_request(
            http_port,
            "POST",
            &format!("/ingest/dev-{dev}"),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        match answered.map(|a| a.status) {
            Ok(200) => {
                if let Ok(mut a) = acked.lock() {
                    a.insert((dev, seq));
                }
                seq += 1;
            }
            _ => return,
        }
    }
}

/// Runs `rounds` kill/restart cycles and checks for losses after each:
/// MQTT sensors (a PUBACK is the promise) and HTTP devices (a 200 is).
async fn crash_rounds(rounds: usize, ack_after_commit: bool) {
    let w = World::new("");
    let col = w.collect("site1/#").await;
    let http_port = free_port();
    let text = format!(
        "{}\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n",
        w.site().mqtt("", "")
    )
    .replace(
        "[broker]\n",
        &format!("[broker]\nack_after_commit = {ack_after_commit}\n"),
    );
    let mut op = w.start(&text);
    let acked: Acked = Arc::new(Mutex::new(BTreeSet::new()));
    let devices = 20;
    let http_devices = 3;

    for round in 0..rounds {
        let first = round as u64 * 1_000_000;
        let mut pubs = Vec::new();
        for dev in 0..devices {
            pubs.push(tokio::spawn(hammer(
                w.port,
                dev,
                first,
                acked.clone(),
                Duration::from_secs(20),
            )));
        }
        assert!(
            wait_port(http_port, Duration::from_secs(5)),
            "the HTTP ingest port"
        );
        for dev in devices..devices + http_devices {
            let acked = acked.clone();
            pubs.push(tokio::task::spawn_blocking(move || {
                post_until_killed(http_port, dev, first, acked, Duration::from_secs(20))
            }));
        }
        let kill_after = Duration::from_millis(fastrand::u64(300..1500));
        tokio::time::sleep(kill_after).await;
        op.kill9();
        for p in pubs {
            let _ = p.await;
        }
        let promised = acked.lock().map(|a| a.len()).unwrap_or(0);
        eprintln!(
            "round {round}: SIGKILL after {kill_after:?}; {promised} readings acknowledged so far"
        );

        op.restart();
        // Drain: everything acknowledged must arrive upstream.
        let until = Instant::now() + Duration::from_secs(90);
        let missing = loop {
            let got: BTreeSet<(usize, u64)> = arrivals(&col.all())
                .into_iter()
                .flat_map(|(dev, seqs)| {
                    let d: usize = dev.trim_start_matches("dev-").parse().unwrap_or(usize::MAX);
                    seqs.into_iter().map(move |s| (d, s))
                })
                .collect();
            let want = acked.lock().map(|a| a.clone()).unwrap_or_default();
            let missing: Vec<(usize, u64)> = want.difference(&got).copied().collect();
            if missing.is_empty() || Instant::now() > until {
                break missing;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged readings never arrived upstream, e.g. {:?}\nlog of the restarted outpost:\n{}",
            missing.len(),
            &missing[..missing.len().min(10)],
            op.log_text()
        );
    }
    col.settle(Duration::from_millis(500), Duration::from_secs(5))
        .await;
    let seen = col.all();
    let unique: BTreeSet<String> = seen
        .iter()
        .map(|s| String::from_utf8_lossy(&s.payload).into_owned())
        .collect();
    eprintln!(
        "{rounds} kills: {} acknowledged, {} arrivals, {} duplicates",
        acked.lock().map(|a| a.len()).unwrap_or(0),
        seen.len(),
        seen.len() - unique.len()
    );
    assert!(
        acked.lock().map(|a| a.len()).unwrap_or(0) > rounds * devices,
        "the load was real"
    );
    let over_http = acked
        .lock()
        .map(|a| a.iter().filter(|(d, _)| *d >= devices).count())
        .unwrap_or(0);
    eprintln!("{over_http} of them answered 200 over HTTP");
    assert!(
        over_http >= rounds * http_devices,
        "HTTP readings were in it: {over_http}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_reading_is_lost_to_sigkill() {
    crash_rounds(5, true).await;
}

/// Deletes of acknowledged rows are committed in groups, without an fsync of
/// their own. A crash before such a commit keeps the row: the reading goes
/// upstream again after the restart (a duplicate, which ts-keyed platforms
/// absorb), never lost. The debug build's delete window is stretched to
/// 60 s so the kill lands while the delete is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_reading_whose_delete_was_lost_is_sent_again() {
    let w = World::new("");
    let col = w.collect("site1/#").await;
    let mut op = w.start_with_env(
        &w.site().mqtt("", ""),
        &[("OUTPOST_TEST_DELETE_WINDOW_MS", "60000")],
    );
    let reading = br#"{"seq":1}"#.to_vec();
    let sent = publish_all(
        w.port,
        "lost-delete",
        vec![("sensors/d1/telemetry".into(), reading.clone())],
    )
    .await;
    assert_eq!(sent, 1, "the sensor's PUBACK");
    assert_eq!(col.wait_for(1, Duration::from_secs(15)).await, 1);
    // The upstream PUBACK reaches outpost within milliseconds; its delete
    // then waits in the (stretched) window, uncommitted.
    let pending = wait_until(Duration::from_secs(5), || {
        op.status_json()["sinks"]["up"]["delivered"].as_u64() == Some(1)
    });
    assert!(pending, "the upstream acknowledged: {}", op.status_json());
    op.kill9();
    assert_eq!(
        queued_payloads(&op.outbox()).unwrap_or_default(),
        vec![reading.clone()],
        "the row outlived the kill: its delete was not committed"
    );

    op.restart();
    assert_eq!(
        col.wait_for(2, Duration::from_secs(15)).await,
        2,
        "sent again after the restart; log:\n{}",
        op.log_text()
    );
    let seen: Vec<serde_json::Value> = col.all().iter().map(|s| s.json()).collect();
    assert_eq!(seen[0], seen[1], "the same reading, measured ts included");
    assert_eq!(seen[1]["values"]["seq"], 1);
    // Once acknowledged again and shut down cleanly, it is gone for good.
    op.terminate();
    assert_eq!(op.queued(), 0, "the clean stop committed the delete");
}

/// Acknowledged rows are deleted together a few milliseconds after their
/// PUBACKs. When the connection ends first, they are deleted before the
/// next connection reads the queue, so a reconnect sends nothing already
/// acknowledged again. The debug build's hold is stretched to 60 s so the
/// reconnect lands while the rows are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_acknowledged_before_a_reconnect_are_not_sent_again() {
    let mut w = World::new("");
    let col = w.collect("site1/#").await;
    let op = w.start_with_env(
        &w.site().mqtt("", ""),
        &[("OUTPOST_TEST_ACK_HOLD_MS", "60000")],
    );
    let reading = |seq: u32| {
        (
            "sensors/d1/telemetry".to_string(),
            format!("{{\"seq\":{seq}}}").into_bytes(),
        )
    };
    assert_eq!(
        publish_all(w.port, "held-acks", (0..5).map(reading).collect()).await,
        5
    );
    assert_eq!(col.wait_for(5, Duration::from_secs(15)).await, 5);
    let acked = wait_until(Duration::from_secs(5), || {
        op.status_json()["sinks"]["up"]["delivered"].as_u64() == Some(5)
    });
    assert!(acked, "the upstream acknowledged: {}", op.status_json());
    assert_eq!(op.queued(), 5, "held: acknowledged, not deleted yet");

    w.up.restart();
    assert!(
        wait_until(Duration::from_secs(10), || op.queued() == 0),
        "deleted when the connection ended, not left for the next one to send; log:\n{}",
        op.log_text()
    );
    assert_eq!(publish_all(w.port, "held-acks", vec![reading(99)]).await, 1);
    assert_eq!(col.wait_for(6, Duration::from_secs(15)).await, 6);
    col.settle(Duration::from_millis(500), Duration::from_secs(5))
        .await;
    let seqs: Vec<u64> = col
        .all()
        .iter()
        .filter_map(|s| s.json()["values"]["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4, 99], "nothing sent twice");
}
