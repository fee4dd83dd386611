//! Who may do what on the local broker, against the reference: the same
//! password file (made by Debian's `mosquitto_passwd`) and ACL file given
//! to Debian's mosquitto and to outpost, the same clients run against both
//! (MQTT 3.1.1 and 5), and what they observe must be the same. outpost
//! must in addition store and forward nothing a client may not write.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use outpost::source::broker::codec::{self, Packet, Props, Publish, V311, V5};

use crate::common::*;

const ACL: &str = "\
# the anonymous section: nothing
user watcher
topic read #
user admin
topic readwrite #
pattern write sensors/%u/telemetry
pattern read devices/%u/#
pattern write sensors/%c/telemetry
";

const USERS: &[(&str, &str)] = &[
    ("sensor1", "pw1"),
    ("sensor2", "pw2"),
    ("watcher", "pw3"),
    ("admin", "pw4"),
    ("plus", "pw5"),
    ("x#y", "pw6"),
];

/// The password file (by `mosquitto_passwd`) and the ACL file, readable by
/// mosquitto's own user.
fn files() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (dir, passwd) = password_file_with(USERS);
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).expect("acl");
    std::fs::set_permissions(&acl, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    (dir, passwd, acl)
}

fn login(level: u8, id: &str, user: &str, pw: &str) -> Hello {
    let mut h = Hello::new(level, id);
    h.login = Some((user.into(), pw.into()));
    h
}

fn publish(topic: &str, payload: &[u8], retain: bool, pkid: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: 1,
        retain,
        topic: topic.into(),
        pkid,
        payload: Bytes::copy_from_slice(payload),
        props: Props::default(),
    })
}

/// Topics a subscriber received, sorted.
async fn received(c: &mut Raw) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(p) = c.next_publish(Duration::from_millis(400)).await {
        got.push(format!(
            "{}{}",
            p.topic,
            if p.retain { " (retained)" } else { "" }
        ));
    }
    got.sort();
    got
}

/// What every client saw, as lines; the same scenario for any broker.
async fn scenario(port: u16, level: u8) -> Vec<String> {
    let mut seen = Vec::new();
    let tag = if level == V5 { "5" } else { "4" };
    let id = |who: &str| format!("{who}-{tag}");
    let code = |got: Got| match got {
        Got::Packet(Packet::ConnAck(a)) => format!("connack {:#04x}", a.code),
        other => format!("{other:?}"),
    };

    let (_, got) = Raw::hello(port, &Hello::new(level, &id("anon"))).await;
    seen.push(format!("anonymous: {}", code(got)));

    // Subscribers first: they must see nothing of what follows that they
    // may not read.
    let (mut watcher, _) =
        Raw::connected(port, &login(level, &id("watcher"), "watcher", "pw3")).await;
    watcher.subscribe("#", 1).await;
    let (mut s2, _) = Raw::connected(port, &login(level, &id("s2"), "sensor2", "pw2")).await;
    s2.subscribe("devices/sensor2/rpc/request/+", 1).await;

    // A wrong password, with a PUBLISH in the same TCP segment.
    let mut bytes = BytesMut::new();
    codec::encode(
        &login(level, &id("forger"), "sensor1", "wrong").packet(),
        level,
        &mut bytes,
    );
    codec::encode(
        &publish("sensors/sensor1/telemetry", b"{\"forged\":1}", false, 1),
        level,
        &mut bytes,
    );
    let mut forger = Raw::open(port, level).await;
    forger.send_bytes(&bytes).await;
    let (packets, closed) = forger.drain(Duration::from_millis(500)).await;
    let first = packets.first().cloned().map_or(Got::Nothing, Got::Packet);
    seen.push(format!(
        "wrong password: {} closed={closed} then {} more",
        code(first),
        packets.len().saturating_sub(1)
    ));

    let (mut admin, _) = Raw::connected(port, &login(level, &id("admin"), "admin", "pw4")).await;
    for (topic, body) in [
        ("devices/sensor2/attributes", "{\"mode\":2}"),
        ("devices/sensor1/attributes", "{\"mode\":1}"),
    ] {
        let c = admin
            .publish(topic, body.as_bytes(), 1, true, Props::default())
            .await;
        seen.push(format!("admin retains {topic}: {c:?}"));
    }

    let (mut s1, _) = Raw::connected(port, &login(level, &id("s1"), "sensor1", "pw1")).await;
    s1.subscribe("#", 1).await;
    s1.subscribe("devices/sensor2/#", 1).await;
    for topic in [
        "sensors/sensor1/telemetry",
        "sensors/sensor2/telemetry",
        "devices/sensor2/rpc/request/1",
    ] {
        let c = s1
            .publish(topic, b"{\"v\":1}", 1, false, Props::default())
            .await;
        seen.push(format!("sensor1 publishes {topic}: {c:?}"));
    }
    // Names that would widen a pattern: a client id `+` or `#`, a
    // username `#`.
    for (who, user, pw) in [
        ("+", "plus", "pw5"),
        ("#", "plus", "pw5"),
        ("hash", "x#y", "pw6"),
    ] {
        let (mut c, _) = Raw::connected(port, &login(level, who, user, pw)).await;
        for topic in ["sensors/victim/telemetry", "sensors/plus/telemetry"] {
            let r = c
                .publish(topic, b"{\"v\":2}", 1, false, Props::default())
                .await;
            seen.push(format!("id {who} user {user} publishes {topic}: {r:?}"));
        }
        c.disconnect().await;
    }
    seen.push(format!("sensor1 received: {:?}", received(&mut s1).await));
    seen.push(format!("sensor2 received: {:?}", received(&mut s2).await));
    seen.push(format!(
        "watcher received: {:?}",
        received(&mut watcher).await
    ));
    for c in [s1, s2, watcher, admin] {
        c.disconnect().await;
    }
    seen
}

