//! ThingsBoard device provisioning against a fixture: a real mosquitto, with
//! the test playing ThingsBoard's provisioning service on
//! `/provision/request` → `/provision/response`.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

/// Plays ThingsBoard's provisioning service: records each request and
/// answers it with `answer(request)`.
struct Provisioner {
    requests: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Provisioner {
    async fn start(port: u16, answer: fn(&Value) -> Value) -> Provisioner {
        let mut opts = MqttOptions::new(format!("tb-{}", fastrand::u32(..)), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(10));
        let (client, mut events) = AsyncClient::new(opts, 16);
        let requests: Arc<Mutex<Vec<Value>>> = Arc::default();
        let seen = requests.clone();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe("/provision/request", QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let req: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        let reply = answer(&req);
                        if let Ok(mut r) = seen.lock() {
                            r.push(req);
                        }
                        let _ = client.try_publish(
                            "/provision/response",
                            QoS::AtLeastOnce,
                            false,
                            serde_json::to_vec(&reply).unwrap_or_default(),
                        );
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("provisioner subscribed within 10s")
            .expect("provisioner running");
        Provisioner { requests, task }
    }

    fn requests(&self) -> Vec<Value> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for Provisioner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tb_config(site: &Site, credentials: &str, extra: &str) -> String {
    format!(
        r#"{header}
[[route]]
topic = "sensors/+/telemetry"
sink = "tb"

[sink.tb]
type = "thingsboard"
url = "{url}"
provision_device_key = "pk-123"
provision_device_secret = "ps-secret-456"
provision_device_name = "greenhouse-7"
provision_credentials = "{credentials}"
provision_timeout = "5s"
reconnect_min = "200ms"
reconnect_max = "1s"
{extra}
"#,
        header = site.header("", ""),
        url = site.url,
    )
}

fn token_answer(_: &Value) -> Value {
    json!({"status": "SUCCESS", "credentialsType": "ACCESS_TOKEN", "credentialsValue": "tok-abc-789"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_is_provisioned_once_stored_and_used_after_restart() {
    let w = World::thingsboard("").await;
    let tb = Provisioner::start(w.up.port, token_answer).await;
    let col = w.collect("v1/devices/me/telemetry").await;
    let mut op = w.start(&tb_config(&w.site(), "access_token", ""));
    assert_eq!(publish_devices(w.port, 1, 3).await, 3);
    assert!(
        col.wait_for(1, Duration::from_secs(15)).await >= 1,
        "{}",
        op.log_text()
    );

    let reqs = tb.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        reqs[0],
        json!({"deviceName": "greenhouse-7", "provisionDeviceKey": "pk-123",
               "provisionDeviceSecret": "ps-secret-456", "credentialsType": "ACCESS_TOKEN"})
    );
    // It asked as `provision`, then connected with the token it was given.
    let log = w.up.log();
    assert!(log.contains("u'provision'"), "{log}");
    assert!(log.contains("u'tok-abc-789'"), "{log}");
    let stored = w.path().join("credentials/tb.json");
    let mode = std::fs::metadata(&stored)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("stored credentials");
    assert_eq!(mode, 0o600);

    // Restart: the stored token is used, no second request.
    assert_eq!(op.terminate().code(), Some(0));
    let before = col.count();
    op.restart();
    assert_eq!(publish_devices(w.port, 1, 2).await, 2);
    assert!(
        col.wait_for(before + 1, Duration::from_secs(15)).await > before,
        "{}",
        op.log_text()
    );
    assert_eq!(tb.requests().len(), 1, "provisioned only once");
    let all = op.all_logs();
    assert!(
        all.contains("using the credentials stored by provisioning"),
        "{all}"
    );
    for secret in ["ps-secret-456", "tok-abc-789"] {
        assert!(!all.contains(secret), "`{secret}` must never be logged");
    }
}

fn basic_answer(req: &Value) -> Value {
    json!({"status": "SUCCESS", "credentialsType": "MQTT_BASIC", "credentialsValue": {
        "clientId": req["clientId"], "userName": req["username"], "password": req["password"]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_basic_credentials_made_by_outpost_are_used() {
    let w = World::thingsboard("").await;
    let tb = Provisioner::start(w.up.port, basic_answer).await;
    let col = w.collect("v1/devices/me/telemetry").await;
    let op = w.start(&tb_config(&w.site(), "mqtt_basic", ""));
    assert_eq!(publish_devices(w.port, 1, 3).await, 3);
    assert!(
        col.wait_for(1, Duration::from_secs(15)).await >= 1,
        "{}",
        op.log_text()
    );
    let req = tb.requests().first().cloned().expect("a request");
    assert_eq!(req["credentialsType"], "MQTT_BASIC");
    let (client_id, user, password) = (
        req["clientId"].as_str().expect("clientId"),
        req["username"].as_str().expect("username"),
        req["password"].as_str().expect("password"),
    );
    assert!(password.len() >= 16, "a real password: {password}");
    assert!(
        w.up.log().contains(&format!("as {client_id} ")),
        "{}",
        w.up.log()
    );
    assert!(w.up.log().contains(&format!("u'{user}'")), "{}", w.up.log());
    assert!(
        !op.log_text().contains(password),
        "the password must never be logged"
    );
}

fn refusal(_: &Value) -> Value {
    json!({"status": "NOT_FOUND", "errorMsg": "Provision data was not found!"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_provisioning_is_reported_with_thingsboards_message_and_readings_wait() {
    let w = World::thingsboard("").await;
    let tb = Provisioner::start(w.up.port, refusal).await;
    let col = w.collect("v1/devices/me/telemetry").await;
    let op = w.start(&tb_config(&w.site(), "access_token", ""));
    assert_eq!(
        publish_devices(w.port, 1, 4).await,
        4,
        "ingest runs while unprovisioned"
    );
    assert!(
        wait_until(Duration::from_secs(10), || op.log_text().contains(
            "ThingsBoard refused provisioning: Provision data was not found!"
        )),
        "{}",
        op.log_text()
    );
    // Asked again after reconnect_max, but the same refusal is logged once.
    assert!(wait_until(Duration::from_secs(10), || tb.requests().len() >= 2));
    assert_eq!(
        op.log_text().matches("refused provisioning").count(),
        1,
        "{}",
        op.log_text()
    );
    assert_eq!(col.count(), 0);
    assert_eq!(op.queued(), 4);
    assert!(!w.path().join("credentials/tb.json").exists());
}

fn cert(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("cert")
        .args(args)
        .output()
        .expect("outpost cert");
    assert!(out.status.success(), "outpost cert {args:?}: {out:?}");
}

fn x509_answer(req: &Value) -> Value {
    // The documented X.509 answer uses `provisionDeviceStatus`.
    json!({"deviceId": "3b829220-232f-11eb-9d5c-e9ed3235dff8", "credentialsType": "X509_CERTIFICATE",
           "credentialsId": "6b8df7f2b0e3e4e6", "credentialsValue": req["hash"],
           "provisionDeviceStatus": "SUCCESS"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509_identity_is_made_provisioned_stored_and_presented() {
    // Server certificate for mosquitto's TLS listener.
    let pki = tempfile::tempdir().expect("tempdir");
    let p = pki.path();
    let s = |x: &Path| x.to_str().expect("utf-8").to_string();
    cert(&["ca", "--cn", "Server Root", "--out-dir", &s(p)]);
    cert(&[
        "issue",
        "--ca-cert",
        &s(&p.join("Server_Root.pem")),
        "--ca-key",
        &s(&p.join("Server_Root.key")),
        "--cn",
        "localhost",
        "--san",
        "127.0.0.1",
        "--out-dir",
        &s(p),
    ]);
    for e in std::fs::read_dir(p).expect("ls").flatten() {
        std::fs::set_permissions(
            e.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .expect("chmod");
    }
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let tls_listener = |port: u16, extra: &str| {
        format!(
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n{extra}",
            p.join("trusted.pem").display(),
            p.join("chain.pem").display(),
            p.join("localhost.key").display()
        )
    };
    std::fs::copy(p.join("Server_Root.pem"), p.join("trusted.pem")).expect("copy");
    std::fs::set_permissions(
        p.join("trusted.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");

    // Phase 1: one-way TLS; outpost provisions an X.509 identity.
    let tls_port = free_port();
    let mut w = World::new(&tls_listener(tls_port, ""));
    assert!(
        wait_port(tls_port, Duration::from_secs(10)),
        "{}",
        w.up.log()
    );
    let tb = Provisioner::start(w.up.port, x509_answer).await;
    let col = w.collect("v1/devices/me/telemetry").await;
    let ca = format!("ca_file = \"{}\"", p.join("Server_Root.pem").display());
    let mut op = w.start(&tb_config(
        &Site {
            url: format!("mqtts://127.0.0.1:{tls_port}"),
            ..w.site()
        },
        "x509_certificate",
        &ca,
    ));
    assert_eq!(publish_devices(w.port, 1, 2).await, 2);
    assert!(
        col.wait_for(1, Duration::from_secs(15)).await >= 1,
        "{}",
        op.log_text()
    );
    let req = tb.requests().first().cloned().expect("a request");
    assert_eq!(req["credentialsType"], "X509_CERTIFICATE");
    let sent = req["hash"]
        .as_str()
        .expect("the certificate PEM")
        .to_string();
    let (stored_cert, stored_key) = (
        w.path().join("credentials/tb.pem"),
        w.path().join("credentials/tb.key"),
    );
    assert_eq!(
        std::fs::read_to_string(&stored_cert).expect("stored cert"),
        sent
    );
    for f in [&stored_cert, &stored_key] {
        let mode = std::fs::metadata(f)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("stat");
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let inspect = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["cert", "inspect"])
        .arg(&stored_cert)
        .arg("--key")
        .arg(&stored_key)
        .output()
        .expect("inspect");
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains("CN:       greenhouse-7") && text.contains("matches certificate 1"),
        "{text}"
    );
    assert_eq!(op.terminate().code(), Some(0));
    drop(col);
    drop(tb);
    w.up.stop();

    // Phase 2: the platform now requires that certificate (it trusts the
    // provisioned leaf and names the client by its CN). Restarted outpost
    // presents it and asks for nothing.
    let mut trusted = std::fs::read_to_string(p.join("Server_Root.pem")).expect("root");
    trusted.push_str(&sent);
    std::fs::write(p.join("trusted.pem"), trusted).expect("write");
    let tls_port = free_port();
    let up = Upstream::start(&tls_listener(
        tls_port,
        "require_certificate true\nuse_identity_as_username true",
    ));
    assert!(wait_port(tls_port, Duration::from_secs(10)), "{}", up.log());
    let tb = Provisioner::start(up.port, x509_answer).await;
    let col = Collector::start(up.port, "v1/devices/me/telemetry").await;
    let text = tb_config(
        &Site {
            url: format!("mqtts://127.0.0.1:{tls_port}"),
            ..w.site()
        },
        "x509_certificate",
        &ca,
    );
    std::fs::write(&op.config, text).expect("rewrite config");
    op.restart();
    assert_eq!(publish_devices(w.port, 1, 2).await, 2);
    assert!(
        col.wait_for(1, Duration::from_secs(15)).await >= 1,
        "{}\n{}",
        op.log_text(),
        up.log()
    );
    assert!(up.log().contains("u'greenhouse-7'"), "{}", up.log());
    assert!(tb.requests().is_empty(), "no second provisioning");
    // Over TLS the fixture cannot sit between them: what arrived is
    // judged by its rules instead.
    assert_taken(&col.all());
}
