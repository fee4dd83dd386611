//! Bad input gets a clear message naming the problem, and never costs
//! anything already accepted.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn outpost(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .output()
        .expect("run outpost")
}

#[test]
fn check_config_names_every_bad_key_by_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
colour = "blue"
[broker]
max_conections = 5
max_payload = "12 parsecs"
[store]
full_policy = "panic"
[[route]]
topic = "sensors/+/telemetry"
sink = "nowhere"
[sink.up]
type = "mqtt"
url = "mqtt://127.0.0.1:1"
inflight = "many"
qos = 2
"#,
    )
    .expect("write");
    let out = outpost(&[
        "check-config",
        "--config",
        path.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(out.status.code(), Some(1), "exit 1 on problems");
    let err = String::from_utf8_lossy(&out.stderr);
    for path in [
        "colour",
        "broker.max_conections",
        "broker.max_payload",
        "store.full_policy",
        "route[0].sink",
        "sink.up.inflight",
        "sink.up.qos",
    ] {
        assert!(
            err.contains(&format!("  {path}: ")),
            "`{path}` not named in:\n{err}"
        );
    }
    assert!(err.contains("7 problem(s)"), "{err}");
}

#[test]
fn check_config_accepts_the_shipped_config_and_rejects_broken_toml() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/outpost.toml");
    let out = outpost(&["check-config", "--config", shipped]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "[broker\nlisten = 1").expect("write");
    let out = outpost(&[
        "check-config",
        "--config",
        path.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid TOML"));

    let out = outpost(&["check-config", "--config", "/nonexistent/outpost.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot read config file /nonexistent/outpost.toml"));
}

#[test]
fn run_refuses_an_invalid_config_without_starting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[store]\nmax_bytes = -1\n").expect("write");
    let out = outpost(&["run", "--config", path.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.max_bytes"));
}

#[test]
fn version_is_printed() {
    let out = outpost(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("outpost {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_payload_is_refused_and_logged_and_nothing_else_is_affected() {
    require("mosquitto_pub", "mosquitto-clients");
    let w = World::new("");
    let col = w.collect("site1/#").await;
    let mut op = w.start(&w.site().mqtt("", ""));

    // The test config allows 16 KiB.
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(20 * 1024));
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &w.port.to_string(), "-q", "1"])
        .args(["-t", "sensors/big/telemetry", "-m", &big])
        .output()
        .expect("mosquitto_pub");
    assert!(
        !out.status.success(),
        "the broker refuses the oversized publish"
    );

    assert_eq!(
        publish_all(
            w.port,
            "after-big",
            vec![("sensors/ok/telemetry".into(), b"{\"seq\":0}".to_vec())]
        )
        .await,
        1
    );
    assert_eq!(col.wait_for(1, Duration::from_secs(20)).await, 1);
    col.settle(Duration::from_millis(500), Duration::from_secs(3))
        .await;
    let seen = col.all();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].topic, "site1/ok/telemetry");
    assert!(op.alive());
    assert!(
        op.log_text()
            .contains("larger than the limit of 16384 bytes (broker.max_payload)"),
        "the refusal is logged:\n{}",
        op.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_retried_with_backoff_and_readings_stay_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let nobody = format!("mqtt://127.0.0.1:{}", free_port());
    let sink = "reconnect_min = \"1s\"\nreconnect_max = \"30s\"";
    let op = Outpost::start(
        dir.path(),
        port,
        &config(dir.path(), port, &nobody, "", sink),
    );
    assert_eq!(
        publish_all(
            port,
            "p",
            vec![("sensors/a/telemetry".into(), b"{\"seq\":0}".to_vec())]
        )
        .await,
        1
    );
    assert!(wait_until(Duration::from_secs(5), || op.queued() == 1));
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let log = op.log_text();
    let attempts = log.matches("upstream connection failed").count();
    // Waits of ~1 s, ~2 s, ~4 s (±25 %): three or four attempts in 4.5 s;
    // a reconnect loop without backoff would make thousands.
    assert!(
        (2..=5).contains(&attempts),
        "{attempts} attempts in 4.5 s:\n{log}"
    );
    assert!(log.contains("retry_in_ms"), "{log}");
    assert!(
        log.contains("Connection refused"),
        "the cause is named:\n{log}"
    );
    assert_eq!(op.queued(), 1, "the reading stays queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_upstream_password_is_one_clear_error_and_a_slow_retry() {
    let (_pwdir, pwfile) = password_file("gateway", "right-password");
    let w = World::new(&format!(
        "allow_anonymous false\npassword_file {}",
        pwfile.display()
    ));

    let secret = "wrong-Secret-4711";
    let sink = format!(
        "username = \"gateway\"\npassword = \"{secret}\"\nreconnect_min = \"1s\"\nreconnect_max = \"20s\""
    );
    let op = w.start(&w.site().mqtt("", &sink));
    assert!(wait_until(Duration::from_secs(10), || op
        .log_text()
        .contains("upstream refused the connection")));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = op.log_text();
    assert_eq!(
        log.matches("upstream refused the connection").count(),
        1,
        "one refusal, then a long wait (reconnect_max):\n{log}"
    );
    assert!(
        log.contains("bad username or password") || log.contains("not authorised"),
        "{log}"
    );
    assert!(
        !log.contains(secret),
        "the password never appears in the log"
    );
    let attempts = w.up.log().matches("New connection from").count();
    assert!(
        (1..=2).contains(&attempts),
        "upstream saw {attempts} attempts:\n{}",
        w.up.log()
    );
}

#[test]
fn every_shipped_example_config_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = outpost(&[
                "check-config",
                "--config",
                path.to_str().expect("utf-8 path"),
            ]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "checked {checked} files");
}

#[test]
fn check_config_prints_no_secret_from_the_file_or_the_remote_overlay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = [
        "NNSXS.TTN-API-KEY-SECRET",
        "TIO-THING-TOKEN-SECRET",
        "TIO-ACTIVATION-CODE-SECRET",
        "TB-PROVISION-KEY-SECRET",
        "TB-PROVISION-SECRET-SECRET",
        "MQTT-PASSWORD-SECRET",
        "REMOTE-PASSWORD-SECRET",
        "REMOTE-API-KEY-SECRET",
        "REMOTE-TOKEN-SECRET",
    ];
    let path = dir.path().join("outpost.toml");
    std::fs::write(
        &path,
        format!(
            r#"state_dir = "{dir}"
[[route]]
topic = "sensors/+/telemetry"
sink = "up"

[sink.up]
type = "mqtt"
url = "mqtt://127.0.0.1:1"
username = "gw"
password = "{}"

[sink.lora]
type = "ttn"
url = "mqtt://127.0.0.1:1"
application_id = "app1"
api_key = "{}"

[sink.tio]
type = "thethingsio"
thing_token = "{}"

[sink.tio2]
type = "thethingsio"
activation_code = "{}"

[sink.tb]
type = "thingsboard"
url = "mqtt://127.0.0.1:1"
provision_device_key = "{}"
provision_device_secret = "{}"
"#,
            secrets[5],
            secrets[0],
            secrets[1],
            secrets[2],
            secrets[3],
            secrets[4],
            dir = dir.path().display()
        ),
    )
    .expect("write config");
    // What ThingsBoard set remotely, as outpost keeps it.
    std::fs::write(
        dir.path().join("remote-config.json"),
        serde_json::json!({
            "version": 4,
            "sections": {"sink": {
                "up": {"password": secrets[6]},
                "lora": {"api_key": secrets[7]},
                "tio": {"thing_token": secrets[8]},
            }}
        })
        .to_string(),
    )
    .expect("write overlay");
    let out = outpost(&["check-config", "--config", path.to_str().expect("utf-8")]);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("sink.lora.api_key") && shown.contains("(secret)"),
        "the overlay's keys are listed, their values hidden:\n{shown}"
    );
    for s in secrets {
        assert!(
            !shown.contains(s),
            "check-config printed a secret ({s}):\n{shown}"
        );
    }

    // A secret of the wrong type: the problem names the key, not the value.
    std::fs::write(
        &path,
        "[sink.up]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1\"\nusername = \"gw\"\npassword = 987654321\n",
    )
    .expect("write config");
    let out = outpost(&["check-config", "--config", path.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("sink.up.password"), "{err}");
    assert!(!err.contains("987654321"), "{err}");
}
