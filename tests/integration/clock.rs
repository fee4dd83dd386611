//! A Pi's clock, as a site meets it: no real-time clock, so it boots in the
//! past with no network; NTP steps it later, forward or back. outpost runs
//! under libfaketime (Debian's `faketime`) and the test rewrites its time
//! file to step the wall clock; the monotonic clock runs truly, as on a Pi.
//! Whether the clock is synchronized is told the way systemd-timesyncd
//! tells it: a flag file that appears once NTP has set the clock.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;

/// 2025-01-01T00:00:00Z, the clock a Pi boots with here.
const BOOT_CLOCK_S: u64 = 1_735_689_600;

fn real_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// libfaketime's thread-safe library.
fn libfaketime() -> PathBuf {
    let found = [
        "x86_64-linux-gnu",
        "aarch64-linux-gnu",
        "arm-linux-gnueabihf",
    ]
    .iter()
    .map(|arch| PathBuf::from(format!("/usr/lib/{arch}/faketime/libfaketimeMT.so.1")))
    .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("libfaketime is not installed: the clock tests need it. Install it with `apt-get install -y faketime`")
    })
}

/// A wall clock the test steps: libfaketime reads `file` at every call.
struct FakeClock {
    file: PathBuf,
}

impl FakeClock {
    fn new(dir: &Path) -> FakeClock {
        let c = FakeClock {
            file: dir.join("faketime"),
        };
        c.set_offset_s(0);
        c
    }

    /// The wall clock reads `offset` seconds from the real time (and runs).
    fn set_offset_s(&self, offset: i64) {
        let text = if offset >= 0 {
            format!("+{offset}")
        } else {
            format!("{offset}")
        };
        let tmp = self.file.with_extension("new");
        std::fs::write(&tmp, text).expect("write the faketime file");
        std::fs::rename(&tmp, &self.file).expect("step the clock");
    }

    /// The wall clock reads `at_s` (seconds since the epoch) now.
    fn set_to(&self, at_s: u64) {
        let now = real_ms() / 1000;
        self.set_offset_s(at_s as i64 - now);
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), libfaketime().display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.file.display().to_string(),
            ),
            ("FAKETIME_NO_CACHE".into(), "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]
    }
}

fn start_faked(w: &World, config: &str, clock: &FakeClock) -> Outpost {
    let env = clock.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    w.start_with_env(config, &env)
}

/// The test config with a short `max_age` (expiry runs every 3 s) and the
/// synchronization flag at `flag`.
fn config(w: &World, flag: &Path) -> String {
    format!(
        "{}\n[readings]\nsynchronized_file = \"{}\"\n",
        w.site().mqtt("max_age = \"12s\"", ""),
        flag.display()
    )
}

fn auto(device: &str, n: usize) -> (String, Vec<u8>) {
    (
        format!("sensors/{device}/telemetry"),
        format!("{{\"n\":{n}}}").into_bytes(),
    )
}

