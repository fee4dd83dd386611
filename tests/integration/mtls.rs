//! Client certificate chains upstream (mTLS), with every certificate made by
//! `outpost cert`: root → intermediate → leaves. Debian's mosquitto plays
//! the platform with `require_certificate true` and the root as its only CA.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// Runs `outpost cert ARGS` and returns its stdout; fails the test on error.
fn cert<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("cert")
        .args(args)
        .output()
        .expect("outpost cert");
    assert!(out.status.success(), "outpost cert {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// mosquitto runs as its own user: let it read what the test made.
fn readable(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let mode = if e.path().is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(e.path(), std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod");
        if e.path().is_dir() {
            readable(&e.path());
        }
    }
}

/// A CA nobody trusts ("Rogue Root") and a leaf `cn` from it: the
/// directory holds `chain.pem` and `<cn>.key`.
fn rogue_leaf(cn: &str) -> tempfile::TempDir {
    let rogue = tempfile::tempdir().expect("tempdir");
    let d = rogue.path();
    cert(&["ca", "--cn", "Rogue Root", "--out-dir", s(d)]);
    cert(&[
        "issue",
        "--ca-cert",
        s(&d.join("Rogue_Root.pem")),
        "--ca-key",
        s(&d.join("Rogue_Root.key")),
        "--cn",
        cn,
        "--out-dir",
        s(d),
    ]);
    rogue
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Root CA, an intermediate, and mosquitto's server certificate.
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        cert(&["ca", "--cn", "Site Root", "--out-dir", s(d)]);
        std::fs::create_dir(d.join("int")).expect("mkdir");
        cert(&[
            "issue",
            "--ca-cert",
            s(&d.join("Site_Root.pem")),
            "--ca-key",
            s(&d.join("Site_Root.key")),
            "--cn",
            "Site Intermediate",
            "--intermediate",
            "--days",
            "1000",
            "--out-dir",
            s(&d.join("int")),
        ]);
        std::fs::create_dir(d.join("server")).expect("mkdir");
        cert(&[
            "issue",
            "--ca-cert",
            s(&d.join("Site_Root.pem")),
            "--ca-key",
            s(&d.join("Site_Root.key")),
            "--cn",
            "localhost",
            "--san",
            "127.0.0.1",
            "--san",
            "localhost",
            "--out-dir",
            s(&d.join("server")),
        ]);
        readable(d);
        Pki { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A device leaf signed by the intermediate, in `sub/`: `sub/chain.pem`
    /// (leaf + intermediate + root) and `sub/<cn>.key`.
    fn device(&self, sub: &str, cn: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
        let out = self.path(sub);
        std::fs::create_dir_all(&out).expect("mkdir");
        let mut args: Vec<String> = [
            "issue",
            "--ca-cert",
            s(&self.path("int/chain.pem")),
            "--ca-key",
            s(&self.path("int/Site_Intermediate.key")),
            "--cn",
            cn,
            "--out-dir",
            s(&out),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        cert(&args);
        (out.join("chain.pem"), out.join(format!("{cn}.key")))
    }

    /// mosquitto: a plain listener (the test's collector) and a TLS listener
    /// that requires a client certificate from the root, and logs the
    /// certificate's CN as the username.
    fn upstream(&self) -> (Upstream, u16) {
        let tls_port = free_port();
        let up = Upstream::start(&format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true",
            self.path("Site_Root.pem").display(),
            self.path("server/chain.pem").display(),
            self.path("server/localhost.key").display(),
        ));
        assert!(
            wait_port(tls_port, Duration::from_secs(10)),
            "TLS listener:\n{}",
            up.log()
        );
        (up, tls_port)
    }
}

fn mtls_config(
    dir: &Path,
    port: u16,
    tls_port: u16,
    pki: &Pki,
    chain: &Path,
    key: &Path,
) -> String {
    config(
        dir,
        port,
        &format!("mqtts://127.0.0.1:{tls_port}"),
        "",
        &format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nreconnect_min = \"200ms\"\nreconnect_max = \"500ms\"",
            pki.path("Site_Root.pem").display(),
            chain.display(),
            key.display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_chain_from_outpost_cert_is_accepted_and_data_flows() {
    let pki = Pki::new();
    let (chain, key) = pki.device("dev", "gw-0042", &[]);
    let (up, tls_port) = pki.upstream();
    let col = Collector::start(up.port, "site1/#").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let op = Outpost::start(
        dir.path(),
        port,
        &mtls_config(dir.path(), port, tls_port, &pki, &chain, &key),
    );
    assert_eq!(publish_devices(port, 2, 20).await, 40);
    assert_eq!(
        col.wait_for(40, Duration::from_secs(15)).await,
        40,
        "{}",
        op.log_text()
    );
    // The platform saw the leaf's CN (mosquitto's username from the cert).
    assert!(up.log().contains("u'gw-0042'"), "{}", up.log());
    let log = op.log_text();
    assert!(
        log.contains("client certificate checked") && log.contains("gw-0042"),
        "{log}"
    );
    assert!(
        !log.contains("BEGIN"),
        "no key or certificate material in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_from_another_ca_is_refused_and_the_readings_wait() {
    let pki = Pki::new();
    // Another CA, unknown to the platform, signs a leaf with the same CN.
    let rogue = rogue_leaf("gw-0042");
    let (up, tls_port) = pki.upstream();
    let col = Collector::start(up.port, "site1/#").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let op = Outpost::start(
        dir.path(),
        port,
        &mtls_config(
            dir.path(),
            port,
            tls_port,
            &pki,
            &rogue.path().join("chain.pem"),
            &rogue.path().join("gw-0042.key"),
        ),
    );
    assert_eq!(publish_devices(port, 1, 5).await, 5);
    assert!(
        wait_until(Duration::from_secs(10), || op
            .log_text()
            .contains("upstream connection failed")),
        "{}",
        op.log_text()
    );
    col.settle(Duration::from_millis(500), Duration::from_secs(2))
        .await;
    assert_eq!(
        col.count(),
        0,
        "nothing may pass with a rejected certificate"
    );
    assert_eq!(op.queued(), 5);
    let log = op.log_text();
    assert!(
        log.contains("the server did not accept our client certificate"),
        "a clear reason: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_leaf_is_refused_with_its_date_and_a_renewed_one_is_used_without_restart() {
    let pki = Pki::new();
    let (chain, key) = pki.device("old", "gw-0042", &["--not-after", "2021-01-01"]);
    let (up, tls_port) = pki.upstream();
    let col = Collector::start(up.port, "site1/#").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // The chain and key live where the config says; the technician renews
    // them in place.
    let live_chain = dir.path().join("chain.pem");
    let live_key = dir.path().join("device.key");
    std::fs::copy(&chain, &live_chain).expect("copy");
    std::fs::copy(&key, &live_key).expect("copy");
    let mut op = Outpost::start(
        dir.path(),
        port,
        &mtls_config(dir.path(), port, tls_port, &pki, &live_chain, &live_key),
    );
    assert_eq!(publish_devices(port, 1, 5).await, 5, "ingest runs on");
    assert!(
        wait_until(Duration::from_secs(5), || op
            .log_text()
            .contains("expired on 2021-01-01")),
        "{}",
        op.log_text()
    );
    // Logged once, not once per attempt (attempts every 0.5 s here).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        op.log_text().matches("expired on").count(),
        1,
        "{}",
        op.log_text()
    );
    assert_eq!(col.count(), 0);
    assert_eq!(op.queued(), 5);

    let (new_chain, new_key) = pki.device("new", "gw-0042", &["--days", "90"]);
    std::fs::copy(&new_key, &live_key).expect("copy");
    std::fs::copy(&new_chain, &live_chain).expect("copy");
    assert_eq!(
        col.wait_for(5, Duration::from_secs(15)).await,
        5,
        "{}",
        op.log_text()
    );
    assert!(op.log_text().contains("usable again"));
    assert_eq!(op.terminate().code(), Some(0));
}

#[test]
fn cert_inspect_shows_cn_issuer_validity_and_checks_root_and_key() {
    let pki = Pki::new();
    let (chain, key) = pki.device("dev", "gw-0042", &["--days", "30"]);
    let text = cert(&[
        "inspect",
        s(&chain),
        "--root",
        s(&pki.path("Site_Root.pem")),
        "--key",
        s(&key),
    ]);
    for want in [
        "certificate 1 of 3",
        "CN:       gw-0042",
        "issuer:   CN=Site Intermediate",
        "day(s) left)",
        "chain order: ok",
        "verified against",
        "matches certificate 1",
    ] {
        assert!(text.contains(want), "missing `{want}`:\n{text}");
    }
    let leaf_validity = text
        .lines()
        .find(|l| l.contains("valid:"))
        .expect("validity line");
    assert!(
        leaf_validity.contains("(30 day(s) left)") || leaf_validity.contains("(29 day(s) left)"),
        "{leaf_validity}"
    );

    // A wrong root and a wrong key: exit 1, and said.
    let rogue = tempfile::tempdir().expect("tempdir");
    cert(&["ca", "--cn", "Rogue Root", "--out-dir", s(rogue.path())]);
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["cert", "inspect", s(&chain), "--root"])
        .arg(rogue.path().join("Rogue_Root.pem"))
        .arg("--key")
        .arg(rogue.path().join("Rogue_Root.key"))
        .output()
        .expect("inspect");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAILED") && text.contains("does NOT match"),
        "{text}"
    );
    // A key is never overwritten.
    let again = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["cert", "keygen", "--out"])
        .arg(&key)
        .output()
        .expect("keygen");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    // Keys are written 0600 (the fixture above widened its own copies for
    // mosquitto).
    let fresh = rogue.path().join("fresh.key");
    cert(&["keygen", "--out", s(&fresh)]);
    let mode = std::fs::metadata(&fresh)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.ok(), Some(0o600));
}

/// A sensor's TLS client config: trusts `ca`, presents `identity`.
fn sensor_tls(ca: &Path, identity: Option<(&Path, &Path)>) -> rumqttc::TlsConfiguration {
    use rumqttc::tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in outpost::pki::read_certs(ca).expect("ca") {
        roots.add(c).expect("add root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(
                outpost::pki::read_certs(chain).expect("chain"),
                outpost::pki::read_key(key).expect("key").0,
            )
            .expect("client auth"),
    };
    rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config))
}