fn outpost_config(w: &World, passwd: &Path, acl: &Path) -> String {
    w.site().mqtt("", "").replace(
        "[broker]\n",
        &format!(
            "[broker]\npassword_file = \"{}\"\nacl_file = \"{}\"\n",
            passwd.display(),
            acl.display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_the_acl_hold_the_same_as_in_mosquitto() {
    let (_files, passwd, acl) = files();
    // Mosquitto's default queue bound (see `Upstream::start`).
    let reference = Upstream::start(&format!(
        "password_file {}\nacl_file {}\nallow_anonymous false\nmax_queued_messages 1000",
        passwd.display(),
        acl.display()
    ));
    let w = World::new("");
    let col = w.collect("site1/#").await;
    let op = w.start(&outpost_config(&w, &passwd, &acl));
    let mut differences = Vec::new();
    for level in [V311, V5] {
        let theirs = scenario(reference.port, level).await;
        let ours = scenario(w.port, level).await;
        if theirs != ours {
            differences.push(format!(
                "MQTT {level}:\n  mosquitto: {theirs:#?}\n  outpost:   {ours:#?}"
            ));
        }
        // What the clients see must also be right, not only the same.
        let joined = ours.join("\n");
        assert!(
            joined.contains("anonymous: connack 0x05")
                || joined.contains("anonymous: connack 0x87"),
            "{joined}"
        );
        assert!(joined.contains("wrong password: connack"), "{joined}");
        assert!(!joined.contains("sensors/sensor2/telemetry\""), "{joined}");
    }
    assert!(
        differences.is_empty(),
        "outpost differs from mosquitto:\n{}",
        differences.join("\n")
    );
    // Upstream: only what its writers may write.
    col.settle(Duration::from_millis(500), Duration::from_secs(5))
        .await;
    let mut topics: Vec<String> = col.all().iter().map(|s| s.topic.clone()).collect();
    topics.sort();
    assert_eq!(
        topics,
        ["site1/sensor1/telemetry", "site1/sensor1/telemetry"],
        "one reading per run from sensor1, nothing forged or denied:\n{}",
        op.log_text()
    );
    assert!(col
        .all()
        .iter()
        .all(|s| !s.payload.starts_with(b"{\"forged\"")));
    let log = op.log_text();
    assert!(log.contains("publish not allowed by the ACL"), "{log}");
    assert!(!log.contains("wrong"), "a password is never logged");
    let st = op.status_json();
    assert!(st["broker"]["denied"].as_u64().unwrap_or(0) >= 8, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_files_from_either_tool_work_in_both_brokers() {
    let (_files, passwd, acl) = files();
    // outpost takes mosquitto_passwd's file (the test above) and its own.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let ours = dir.path().join("passwd");
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["passwd", "--password-stdin"])
        .arg(&ours)
        .arg("sensor9")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("outpost passwd");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"nine\n")
        .expect("write");
    assert!(child.wait().expect("wait").success());
    std::fs::set_permissions(&ours, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let text = std::fs::read_to_string(&ours).expect("read");
    assert!(text.starts_with("sensor9:$7$101$"), "{text}");

    // Mosquitto itself takes outpost's file.
    let reference = Upstream::start(&format!(
        "password_file {}\nallow_anonymous false",
        ours.display()
    ));
    let (_, got) = Raw::hello(reference.port, &login(V311, "m", "sensor9", "nine")).await;
    assert!(
        matches!(&got, Got::Packet(Packet::ConnAck(a)) if a.code == 0),
        "{got:?}\n{}",
        reference.log()
    );
    let (_, got) = Raw::hello(reference.port, &login(V311, "m", "sensor9", "ten")).await;
    assert!(
        matches!(&got, Got::Packet(Packet::ConnAck(a)) if a.code == 0x05),
        "{got:?}"
    );

    // And outpost, with both files one after the other.
    let w = World::new("");
    let mut op = w.start(&outpost_config(&w, &ours, &acl));
    let (_, got) = Raw::hello(w.port, &login(V311, "o", "sensor9", "nine")).await;
    assert!(
        matches!(&got, Got::Packet(Packet::ConnAck(a)) if a.code == 0),
        "{got:?}"
    );
    let (_, got) = Raw::hello(w.port, &login(V5, "o", "sensor9", "ten")).await;
    assert!(
        matches!(&got, Got::Packet(Packet::ConnAck(a)) if a.code == 0x87),
        "{got:?}"
    );
    assert!(op.terminate().success());
    std::fs::write(&op.config, outpost_config(&w, &passwd, &acl)).expect("config");
    op.restart();
    let (_, got) = Raw::hello(w.port, &login(V311, "o", "sensor1", "pw1")).await;
    assert!(
        matches!(&got, Got::Packet(Packet::ConnAck(a)) if a.code == 0),
        "{got:?}"
    );
    // Failed logins: one line a minute per peer, with the count.
    for _ in 0..5 {
        let (_, got) = Raw::hello(w.port, &login(V311, "o", "sensor1", "guess")).await;
        assert!(
            matches!(&got, Got::Packet(Packet::ConnAck(a)) if a.code == 0x05),
            "{got:?}"
        );
    }
    let log = op.log_text();
    assert_eq!(
        log.matches("reason=bad username or password").count(),
        1,
        "{log}"
    );
    let log = op.all_logs();
    assert!(
        !log.contains("nine") && !log.contains("\"ten\"") && !log.contains("guess"),
        "passwords are never logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_a_changed_acl_and_password_file_without_dropping_anyone() {
    let (files_dir, passwd, acl) = files();
    let w = World::new("");
    let col = w.collect("site1/#").await;
    let mut op = w.start(&outpost_config(&w, &passwd, &acl));
    let pid = op.pid();
    let (mut s1, _) = Raw::connected(w.port, &login(V5, "s1", "sensor1", "pw1")).await;
    let before = s1
        .publish(
            "sensors/shared/telemetry",
            b"{\"v\":1}",
            1,
            false,
            Props::default(),
        )
        .await;
    assert_eq!(before, Ok(0x87));
    // sensor1 may now write the shared topic; a new user appears.
    std::fs::write(
        &acl,
        format!("{ACL}user sensor1\ntopic write sensors/shared/telemetry\n"),
    )
    .expect("acl");
    let out = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(&passwd)
        .args(["late", "pw7"])
        .output()
        .expect("mosquitto_passwd");
    assert!(out.status.success());
    op.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || op
            .log_text()
            .contains("password and ACL files are read again")),
        "{}",
        op.log_text()
    );
    assert_eq!(op.pid(), pid, "no restart");
    let after = s1
        .publish(
            "sensors/shared/telemetry",
            b"{\"v\":2}",
            1,
            false,
            Props::default(),
        )
        .await;
    assert_eq!(after, Ok(0), "the same connection, the new rule");
    assert!(col.wait_for(1, Duration::from_secs(10)).await >= 1);
    let (_, got) = Raw::hello(w.port, &login(V311, "late", "late", "pw7")).await;
    assert!(
        matches!(&got, Got::Packet(Packet::ConnAck(a)) if a.code == 0),
        "{got:?}"
    );

    // A broken file is refused and the running rules stay.
    std::fs::write(&acl, "topic sometimes x\n").expect("acl");
    op.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let log = op.log_text();
            log.contains("acl:1: `sometimes` is not an access")
                && log.contains("keeping the running one")
        }),
        "{}",
        op.log_text()
    );
    let still = s1
        .publish(
            "sensors/shared/telemetry",
            b"{\"v\":3}",
            1,
            false,
            Props::default(),
        )
        .await;
    assert_eq!(still, Ok(0));
    drop(files_dir);
}

