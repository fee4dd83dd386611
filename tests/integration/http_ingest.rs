//! HTTP ingest: `POST /ingest/{device}` as a device that speaks HTTP uses
//! it. A 200 means the reading is in the outbox; it then reaches the
//! upstream in order with its ts, like an MQTT reading. Bad requests get
//! the reason, a full store 503 with Retry-After, and the local broker's
//! logins and ACL apply. After each hostile case a canary still arrives.

use std::time::Duration;

use outpost::record::now_ms;

use crate::common::*;

fn post(port: u16, device: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    request(port, "POST", &format!("/ingest/{device}"), &h, body)
}

fn with_http(text: &str, hp: u16, http: &str) -> String {
    format!("{text}\n[http]\nlisten = \"127.0.0.1:{hp}\"\n{http}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_posts_arrive_upstream_in_order_with_their_ts() {
    let w = World::new("");
    let hp = free_port();
    let col = w.collect("site1/#").await;
    let mut op = w.start(&with_http(&w.site().mqtt("", ""), hp, ""));
    assert!(wait_port(hp, Duration::from_secs(5)));
    let base = now_ms() - 60_000;
    for i in 0..100 {
        let body = format!("{{\"ts\":{},\"values\":{{\"seq\":{i}}}}}", base + i * 10);
        let a = post(hp, "h1", &[], body.as_bytes());
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body.contains("\"stored\":1"), "{}", a.body);
    }
    assert_eq!(col.wait_for(100, Duration::from_secs(30)).await, 100);
    let seen = col.all();
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.topic, "site1/h1/telemetry");
        let v = s.json();
        assert_eq!(v["values"]["seq"], i as i64, "in order: {v}");
        assert_eq!(v["ts"], base + i as i64 * 10, "its own ts: {v}");
    }
    let st = op.status_json();
    assert_eq!(st["accepted"], 100, "{st}");
    op.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_reason_and_outpost_serves_everyone_after_each() {
    let w = World::new("");
    let hp = free_port();
    let text = with_http(
        &w.site().mqtt("", ""),
        hp,
        "max_body = \"1 KiB\"\n[http.device_tokens]\nlocked = \"token-of-locked\"",
    );
    let mut s = Watched::start(w, &text, &[]).await;
    assert!(wait_port(hp, Duration::from_secs(5)));
    // (device, headers, body, status, what the reason names)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("bad-json", vec![], b"{\"t\":".to_vec(), 400, "not JSON"),
        (
            "big",
            vec![],
            format!("{{\"x\":\"{}\"}}", "y".repeat(2000)).into_bytes(),
            413,
            "http.max_body",
        ),
        ("a%2Bb", vec![], b"{}".to_vec(), 400, "device name"),
        ("%24SYS", vec![], b"{}".to_vec(), 400, "device name"),
        (
            "locked",
            vec![],
            b"{\"t\":1}".to_vec(),
            403,
            "X-Device-Token",
        ),
        (
            "locked",
            vec![("X-Device-Token", "wrong-token!")],
            b"{\"t\":1}".to_vec(),
            403,
            "X-Device-Token",
        ),
        (
            "binary",
            vec![],
            vec![0xff, 0xfe, 0x00, 0x01],
            400,
            "not JSON",
        ),
    ];
    for (device, headers, body, want, why) in cases {
        let a = post(hp, device, &headers, &body);
        assert_eq!(a.status, want, "{device}: {}", a.body);
        assert!(
            a.body.contains(why),
            "{device}: the reason names {why}: {}",
            a.body
        );
        s.canary().await;
    }
    let a = post(
        hp,
        "locked",
        &[("X-Device-Token", "token-of-locked")],
        b"{\"t\":2}",
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(wait_until(Duration::from_secs(10), || s
        .col
        .all()
        .iter()
        .any(|m| m.topic == "site1/locked/telemetry")));
    for d in ["bad-json", "big", "binary"] {
        s.never_arrived(d);
    }
    s.op.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_answers_503_with_retry_after_and_loses_nothing_it_took() {
    let mut w = World::new("");
    let hp = free_port();
    let col = w.collect("site1/#").await;
    let store = "max_bytes = \"16 KiB\"\nfull_policy = \"reject_new\"";
    let mut op = w.start(&with_http(&w.site().mqtt(store, ""), hp, ""));
    assert!(wait_port(hp, Duration::from_secs(5)));
    w.up.stop();
    assert!(wait_until(Duration::from_secs(10), || {
        op.status_json()["sinks"]["up"]["connected"] == false
    }));
    let pad = "p".repeat(300);
    let mut taken = Vec::new();
    let mut busy = None;
    for i in 0..200 {
        let a = post(
            hp,
            "full",
            &[],
            format!("{{\"seq\":{i},\"pad\":\"{pad}\"}}").as_bytes(),
        );
        match a.status {
            200 => taken.push(i),
            503 => {
                busy = Some(a);
                break;
            }
            other => panic!("unexpected {other}: {}", a.body),
        }
    }
    let busy = busy.expect("the store filled up and said so");
    assert!(busy.header("retry-after").is_some(), "{busy:?}");
    assert!(busy.body.contains("outbox is full"), "{}", busy.body);
    assert!(
        taken.len() > 10,
        "{} taken before the store was full",
        taken.len()
    );
    w.up.restart();
    assert_eq!(
        col.wait_for(taken.len(), Duration::from_secs(30)).await,
        taken.len()
    );
    col.settle(Duration::from_millis(500), Duration::from_secs(5))
        .await;
    let seqs: Vec<i64> = col
        .all()
        .iter()
        .map(|s| s.json()["values"]["seq"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        seqs, taken,
        "every reading answered 200 arrived, in order, once"
    );
    // Room again: the same POST is taken.
    let a = post(hp, "full", &[], b"{\"seq\":999}");
    assert_eq!(a.status, 200, "{}", a.body);
    op.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_brokers_logins_and_acl_apply_to_http_readings() {
    let w = World::new("");
    let hp = free_port();
    let (dir, passwd) = password_file_with(&[("sensor1", "pw1"), ("other", "pw2")]);
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "pattern write sensors/%u/telemetry\n").expect("acl");
    let text = with_http(&w.site().mqtt("", ""), hp, "").replace(
        "[broker]\n",
        &format!(
            "[broker]\npassword_file = \"{}\"\nacl_file = \"{}\"\n",
            passwd.display(),
            acl.display()
        ),
    );
    let col = w.collect("site1/#").await;
    let mut op = w.start(&text);
    assert!(wait_port(hp, Duration::from_secs(5)));
    let a = post(hp, "sensor1", &[], b"{\"t\":1}");
    assert_eq!(a.status, 401, "anonymous is not allowed: {}", a.body);
    assert!(a.header("www-authenticate").is_some());
    let wrong = basic("sensor1", "nope");
    assert_eq!(
        post(hp, "sensor1", &[("Authorization", &wrong)], b"{}").status,
        401
    );
    let other = basic("other", "pw2");
    let a = post(hp, "sensor1", &[("Authorization", &other)], b"{\"t\":1}");
    assert_eq!(a.status, 403, "the ACL: {}", a.body);
    assert!(a.body.contains("ACL"), "{}", a.body);
    let own = basic("sensor1", "pw1");
    let a = post(hp, "sensor1", &[("Authorization", &own)], b"{\"t\":2}");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(col.wait_for(1, Duration::from_secs(15)).await, 1);
    col.settle(Duration::from_millis(300), Duration::from_secs(3))
        .await;
    assert_eq!(col.count(), 1, "only the allowed reading went upstream");
    assert_eq!(col.all()[0].json()["values"]["t"], 2);
    op.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_no_route_takes_is_refused_with_422_not_silently_dropped() {
    let w = World::new("");
    let hp = free_port();
    let text = with_http(
        &w.site().mqtt("", ""),
        hp,
        "ingest_topic = \"unrouted/{device}\"",
    );
    let mut op = w.start(&text);
    assert!(wait_port(hp, Duration::from_secs(5)));
    let a = post(hp, "u1", &[], b"{\"t\":1}");
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(
        a.body.contains("no [[route]] takes the topic unrouted/u1"),
        "{}",
        a.body
    );
    assert_eq!(op.status_json()["accepted"], 0);
    op.terminate();
}

/// Serves `html` to every request on a free loopback port (a page of
/// another site, another origin, for the browser to load) until the
/// returned task is aborted.
async fn foreign_site(html: String) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let html = std::sync::Arc::new(html);
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, task)
}

/// A page served from another origin, opened in headless chromium, tries
/// every way a browser lets it post without outpost's consent: `fetch`
/// with a text body (no CORS preflight), `fetch` with a JSON type (a
/// preflight outpost never grants), and a plain-text form. None gets a
/// reading accepted; a device's own reading after them arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_site_cannot_get_a_reading_accepted() {
    let w = World::new("");
    let hp = free_port();
    let col = w.collect("site1/#").await;
    let op = w.start(&with_http(&w.site().mqtt("", ""), hp, ""));
    assert!(wait_port(hp, Duration::from_secs(5)));
    let target = format!("http://127.0.0.1:{hp}/ingest");
    // Two pages (headless chromium stalls on a form submitted from a
    // fetch's callback): the fetches, then a form that submits itself.
    let fetches = format!(
        r#"<html><body><p id="p">start</p><script>
Promise.allSettled([
  fetch("{target}/evil-text", {{method: "POST", mode: "no-cors", body: '{{"temp":666}}'}}),
  fetch("{target}/evil-json", {{method: "POST", headers: {{"Content-Type": "application/json"}}, body: '{{"temp":666}}'}}),
]).then(() => {{ document.getElementById("p").textContent = "tried"; }});
</script></body></html>"#
    );
    let form = format!(
        r#"<html><body><form id="f" method="POST" action="{target}/evil-form" enctype="text/plain"><input name='{{"temp":666,"x":"' value='"}}'></form>
<script>document.getElementById("f").submit();</script></body></html>"#
    );
    require("chromium", "chromium");
    for (page, what) in [(fetches, "fetch"), (form, "form")] {
        let (site, served) = foreign_site(page).await;
        let profile = tempfile::tempdir().expect("profile");
        let out = tokio::process::Command::new("timeout")
            .arg("90")
            .arg("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("http://127.0.0.1:{site}/"))
            .output()
            .await
            .expect("chromium");
        served.abort();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if what == "fetch" {
            let dom = String::from_utf8_lossy(&out.stdout);
            assert!(dom.contains(">tried<"), "the page ran its requests: {dom}");
        }
    }
    // A device's own reading, after the page's attempts.
    let a = post(hp, "canary", &[], b"{\"ok\":1}");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(col.wait_for(1, Duration::from_secs(15)).await >= 1);
    col.settle(Duration::from_millis(300), Duration::from_secs(3))
        .await;
    let devices: Vec<String> = col.all().iter().map(|s| s.topic.clone()).collect();
    assert_eq!(
        devices,
        ["site1/canary/telemetry"],
        "only the device's reading went upstream"
    );
    let log = op.log_text();
    assert!(
        !log.contains("evil"),
        "no reading of the page was routed:\n{log}"
    );
}

/// The answers a non-browser client gets, and `check-config` on ingest
/// opened to the LAN without logins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_takes_json_from_its_own_host_and_is_never_open_to_the_lan_without_logins() {
    let w = World::new("");
    let hp = free_port();
    let col = w.collect("site1/#").await;
    let op = w.start(&with_http(&w.site().mqtt("", ""), hp, ""));
    assert!(wait_port(hp, Duration::from_secs(5)));
    let form = request(
        hp,
        "POST",
        "/ingest/d1",
        &[("Content-Type", "text/plain")],
        b"{\"t\":1}",
    );
    assert_eq!(form.status, 415, "{}", form.body);
    assert!(form.body.contains("application/json"), "{}", form.body);
    let foreign = post(hp, "d1", &[("Origin", "http://evil.example")], b"{\"t\":1}");
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    let rebound = post(hp, "d1", &[("Host", "evil.example:8088")], b"{\"t\":1}");
    assert_eq!(rebound.status, 403, "DNS rebinding: {}", rebound.body);
    let same = post(
        hp,
        "d1",
        &[("Origin", &format!("http://127.0.0.1:{hp}"))],
        b"{\"t\":2}",
    );
    assert_eq!(same.status, 200, "its own page may post: {}", same.body);
    assert_eq!(col.wait_for(1, Duration::from_secs(15)).await, 1);
    drop(op);

    // check-config: ingest on a LAN address while the broker takes
    // anonymous clients.
    let cfg = w.path().join("lan.toml");
    let (_pw_dir, pw) = password_file("admin", "secret");
    let text = format!(
        "state_dir = \"{}\"\n[http]\nlisten = \"0.0.0.0:{hp}\"\npassword_file = \"{}\"\n",
        w.path().display(),
        pw.display()
    );
    std::fs::write(&cfg, &text).expect("cfg");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("outpost");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    assert!(
        err.contains("http.ingest") && err.contains("broker.password_file"),
        "{err}"
    );
    std::fs::write(&cfg, format!("{text}ingest = false\n")).expect("cfg");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("outpost");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Password guesses through `/ingest` are counted with the broker's
/// refused logins, an address that keeps guessing gets 429 for the rest of
/// the minute, and the log has one line for them, not one per guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guesses_on_ingest_are_counted_throttled_and_logged_once() {
    let w = World::new("");
    let hp = free_port();
    let (_dir, passwd) = password_file("sensor1", "pw1");
    let text = with_http(&w.site().mqtt("", ""), hp, "").replace(
        "[broker]\n",
        &format!("[broker]\npassword_file = \"{}\"\n", passwd.display()),
    );
    let col = w.collect("site1/#").await;
    let op = w.start(&text);
    assert!(wait_port(hp, Duration::from_secs(5)));
    let mut codes = Vec::new();
    for i in 0..30 {
        let guess = basic("sensor1", &format!("guess-{i}"));
        codes.push(post(hp, "sensor1", &[("Authorization", &guess)], b"{\"t\":1}").status);
    }
    assert!(codes[..10].iter().all(|c| *c == 401), "{codes:?}");
    assert!(codes[10..].iter().all(|c| *c == 429), "{codes:?}");
    let broker = &op.status_json()["broker"];
    assert!(broker["refused"].as_u64() >= Some(10), "{broker}");
    let lines = op.log_text().matches("HTTP login refused from").count();
    assert_eq!(lines, 1, "{}", op.log_text());
    // The right password from another address is not held back.
    let own = basic("sensor1", "pw1");
    let h = [
        ("Authorization", own.as_str()),
        ("Content-Type", "application/json"),
    ];
    let a = post_from("127.0.0.2", hp, "/ingest/sensor1", &h, b"{\"t\":2}").await;
    assert_eq!(a, 200);
    assert_eq!(col.wait_for(1, Duration::from_secs(15)).await, 1);
}

/// A POST from a given loopback address; the status code.
async fn post_from(
    from: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind to the source address");
    let mut s = socket
        .connect(format!("127.0.0.1:{port}").parse().expect("addr"))
        .await
        .expect("connect");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("send");
    s.write_all(body).await.expect("send");
    let mut raw = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut raw)).await;
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
