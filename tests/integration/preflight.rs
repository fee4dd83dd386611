//! One check, used everywhere: what a start would trip over is refused by
//! `check-config` with its key path, and a running daemon given the same
//! file by SIGHUP keeps its config, keeps serving, and says "reload
//! refused" until a good file is loaded.

use std::path::Path;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};

use crate::common::*;

/// A certificate for 127.0.0.1 and, separately, a key that is not its own.
fn mismatched_pair(dir: &Path) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let other = KeyPair::generate().expect("other key");
    let cert_path = dir.join("broker.pem");
    let key_path = dir.join("other.key");
    std::fs::write(&cert_path, cert.pem()).expect("cert");
    std::fs::write(&key_path, other.serialize_pem()).expect("key");
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

/// (what, the config's text made bad, the key path check-config names)
fn bad_configs(good: &str, dir: &Path) -> Vec<(&'static str, String, &'static str)> {
    let (cert, key) = mismatched_pair(dir);
    let passwd = dir.join("broken.passwd");
    std::fs::write(&passwd, "this line is no user:hash pair\n").expect("passwd");
    let acl = dir.join("broken.acl");
    std::fs::write(&acl, "topic sideways sensors/#\n").expect("acl");
    let broker = |extra: &str| good.replacen("[broker]\n", &format!("[broker]\n{extra}\n"), 1);
    let port = good
        .lines()
        .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
        .and_then(|l| l.strip_suffix('"'))
        .expect("broker.listen in the config")
        .to_string();
    vec![
        (
            "a sink's CA file is missing",
            good.replacen(
                "[sink.up]\n",
                "[sink.up]\nca_file = \"/nonexistent/ca.pem\"\n",
                1,
            )
            .replacen("url = \"mqtt://", "url = \"mqtts://", 1),
            "sink.up.ca_file",
        ),
        (
            "the broker's TLS key does not match its certificate",
            format!(
                "{good}\n[broker.tls]\nlisten = \"127.0.0.1:{}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n",
                free_port()
            ),
            "broker.tls",
        ),
        (
            "the broker's password file does not parse",
            broker(&format!("password_file = \"{}\"", passwd.display())),
            "broker.password_file",
        ),
        (
            "the broker's ACL file does not parse",
            broker(&format!("acl_file = \"{}\"", acl.display())),
            "broker.acl_file",
        ),
        (
            "two listeners share a port",
            format!("{good}\n[http]\nlisten = \"127.0.0.1:{port}\"\n"),
            "http.listen",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_check_config_refuses_a_reload_refuses_and_the_site_keeps_collecting() {
    let w = World::new("");
    let col = w.collect("site1/#").await;
    let good = w.site().mqtt("", "");
    let mut op = w.start(&good);
    let pid = op.pid();
    let cases = bad_configs(&good, w.path());
    for (n, (what, text, key)) in cases.iter().enumerate() {
        // check-config refuses it, naming the key.
        let candidate = w.path().join(format!("candidate-{n}.toml"));
        std::fs::write(&candidate, text).expect("candidate");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["check-config", "--config"])
            .arg(&candidate)
            .output()
            .expect("check-config");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: check-config passed it");
        assert!(
            err.contains(key),
            "{what}: check-config does not name {key}:\n{err}"
        );

        // The running daemon given the same file keeps going.
        std::fs::write(&op.config, text).expect("config");
        op.signal("HUP");
        assert!(
            wait_until(Duration::from_secs(10), || op.status_json()
                ["reload_refused"]
                .as_str()
                .is_some_and(|r| r.contains(key))),
            "{what}: status does not say the reload was refused for {key}: {}\n{}",
            op.status_json()["reload_refused"],
            op.log_text()
        );
        assert!(op.alive(), "{what}: the daemon stopped:\n{}", op.log_text());
        assert_eq!(op.pid(), pid);
        assert_eq!(
            op.log_text().matches("outpost running").count(),
            1,
            "{what}: restarted"
        );
        // A canary reading still goes through, on the old config.
        let seq = format!("{{\"seq\":{n}}}");
        assert_eq!(
            publish_all(
                w.port,
                "canary",
                vec![("sensors/canary/telemetry".into(), seq.into_bytes())]
            )
            .await,
            1,
            "{what}"
        );
        assert!(
            col.wait_for(n + 1, Duration::from_secs(10)).await > n,
            "{what}: the canary did not arrive"
        );
    }
    let text = op.status_text();
    assert!(text.contains("RELOAD REFUSED"), "{text}");

    // The good file again: the refusal is gone.
    std::fs::write(&op.config, &good).expect("config");
    op.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || op.status_json()
            ["reload_refused"]
            .is_null()),
        "{}",
        op.status_json()["reload_refused"]
    );
    assert!(op.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ca_file_at_start_keeps_only_its_sink_waiting() {
    let w = World::new("");
    let text = w
        .site()
        .mqtt("", "ca_file = \"/nonexistent/ca.pem\"")
        .replacen("url = \"mqtt://", "url = \"mqtts://", 1);
    let op = w.start(&text);
    // The broker serves: the reading is stored (and waits for the sink).
    assert_eq!(
        publish_all(
            w.port,
            "s",
            vec![("sensors/s/telemetry".into(), b"{\"seq\":0}".to_vec())]
        )
        .await,
        1
    );
    assert!(wait_until(Duration::from_secs(5), || op.queued() == 1));
    let error = op.status_json()["sinks"]["up"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("/nonexistent/ca.pem"),
        "status names the file: {error}"
    );
    assert!(op.log_text().contains("ERROR"), "{}", op.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_taken_by_another_broker_is_retried_while_outpost_runs() {
    let w = World::new("");
    // Another program holds the port outpost's broker wants.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", w.port)).expect("squat");
    let col = w.collect("site1/#").await;
    let http = free_port();
    let text = format!(
        "{}\n[http]\nlisten = \"127.0.0.1:{http}\"\n",
        w.site().mqtt("", "")
    );
    let op = w.start(&text);
    let status = op.status_json();
    let down = status["listeners_down"].to_string();
    assert!(
        down.contains("broker.listen") && down.contains(&format!("127.0.0.1:{}", w.port)),
        "status does not name the listener: {down}"
    );
    assert!(
        op.log_text()
            .contains(&format!("another program listens on 127.0.0.1:{}", w.port)),
        "the journal does not name the other listener:\n{}",
        op.log_text()
    );
    // The rest runs: the status page answers.
    assert_eq!(get(http, "/api/status").status, 200);

    // The port comes free: outpost listens without a restart.
    drop(squatter);
    assert!(
        wait_until(Duration::from_secs(40), || op.status_json()
            ["listeners_down"]
            .as_array()
            .is_some_and(Vec::is_empty)),
        "{}",
        op.log_text()
    );
    assert_eq!(
        publish_all(
            w.port,
            "late",
            vec![("sensors/late/telemetry".into(), b"{\"seq\":1}".to_vec())]
        )
        .await,
        1
    );
    assert!(col.wait_for(1, Duration::from_secs(10)).await >= 1);
    assert_eq!(op.log_text().matches("outpost running").count(), 1);
}
