//! What sensors and the cloud send cannot stop, stall or brick the data
//! path. Each case runs against the real binary and a real mosquitto, then
//! a canary reading must arrive, and nothing acknowledged may be lost:
//! what cannot be delivered is refused where the protocol can say so (MQTT
//! 5 reason codes), and otherwise kept as a dead letter with its reason.

use std::time::Duration;

use outpost::record::now_ms;
use outpost::source::broker::codec::{Props, V311, V5};
use serde_json::{json, Value};

use crate::common::*;

/// The default test config plus `extra` (tables after `[sink.up]`), and
/// `sink` keys for `[sink.up]`.
fn config(w: &World, broker: &str, store: &str, sink: &str, extra: &str) -> String {
    w.site()
        .mqtt(store, &format!("{sink}\n{extra}"))
        .replace("[broker]\n", &format!("[broker]\n{broker}\n"))
}

fn dead_letters(op: &Outpost) -> Vec<outpost::store::DeadLetter> {
    outpost::store::dead_letters(&op.outbox()).unwrap_or_default()
}

/// One QoS 1 publish from a fresh client of `level`; its reason code.
async fn publish_one(port: u16, level: u8, id: &str, topic: &str, payload: &[u8]) -> u8 {
    let (mut c, _) = Raw::connected(port, &Hello::new(level, id)).await;
    let code = c
        .publish(topic, payload, 1, false, Props::default())
        .await
        .unwrap_or_else(|got| panic!("{id}: no PUBACK for {topic}: {got:?}"));
    c.disconnect().await;
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_no_upstream_topic_can_carry_is_refused_at_ingest_and_never_wedges_the_sink() {
    let w = World::new("");
    // Device names come from the route; this one makes the upstream topic
    // `site1/cell+7/telemetry`, which is not a topic name.
    let extra = "[[route]]\ntopic = \"cells/telemetry\"\nsink = \"up\"\ndevice = \"cell+7\"";
    let text = config(&w, "", "", "", extra);
    let mut s = Watched::start(w, &text, &[]).await;
    s.canary().await;

    let code5 = publish_one(s.w.port, V5, "cell5", "cells/telemetry", b"{\"v\":5}").await;
    assert_eq!(code5, 0x90, "MQTT 5: topic name invalid");
    let code4 = publish_one(s.w.port, V311, "cell4", "cells/telemetry", b"{\"v\":4}").await;
    assert_eq!(code4, 0, "3.1.1 cannot be told: acknowledged");
    let dead = dead_letters(&s.op);
    assert_eq!(
        dead.len(),
        1,
        "the 3.1.1 reading is a dead letter: {dead:?}"
    );
    assert!(
        dead[0].reason.contains("not a topic name") && dead[0].reason.contains("cell+7"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].payload, b"{\"v\":4}");

    // The queue never stopped; the sink never failed a session over it.
    s.canary().await;
    let st = s.op.status_json();
    assert_eq!(st["sinks"]["up"]["connects"], 1, "{st}");
    assert_eq!(st["undeliverable"], 2, "{st}");
    assert_eq!(st["dead_letters"]["count"], 1, "{st}");
    // Deletes of delivered rows commit in groups, within moments.
    assert!(
        wait_until(Duration::from_secs(5), || s.op.queued() == 0),
        "queued {}",
        s.op.queued()
    );
    assert!(
        !s.op.log_text().contains("ERROR"),
        "nothing here needs a person:\n{}",
        s.op.log_text()
    );
    // The same after a restart on the same state directory.
    assert!(s.op.terminate().success());
    s.op.restart();
    s.canary().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_timestamps_in_ms_or_seconds_are_kept_and_implausible_ones_never_poison_the_clock()
{
    let w = World::new("");
    let col = w.collect("site1/#").await;
    // The clock is synchronized (timesyncd's flag): max_ts_ahead is
    // measured from it (an untrusted clock is not used to judge a ts).
    let flag = w.path().join("synchronized");
    std::fs::write(&flag, b"").expect("flag");
    let op = w.start(&format!(
        "{}\n[readings]\nsynchronized_file = \"{}\"\n",
        w.site().mqtt("", ""),
        flag.display()
    ));
    let start = now_ms();
    let past = start - 60_000;
    let year_ahead = start + 366 * 86_400_000;
    // (payload ts, the ts expected upstream: Some(exact) or None = ingest time)
    let cases: Vec<(String, Option<i64>)> = vec![
        (past.to_string(), Some(past)),
        ((past / 1000).to_string(), Some(past / 1000 * 1000)),
        (
            format!("{}.25", past / 1000),
            Some(past / 1000 * 1000 + 250),
        ),
        ("9223372036854775807".into(), None),
        ("1e30".into(), None),
        (year_ahead.to_string(), None),
        ("5000".into(), None),
    ];
    let mut msgs = Vec::new();
    for (i, (ts, _)) in cases.iter().enumerate() {
        msgs.push((
            "sensors/clock/telemetry".to_string(),
            format!("{{\"ts\":{ts},\"case\":{i}}}").into_bytes(),
        ));
        // The next reading carries no ts: stamped automatically.
        msgs.push((
            "sensors/clock/telemetry".to_string(),
            format!("{{\"after\":{i}}}").into_bytes(),
        ));
    }
    assert_eq!(publish_all(w.port, "clock", msgs).await, cases.len() * 2);
    let end = now_ms();
    assert_eq!(
        col.wait_for(cases.len() * 2, Duration::from_secs(15)).await,
        cases.len() * 2
    );
    let seen: Vec<Value> = col.all().iter().map(|s| s.json()).collect();
    let ts_of = |key: &str, i: usize| {
        seen.iter()
            .find(|v| v["values"][key] == i)
            .and_then(|v| v["ts"].as_i64())
            .unwrap_or_else(|| panic!("no {key} {i} upstream: {seen:?}"))
    };
    let mut last_auto = 0;
    for (i, (ts, want)) in cases.iter().enumerate() {
        let got = ts_of("case", i);
        match want {
            Some(exact) => assert_eq!(got, *exact, "ts {ts}"),
            None => assert!((start..=end + 10).contains(&got), "ts {ts} gave {got}"),
        }
        let auto = ts_of("after", i);
        assert!(
            (start..=end + 20).contains(&auto) && auto > last_auto,
            "the reading after ts {ts} was stamped {auto} (ingest {start}..{end})"
        );
        last_auto = auto;
    }
    let st = op.status_json();
    assert_eq!(st["ts_replaced"], 4, "{st}");
    // The implausible ts is not among the values either.
    assert!(seen.iter().all(|v| v["values"].get("ts").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_too_large_once_encoded_is_refused_by_code_or_dead_lettered_then_acknowledged() {
    let w = World::new("");
    // The envelope escapes the payload: 3,000 `"` become 6,000 bytes and
    // more, past the sink's 4 KiB.
    let text = config(&w, "", "", "max_packet_size = \"4 KiB\"", "");
    let mut s = Watched::start(w, &text, &[]).await;
    let quotes = vec![b'"'; 3000];
    let code = publish_one(s.w.port, V5, "q5", "sensors/quotes5/telemetry", &quotes).await;
    assert_eq!(
        code, 0x97,
        "MQTT 5: quota exceeded (too large for the sink)"
    );
    let code = publish_one(s.w.port, V311, "q4", "sensors/quotes4/telemetry", &quotes).await;
    assert_eq!(code, 0, "3.1.1: acknowledged, as a dead letter");
    // A binary payload, and one just under the sink's limit before the
    // envelope is added.
    let binary: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
    let code = publish_one(s.w.port, V311, "b4", "sensors/binary4/telemetry", &binary).await;
    assert_eq!(code, 0);
    let exact = format!("{{\"v\":\"{}\"}}", "x".repeat(4096 - 40 - 9));
    let code = publish_one(
        s.w.port,
        V5,
        "e5",
        "sensors/exact5/telemetry",
        exact.as_bytes(),
    )
    .await;
    assert_eq!(code, 0x97);

    let dead = dead_letters(&s.op);
    let devices: Vec<&str> = dead.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(devices, ["quotes4", "binary4"], "{dead:?}");
    for d in &dead {
        assert!(
            d.reason.contains("packet limit of 4096 bytes"),
            "{}",
            d.reason
        );
    }
    assert_eq!(dead[0].payload, quotes, "kept as the sensor sent it");
    let st = s.op.status_json();
    assert_eq!(st["undeliverable"], 4, "{st}");
    assert_eq!(st["sinks"]["up"]["undeliverable"], 4, "{st}");
    // `outpost dead-letters` shows them with their reasons.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["dead-letters", "--config"])
        .arg(&s.op.config)
        .output()
        .expect("dead-letters");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2 dead letter(s)") && text.contains("device=binary4"),
        "{text}"
    );
    s.canary().await;
    for d in ["quotes", "binary", "exact"] {
        s.never_arrived(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_undeliverable_readings_stays_within_the_dead_letter_bound() {
    let w = World::new("");
    let store = "dead_letters_max_bytes = \"64 KiB\"";
    let text = config(&w, "", store, "max_packet_size = \"1 KiB\"", "");
    let mut s = Watched::start(w, &text, &[]).await;
    // 3,000 binary readings of 1.5 KB, each too large for the sink.
    let msgs: Vec<(String, Vec<u8>)> = (0..3000u32)
        .map(|i| {
            let body: Vec<u8> = (0..1500u32).map(|j| ((i + j) % 251) as u8).collect();
            (format!("sensors/flood{}/telemetry", i % 10), body)
        })
        .collect();
    assert_eq!(publish_all(s.w.port, "flood", msgs).await, 3000);
    let st = s.op.status_json();
    let dead = &st["dead_letters"];
    assert!(
        dead["bytes"].as_u64().is_some_and(|b| b <= 64 * 1024),
        "{st}"
    );
    assert!(
        dead["count"].as_u64().is_some_and(|n| n > 0 && n < 100),
        "{st}"
    );
    assert_eq!(
        dead["count"].as_u64().unwrap_or(0) + dead["dropped"].as_u64().unwrap_or(0),
        3000,
        "every one is kept or counted as dropped: {st}"
    );
    // The file does not grow with the flood (SQLite reuses the freed pages).
    let size: u64 = ["outbox.db", "outbox.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(s.w.path().join(f)).ok())
        .map(|m| m.len())
        .sum();
    assert!(size < 8 << 20, "outbox and WAL take {size} bytes");
    s.canary().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_and_long_device_names_keep_memory_bounded() {
    let w = World::new("");
    // Packets up to 1 MiB, so a 50 KB device name gets in.
    let text =
        config(&w, "", "", "", "").replace("max_payload = \"16 KiB\"", "max_payload = \"1 MiB\"");
    let mut s = Watched::start(w, &text, &[]).await;
    // 100,000 distinct devices, from ten clients at once.
    let mut tasks = Vec::new();
    for c in 0..10 {
        let port = s.w.port;
        tasks.push(tokio::spawn(async move {
            let msgs = (0..10_000)
                .map(|i| (format!("sensors/d{c}-{i}/telemetry"), b"{\"v\":1}".to_vec()))
                .collect();
            publish_all(port, &format!("many-{c}"), msgs).await
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap_or(0);
    }
    assert_eq!(acked, 100_000);
    // 8,000 readings with 50 KB device names: no name that long is one.
    let long: Vec<(String, Vec<u8>)> = (0..8000)
        .map(|i| {
            let name = format!("{i}{}", "n".repeat(50_000));
            (format!("sensors/{name}/telemetry"), b"{\"v\":2}".to_vec())
        })
        .collect();
    assert_eq!(publish_all(s.w.port, "long", long).await, 8000);
    let peak = s.op.peak_rss_kib();
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    let st = s.op.status_json();
    assert_eq!(st["undeliverable"], 8000, "{st}");
    // The dead letters keep a short form of the name, not 400 MB of them.
    let dead = dead_letters(&s.op);
    assert!(dead.iter().all(|d| d.device.len() < 100), "names clipped");
    assert!(
        dead.first()
            .is_some_and(|d| d.reason.contains("50001 bytes")),
        "{:?}",
        dead.first().map(|d| &d.reason)
    );
    s.canary_within(Duration::from_secs(30)).await;
    assert!(s.col.wait_for(100_000, Duration::from_secs(60)).await >= 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_device_names_cost_no_upstream_session_and_do_not_hold_the_canary() {
    let mut s = Watched::broker("").await;
    s.canary().await;
    let started = std::time::Instant::now();
    let poison: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            let ctl = char::from_u32(1 + i % 30).unwrap_or('\u{1}');
            (
                format!("sensors/bad{ctl}name{i}/telemetry"),
                format!("{{\"i\":{i}}}").into_bytes(),
            )
        })
        .collect();
    assert_eq!(publish_all(s.w.port, "poison", poison).await, 20);
    s.canary_within(Duration::from_secs(3)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "poison + canary took {took:?}"
    );
    assert_eq!(dead_letters(&s.op).len(), 20);
    assert!(dead_letters(&s.op)
        .iter()
        .all(|d| d.reason.contains("control characters")));
    // No session was lost or retried over them.
    let up = &s.op.status_json()["sinks"]["up"];
    assert_eq!(up["connected"], true, "{up}");
    assert_eq!(up["connects"], 1, "{up}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_like_reject_new_and_recovers_when_space_returns() {
    require("unshare", "util-linux");
    let mut w = World::new("");
    let col = w.collect("site1/#").await;
    w.up.stop();
    // The state directory is a 4 MiB tmpfs in a user and mount namespace
    // of outpost's own: full for outpost, nobody else's disk. A control
    // file outside it says when to fill it up and when to free it.
    let state = w.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let ctl = w.path().join("ctl");
    // A reserve small enough for the 4 MiB disk.
    let text = w.site().mqtt("disk_reserve = \"512 KiB\"", "").replace(
        &format!("state_dir = \"{}\"", w.path().display()),
        &format!("state_dir = \"{}\"", state.display()),
    );
    let cfg = w.path().join("outpost.toml");
    std::fs::write(&cfg, &text).expect("config");
    let script = r#"
mount -t tmpfs -o size=4m tmpfs "$1" || exit 1
"$2" run --config "$3" &
pid=$!
while kill -0 $pid 2>/dev/null; do
  case "$(cat "$4" 2>/dev/null)" in
    fill) dd if=/dev/zero of="$1/filler" bs=64k 2>/dev/null; echo filled > "$4" ;;
    free) rm -f "$1/filler"; echo freed > "$4" ;;
    stop) kill -TERM $pid; wait $pid; exit $? ;;
  esac
  sleep 0.1
done
"#;
    let log = std::fs::File::create(w.path().join("outpost-0.log")).expect("log");
    // A PID namespace too: when `unshare` goes, so does everything in it.
    let mut child = std::process::Command::new("unshare")
        .args(["-Urmpf", "--kill-child", "sh", "-c", script, "sh"])
        .arg(&state)
        .arg(env!("CARGO_BIN_EXE_outpost"))
        .arg(&cfg)
        .arg(&ctl)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("unshare");
    struct Stop<'a>(&'a mut std::process::Child, std::path::PathBuf);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.1, "stop");
            if wait_exit(self.0, Duration::from_secs(5)).is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let guard = Stop(&mut child, ctl.clone());
    assert!(
        wait_port(w.port, Duration::from_secs(10)),
        "outpost did not start"
    );
    let log_path = w.path().join("outpost-0.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let say = |what: &str, done: &str| {
        std::fs::write(&ctl, what).expect("ctl");
        assert!(
            wait_until(Duration::from_secs(10), || std::fs::read_to_string(&ctl)
                .is_ok_and(|s| s.trim() == done)),
            "{what} did not happen"
        );
    };

    assert_eq!(
        publish_one(
            w.port,
            V311,
            "before",
            "sensors/before/telemetry",
            b"{\"v\":0}"
        )
        .await,
        0
    );
    say("fill", "filled");
    // Readings keep coming; once the disk refuses a commit, MQTT 5 gets
    // 0x97 and 3.1.1 a closed connection, never a PUBACK for nothing.
    let mut refused5 = false;
    for i in 0..400 {
        let body = format!("{{\"v\":{i},\"pad\":\"{}\"}}", "p".repeat(2000));
        let (mut c, _) = Raw::connected(w.port, &Hello::new(V5, "full5")).await;
        match c
            .publish(
                "sensors/full5/telemetry",
                body.as_bytes(),
                1,
                false,
                Props::default(),
            )
            .await
        {
            Ok(0) => {}
            Ok(0x97) => {
                refused5 = true;
                break;
            }
            other => panic!("{other:?}\n{}", log()),
        }
    }
    assert!(refused5, "the full disk was never noticed:\n{}", log());
    // As large as the reading just refused: a smaller one may still fit in
    // what the disk has left, and be taken.
    let (mut c4, _) = Raw::connected(w.port, &Hello::new(V311, "full4")).await;
    let body = format!("{{\"v\":-1,\"pad\":\"{}\"}}", "p".repeat(2000));
    let got = c4
        .publish(
            "sensors/full4/telemetry",
            body.as_bytes(),
            1,
            false,
            Props::default(),
        )
        .await;
    assert_eq!(got, Err(Got::Closed), "3.1.1: closed without a PUBACK");
    assert!(log().contains("outbox commit failed"), "{}", log());

    say("free", "freed");
    w.up.restart();
    // It recovers by itself: the same sensor's reading is taken now.
    let mut taken = false;
    for _ in 0..50 {
        if publish_one(
            w.port,
            V311,
            "after",
            "sensors/after/telemetry",
            b"{\"v\":2}",
        )
        .await
            == 0
        {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken);
    assert!(
        wait_until(Duration::from_secs(15), || ["before", "after"]
            .iter()
            .all(|d| col.all().iter().any(|s| s.topic.contains(d)))),
        "{}",
        log()
    );
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_record_a_later_limit_makes_undeliverable_goes_to_the_dead_letters() {
    let mut w = World::new("");
    let col = w.collect("site1/#").await;
    w.up.stop();
    let mut op = w.start(&w.site().mqtt("", ""));
    let big = format!("{{\"v\":\"{}\"}}", "y".repeat(2000));
    let msgs = vec![
        ("sensors/small/telemetry".to_string(), b"{\"v\":1}".to_vec()),
        ("sensors/big/telemetry".to_string(), big.into_bytes()),
        ("sensors/small/telemetry".to_string(), b"{\"v\":3}".to_vec()),
    ];
    assert_eq!(publish_all(w.port, "q", msgs).await, 3);
    assert!(op.terminate().success());
    // The sink's limit shrinks while they are queued.
    std::fs::write(&op.config, w.site().mqtt("", "max_packet_size = \"1 KiB\"")).expect("config");
    op.restart();
    w.up.restart();
    assert_eq!(col.wait_for(2, Duration::from_secs(15)).await, 2);
    let dead = dead_letters(&op);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].device, "big");
    assert!(dead[0].reason.contains("1024"), "{}", dead[0].reason);
    assert!(
        wait_until(Duration::from_secs(5), || op.queued() == 0),
        "queued {}",
        op.queued()
    );
    assert!(
        op.log_text().contains("can no longer take"),
        "{}",
        op.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttn_sink_refuses_a_non_ascii_hex_payload_and_keeps_serving() {
    let w = World::new("");
    let col = w.collect("v3/#").await;
    let text = format!(
        r#"{header}
[[route]]
topic = "ttn/+/down"
sink = "ttn"

[[route]]
topic = "sensors/+/telemetry"
sink = "up"

[sink.up]
type = "mqtt"
url = "{url}"
topic = "site1/{{device}}/telemetry"
reconnect_min = "200ms"

[sink.ttn]
type = "ttn"
url = "{url}"
application_id = "app1"
api_key = "NNSXS.KEY"
reconnect_min = "200ms"
"#,
        header = w.site().header("", ""),
        url = w.up.url(),
    );
    let mut s = Watched::start(w, &text, &[]).await;
    for (i, hex) in ["é0", "0é", "€€", "ZZ"].iter().enumerate() {
        let body = json!({"f_port": 1, "payload_hex": hex}).to_string();
        let code = publish_one(
            s.w.port,
            V5,
            &format!("t5-{i}"),
            "ttn/node1/down",
            body.as_bytes(),
        )
        .await;
        assert_eq!(code, 0x99, "{hex}");
        let code = publish_one(
            s.w.port,
            V311,
            &format!("t4-{i}"),
            "ttn/node1/down",
            body.as_bytes(),
        )
        .await;
        assert_eq!(code, 0, "{hex}");
    }
    let dead = dead_letters(&s.op);
    assert_eq!(dead.len(), 4);
    assert!(
        dead.iter().all(|d| d.reason.contains("not hexadecimal")),
        "{dead:?}"
    );
    // A valid downlink still goes, and the other sink never noticed.
    let ok = json!({"f_port": 2, "payload_hex": "BEEF"}).to_string();
    assert_eq!(
        publish_one(s.w.port, V311, "ok", "ttn/node1/down", ok.as_bytes()).await,
        0
    );
    assert!(
        wait_until(Duration::from_secs(10), || col
            .all()
            .iter()
            .any(|m| m.topic == "v3/app1/devices/node1/down/push")),
        "{}",
        s.op.log_text()
    );
    assert_eq!(s.op.status_json()["sinks"]["ttn"]["restarts"], 0);
    s.canary().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_task_that_dies_is_restarted_and_shown() {
    let w = World::new("");
    let text = w.site().mqtt("", "");
    // No backtrace: resolving one loads the debug build's symbols (~50 MB).
    let env = [("OUTPOST_TEST_FAULTS", "1"), ("RUST_BACKTRACE", "0")];
    let mut s = Watched::start(w, &text, &env).await;
    // Its session panics on this record (once): the supervisor restarts
    // it after a backoff, and the record, still queued, is delivered.
    let code = publish_one(
        s.w.port,
        V311,
        "f",
        "sensors/outpost-fault-sink/telemetry",
        b"{\"v\":1}",
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        wait_until(Duration::from_secs(10), || s
            .col
            .all()
            .iter()
            .any(|m| m.topic.contains("outpost-fault-sink"))),
        "{}",
        s.op.log_text()
    );
    let up = s.op.status_json()["sinks"]["up"].clone();
    assert_eq!(up["restarts"], 1, "{up}");
    assert_eq!(up["tasks_running"], 1, "{up}");
    let log = s.op.log_text();
    assert!(
        log.contains("a task of this sink stopped unexpectedly") && log.contains("test fault"),
        "{log}"
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["status", "--config"])
        .arg(&s.op.config)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("restarted 1 time(s)"), "{text}");
    s.canary().await;
}
