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