#[test]
fn a_listener_others_can_reach_refuses_to_start_without_logins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("outpost.toml");
    // Nothing is bound: the config is refused before that.
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n[broker]\nlisten = \"0.0.0.0:{}\"\n",
            dir.path().display(),
            free_port()
        ),
    )
    .expect("write");
    for cmd in ["run", "check-config"] {
        let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args([cmd, "--config"])
            .arg(&cfg)
            .output()
            .expect("outpost");
        assert!(!out.status.success(), "{cmd} accepted it");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("broker.listen") && err.contains("broker.allow_anonymous = true"),
            "{cmd}: {err}"
        );
    }
    // The old plaintext table points at the password file.
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n[broker.users]\nsensor1 = \"pw\"\n",
            dir.path().display()
        ),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("outpost");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broker.users") && err.contains("password_file"),
        "{err}"
    );
    // A bad password or ACL line is named with its file and line.
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user a\ntopic read a/#/b\n").expect("acl");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "a:$9$x$y\n").expect("pw");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n[broker]\npassword_file = \"{}\"\nacl_file = \"{}\"\n",
            dir.path().display(),
            pw.display(),
            acl.display()
        ),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("outpost");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:1: unknown hash type `$9$`", pw.display()))
            && err.contains(&format!("{}:2: not a topic filter", acl.display())),
        "{err}"
    );
}

