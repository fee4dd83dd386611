//! The ThingSpeak sink against a fixture: a real mosquitto with the MQTT
//! device's credentials in its password file; the test reads the channel's
//! publish topic as the platform would.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

const CHANNEL: &str = "channels/4242/publish";

fn ts_config(dir: &Path, port: u16, up: &Upstream, extra: &str) -> String {
    format!(
        r#"state_dir = "{dir}"
log_level = "info,outpost=debug"

[broker]
listen = "127.0.0.1:{port}"

[store]
synchronous = "normal"

[[route]]
topic = "sensors/+/telemetry"
sink = "ts"

[sink.ts]
type = "thingspeak"
url = "mqtt://127.0.0.1:{up_port}"
client_id = "MQTT-DEVICE-1"
username = "ts-user"
password = "ts-secret"
channel_id = 4242
interval = "2s"
keep_alive = "1s"
reconnect_min = "200ms"
reconnect_max = "500ms"
fields = {{ temp = "field1", hum = "field2", state = "status" }}
{extra}
"#,
        dir = dir.display(),
        up_port = up.port
    )
}

/// mosquitto that only lets the ThingSpeak device (and the test) in.
fn platform() -> (Upstream, tempfile::TempDir) {
    let (dir, file) = password_file("ts-user", "ts-secret");
    let up = Upstream::start(&format!(
        "allow_anonymous true\npassword_file {}",
        file.display()
    ));
    (up, dir)
}

