//! The hostile-client corpus: every way a LAN client was seen to break the
//! local broker, and more. Each case sends its bytes, then a canary sensor
//! (MQTT 3.1.1 and 5) must still get its CONNACK and PUBACK, its reading
//! must arrive upstream within seconds, the broker must not have needed a
//! restart, and outpost's memory must stay bounded.

use std::time::Duration;

use bytes::Bytes;
use outpost::source::broker::codec::props::{self, Value};
use outpost::source::broker::codec::{
    Ack, ConnAck, Disconnect, Packet, Props, Publish, SubAck, SubOpts, UnsubAck, V311, V5,
};

use crate::common::*;

fn publish(topic: &str, payload: &[u8], qos: u8, pkid: u16, props: Props) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pkid,
        payload: Bytes::copy_from_slice(payload),
        props,
    })
}

fn user_props() -> Props {
    let mut p = Props::default();
    p.set(props::USER_PROPERTY, Value::Pair("k".into(), "v".into()));
    p.set(props::PAYLOAD_FORMAT, Value::Byte(1));
    p.set(props::MESSAGE_EXPIRY, Value::U32(60));
    p.set(props::CONTENT_TYPE, Value::Str("application/json".into()));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_properties_reach_a_311_subscriber_that_then_reconnects() {
    let mut s = Watched::broker("").await;
    let (mut sub, _) = Raw::connected(s.w.port, &Hello::new(V311, "sub-311")).await;
    assert!(matches!(
        sub.subscribe("t/props", 1).await,
        Packet::SubAck(_)
    ));
    let (mut p5, _) = Raw::connected(s.w.port, &Hello::new(V5, "pub-5")).await;
    // Every kind of property, and a topic alias (set, then used alone).
    let mut aliased = user_props();
    aliased.set(props::TOPIC_ALIAS, Value::U16(1));
    assert_eq!(
        p5.publish("t/props", b"{\"a\":1}", 1, false, aliased.clone())
            .await,
        Ok(0)
    );
    let mut alone = Props::default();
    alone.set(props::TOPIC_ALIAS, Value::U16(1));
    assert_eq!(p5.publish("", b"{\"a\":2}", 1, false, alone).await, Ok(0));
    for want in [&b"{\"a\":1}"[..], b"{\"a\":2}"] {
        let got = sub
            .next_publish(Duration::from_secs(5))
            .await
            .expect("a message");
        assert_eq!(got.topic, "t/props");
        assert_eq!(&got.payload[..], want);
    }
    // The subscriber comes back with its id: served as usual.
    drop(sub);
    let (mut again, _) = Raw::connected(s.w.port, &Hello::new(V311, "sub-311")).await;
    assert!(matches!(
        again.subscribe("t/props", 1).await,
        Packet::SubAck(_)
    ));
    s.canary().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_with_slashes_and_wildcards_sent_twice_take_over_cleanly() {
    let mut s = Watched::broker("").await;
    for level in [V311, V5] {
        for id in ["a/b", "+", "#", "$SYS", "x/+/#", "site/1/sensor"] {
            let (mut first, _) = Raw::connected(s.w.port, &Hello::new(level, id)).await;
            let (second, _) = Raw::connected(s.w.port, &Hello::new(level, id)).await;
            let (seen, closed) = first.drain(Duration::from_secs(2)).await;
            assert!(closed, "{id}: the first connection is closed on takeover");
            if level == V5 {
                assert!(
                    seen.iter()
                        .any(|p| matches!(p, Packet::Disconnect(d) if d.code == 0x8E)),
                    "{id}: MQTT 5 is told `session taken over`: {seen:?}"
                );
            }
            second.disconnect().await;
        }
    }
    s.canary().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refused_at_max_connections_gets_a_connack_and_retries() {
    let mut s = Watched::broker("max_connections = 3").await;
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(
            Raw::connected(s.w.port, &Hello::new(V311, &format!("hold-{i}")))
                .await
                .0,
        );
    }
    // outpost's own health probe runs meanwhile and takes no slot.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (level, code) in [(V311, 0x03), (V5, 0x97), (V311, 0x03)] {
        let (_late, got) = Raw::hello(s.w.port, &Hello::new(level, "late")).await;
        assert!(
            matches!(&got, Got::Packet(Packet::ConnAck(ConnAck { code: c, .. })) if *c == code),
            "level {level}: {got:?}"
        );
    }
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (late, _) = Raw::connected(s.w.port, &Hello::new(V311, "late")).await;
    drop(late);
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.canary().await;
    assert!(s.broker_status()["refused"].as_u64().unwrap_or(0) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_packets_from_a_client_end_that_connection_alone() {
    let mut s = Watched::broker("").await;
    let server_packets = [
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0,
            props: Props::default(),
        }),
        Packet::UnsubAck(UnsubAck {
            pkid: 1,
            codes: vec![0],
            props: Props::default(),
        }),
        Packet::SubAck(SubAck {
            pkid: 1,
            codes: vec![0],
            props: Props::default(),
        }),
        Packet::PingResp,
    ];
    for level in [V5, V311] {
        for p in &server_packets {
            let (mut c, _) = Raw::connected(s.w.port, &Hello::new(level, "rogue")).await;
            c.send(p).await;
            let (seen, closed) = c.drain(Duration::from_secs(2)).await;
            assert!(closed, "{} from a client must close it", p.name());
            if level == V5 {
                assert!(
                    seen.iter()
                        .any(|x| matches!(x, Packet::Disconnect(d) if d.code == 0x82)),
                    "{seen:?}"
                );
            }
        }
    }
    // And it may come back with the same id.
    let (c, _) = Raw::connected(s.w.port, &Hello::new(V5, "rogue")).await;
    c.disconnect().await;
    s.canary().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloned_firmware_311_and_5_fight_over_one_client_id() {
    let mut s = Watched::broker("").await;
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut kept = Vec::new();
    let mut round = 0u32;
    while std::time::Instant::now() < until {
        round += 1;
        let level = if round % 2 == 0 { V5 } else { V311 };
        let (mut c, _) = Raw::connected(s.w.port, &Hello::new(level, "clone")).await;
        let code = c
            .publish(
                "sensors/clone/telemetry",
                format!("{{\"round\":{round}}}").as_bytes(),
                1,
                false,
                Props::default(),
            )
            .await;
        assert_eq!(code, Ok(0), "round {round}");
        // The loser is kept open: the takeover must close it, not us.
        kept.push(c);
        if kept.len() > 4 {
            kept.remove(0);
        }
    }
    assert!(round > 20, "{round} rounds");
    s.canary().await;
    let clones = s
        .col
        .all()
        .iter()
        .filter(|m| m.topic.contains("clone"))
        .count();
    assert!(
        clones >= round as usize,
        "{clones} of {round} readings arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_client_alone_in_a_shared_group_leaves_with_a_message_unacked() {
    let mut s = Watched::broker("").await;
    for level in [V5, V311] {
        let id = format!("shared-{level}");
        let hello = Hello::new(level, &id).persistent();
        let (mut g, _) = Raw::connected(s.w.port, &hello).await;
        let group = format!("$share/g{level}/s{level}/+");
        assert!(matches!(g.subscribe(&group, 1).await, Packet::SubAck(a) if a.codes == [1]));
        let (mut p, _) = Raw::connected(s.w.port, &Hello::new(V311, "shared-pub")).await;
        assert_eq!(
            p.publish(&format!("s{level}/1"), b"one", 1, false, Props::default())
                .await,
            Ok(0)
        );
        // Received, not acknowledged, and the client goes.
        match g.recv(Duration::from_secs(5)).await {
            Got::Packet(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"one"),
            other => panic!("{other:?}"),
        }
        drop(g);
        // Published only once the broker knows the client is gone.
        let away = wait_until(Duration::from_secs(5), || {
            s.op.status_json()["broker"]["connected"] == 1
        });
        assert!(away);
        assert_eq!(
            p.publish(&format!("s{level}/2"), b"two", 1, false, Props::default())
                .await,
            Ok(0)
        );
        let (mut g, ack) = Raw::connected(s.w.port, &hello).await;
        assert!(ack.session_present);
        let mut got = Vec::new();
        for _ in 0..2 {
            let m = g
                .next_publish(Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("level {level}: redelivered after {got:?}"));
            got.push((m.payload.to_vec(), m.dup));
        }
        assert_eq!(got, [(b"one".to_vec(), true), (b"two".to_vec(), false)]);
        g.disconnect().await;
        p.disconnect().await;
    }
    s.canary().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_and_any_utf8_client_id_are_accepted() {
    let mut s = Watched::broker("").await;
    for level in [V311, V5] {
        let mut h = Hello::new(level, "gewächshaus/7 #1");
        h.keep_alive = 0;
        let (mut c, ack) = Raw::connected(s.w.port, &h).await;
        assert_eq!(ack.code, 0);
        // Idle well past any keep-alive: still served.
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.send(&Packet::PingReq).await;
        assert_eq!(
            c.recv(Duration::from_secs(2)).await,
            Got::Packet(Packet::PingResp)
        );
    }
    // A zero-length id: assigned (MQTT 5 is told which), or refused for
    // a 3.1.1 persistent session.
    let (_, ack) = Raw::connected(s.w.port, &Hello::new(V5, "")).await;
    assert!(ack
        .props
        .str(props::ASSIGNED_CLIENT_ID)
        .is_some_and(|id| !id.is_empty()));
    let (_, got) = Raw::hello(s.w.port, &Hello::new(V311, "").persistent()).await;
    assert!(
        matches!(&got, Got::Packet(Packet::ConnAck(a)) if a.code == 0x02),
        "{got:?}"
    );
    s.canary().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_from_a_refused_session_or_a_broken_packet_is_stored() {
    let mut s = Watched::broker("").await;
    // An unknown protocol level with a PUBLISH in the same segment.
    let mut r = Raw::open(s.w.port, V311).await;
    let mut bytes = vec![0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 10, 0, 0];
    let mut b = bytes::BytesMut::new();
    outpost::source::broker::codec::encode(
        &publish(
            "sensors/forged-1/telemetry",
            b"{\"forged\":1}",
            0,
            0,
            Props::default(),
        ),
        V311,
        &mut b,
    );
    bytes.extend_from_slice(&b);
    r.send_bytes(&bytes).await;
    let (seen, closed) = r.drain(Duration::from_secs(2)).await;
    assert!(closed);
    assert!(
        matches!(seen.first(), Some(Packet::ConnAck(a)) if a.code == 0x01),
        "{seen:?}"
    );

    // QoS 1 with packet id 0, right after an accepted CONNECT.
    let (mut c, _) = Raw::connected(s.w.port, &Hello::new(V311, "forger")).await;
    c.send(&publish(
        "sensors/forged-2/telemetry",
        b"{\"forged\":2}",
        1,
        0,
        Props::default(),
    ))
    .await;
    assert!(c.drain(Duration::from_secs(2)).await.1, "closed");

    // MQTT 5: an alias beyond the maximum, an unknown alias, a wildcard topic.
    let cases: Vec<(Packet, u8)> = vec![
        {
            let mut p = Props::default();
            p.set(props::TOPIC_ALIAS, Value::U16(11));
            (publish("sensors/forged-3/telemetry", b"{}", 1, 1, p), 0x94)
        },
        {
            let mut p = Props::default();
            p.set(props::TOPIC_ALIAS, Value::U16(5));
            (publish("", b"{}", 1, 1, p), 0x82)
        },
        (
            publish(
                "sensors/+/telemetry",
                b"{\"forged\":4}",
                1,
                1,
                Props::default(),
            ),
            0x82,
        ),
    ];
    for (p, code) in cases {
        let (mut c, _) = Raw::connected(s.w.port, &Hello::new(V5, "forger5")).await;
        c.send(&p).await;
        let (seen, closed) = c.drain(Duration::from_secs(2)).await;
        assert!(closed);
        assert!(
            seen.iter()
                .any(|x| matches!(x, Packet::Disconnect(d) if d.code == code)),
            "want DISCONNECT {code:#x}: {seen:?}"
        );
    }
    // A payload that says it is UTF-8 and is not: refused, not relayed.
    let (mut c, _) = Raw::connected(s.w.port, &Hello::new(V5, "forger5")).await;
    let mut p = Props::default();
    p.set(props::PAYLOAD_FORMAT, Value::Byte(1));
    assert_eq!(
        c.publish("sensors/forged-5/telemetry", &[0xff, 0xfe], 1, false, p)
            .await,
        Ok(0x99)
    );
    s.canary().await;
    for d in 1..=5 {
        s.never_arrived(&format!("forged-{d}"));
    }
    assert!(
        s.op.status_json()["broker"]["violations"]
            .as_u64()
            .unwrap_or(0)
            >= 5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_resend_with_dup_is_stored_once_even_across_a_crash() {
    let mut s = Watched::broker("").await;
    // Readings stay in the outbox, where they can be counted.
    s.w.up.stop();
    let outbox = s.op.outbox();
    let stored = |seq: u32| -> usize {
        let want = format!("{{\"seq\":{seq}}}").into_bytes();
        queued_payloads(&outbox)
            .expect("outbox")
            .iter()
            .filter(|p| **p == want)
            .count()
    };
    let hello = Hello::new(V311, "q2").persistent();
    let qos2 = |pkid: u16, seq: u32, dup: bool| {
        Packet::Publish(Publish {
            dup,
            qos: 2,
            retain: false,
            topic: "sensors/q2/telemetry".into(),
            pkid,
            payload: Bytes::from(format!("{{\"seq\":{seq}}}")),
            props: Props::default(),
        })
    };
    let (mut c, _) = Raw::connected(s.w.port, &hello).await;
    c.send(&qos2(7, 1, false)).await;
    assert!(
        matches!(c.recv(Duration::from_secs(5)).await, Got::Packet(Packet::PubRec(a)) if a.pkid == 7)
    );
    c.send(&qos2(7, 1, true)).await;
    assert!(
        matches!(c.recv(Duration::from_secs(5)).await, Got::Packet(Packet::PubRec(a)) if a.pkid == 7)
    );
    c.send(&Packet::PubRel(Ack::ok(7))).await;
    assert!(
        matches!(c.recv(Duration::from_secs(5)).await, Got::Packet(Packet::PubComp(a)) if a.pkid == 7)
    );
    assert_eq!(stored(1), 1, "a DUP resend is not stored again");

    // PUBREC seen, then outpost dies before the PUBREL.
    c.send(&qos2(8, 2, false)).await;
    assert!(
        matches!(c.recv(Duration::from_secs(5)).await, Got::Packet(Packet::PubRec(a)) if a.pkid == 8)
    );
    s.op.kill9();
    s.op.restart();
    let (mut c, _) = Raw::connected(s.w.port, &hello).await;
    c.send(&qos2(8, 2, true)).await;
    assert!(
        matches!(c.recv(Duration::from_secs(5)).await, Got::Packet(Packet::PubRec(a)) if a.pkid == 8)
    );
    c.send(&Packet::PubRel(Ack::ok(8))).await;
    assert!(
        matches!(c.recv(Duration::from_secs(5)).await, Got::Packet(Packet::PubComp(a)) if a.pkid == 8)
    );
    assert_eq!(stored(2), 1, "the resend after the crash is recognised");
    // The id is released: a new message with it is a new reading.
    c.send(&qos2(8, 3, false)).await;
    assert!(
        matches!(c.recv(Duration::from_secs(5)).await, Got::Packet(Packet::PubRec(a)) if a.pkid == 8)
    );
    assert_eq!(stored(3), 1);
    s.w.up.restart();
    let _ = s.w.collect("site1/#").await;
    s.canary().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_filters_close_311_and_get_0x8f_in_5() {
    let mut s = Watched::broker("").await;
    for bad in ["a/#/b", "a+/b", ""] {
        let (mut c, _) = Raw::connected(s.w.port, &Hello::new(V311, "filters")).await;
        let opts = SubOpts {
            qos: 1,
            ..SubOpts::default()
        };
        let pkid = c.pkid();
        c.send(&Packet::Subscribe(
            outpost::source::broker::codec::Subscribe {
                pkid,
                filters: vec![(bad.to_string(), Ok(opts))],
                props: Props::default(),
            },
        ))
        .await;
        let (seen, closed) = c.drain(Duration::from_secs(2)).await;
        assert!(closed && seen.is_empty(), "`{bad}`: {seen:?}");
    }
    let (mut c, _) = Raw::connected(s.w.port, &Hello::new(V5, "filters5")).await;
    let opts = SubOpts {
        qos: 1,
        ..SubOpts::default()
    };
    let ack = c
        .subscribe_with(
            ["a/#/b", "a+/b", "", "ok/#"]
                .iter()
                .map(|f| (f.to_string(), Ok(opts)))
                .collect(),
            Props::default(),
        )
        .await;
    assert!(
        matches!(&ack, Packet::SubAck(a) if a.codes == [0x8F, 0x8F, 0x8F, 0x01]),
        "{ack:?}"
    );
    let (mut p, _) = Raw::connected(s.w.port, &Hello::new(V311, "filters-pub")).await;
    assert_eq!(
        p.publish("ok/x", b"1", 1, false, Props::default()).await,
        Ok(0)
    );
    assert!(c.next_publish(Duration::from_secs(5)).await.is_some());
    s.canary().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_many_filters_topics_and_subscriptions() {
    let mut s = Watched::broker("").await;
    // 30 filters with a subscriber each, 3 MB of messages through each.
    let mut subs = Vec::new();
    for i in 0..30 {
        let (mut c, _) = Raw::connected(s.w.port, &Hello::new(V311, &format!("f{i}"))).await;
        c.subscribe(&format!("bulk/{i}/#"), 0).await;
        subs.push(c);
    }
    let (mut p, _) = Raw::connected(s.w.port, &Hello::new(V311, "bulk-pub")).await;
    let big = vec![b'x'; 10_000];
    for round in 0..300 {
        for i in 0..30 {
            p.publish(
                &format!("bulk/{i}/{round}"),
                &big,
                0,
                false,
                Props::default(),
            )
            .await
            .ok();
        }
        if round % 50 == 0 {
            for c in &mut subs {
                c.drain(Duration::from_millis(1)).await;
            }
        }
    }
    drop(subs);
    // 300 clients ask for 200 subscriptions each (60,000 > the bounds).
    let mut many = Vec::new();
    for i in 0..300 {
        let (mut c, _) = Raw::connected(s.w.port, &Hello::new(V5, &format!("many{i}"))).await;
        let opts = SubOpts::default();
        let filters = (0..200).map(|j| (format!("m/{i}/{j}"), Ok(opts))).collect();
        c.subscribe_with(filters, Props::default()).await;
        many.push(c);
    }
    let b = s.op.status_json()["broker"].clone();
    assert!(
        b["subscriptions"].as_u64().unwrap_or(u64::MAX) <= 10_000,
        "{b}"
    );
    drop(many);
    // A QoS 0 stream on ever new topics while the canaries connect.
    let port = s.w.port;
    let flood = tokio::spawn(async move {
        let (mut f, _) = Raw::connected(port, &Hello::new(V311, "flood")).await;
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut i = 0u64;
        while tokio::time::Instant::now() < until {
            i += 1;
            f.publish(&format!("new/{i}"), b"{}", 0, false, Props::default())
                .await
                .ok();
            if i % 1000 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    s.canary().await;
    flood.await.expect("flood");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = s.op.status_json()["broker"].clone();
    assert_eq!(
        b["subscriptions"], 0,
        "nothing kept for filters nobody wants: {b}"
    );
    s.canary().await;
}

/// A seeded stream of random and nearly valid packets from many
/// connections, for a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_packet_sequences_break_nothing() {
    let mut s = Watched::broker("").await;
    let mut rng = fastrand::Rng::with_seed(0x0057_1ce5);
    let until = std::time::Instant::now() + Duration::from_secs(6);
    let mut connections = 0;
    while std::time::Instant::now() < until {
        connections += 1;
        let level = if rng.bool() { V5 } else { V311 };
        let mut c = if rng.u8(0..10) == 0 {
            Raw::open(s.w.port, level).await
        } else {
            let mut h = Hello::new(level, &format!("fuzz-{}", rng.u8(0..5)));
            h.clean = rng.bool();
            Raw::hello(s.w.port, &h).await.0
        };
        for _ in 0..rng.usize(1..30) {
            let bytes = random_packet(&mut rng, level);
            c.send_bytes(&bytes).await;
        }
        let _ = c.drain(Duration::from_millis(20)).await;
    }
    assert!(connections > 50, "{connections}");
    s.canary().await;
}

fn random_packet(rng: &mut fastrand::Rng, level: u8) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    let enc =
        |p: &Packet, b: &mut bytes::BytesMut| outpost::source::broker::codec::encode(p, level, b);
    match rng.u8(0..10) {
        0 => {
            // Random bytes with a plausible header.
            let n = rng.usize(0..40);
            let mut v = vec![rng.u8(..), n as u8];
            v.extend((0..n).map(|_| rng.u8(..)));
            return v;
        }
        1 => return vec![0x30, 0xff, 0xff, 0xff, 0x7f],
        2 => {
            let mut p = Props::default();
            if rng.bool() {
                p.set(props::TOPIC_ALIAS, Value::U16(rng.u16(0..20)));
            }
            let topic = ["sensors/fz/telemetry", "a/b", "", "+/x", "$SYS/x"][rng.usize(0..5)];
            let qos = rng.u8(0..3);
            enc(
                &publish(
                    topic,
                    b"{\"fz\":1}",
                    qos,
                    if qos > 0 { rng.u16(..) } else { 0 },
                    p,
                ),
                &mut b,
            );
        }
        3 => enc(&Packet::PubRel(Ack::ok(rng.u16(1..))), &mut b),
        4 => enc(&Packet::PubAck(Ack::ok(rng.u16(1..))), &mut b),
        5 => {
            let f = ["#", "a/#/b", "$share/g/x", "+", "", "$share//"][rng.usize(0..6)];
            let opts = SubOpts {
                qos: rng.u8(0..3),
                no_local: level == V5 && rng.bool(),
                ..SubOpts::default()
            };
            enc(
                &Packet::Subscribe(outpost::source::broker::codec::Subscribe {
                    pkid: rng.u16(..),
                    filters: vec![(f.into(), Ok(opts))],
                    props: Props::default(),
                }),
                &mut b,
            );
        }
        6 => enc(
            &Packet::Disconnect(Disconnect {
                code: rng.u8(..),
                props: Props::default(),
            }),
            &mut b,
        ),
        7 => enc(&Packet::PingReq, &mut b),
        8 => enc(&Hello::new(level, "again").packet(), &mut b),
        _ => {
            enc(
                &publish(
                    "sensors/fz/telemetry",
                    b"{}",
                    1,
                    rng.u16(1..),
                    Props::default(),
                ),
                &mut b,
            );
            // Cut short.
            let cut = rng.usize(1..b.len().max(2));
            b.truncate(cut);
        }
    }
    b.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_broker_is_restarted_in_place_within_seconds() {
    let s = Watched::broker_with_env("", &[("OUTPOST_TEST_FAULTS", "1")]).await;
    for (fault, what) in [
        (
            "outpost-fault-poison",
            "a panic while the broker state is held",
        ),
        ("outpost-fault-listener", "the accept loop ended"),
    ] {
        let before = s.op.status_json()["broker"]["restarts"]
            .as_u64()
            .unwrap_or(0);
        let _ = Raw::hello(s.w.port, &Hello::new(V311, fault)).await;
        if fault == "outpost-fault-listener" {
            // The loop ends at its next accept.
            let _ = Raw::open(s.w.port, V311).await;
        }
        let restarted = wait_until(Duration::from_secs(8), || {
            s.op.status_json()["broker"]["restarts"]
                .as_u64()
                .unwrap_or(0)
                > before
        });
        assert!(restarted, "{what}: no restart\n{}", s.op.log_text());
        let log = s.op.log_text();
        assert!(log.contains("restarting it in place"), "{log}");
        // Served again: a canary gets through.
        let (mut c, _) = Raw::connected(s.w.port, &Hello::new(V5, "after-fault")).await;
        assert_eq!(
            c.publish(
                "sensors/after-fault/telemetry",
                b"{\"ok\":1}",
                1,
                false,
                Props::default()
            )
            .await,
            Ok(0),
            "{what}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || s
            .col
            .all()
            .iter()
            .any(|m| m.topic.contains("after-fault"))),
        "readings arrive after the restarts"
    );
    assert_eq!(s.op.status_json()["broker"]["healthy"], true);
}

/// Everything at once for a few seconds: MQTT 5 publishers with
/// properties and topic aliases, 3.1.1 and 5 subscribers, members of a
/// shared group with persistent sessions that come and go with messages
/// unacknowledged, and 3.1.1 and 5 clients fighting over one client id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_311_and_5_traffic_runs_with_zero_broker_failures() {
    let mut s = Watched::broker("").await;
    let port = s.w.port;
    let secs = Duration::from_secs(6);
    let mut tasks = Vec::new();
    // Publishers: MQTT 5 with every property, and 3.1.1.
    for level in [V5, V311] {
        tasks.push(tokio::spawn(async move {
            let (mut p, _) =
                Raw::connected(port, &Hello::new(level, &format!("mix-pub-{level}"))).await;
            let until = tokio::time::Instant::now() + secs;
            let mut n = 0u32;
            while tokio::time::Instant::now() < until {
                n += 1;
                let mut props = if level == V5 {
                    user_props()
                } else {
                    Props::default()
                };
                if level == V5 {
                    props.set(
                        props::TOPIC_ALIAS,
                        Value::U16(u16::try_from(n % 10 + 1).unwrap_or(1)),
                    );
                }
                let qos = u8::try_from(n % 3).unwrap_or(0);
                let r = p
                    .publish(
                        &format!("mix/{}", n % 7),
                        format!("{{\"n\":{n}}}").as_bytes(),
                        qos,
                        false,
                        props,
                    )
                    .await;
                assert!(matches!(r, Ok(0)), "publish {n}: {r:?}");
            }
            n
        }));
    }
    // Plain subscribers of both versions.
    let mut readers = Vec::new();
    for level in [V311, V5] {
        readers.push(tokio::spawn(async move {
            let (mut c, _) =
                Raw::connected(port, &Hello::new(level, &format!("mix-sub-{level}"))).await;
            let mut sp = Props::default();
            if level == V5 {
                sp.set(props::SUBSCRIPTION_ID, Value::Var(3));
            }
            let opts = SubOpts {
                qos: 2,
                ..SubOpts::default()
            };
            c.subscribe_with(vec![("mix/#".into(), Ok(opts))], sp).await;
            let mut got = 0u32;
            let until = tokio::time::Instant::now() + secs;
            while tokio::time::Instant::now() < until {
                if c.next_publish(Duration::from_millis(200)).await.is_some() {
                    got += 1;
                }
            }
            got
        }));
    }
    // Shared group members with persistent sessions that come and go.
    for level in [V311, V5] {
        tasks.push(tokio::spawn(async move {
            let hello = Hello::new(level, &format!("mix-shared-{level}")).persistent();
            let until = tokio::time::Instant::now() + secs;
            let mut rounds = 0;
            while tokio::time::Instant::now() < until {
                rounds += 1;
                let (mut g, _) = Raw::connected(port, &hello).await;
                g.subscribe("$share/mixers/mix/+", 1).await;
                // Take a few, acknowledge none, and vanish.
                for _ in 0..3 {
                    let _ = g.recv(Duration::from_millis(100)).await;
                }
                drop(g);
            }
            rounds
        }));
    }
    // The same client id, both versions, taking it from each other.
    tasks.push(tokio::spawn(async move {
        let until = tokio::time::Instant::now() + secs;
        let mut n = 0;
        let mut keep = Vec::new();
        while tokio::time::Instant::now() < until {
            n += 1;
            let level = if n % 2 == 0 { V5 } else { V311 };
            let (c, _) = Raw::connected(port, &Hello::new(level, "mix-fight")).await;
            keep.push(c);
            if keep.len() > 3 {
                keep.remove(0);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    }));
    for t in tasks {
        assert!(t.await.expect("task") > 0);
    }
    for r in readers {
        assert!(r.await.expect("reader") > 100, "subscribers kept receiving");
    }
    s.canary().await;
    let b = s.op.status_json()["broker"].clone();
    assert_eq!(b["restarts"], 0, "{b}");
    assert_eq!(b["healthy"], true, "{b}");
}
