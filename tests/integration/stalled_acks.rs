//! A cloud that keeps the connection, answers pings, and stops
//! acknowledging: a proxy before the upstream withholds its PUBACKs. A
//! publish waiting past `ack_timeout` ends the connection; the session
//! sends again from the oldest row, and status says "stalled" meanwhile.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::*;

fn seq(device: &str, from: usize, to: usize) -> Vec<(String, Vec<u8>)> {
    (from..to)
        .map(|n| {
            (
                format!("sensors/{device}/telemetry"),
                format!("{{\"seq\":{n}}}").into_bytes(),
            )
        })
        .collect()
}

async fn until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    tokio::time::timeout(within, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_pubacks_stall_the_session_and_everything_arrives_after() {
    let w = World::new("");
    let col = w.collect("site1/#").await;
    let proxy = AckProxy::start(w.up.port).await;
    let site = Site {
        url: proxy.url(),
        ..w.site()
    };
    let op = w.start(&site.mqtt("", "ack_timeout = \"3s\""));

    assert_eq!(publish_all(w.port, "s1", seq("dev-0", 0, 20)).await, 20);
    assert_eq!(col.wait_for(20, Duration::from_secs(10)).await, 20);

    // The cloud stops acknowledging (bounded: 8 s, several ack_timeouts).
    proxy.withhold(true);
    assert_eq!(publish_all(w.port, "s1", seq("dev-0", 20, 50)).await, 30);
    assert!(
        until(Duration::from_secs(15), || op.status_json()["sinks"]["up"]
            ["stalled"]
            == true)
        .await,
        "status never said stalled: {}",
        op.status_json()
    );
    let st = op.status_json();
    assert_eq!(st["sinks"]["up"]["queued"], 30, "{st}");
    assert!(proxy.dropped.load(Ordering::SeqCst) > 0);
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["status", "--config"])
        .arg(w.path().join("outpost.toml"))
        .output()
        .expect("outpost status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("STALLED"), "{text}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stalls = op.status_json()["sinks"]["up"]["stalls"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        stalls >= 2,
        "one stall per ack_timeout while withheld: {stalls}"
    );

    // It relents: everything arrives and the queue drains.
    proxy.withhold(false);
    assert!(
        until(Duration::from_secs(20), || op.status_json()["sinks"]["up"]
            ["queued"]
            == 0)
        .await,
        "the queue never drained: {}",
        op.status_json()
    );
    let st = op.status_json();
    assert_eq!(st["sinks"]["up"]["stalled"], false, "{st}");
    assert!(
        st["sinks"]["up"]["last_puback_age_s"].as_i64().is_some(),
        "{st}"
    );
    assert_eq!(st["sinks"]["up"]["dropped"], 0, "{st}");
    // The canary, then the account: every reading, in order, none lost.
    assert_eq!(publish_all(w.port, "s1", seq("dev-0", 50, 51)).await, 1);
    assert!(
        until(Duration::from_secs(10), || arrivals(&col.all())
            .get("dev-0")
            .is_some_and(|s| s.contains(&50)))
        .await
    );
    let dups = assert_complete_and_ordered(&col.all(), 1, 51);
    eprintln!("withheld PUBACKs: 0 lost, {dups} duplicate(s)");
}
