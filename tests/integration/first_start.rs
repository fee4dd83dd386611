//! A first start that tells the user what to do: `outpost init` writes a
//! config that works, and until a sink has reached its platform once the
//! log and `outpost status` say which file to edit.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

fn init(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("init")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("outpost init");
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.as_bytes()).expect("answers");
    }
    child.wait_with_output().expect("outpost init")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_writes_a_config_that_delivers_and_the_first_start_line_goes_once_connected() {
    let mut w = World::new("");
    let col = w.collect("outpost/#").await;
    let path = w.path().join("outpost.toml");
    let state = w.path().join("state");
    let listen = format!("127.0.0.1:{}", w.port);

    // Missing answers are named, and nothing is written.
    let out = init(
        &[
            "--config",
            path.to_str().expect("utf-8"),
            "--platform",
            "mqtt",
            "--no-input",
        ],
        "",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broker URL (--url, mqtt(s)://host:port) is missing"),
        "{err}"
    );
    assert!(!path.exists());

    // The URL given on stdin, as a person at the prompt would.
    let out = init(
        &[
            "--config",
            path.to_str().expect("utf-8"),
            "--platform",
            "mqtt",
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--listen",
            &listen,
        ],
        &format!("{}\n", w.up.url()),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("systemctl reload outpost"), "{said}");

    // Before it ever connects: the line, in the log and in status.
    w.up.stop();
    let mut op = Outpost::start(
        w.path(),
        w.port,
        &std::fs::read_to_string(&path).expect("cfg"),
    );
    let file = format!("edit {}", path.display());
    assert!(op.log_text().contains(&file), "{}", op.log_text());
    assert!(op.log_text().contains("/usr/share/doc/outpost/examples/"));
    let hint = op.status_json()["hint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(hint.contains(&file), "status: {}", op.status_json());

    // Connected once: the line goes, and stays gone across a restart.
    w.up.restart();
    assert!(publish_devices(w.port, 1, 1).await == 1);
    assert_eq!(col.wait_for(1, Duration::from_secs(20)).await, 1);
    assert_eq!(
        col.all()[0].json()["values"]["seq"],
        0,
        "delivered through the written config"
    );
    assert!(
        wait_until(Duration::from_secs(5), || op.status_json()["hint"]
            .is_null()),
        "{}",
        op.status_json()
    );
    op.terminate();
    op.restart();
    assert!(!op.log_text().contains(&file), "{}", op.log_text());
    assert!(op.status_json()["hint"].is_null());
}
