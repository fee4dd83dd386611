//! systemd integration without systemd: the test plays the service manager
//! on a unix datagram socket (`NOTIFY_SOCKET`), as sd_notify(3) describes.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::common::*;

/// Messages received within `within`, each split into its lines.
fn receive(sock: &UnixDatagram, within: Duration) -> Vec<String> {
    let until = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        sock.set_read_timeout(Some(left)).expect("timeout");
        match sock.recv(&mut buf) {
            Ok(n) => out.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            ),
            Err(_) => break,
        }
    }
    out
}

#[test]
fn ready_status_watchdog_and_stopping_and_no_watchdog_while_the_outbox_is_wedged() {
    let w = World::new("");
    let sock_path = w.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let mut op = w.start_with_env(
        &w.site().mqtt("", ""),
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().expect("utf-8")),
            ("WATCHDOG_USEC", "200000"),
        ],
    );

    let first = receive(&sock, Duration::from_secs(2));
    assert!(first.iter().any(|l| l == "READY=1"), "{first:?}");
    assert!(
        first.iter().any(|l| l.starts_with("STATUS=queued=")),
        "{first:?}"
    );
    let pings = first.iter().filter(|l| *l == "WATCHDOG=1").count();
    assert!(
        pings >= 3,
        "{pings} watchdog pings in 2 s at a 200 ms watchdog: {first:?}"
    );

    // Wedge the outbox: another process holds SQLite's write lock, so the
    // writer blocks (for its 5 s busy timeout) on the next commit.
    let db = rusqlite::Connection::open(op.outbox()).expect("open outbox");
    db.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let publisher = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(publish_all(
            w.port,
            "p",
            vec![("sensors/a/telemetry".into(), b"{\"seq\":0}".to_vec())],
        ))
    });
    std::thread::sleep(Duration::from_millis(300));
    let wedged = receive(&sock, Duration::from_millis(1500));
    assert_eq!(
        wedged.iter().filter(|l| *l == "WATCHDOG=1").count(),
        0,
        "no watchdog ping while the outbox cannot commit: {wedged:?}"
    );
    db.execute_batch("ROLLBACK").expect("release the lock");
    drop(db);
    let _ = publisher.join();
    let after = receive(&sock, Duration::from_secs(8));
    assert!(
        after.iter().any(|l| l == "WATCHDOG=1"),
        "pings resume once it commits again: {after:?}"
    );

    assert!(op.terminate().success(), "SIGTERM exits 0");
    let last = receive(&sock, Duration::from_millis(300));
    assert!(
        after.iter().chain(last.iter()).any(|l| l == "STOPPING=1"),
        "STOPPING=1 on the way out"
    );
}

#[test]
fn without_a_journal_socket_logs_fall_back_to_stderr() {
    // JOURNAL_STREAM says "started by systemd", but no journald listens
    // here: outpost must still log somewhere a person can read.
    let w = World::new("");
    let mut op = w.start_with_env(&w.site().mqtt("", ""), &[("JOURNAL_STREAM", "8:12345")]);
    assert!(op.log_text().contains("outpost running"));
    assert!(op.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outpost_status_reports_connection_and_queues() {
    let mut w = World::new("");
    let op = w.start(&w.site().mqtt("", ""));
    let status = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["status", "--config"])
            .arg(&op.config)
            .output()
            .expect("outpost status");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        wait_until(Duration::from_secs(10), || status()
            .contains("sink up: connected")),
        "{}",
        status()
    );

    w.up.stop();
    assert_eq!(publish_devices(w.port, 1, 7).await, 7);
    assert!(
        wait_until(Duration::from_secs(10), || status()
            .contains("sink up: NOT connected, 7 queued")),
        "{}",
        status()
    );
    assert!(status().contains("7 accepted"), "{}", status());
    // While it is down: when outpost tries again, and why it failed.
    let text = status();
    assert!(text.contains("next attempt in "), "{text}");
    assert!(text.contains("; last error: "), "{text}");
    assert!(text.contains(", up "), "{text}");
    let st = op.status_json();
    assert!(st["uptime_s"].as_i64().is_some(), "{st}");
    assert!(
        st["sinks"]["up"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{st}"
    );
}

#[test]
fn outpost_status_without_a_daemon_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outpost.toml");
    std::fs::write(&path, config(dir.path(), 1, "mqtt://127.0.0.1:1", "", "")).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["status", "--config"])
        .arg(&path)
        .output()
        .expect("outpost status");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is it running with this config?"));
}

/// `systemctl reload` (SIGHUP with a changed file) restarts outpost in
/// place: systemd must hear RELOADING=1 and READY=1, never STOPPING=1,
/// or it waits for an exit that never comes and fails the reload.
#[test]
fn a_reload_says_reloading_and_ready_not_stopping() {
    let w = World::new("");
    let sock_path = w.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let text = w.site().mqtt("", "");
    let mut op = w.start_with_env(
        &text,
        &[("NOTIFY_SOCKET", sock_path.to_str().expect("utf-8"))],
    );
    let first = receive(&sock, Duration::from_secs(2));
    assert!(first.iter().any(|l| l == "READY=1"), "{first:?}");
    let pid = op.pid();
    std::fs::write(
        &op.config,
        format!("{text}\n[[route]]\ntopic = \"extra/+/telemetry\"\nsink = \"up\"\n"),
    )
    .expect("config");
    op.signal("HUP");
    let reload = receive(&sock, Duration::from_secs(4));
    assert!(reload.iter().any(|l| l == "RELOADING=1"), "{reload:?}");
    assert!(reload.iter().any(|l| l == "READY=1"), "{reload:?}");
    assert!(
        !reload.iter().any(|l| l == "STOPPING=1"),
        "a reload is not a stop: {reload:?}"
    );
    assert_eq!(op.pid(), pid);
    assert!(op.alive());
}

/// ERROR is for what needs a person: clients that come and go, a reading
/// delivered and a clean stop log none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_traffic_and_a_clean_stop_log_no_error() {
    let w = World::new("");
    let col = w.collect("site1/#").await;
    let mut op = w.start(&w.site().mqtt("", ""));
    assert_eq!(publish_devices(w.port, 3, 5).await, 15);
    assert_eq!(col.wait_for(15, Duration::from_secs(15)).await, 15);
    // A subscriber that leaves without DISCONNECT (killed), and one that
    // leaves cleanly.
    let mut sub = std::process::Command::new("mosquitto_sub")
        .args(["-p", &w.port.to_string(), "-t", "x/#"])
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(300));
    let _ = sub.kill();
    let _ = sub.wait();
    let (_c, _rx) = subscriber(w.port, "tidy", "y/#").await;
    drop(_c);
    assert!(op.terminate().success());
    let log = op.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "ERROR lines:\n{}", errors.join("\n"));
}