/// The Pi boots at 2025-01-01 with the cloud away; readings queue. NTP
/// steps the clock forward two years and the cloud returns: every reading
/// arrives (none is "old" by the step), automatic stamps corrected to when
/// they were really taken, a sensor's own correct ts kept as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pi_booted_in_the_past_delivers_every_reading_with_its_ts_corrected() {
    let mut w = World::new("");
    let col = w.collect("site1/#").await;
    w.up.stop();
    let clock = FakeClock::new(w.path());
    clock.set_to(BOOT_CLOCK_S);
    let flag = w.path().join("timesync-synchronized");
    let op = start_faked(&w, &config(&w, &flag), &clock);

    let st = op.status_json();
    assert_eq!(st["clock"]["synchronized"], false, "{st}");
    let t0 = real_ms();
    let mut msgs: Vec<_> = (0..10).map(|n| auto("auto", n)).collect();
    // A sensor with a correct clock of its own.
    let own: Vec<i64> = (0..5).map(|i| t0 - 10_000 + i).collect();
    for (i, ts) in own.iter().enumerate() {
        msgs.push((
            "sensors/own/telemetry".into(),
            format!("{{\"ts\":{ts},\"i\":{i}}}").into_bytes(),
        ));
    }
    assert_eq!(publish_all(w.port, "rtc-less", msgs).await, 15);
    let t1 = real_ms();

    // NTP sets the clock: it steps two years forward, then timesyncd
    // raises its flag.
    clock.set_offset_s(0);
    std::fs::write(&flag, b"").expect("flag");
    assert!(
        wait_until(Duration::from_secs(10), || op.status_json()["clock"]
            ["synchronized"]
            == true),
        "outpost never saw the clock synchronized: {}",
        op.status_json()
    );
    // One expiry period (3 s) passes before the cloud returns: the step
    // must not have aged the backlog. Nothing to wait on: done right,
    // nothing happens.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let st = op.status_json();
    assert_eq!(st["sinks"]["up"]["queued"], 15, "{st}");
    assert!(st["uptime_s"].as_i64().unwrap_or(i64::MAX) < 120, "{st}");
    assert!(
        st["sinks"]["up"]["oldest_queued_age_s"]
            .as_i64()
            .unwrap_or(i64::MAX)
            < 60,
        "{st}"
    );

    w.up.restart();
    assert_eq!(col.wait_for(15, Duration::from_secs(20)).await, 15);
    let seen: Vec<serde_json::Value> = col.all().iter().map(|s| s.json()).collect();
    let mut autos = Vec::new();
    for v in &seen {
        let ts = v["ts"].as_i64().expect("ts");
        if let Some(i) = v["values"]["i"].as_u64() {
            assert_eq!(ts, own[i as usize], "a sensor's own ts is kept: {v}");
        } else {
            // Corrected to the real time it was taken (within the publish).
            assert!(
                (t0 - 50..=t1 + 50).contains(&ts),
                "stamp {ts} is not within the real ingest time {t0}..{t1}: {v}"
            );
            autos.push(ts);
        }
    }
    assert_eq!(autos.len(), 10);
    assert!(autos.windows(2).all(|p| p[0] < p[1]), "{autos:?}");
    let st = op.status_json();
    let up = &st["sinks"]["up"];
    assert_eq!(up["dropped"], 0, "{st}");
    assert_eq!(up["ts_corrected"], 10, "{st}");
    assert_eq!(up["ts_provisional"], 0, "{st}");
    assert_eq!(st["ts_replaced"], 0, "{st}");

    // The canary: a reading taken now, on a trusted clock.
    let c0 = real_ms();
    assert_eq!(
        publish_all(w.port, "canary", vec![auto("canary", 0)]).await,
        1
    );
    assert_eq!(col.wait_for(16, Duration::from_secs(10)).await, 16);
    let canary = col
        .all()
        .iter()
        .map(|s| s.json())
        .find(|v| v["device"] == "canary")
        .expect("canary upstream");
    let ts = canary["ts"].as_i64().expect("ts");
    assert!((c0 - 50..=real_ms() + 50).contains(&ts), "{canary}");
}

/// NTP steps the clock a day back and then forward again while sensors
/// publish: every reading arrives, in order per device, and the bound on
/// age drops nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_steps_during_a_live_flow_keep_order_and_lose_nothing() {
    let w = World::new("");
    let col = w.collect("site1/#").await;
    let clock = FakeClock::new(w.path());
    let flag = w.path().join("timesync-synchronized");
    std::fs::write(&flag, b"").expect("flag");
    let op = start_faked(&w, &config(&w, &flag), &clock);

    let (devices, count) = (4, 60);
    let publish = tokio::spawn({
        let port = w.port;
        async move { publish_devices_paced(port, devices, count, Some(Duration::from_millis(20))).await }
    });
    // Steps while the readings flow: back a day, forward two, back to true.
    for offset in [-86_400, 86_400, 0] {
        let before = col.count();
        let flowing = tokio::time::timeout(Duration::from_secs(10), async {
            while col.count() < before + 20 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        assert!(
            flowing.await.is_ok(),
            "the flow stopped before the step to {offset}"
        );
        clock.set_offset_s(offset);
    }
    assert_eq!(publish.await.expect("publisher"), devices * count);
    assert_eq!(
        col.wait_for(devices * count, Duration::from_secs(30)).await,
        devices * count
    );
    assert_complete_and_ordered(&col.all(), devices, count);
    // The last PUBACKs may reach outpost just after the collector saw them.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while op.status_json()["sinks"]["up"]["queued"] != 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(drained.await.is_ok(), "{}", op.status_json());
    let st = op.status_json();
    assert_eq!(st["sinks"]["up"]["dropped"], 0, "{st}");
}