/// `key=value&...` → pairs.
fn form(payload: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(payload)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3A", ":").replace('+', " ")))
        .collect()
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `created_at` as ThingSpeak documents it (`2014-12-31 23:59:59`, UTC).
fn secs(created_at: &str) -> i64 {
    assert!(
        created_at.len() == 19 && created_at.as_bytes().get(10) == Some(&b' '),
        "created_at `{created_at}` is not in ThingSpeak's form"
    );
    let rfc3339 = format!("{}Z", created_at.replacen(' ', "T", 1));
    time::OffsetDateTime::parse(&rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .unwrap_or_else(|e| panic!("created_at {created_at}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_readings_in_a_second_become_one_update_with_the_latest_values() {
    let (up, _pw) = platform();
    let col = Collector::start(up.port, CHANNEL).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let op = Outpost::start(dir.path(), port, &ts_config(dir.path(), port, &up, ""));
    let start = time::OffsetDateTime::now_utc().unix_timestamp();
    let readings: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| {
            (
                "sensors/greenhouse/telemetry".to_string(),
                format!(
                    "{{\"temp\":{},\"hum\":{},\"state\":\"ok {i}\"}}",
                    20 + i,
                    50 + i
                )
                .into_bytes(),
            )
        })
        .collect();
    assert_eq!(
        publish_paced(port, "gh", readings, Some(Duration::from_millis(100))).await,
        10
    );
    let end = time::OffsetDateTime::now_utc().unix_timestamp();
    assert_eq!(
        col.wait_for(1, Duration::from_secs(10)).await,
        1,
        "{}",
        op.log_text()
    );
    col.settle(Duration::from_secs(3), Duration::from_secs(6))
        .await;
    let seen = col.all();
    assert_eq!(
        seen.len(),
        1,
        "one update per interval: {:?}",
        seen.iter().map(|s| form(&s.payload)).collect::<Vec<_>>()
    );
    let update = form(&seen[0].payload);
    assert_eq!(get(&update, "field1"), Some("29"));
    assert_eq!(get(&update, "field2"), Some("59"));
    assert_eq!(get(&update, "status"), Some("ok 9"));
    let at = secs(get(&update, "created_at").expect("created_at"));
    assert!(
        (start..=end).contains(&at),
        "created_at {at} is the last reading's time ({start}..={end})"
    );
    // QoS 0: the records leave the outbox once a ping answer follows.
    assert!(
        wait_until(Duration::from_secs(5), || op.queued() == 0),
        "queued {}",
        op.queued()
    );
    assert!(up.log().contains("u'ts-user'"), "{}", up.log());
    assert!(!op.log_text().contains("ts-secret"));
}

/// Readings measured in three intervals while the platform is unreachable.
async fn backlog(port: u16) -> i64 {
    let base = (time::OffsetDateTime::now_utc().unix_timestamp() - 120) * 1000;
    let readings: Vec<(String, Vec<u8>)> = [(0, 1), (500, 2), (2_500, 3), (5_000, 4), (5_100, 5)]
        .iter()
        .map(|(dt, temp)| {
            (
                "sensors/barn/telemetry".to_string(),
                format!("{{\"ts\":{},\"temp\":{temp}}}", base + dt).into_bytes(),
            )
        })
        .collect();
    assert_eq!(publish_all(port, "barn", readings).await, 5);
    base / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_replays_one_update_per_interval_with_its_measurement_times() {
    let (mut up, _pw) = platform();
    let col = Collector::start(up.port, CHANNEL).await;
    up.stop();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let op = Outpost::start(dir.path(), port, &ts_config(dir.path(), port, &up, ""));
    let base = backlog(port).await;
    assert!(wait_until(Duration::from_secs(5), || op.queued() == 5));
    up.restart();
    assert_eq!(
        col.wait_for(3, Duration::from_secs(15)).await,
        3,
        "{}",
        op.log_text()
    );
    col.settle(Duration::from_secs(3), Duration::from_secs(6))
        .await;
    let seen = col.all();
    let updates: Vec<(i64, String)> = seen
        .iter()
        .map(|s| {
            let f = form(&s.payload);
            (
                secs(get(&f, "created_at").expect("created_at")),
                get(&f, "field1").expect("field1").to_string(),
            )
        })
        .collect();
    // Intervals [0, 2 s), [2.5 s, 4.5 s), [5 s, 7 s): latest value of each.
    assert_eq!(
        updates,
        vec![
            (base, "2".into()),
            (base + 2, "3".into()),
            (base + 5, "5".into())
        ]
    );
    let gaps: Vec<Duration> = seen
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(1500)),
        "one update per 2 s interval: {gaps:?}"
    );
    assert!(wait_until(Duration::from_secs(5), || op.queued() == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_only_replays_a_backlog_as_one_update() {
    let (mut up, _pw) = platform();
    let col = Collector::start(up.port, CHANNEL).await;
    up.stop();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let op = Outpost::start(
        dir.path(),
        port,
        &ts_config(dir.path(), port, &up, "replay = \"latest_only\""),
    );
    let base = backlog(port).await;
    assert!(wait_until(Duration::from_secs(5), || op.queued() == 5));
    let t = Instant::now();
    up.restart();
    assert_eq!(col.wait_for(1, Duration::from_secs(10)).await, 1);
    col.settle(Duration::from_secs(3), Duration::from_secs(6))
        .await;
    let seen = col.all();
    assert_eq!(
        seen.len(),
        1,
        "{:?}",
        seen.iter().map(|s| form(&s.payload)).collect::<Vec<_>>()
    );
    let f = form(&seen[0].payload);
    assert_eq!(get(&f, "field1"), Some("5"));
    assert_eq!(secs(get(&f, "created_at").expect("created_at")), base + 5);
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(wait_until(Duration::from_secs(5), || op.queued() == 0));
}

#[test]
fn check_config_names_a_bad_thingspeak_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outpost.toml");
    std::fs::write(
        &path,
        "[sink.ts]\ntype = \"thingspeak\"\nclient_id = \"c\"\nusername = \"u\"\npassword = \"p\"\nchannel_id = 1\ninterval = \"500ms\"\nfields = { temp = \"field9\" }\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("check-config");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sink.ts.fields.temp: `field9` is not a ThingSpeak field"),
        "{err}"
    );
    assert!(err.contains("sink.ts.interval"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_mode_publishes_one_field_on_its_own_topic() {
    let (up, _pw) = platform();
    let col = Collector::start(up.port, "channels/4242/publish/fields/+").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let text = ts_config(dir.path(), port, &up, "").replace(
        "fields = { temp = \"field1\", hum = \"field2\", state = \"status\" }",
        "fields = { temp = \"field3\" }\npublish = \"field\"\nmerge = \"max\"",
    );
    let op = Outpost::start(dir.path(), port, &text);
    let readings = (0..3)
        .map(|i| {
            (
                "sensors/gh/telemetry".to_string(),
                format!("{{\"temp\":{}}}", [20, 25, 22][i]).into_bytes(),
            )
        })
        .collect();
    assert_eq!(publish_all(port, "gh", readings).await, 3);
    assert_eq!(
        col.wait_for(1, Duration::from_secs(10)).await,
        1,
        "{}",
        op.log_text()
    );
    col.settle(Duration::from_secs(2), Duration::from_secs(5))
        .await;
    let seen = col.all();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].topic, "channels/4242/publish/fields/field3");
    assert_eq!(String::from_utf8_lossy(&seen[0].payload), "25");
}
