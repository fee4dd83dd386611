//! The local broker and the HTTP server when the LAN uses up what the
//! process has: its file descriptors (lowered with `prlimit`, as a Pi's
//! service limit would be reached). The clients already connected must
//! keep being served, nothing is restarted, and new clients are served
//! again once the pressure ends.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outpost::source::broker::codec::{Packet, Props, V311, V5};

use crate::common::*;

/// Opens connections to `port` from `127.0.0.2..` until `stop`, holding up
/// to `hold` of them and sending `first` on each (nothing: a socket that
/// never sends CONNECT; a request head that never ends, for HTTP).
fn attacker(
    port: u16,
    first: &'static [u8],
    hold: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut held = std::collections::VecDeque::new();
        let mut opened = 0usize;
        // Bounded: the test stops it well before.
        for round in 0..2_000u32 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            for a in 2..=21u8 {
                let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                    continue;
                };
                if socket
                    .bind(std::net::SocketAddr::from(([127, 0, 0, a], 0)))
                    .is_err()
                {
                    continue;
                }
                let connect = socket.connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
                if let Ok(Ok(mut s)) =
                    tokio::time::timeout(Duration::from_millis(200), connect).await
                {
                    let _ = s.write_all(first).await;
                    opened += 1;
                    held.push_back(s);
                    if held.len() > hold {
                        held.pop_front();
                    }
                }
            }
            // Pace the waves (this is the attack's own rhythm, not a wait
            // for the system under test).
            let _ = round;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        opened
    })
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_new_work_is_refused_and_connected_clients_keep_publishing() {
    require("prlimit", "util-linux");
    let w = World::new("");
    let hp = free_port();
    let text = format!(
        "{}\n[http]\nlisten = \"127.0.0.1:{hp}\"\n",
        w.site().mqtt("", "")
    );
    let mut s = Watched::start(w, &text, &[]).await;
    assert!(wait_port(hp, Duration::from_secs(5)));
    // Twenty sensors connected before the pressure.
    let mut sensors = Vec::new();
    for i in 0..20 {
        let (c, _) = Raw::connected(s.w.port, &Hello::new(V311, &format!("steady-{i}"))).await;
        sensors.push(c);
    }
    let pid = s.op.pid().expect("outpost runs");
    let limit = open_descriptors(pid) + 40;
    let set = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .expect("prlimit");
    assert!(set.status.success(), "{set:?}");

    // Sockets that never send CONNECT and HTTP requests that never end,
    // from twenty addresses, far more than the descriptors left.
    let stop = Arc::new(AtomicBool::new(false));
    let mqtt = attacker(s.w.port, b"", 400, stop.clone());
    let http = attacker(
        hp,
        b"POST /ingest/x HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        400,
        stop.clone(),
    );
    assert!(
        wait_until(Duration::from_secs(20), || s
            .op
            .log_text()
            .contains("out of file descriptors")),
        "the descriptors ran out:\n{}",
        s.op.log_text()
    );

    // Meanwhile every connected sensor goes on publishing and is
    // acknowledged, through several health checks (one every 3 s).
    for round in 0..8u32 {
        for (i, c) in sensors.iter_mut().enumerate() {
            let code = c
                .publish(
                    &format!("sensors/steady-{i}/telemetry"),
                    format!("{{\"round\":{round}}}").as_bytes(),
                    1,
                    false,
                    Props::default(),
                )
                .await;
            assert_eq!(code, Ok(0), "steady-{i} round {round}: PUBACK");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let opened = mqtt.await.unwrap_or(0) + http.await.unwrap_or(0);
    assert!(opened > 100, "the attack opened {opened} connections");

    // Every reading of the steady sensors arrived, none was lost.
    assert!(
        wait_until(Duration::from_secs(30), || s
            .col
            .all()
            .iter()
            .filter(|m| m.topic.contains("steady-"))
            .count()
            >= 160),
        "{} of 160 steady readings arrived:\n{}",
        s.col
            .all()
            .iter()
            .filter(|m| m.topic.contains("steady-"))
            .count(),
        s.op.log_text()
    );
    // Nothing restarted, the sensors are still connected, and new clients
    // are served again (the canary also checks for restarts).
    let b = s.broker_status();
    assert_eq!(b["restarts"], 0, "{b}");
    assert!(b["shed"].as_u64() > Some(0), "{b}");
    assert!(b["connected"].as_u64() >= Some(20), "{b}");
    for (i, c) in sensors.iter_mut().enumerate() {
        let code = c
            .publish(
                &format!("sensors/steady-{i}/telemetry"),
                b"{\"after\":1}",
                1,
                false,
                Props::default(),
            )
            .await;
        assert_eq!(code, Ok(0), "steady-{i} after the pressure");
    }
    // The connections the attack left queued are taken and closed; then a
    // new client is served (a sensor retries; so does this, bounded).
    // Served again once five newcomers in a row get in.
    let mut in_a_row = 0;
    for _ in 0..120 {
        let (c, got) = Raw::hello(s.w.port, &Hello::new(V311, "newcomer")).await;
        if matches!(got, Got::Packet(Packet::ConnAck(ref a)) if a.code == 0) {
            c.disconnect().await;
            in_a_row += 1;
            if in_a_row == 5 {
                break;
            }
        } else {
            in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert!(
        in_a_row == 5,
        "no new client served after the pressure:\n{}",
        s.op.log_text()
    );
    s.canary_within(Duration::from_secs(20)).await;
    let page = get(hp, "/api/status");
    assert_eq!(page.status, 200, "the page serves again");
}

/// An HTTP request whose head never ends does not hold its connection for
/// ever: outpost closes it once the client has sent nothing for a while
/// (15 s), and answers other requests meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_http_request_is_closed_not_held_for_ever() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = World::new("");
    let hp = free_port();
    let text = format!(
        "{}\n[http]\nlisten = \"127.0.0.1:{hp}\"\n",
        w.site().mqtt("", "")
    );
    let _op = w.start(&text);
    assert!(wait_port(hp, Duration::from_secs(5)));
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", hp))
        .await
        .expect("connect");
    s.write_all(b"POST /ingest/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("a head that never ends");
    assert_eq!(
        get(hp, "/api/status").status,
        200,
        "others are served meanwhile"
    );
    let mut buf = [0u8; 256];
    let end = tokio::time::timeout(Duration::from_secs(40), s.read(&mut buf)).await;
    assert!(
        matches!(end, Ok(Ok(_)) | Ok(Err(_))),
        "the connection was still held after 40 s"
    );
}

/// A client that lets its offline queue fill cannot take the queue space
/// the others share (`max_queued_bytes_total`): a valve's command queued
/// while it is away is still there when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_offline_queue_does_not_cost_another_client_its_command() {
    let mut s = Watched::broker("max_queued_bytes_total = \"16 KiB\"").await;
    let port = s.w.port;
    let (mut greedy, _) = Raw::connected(port, &Hello::new(V311, "greedy").persistent()).await;
    greedy.subscribe("flood/#", 1).await;
    greedy.disconnect().await;
    let (mut valve, _) = Raw::connected(port, &Hello::new(V311, "valve-1").persistent()).await;
    valve.subscribe("devices/valve-1/cmd", 1).await;
    valve.disconnect().await;

    let (mut p, _) = Raw::connected(port, &Hello::new(V311, "flooder")).await;
    let junk = vec![b'j'; 500];
    for _ in 0..200 {
        assert_eq!(
            p.publish("flood/x", &junk, 1, false, Props::default())
                .await,
            Ok(0)
        );
    }
    assert_eq!(
        p.publish(
            "devices/valve-1/cmd",
            b"{\"open\":true}",
            1,
            false,
            Props::default()
        )
        .await,
        Ok(0)
    );
    let (mut valve, ack) = Raw::connected(port, &Hello::new(V311, "valve-1").persistent()).await;
    assert!(ack.session_present);
    let cmd = valve.next_publish(Duration::from_secs(5)).await;
    assert_eq!(
        cmd.map(|m| m.payload.to_vec()),
        Some(b"{\"open\":true}".to_vec()),
        "the valve's command survived the flood"
    );
    let b = s.broker_status();
    assert!(
        b["dropped"].as_u64() > Some(100),
        "the flood was cut and counted: {b}"
    );
    s.canary().await;
}

/// One greedy address takes every connection slot and leaves a pile of
/// persistent sessions: a sensor from another host still connects (the
/// greedy address's newest connection gives way, MQTT 5: 0x97), and the
/// sensor's persistent session with its queued command is not pushed out
/// by the junk sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greedy_address_cannot_lock_out_a_sensor_or_push_out_its_session() {
    let mut s = Watched::broker("max_connections = 20\nmax_offline_sessions = 5").await;
    let port = s.w.port;
    let greedy = [127, 0, 0, 9];
    // The sensor's persistent session, with a command queued.
    let sensor = Hello::new(V5, "valve-7").persistent();
    let (mut v, _) = Raw::connected_from([127, 0, 0, 2], port, &sensor).await;
    v.subscribe("devices/valve-7/cmd", 1).await;
    v.disconnect().await;
    // Ten junk persistent sessions, left offline.
    for i in 0..10 {
        let (c, _) = Raw::connected_from(
            greedy,
            port,
            &Hello::new(V5, &format!("junk-{i}")).persistent(),
        )
        .await;
        c.disconnect().await;
    }
    let (mut p, _) = Raw::connected(port, &Hello::new(V5, "commander")).await;
    assert_eq!(
        p.publish(
            "devices/valve-7/cmd",
            b"{\"open\":1}",
            1,
            false,
            Props::default()
        )
        .await,
        Ok(0)
    );
    p.disconnect().await;
    // Every slot taken by the greedy address.
    let mut held = Vec::new();
    for i in 0..20 {
        let (c, _) = Raw::connected_from(greedy, port, &Hello::new(V5, &format!("hog-{i}"))).await;
        held.push(c);
    }
    let mut extra = Raw::open_from(greedy, port, V5).await;
    extra.send(&Hello::new(V5, "hog-extra").packet()).await;
    let refused = extra.recv(Duration::from_secs(5)).await;
    assert!(
        matches!(&refused, Got::Packet(Packet::ConnAck(a)) if a.code == 0x97),
        "from an address with as many as the greediest: refused, {refused:?}"
    );
    // The sensor comes back from its own host: in, with its session.
    let (mut v, ack) = Raw::connected_from([127, 0, 0, 2], port, &sensor).await;
    assert!(ack.session_present, "its session was not pushed out");
    let cmd = v.next_publish(Duration::from_secs(5)).await;
    assert_eq!(
        cmd.map(|m| m.payload.to_vec()),
        Some(b"{\"open\":1}".to_vec())
    );
    let newest = held.last_mut().expect("hogs");
    match newest.recv(Duration::from_secs(5)).await {
        Got::Packet(Packet::Disconnect(d)) => assert_eq!(d.code, 0x97),
        other => panic!("the greedy address's newest should give way: {other:?}"),
    }
    v.disconnect().await;
    drop(held);
    s.canary().await;
}

/// One greedy address fills the subscriptions and the retained store
/// everyone shares: a dashboard on another host still subscribes, and a
/// device's new retained message is kept (the greediest owner gives one of
/// its own up each time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_subscriptions_and_retained_topics_leave_room_for_real_clients() {
    let mut s = Watched::broker("max_subscriptions = 200\nmax_retained = 50").await;
    let port = s.w.port;
    let greedy = [127, 0, 0, 9];
    let mut hogs = Vec::new();
    for c in 0..3 {
        let (mut h, _) =
            Raw::connected_from(greedy, port, &Hello::new(V5, &format!("subhog-{c}"))).await;
        for f in 0..100 {
            h.subscribe(&format!("junk/{c}/{f}"), 0).await;
        }
        hogs.push(h);
    }
    assert_eq!(
        s.broker_status()["subscriptions"],
        200,
        "the total is reached"
    );
    let (mut dash, _) =
        Raw::connected_from([127, 0, 0, 2], port, &Hello::new(V5, "dashboard")).await;
    let ack = dash.subscribe("devices/#", 1).await;
    assert!(
        matches!(&ack, Packet::SubAck(a) if a.codes == [1]),
        "the dashboard subscribes: {ack:?}"
    );
    let (mut junk, _) = Raw::connected_from(greedy, port, &Hello::new(V5, "rethog")).await;
    for i in 0..60 {
        assert_eq!(
            junk.publish(
                &format!("junk/retained/{i}"),
                b"j",
                1,
                true,
                Props::default()
            )
            .await,
            Ok(0)
        );
    }
    assert_eq!(s.broker_status()["retained"], 50);
    let (mut valve, _) =
        Raw::connected_from([127, 0, 0, 3], port, &Hello::new(V5, "valve-1")).await;
    assert_eq!(
        valve
            .publish(
                "devices/valve-1/attributes",
                b"{\"fw\":\"2.1\"}",
                1,
                true,
                Props::default()
            )
            .await,
        Ok(0)
    );
    // The dashboard got it live; a new subscriber gets it retained.
    assert!(dash.next_publish(Duration::from_secs(5)).await.is_some());
    let (mut late, _) = Raw::connected_from([127, 0, 0, 4], port, &Hello::new(V5, "late")).await;
    late.subscribe("devices/valve-1/attributes", 1).await;
    let kept = late.next_publish(Duration::from_secs(5)).await;
    assert_eq!(
        kept.map(|m| (m.retain, m.payload.to_vec())),
        Some((true, b"{\"fw\":\"2.1\"}".to_vec())),
        "the device's retained message was kept"
    );
    drop(hogs);
    s.canary().await;
}