/// A site's own CA in `d`, a gateway leaf for 127.0.0.1 in `d/gw` and a
/// sensor leaf with CN `sensor` in `d/s1`. Returns the CA certificate.
fn local_pki(d: &Path, ca_cn: &str, sensor: &str) -> std::path::PathBuf {
    cert(&["ca", "--cn", ca_cn, "--out-dir", s(d)]);
    let file = ca_cn.replace(' ', "_");
    let (ca, ca_key) = (d.join(format!("{file}.pem")), d.join(format!("{file}.key")));
    for (sub, cn, san) in [
        ("gw", "outpost-gw", Some("127.0.0.1")),
        ("s1", sensor, None),
    ] {
        let out = d.join(sub);
        std::fs::create_dir(&out).expect("mkdir");
        let mut args = vec![
            "issue",
            "--ca-cert",
            s(&ca),
            "--ca-key",
            s(&ca_key),
            "--cn",
            cn,
            "--out-dir",
            s(&out),
        ];
        if let Some(san) = san {
            args.extend(["--san", san]);
        }
        cert(&args);
    }
    ca
}

/// Connects over TLS and publishes one QoS 1 reading; `Ok` once PUBACKed.
async fn tls_publish(
    port: u16,
    id: &str,
    tls: rumqttc::TlsConfiguration,
    payload: &str,
) -> Result<(), String> {
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_transport(rumqttc::Transport::tls_with_config(tls));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 8);
    client
        .publish(
            format!("sensors/{id}/telemetry"),
            rumqttc::QoS::AtLeastOnce,
            false,
            payload.as_bytes().to_vec(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no PUBACK within 5s".into()));
    let _ = client.try_disconnect();
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_tls_listener_takes_sensors_with_a_local_ca_certificate_and_refuses_others() {
    // A local CA for the site: the gateway's own certificate and the
    // sensors' certificates come from it.
    let local = tempfile::tempdir().expect("tempdir");
    let d = local.path();
    let ca = local_pki(d, "Greenhouse CA", "sensor-1");
    let rogue = rogue_leaf("sensor-1");

    let w = World::new("");
    let col = w.collect("site1/#").await;
    let tls_port = free_port();
    let text = w.site().mqtt("", "").replace(
        "max_payload = \"16 KiB\"",
        &format!(
            "max_payload = \"16 KiB\"\n\n[broker.tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"",
            d.join("gw/chain.pem").display(),
            d.join("gw/outpost-gw.key").display(),
            ca.display()
        ),
    );
    let op = w.start(&text);
    assert!(
        wait_port(tls_port, Duration::from_secs(10)),
        "{}",
        op.log_text()
    );

    let good = sensor_tls(
        &ca,
        Some((&d.join("s1/chain.pem"), &d.join("s1/sensor-1.key"))),
    );
    tls_publish(tls_port, "sensor-1", good, "{\"t\":1}")
        .await
        .expect("a sensor with a local CA certificate publishes");
    assert_eq!(col.wait_for(1, Duration::from_secs(10)).await, 1);
    assert_eq!(col.all()[0].topic, "site1/sensor-1/telemetry");

    let none = tls_publish(tls_port, "sensor-2", sensor_tls(&ca, None), "{\"t\":2}").await;
    assert!(none.is_err(), "no client certificate must be refused");
    let other = sensor_tls(
        &ca,
        Some((
            &rogue.path().join("chain.pem"),
            &rogue.path().join("sensor-1.key"),
        )),
    );
    assert!(
        tls_publish(tls_port, "sensor-3", other, "{\"t\":3}")
            .await
            .is_err(),
        "another CA must be refused"
    );
    col.settle(Duration::from_millis(300), Duration::from_secs(2))
        .await;
    assert_eq!(col.count(), 1);
    let log = op.log_text();
    assert!(
        log.contains("TLS sensor refused: handshake failed")
            && log.contains("error=peer sent no certificates"),
        "{log}"
    );
    assert!(
        log.contains("error=invalid peer certificate: UnknownIssuer"),
        "{log}"
    );

    // The plain listener still works beside it.
    assert_eq!(publish_devices(w.port, 1, 1).await, 1);
    assert_eq!(col.wait_for(2, Duration::from_secs(10)).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_listener_certificate_is_refused_by_check_config_and_waits_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let text = config(dir.path(), port, "mqtt://127.0.0.1:1", "", "").replace(
        "max_payload = \"16 KiB\"",
        "max_payload = \"16 KiB\"\n\n[broker.tls]\nlisten = \"127.0.0.1:1\"\ncert_file = \"/nonexistent/gw.pem\"\nkey_file = \"/nonexistent/gw.key\"",
    );
    let path = dir.path().join("candidate.toml");
    std::fs::write(&path, &text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("check-config");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broker.tls") && err.contains("/nonexistent/gw.pem"),
        "{err}"
    );
    // Started all the same: the plain listener serves, the TLS one waits
    // (and says why) until its certificate is there.
    let op = Outpost::start(dir.path(), port, &text);
    assert_eq!(publish_devices(port, 1, 1).await, 1);
    let down = op.status_json()["listeners_down"].to_string();
    assert!(
        down.contains("broker.tls.listen") && down.contains("/nonexistent/gw.pem"),
        "{down}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thingsboard_gets_the_certificate_as_client_attributes() {
    let pki = Pki::new();
    let (chain, key) = pki.device("dev", "gw-0042", &["--days", "20"]);
    let (up, tls_port) = pki.upstream();
    let col = Collector::start(up.port, "v1/devices/me/attributes").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let text = format!(
        r#"state_dir = "{}"
[broker]
listen = "127.0.0.1:{port}"
[[route]]
topic = "sensors/+/telemetry"
sink = "tb"
[sink.tb]
type = "thingsboard"
url = "mqtts://127.0.0.1:{tls_port}"
ca_file = "{}"
cert_file = "{}"
key_file = "{}"
"#,
        dir.path().display(),
        pki.path("Site_Root.pem").display(),
        chain.display(),
        key.display()
    );
    let op = Outpost::start(dir.path(), port, &text);
    assert_eq!(
        col.wait_for(1, Duration::from_secs(10)).await,
        1,
        "{}",
        op.log_text()
    );
    let attrs = col.all()[0].json();
    assert_eq!(attrs["certificateCN"], "gw-0042", "{attrs}");
    assert_eq!(attrs["certificateIssuer"], "Site Intermediate", "{attrs}");
    let days = attrs["certificateDaysLeft"].as_i64().expect("days left");
    assert!((19..=20).contains(&days), "{attrs}");
    // Within 30 days: a warning in the log too.
    assert!(op.log_text().contains("expires soon"), "{}", op.log_text());
    assert!(up.log().contains("u'gw-0042'"));
    // Over TLS the ThingsBoard fixture cannot sit between them: what
    // arrived is judged by its rules instead.
    assert_taken(&col.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_cn_is_the_username_for_the_acl() {
    let local = tempfile::tempdir().expect("tempdir");
    let d = local.path();
    let ca = local_pki(d, "Site CA", "sensor7");
    let acl = d.join("acl");
    std::fs::write(&acl, "pattern write sensors/%u/telemetry\n").expect("acl");
    let w = World::new("");
    let col = w.collect("site1/#").await;
    let tls_port = free_port();
    let text = w.site().mqtt("", "").replace(
        "max_payload = \"16 KiB\"",
        &format!(
            "max_payload = \"16 KiB\"\nacl_file = \"{}\"\n\n[broker.tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nuse_identity_as_username = true",
            acl.display(),
            d.join("gw/chain.pem").display(),
            d.join("gw/outpost-gw.key").display(),
            ca.display()
        ),
    );
    let op = w.start(&text);
    assert!(
        wait_port(tls_port, Duration::from_secs(10)),
        "{}",
        op.log_text()
    );
    let identity = || {
        sensor_tls(
            &ca,
            Some((&d.join("s1/chain.pem"), &d.join("s1/sensor7.key"))),
        )
    };
    // Its own topic: allowed. Another's, with the same certificate (3.1.1
    // is acknowledged, as Mosquitto does, and nothing goes anywhere).
    tls_publish(tls_port, "sensor7", identity(), "{\"t\":7}")
        .await
        .expect("sensor7 publishes as itself");
    tls_publish(tls_port, "sensor8", identity(), "{\"t\":8}")
        .await
        .expect("acknowledged");
    assert_eq!(col.wait_for(1, Duration::from_secs(10)).await, 1);
    col.settle(Duration::from_millis(300), Duration::from_secs(2))
        .await;
    let topics: Vec<String> = col.all().iter().map(|m| m.topic.clone()).collect();
    assert_eq!(topics, ["site1/sensor7/telemetry"], "{}", op.log_text());
    assert!(op.log_text().contains("publish not allowed by the ACL"));
}

/// Keys as the seeds make them, each used for mTLS against mosquitto:
/// `openssl ecparam -genkey` (SEC1 with its `EC PARAMETERS` block),
/// `openssl genrsa -traditional` (PKCS#1) and `openssl genpkey` (PKCS#8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_by_openssl_in_every_form_work_for_mtls() {
    require("openssl", "openssl");
    let pki = Pki::new();
    let (up, tls_port) = pki.upstream();
    let col = Collector::start(up.port, "site1/#").await;
    // (name, openssl arguments before and after `-out FILE`, PEM marker)
    let forms: [(&str, &[&str], &[&str], &str); 3] = [
        (
            "sec1",
            &["ecparam", "-name", "prime256v1", "-genkey"],
            &[],
            "BEGIN EC PARAMETERS",
        ),
        (
            "pkcs1",
            &["genrsa", "-traditional"],
            &["2048"],
            "BEGIN RSA PRIVATE KEY",
        ),
        (
            "pkcs8",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
            &[],
            "BEGIN PRIVATE KEY",
        ),
    ];
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
        out.stdout
    };
    for (i, (name, genkey, size, marker)) in forms.into_iter().enumerate() {
        let d = pki.path(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        let key = d.join("device.key");
        let mut args = genkey.to_vec();
        args.extend(["-out", s(&key)]);
        args.extend(size);
        openssl(&args);
        let text = std::fs::read_to_string(&key).expect("key");
        assert!(text.contains(marker), "{name}: {text}");
        let csr = d.join("device.csr");
        openssl(&[
            "req",
            "-new",
            "-key",
            s(&key),
            "-subj",
            &format!("/CN=gw-{name}"),
            "-out",
            s(&csr),
        ]);
        let leaf = d.join("leaf.pem");
        // A v3 leaf for client authentication, as a platform's CA signs it.
        let ext = d.join("leaf.ext");
        std::fs::write(
            &ext,
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .expect("ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-extfile",
            s(&ext),
            "-CA",
            s(&pki.path("int/Site_Intermediate.pem")),
            "-CAkey",
            s(&pki.path("int/Site_Intermediate.key")),
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            s(&leaf),
        ]);
        let chain = d.join("chain.pem");
        let mut pem = std::fs::read_to_string(&leaf).expect("leaf");
        pem.push_str(&std::fs::read_to_string(pki.path("int/chain.pem")).expect("int chain"));
        std::fs::write(&chain, pem).expect("chain");
        readable(pki.dir.path());
        // `outpost cert inspect --key` reads it as the uplink does.
        let shown = cert(&["inspect", s(&chain), "--key", s(&key)]);
        assert!(shown.contains("matches certificate 1"), "{name}: {shown}");

        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut op = Outpost::start(
            dir.path(),
            port,
            &mtls_config(dir.path(), port, tls_port, &pki, &chain, &key),
        );
        let msg = vec![(
            format!("sensors/{name}/telemetry"),
            format!("{{\"seq\":{i}}}").into_bytes(),
        )];
        assert_eq!(publish_all(port, name, msg).await, 1);
        assert_eq!(
            col.wait_for(i + 1, Duration::from_secs(15)).await,
            i + 1,
            "{name} key: {}",
            op.log_text()
        );
        assert!(up.log().contains(&format!("u'gw-{name}'")), "{}", up.log());
        op.terminate();
    }
}

/// The README's `outpost cert` example, run verbatim in an empty directory
/// (its `--out-dir`s do not exist beforehand).
#[test]
fn the_readme_certificate_example_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("outpost cert ca --cn \"Site Root\" --out-dir pki")
        .expect("the example in the README");
    let block = &readme[start..];
    let script: String = block[..block.find("```").expect("end of the example")]
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_outpost"), bin.join("outpost")).expect("link");
    let work = dir.path().join("site");
    std::fs::create_dir(&work).expect("site");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-e", "-c", &script])
        .current_dir(&work)
        .env("PATH", path)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "the README's example failed:\n{script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("matches certificate 1"), "{said}");
    assert!(said.contains("BEGIN CERTIFICATE REQUEST"), "{said}");
    assert!(work.join("dev/chain.pem").exists() && work.join("pki/int/chain.pem").exists());
}