/// What a reload that takes a login and a read right away does, seen by
/// the clients: the same scenario on any broker; `reload` edits nothing,
/// only signals (the files are changed before it is called).
async fn revocation(port: u16, files: &Path, reload: impl FnOnce()) -> Vec<String> {
    let mut seen = Vec::new();
    let tag = format!("rv{port}");
    let cmd = format!("devices/{tag}/cmd");
    // Bob's persistent session, with a command queued while he is away.
    let mut bob = login(V5, &format!("{tag}-bob"), "watcher", "pw3").persistent();
    bob.props
        .set(codec::props::SESSION_EXPIRY, codec::props::Value::U32(3600));
    let (mut b, _) = Raw::connected(port, &bob).await;
    let ack = b.subscribe(&cmd, 1).await;
    seen.push(format!(
        "bob subscribed: {}",
        matches!(ack, Packet::SubAck(ref a) if a.codes == [1])
    ));
    b.disconnect().await;
    let (mut admin, _) =
        Raw::connected(port, &login(V5, &format!("{tag}-admin"), "admin", "pw4")).await;
    let r = admin
        .publish(&cmd, b"open", 1, false, Props::default())
        .await;
    seen.push(format!(
        "admin published: {}",
        matches!(r, Ok(c) if c < 0x80)
    ));
    // Sensor2 is connected when its user is deleted.
    let (mut s2, _) =
        Raw::connected(port, &login(V5, &format!("{tag}-s2"), "sensor2", "pw2")).await;
    let out = Command::new("mosquitto_passwd")
        .arg("-D")
        .arg(files.join("passwd"))
        .arg("sensor2")
        .output()
        .expect("mosquitto_passwd");
    assert!(out.status.success(), "{out:?}");
    std::fs::write(
        files.join("acl"),
        ACL.replace(
            "user watcher\ntopic read #\n",
            "user watcher\ntopic read sensors/#\n",
        ),
    )
    .expect("acl");
    reload();
    let ended = loop {
        match s2.recv(Duration::from_secs(5)).await {
            Got::Closed => break "closed",
            Got::Packet(Packet::Disconnect(_)) => continue,
            Got::Packet(_) => continue,
            Got::Nothing => break "still connected after 5 s",
        }
    };
    seen.push(format!("deleted user: {ended}"));
    let (mut b, _) = Raw::connected(port, &bob).await;
    seen.push(format!(
        "bob after the reload received: {:?}",
        received(&mut b).await
    ));
    seen
}

/// A user deleted from the password file is disconnected on SIGHUP, and a
/// message queued for a session before the ACL took the right to read it
/// away is not delivered: as in mosquitto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_disconnects_deleted_users_and_withholds_what_may_no_longer_be_read() {
    let (dir_m, passwd_m, acl_m) = files();
    let mut reference = Upstream::start(&format!(
        "password_file {}\nacl_file {}\nallow_anonymous false\nmax_queued_messages 1000",
        passwd_m.display(),
        acl_m.display()
    ));
    let theirs = revocation(reference.port, dir_m.path(), || reference.reload()).await;

    let (dir_o, passwd_o, acl_o) = files();
    let w = World::new("");
    let mut op = w.start(&outpost_config(&w, &passwd_o, &acl_o));
    let ours = revocation(w.port, dir_o.path(), || op.signal("HUP")).await;
    assert_eq!(theirs, ours, "mosquitto and outpost differ");
    assert!(
        ours.contains(&"deleted user: closed".to_string()),
        "{ours:?}"
    );
    assert!(
        ours.contains(&"bob after the reload received: []".to_string()),
        "{ours:?}"
    );
    assert!(
        op.log_text().contains("no longer lets sensor2 in"),
        "{}",
        op.log_text()
    );
}
