//! A Pi's SD card as a site meets it: it fills while the cloud is away, and
//! it fails (the kernel remounts it read-only). The outbox lives on a small
//! ext4 image on a loop device; outpost's other state stays beside the
//! test. Each test ends with a canary and an account of what was lost.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use outpost::source::broker::codec::{Props, V5};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

use crate::common::*;

/// Publishes `{"seq":N,"pad":...}` (about `size` bytes) for `device` from
/// `first` on, pipelined, until the broker stops acknowledging (a refusal
/// closes a 3.1.1 connection) or `max` were sent. Returns the seqs whose
/// PUBACK came.
async fn fill(port: u16, device: &str, first: u64, max: u64, size: usize) -> BTreeSet<u64> {
    let mut opts = MqttOptions::new(format!("filler-{first}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 64);
    let pad = "p".repeat(size);
    let mut acked = BTreeSet::new();
    let mut queued: VecDeque<u64> = VecDeque::new();
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let mut seq = first;
    let end = first + max;
    loop {
        while seq < end && queued.len() + in_flight.len() < 32 {
            let body = format!("{{\"seq\":{seq},\"pad\":\"{pad}\"}}");
            if client
                .try_publish(
                    format!("sensors/{device}/telemetry"),
                    QoS::AtLeastOnce,
                    false,
                    body,
                )
                .is_err()
            {
                break;
            }
            queued.push_back(seq);
            seq += 1;
        }
        if seq >= end && queued.is_empty() && in_flight.is_empty() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                if let Some(s) = queued.pop_front() {
                    in_flight.insert(pkid, s);
                }
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                if let Some(s) = in_flight.remove(&ack.pkid) {
                    acked.insert(s);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let _ = client.try_disconnect();
    acked
}

/// Readings of ~4 KB for `device` until the card is full (a reading is
/// refused); the seqs acknowledged.
async fn fill_card(op: &Outpost, port: u16, device: &str, img: &Image) -> BTreeSet<u64> {
    let started = Instant::now();
    let mut acked = BTreeSet::new();
    let mut next = 0;
    loop {
        let got = fill(port, device, next, 2_000, 4_000).await;
        let full = got.len() < 2_000;
        acked.extend(got);
        next += 2_000;
        if full {
            break;
        }
        assert!(next < 40_000, "the card never filled: {}", op.log_text());
    }
    eprintln!(
        "filled in {:.1} s: {} readings acknowledged, {} bytes free on the card",
        started.elapsed().as_secs_f64(),
        acked.len(),
        img.free()
    );
    acked
}

/// One MQTT 5 reading; its PUBACK reason code (0: stored).
async fn one(port: u16, id: &str, device: &str, n: u64) -> u8 {
    let (mut c, _) = Raw::connected(port, &Hello::new(V5, id)).await;
    let code = c
        .publish(
            &format!("sensors/{device}/telemetry"),
            format!("{{\"seq\":{n}}}").as_bytes(),
            1,
            false,
            Props::default(),
        )
        .await
        .unwrap_or_else(|got| panic!("{id}: no PUBACK: {got:?}"));
    c.disconnect().await;
    code
}

/// Offers readings of `device` (seq 0, 1, ...) every 200 ms, at most
/// `tries` of them, until one is stored; its seq.
async fn until_taken(port: u16, device: &str, tries: u64) -> Option<u64> {
    for n in 0..tries {
        if one(port, &format!("{device}-{n}"), device, n).await == 0 {
            return Some(n);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// How many times each seq of `device` arrived upstream.
fn arrived(col: &Collector, device: &str) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for n in arrivals(&col.all()).remove(device).unwrap_or_default() {
        *out.entry(n).or_default() += 1;
    }
    out
}

fn outbox_condition(op: &Outpost) -> String {
    op.status_json()["outbox"]["condition"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

fn queued(op: &Outpost) -> Option<u64> {
    op.status_json()["sinks"]["up"]["queued"].as_u64()
}

async fn until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    tokio::time::timeout(within, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_while_the_cloud_is_away_drains_and_takes_readings_again_by_itself() {
    let mut w = World::new("");
    let img = Image::new(w.path(), 64);
    let col = w.collect("site1/#").await;
    w.up.stop();
    let outbox = img.mnt.join("outbox.db");
    let store = format!(
        "path = \"{}\"\ndisk_reserve = \"4 MiB\"\nmax_bytes = \"1 GiB\"",
        outbox.display()
    );
    let mut op = w.start(&w.site().mqtt(&store, ""));

    // The cloud is away; readings of ~4 KB fill the 64 MiB card.
    let acked = fill_card(&op, w.port, "fill", &img).await;
    assert!(acked.len() > 5_000, "{} acknowledged", acked.len());
    assert_eq!(
        one(w.port, "refused", "late", 0).await,
        0x97,
        "a full disk refuses"
    );
    assert_eq!(outbox_condition(&op), "disk full", "{}", op.log_text());
    assert!(
        !outbox.with_extension("db.reserve").exists(),
        "the reserve was given up for the drain"
    );

    let text = op.status_text();
    assert!(text.contains("outbox: DISK FULL"), "{text}");

    // A restart on the full disk: the broker comes up and answers. (A
    // clean stop gave the WAL's space back, so the reading may be taken,
    // with the reserve held again; then it must arrive like the others.)
    op.terminate();
    op.restart();
    let late = one(w.port, "after-restart", "late", 1).await;
    assert!(late == 0 || late == 0x97, "{late:#x}");

    // The cloud returns. Halfway through the drain outpost is restarted.
    let back = Instant::now();
    w.up.restart();
    let half = acked.len() / 2;
    assert!(
        col.wait_for(half, Duration::from_secs(60)).await >= half,
        "the drain did not start: {}",
        op.log_text()
    );
    op.terminate();
    op.restart();
    assert!(
        until(Duration::from_secs(90), || queued(&op) == Some(0)).await,
        "the backlog did not drain: {:?} queued\n{}",
        queued(&op),
        op.log_text()
    );
    let drained = back.elapsed();

    // New readings are taken again: no restart, no space freed by hand.
    let taken = until_taken(w.port, "canary", 300).await;
    let accepted_after = back.elapsed();
    let n = taken.unwrap_or_else(|| {
        panic!(
            "new readings are still refused {:.0} s after the cloud returned:\n{}",
            accepted_after.as_secs_f64(),
            op.log_text()
        )
    });
    assert!(
        until(Duration::from_secs(20), || arrived(&col, "canary")
            .contains_key(&n))
        .await,
        "the canary did not arrive ({} seen upstream, {} distinct fill readings, status {}): {}",
        col.count(),
        arrived(&col, "fill").len(),
        op.status_json()["sinks"]["up"],
        op.log_text()
    );
    assert_eq!(outbox_condition(&op), "ok", "{}", op.log_text());
    assert!(
        outbox.with_extension("db.reserve").exists(),
        "reserved again"
    );

    if late == 0 {
        assert!(
            arrived(&col, "late").contains_key(&1),
            "the reading taken after the restart was lost"
        );
    }
    let seen = arrived(&col, "fill");
    let lost: Vec<u64> = acked
        .iter()
        .filter(|s| !seen.contains_key(s))
        .copied()
        .collect();
    let duplicated: usize = seen.values().map(|n| n.saturating_sub(1)).sum();
    eprintln!(
        "account: {} acknowledged, {} lost, {} sent twice; queue empty {:.1} s and new readings taken {:.1} s after the cloud returned",
        acked.len(),
        lost.len(),
        duplicated,
        drained.as_secs_f64(),
        accepted_after.as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "lost {} acknowledged readings: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    // A restart re-sends at most what was in flight when it stopped (the
    // deletes are committed on SIGTERM), never the drained backlog.
    assert!(duplicated <= 256, "{duplicated} readings sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_on_a_full_card_gives_the_space_back_without_a_restart() {
    let mut w = World::new("");
    let img = Image::new(w.path(), 64);
    let col = w.collect("site1/#").await;
    w.up.stop();
    let outbox = img.mnt.join("outbox.db");
    let store = format!(
        "path = \"{}\"\ndisk_reserve = \"4 MiB\"\nmax_bytes = \"1 GiB\"",
        outbox.display()
    );
    let op = w.start(&w.site().mqtt(&store, ""));
    let acked = fill_card(&op, w.port, "fill", &img).await;
    assert_eq!(outbox_condition(&op), "disk full");

    let back = Instant::now();
    w.up.restart();
    let taken = until_taken(w.port, "canary", 300).await;
    let n = taken.unwrap_or_else(|| panic!("never taken again:\n{}", op.log_text()));
    let took = back.elapsed();
    assert!(
        until(Duration::from_secs(60), || queued(&op) == Some(0)
            && outbox_condition(&op) == "ok")
        .await,
        "{:?} queued, {}\n{}",
        queued(&op),
        outbox_condition(&op),
        op.log_text()
    );
    assert!(
        outbox.with_extension("db.reserve").exists(),
        "reserved again"
    );
    assert!(
        until(Duration::from_secs(20), || arrived(&col, "canary")
            .contains_key(&n))
        .await,
        "the canary did not arrive"
    );
    let seen = arrived(&col, "fill");
    let lost = acked.iter().filter(|s| !seen.contains_key(s)).count();
    let duplicated: usize = seen.values().map(|n| n.saturating_sub(1)).sum();
    eprintln!(
        "account: {} acknowledged, {lost} lost, {duplicated} sent twice; new readings taken {:.1} s after the cloud returned, {} bytes free on the card after",
        acked.len(),
        took.as_secs_f64(),
        img.free()
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicated, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_that_fails_read_only_refuses_keeps_serving_and_recovers_once_repaired() {
    let mut w = World::new("");
    let mut img = Image::new(w.path(), 32);
    let col = w.collect("site1/#").await;
    w.up.stop();
    let outbox = img.mnt.join("outbox.db");
    // Every commit fsynced, as shipped: what was acknowledged is on the
    // card when it fails.
    let text = w
        .site()
        .mqtt(
            &format!("path = \"{}\"\ndisk_reserve = \"2 MiB\"", outbox.display()),
            "",
        )
        .replace("synchronous = \"normal\"", "synchronous = \"full\"");
    let op = w.start(&text);
    let acked = fill(w.port, "before", 0, 200, 100).await;
    assert_eq!(acked.len(), 200);

    img.fail();
    assert!(img.read_only(), "the kernel did not remount it read-only");
    let failed = Instant::now();
    // Refused, with the reason; the broker keeps answering.
    let code = one(w.port, "ro-1", "during", 0).await;
    assert!(
        code >= 0x80,
        "a reading was acknowledged on a read-only card: {code:#x}"
    );
    assert!(
        until(Duration::from_secs(10), || outbox_condition(&op)
            == "read-only filesystem")
        .await,
        "status: {}\n{}",
        op.status_json(),
        op.log_text()
    );
    // Still refused, still answered, a moment later.
    let code = one(w.port, "ro-2", "during", 1).await;
    assert!(code >= 0x80, "{code:#x}");

    // The technician unmounts, checks and mounts the card again; outpost
    // opens the outbox again by itself.
    img.repair();
    let taken = until_taken(w.port, "after", 100).await;
    let recovered = failed.elapsed();
    let n = taken.unwrap_or_else(|| panic!("still refused after the repair:\n{}", op.log_text()));
    assert_eq!(outbox_condition(&op), "ok");

    w.up.restart();
    assert!(
        until(Duration::from_secs(30), || arrived(&col, "after")
            .contains_key(&n)
            && arrived(&col, "before").len() == 200)
        .await,
        "before: {} of 200 arrived, the canary {}\n{}",
        arrived(&col, "before").len(),
        arrived(&col, "after").contains_key(&n),
        op.log_text()
    );
    let during = arrived(&col, "during");
    eprintln!(
        "account: 200 acknowledged before the failure, 0 lost; {} refused during it ({} arrived anyway); writable again {:.1} s after the failure",
        2,
        during.len(),
        recovered.as_secs_f64()
    );
    assert!(
        during.is_empty(),
        "a refused reading was stored: {during:?}"
    );
}
