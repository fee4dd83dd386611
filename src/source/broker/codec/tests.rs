//! The codec against the specifications' rules, and a property test:
//! every packet decodes to what was encoded, for 3.1.1 and 5.

use bytes::{Bytes, BytesMut};

use super::props::{self, Value};
use super::*;

fn bytes_of(p: &Packet, level: u8) -> Bytes {
    let mut out = BytesMut::new();
    encode(p, level, &mut out);
    out.freeze()
}

fn round_trip(p: &Packet, level: u8) -> Packet {
    let b = bytes_of(p, level);
    let mut buf = BytesMut::from(&b[..]);
    let frame = split_frame(&mut buf, 1 << 20)
        .expect("frame")
        .expect("whole");
    assert!(buf.is_empty());
    match p {
        Packet::Connect(_) => Packet::Connect(Box::new(decode_connect(&frame).expect("connect"))),
        _ => decode(&frame, level).unwrap_or_else(|e| panic!("{p:?}: {e}")),
    }
}

/// A random string of printable characters, `/` included.
fn text(rng: &mut fastrand::Rng, max: usize) -> String {
    let n = rng.usize(0..=max);
    (0..n)
        .map(|_| match rng.u8(0..10) {
            0 => '/',
            1 => 'é',
            2 => '水',
            _ => rng.alphanumeric(),
        })
        .collect()
}

fn topic(rng: &mut fastrand::Rng) -> String {
    let mut t = text(rng, 40);
    if t.is_empty() {
        t.push('t');
    }
    t
}

fn random_props(rng: &mut fastrand::Rng, ctx: props::Context) -> Props {
    let mut p = Props::default();
    for _ in 0..rng.usize(0..4) {
        p.set(
            props::USER_PROPERTY,
            Value::Pair(text(rng, 10), text(rng, 10)),
        );
    }
    match ctx {
        props::Context::Publish => {
            if rng.bool() {
                p.set(props::PAYLOAD_FORMAT, Value::Byte(rng.u8(0..2)));
            }
            if rng.bool() {
                p.set(props::MESSAGE_EXPIRY, Value::U32(rng.u32(..)));
            }
            if rng.bool() {
                p.set(
                    props::CORRELATION_DATA,
                    Value::Bin(Bytes::from(text(rng, 8))),
                );
            }
            if rng.bool() {
                p.set(props::TOPIC_ALIAS, Value::U16(rng.u16(1..)));
            }
        }
        props::Context::Connect => {
            if rng.bool() {
                p.set(props::SESSION_EXPIRY, Value::U32(rng.u32(..)));
            }
            if rng.bool() {
                p.set(props::RECEIVE_MAX, Value::U16(rng.u16(1..)));
            }
        }
        _ => {}
    }
    p
}

fn random_packet(rng: &mut fastrand::Rng, level: u8) -> Packet {
    let v5 = level == V5;
    let props = |rng: &mut fastrand::Rng, ctx| {
        if v5 {
            random_props(rng, ctx)
        } else {
            Props::default()
        }
    };
    let ack = |rng: &mut fastrand::Rng| Ack {
        pkid: rng.u16(1..),
        code: if v5 {
            [0, 0x10, 0x80, 0x87][rng.usize(0..4)]
        } else {
            0
        },
        props: props(rng, props::Context::Ack),
    };
    match rng.u8(0..12) {
        0 => {
            let qos = rng.u8(0..3);
            Packet::Publish(Publish {
                dup: qos > 0 && rng.bool(),
                qos,
                retain: rng.bool(),
                topic: topic(rng),
                pkid: if qos > 0 { rng.u16(1..) } else { 0 },
                payload: Bytes::from(
                    (0..rng.usize(0..300))
                        .map(|_| rng.u8(..))
                        .collect::<Vec<u8>>(),
                ),
                props: props(rng, props::Context::Publish),
            })
        }
        1 => Packet::PubAck(ack(rng)),
        2 => Packet::PubRec(ack(rng)),
        3 => Packet::PubRel(ack(rng)),
        4 => Packet::PubComp(ack(rng)),
        5 => Packet::Subscribe(Subscribe {
            pkid: rng.u16(1..),
            filters: (0..rng.usize(1..4))
                .map(|_| {
                    let opts = SubOpts {
                        qos: rng.u8(0..3),
                        no_local: v5 && rng.bool(),
                        retain_as_published: v5 && rng.bool(),
                        retain_handling: if v5 { rng.u8(0..3) } else { 0 },
                    };
                    (format!("a/{}/+", rng.alphanumeric()), Ok(opts))
                })
                .collect(),
            props: props(rng, props::Context::Subscribe),
        }),
        6 => Packet::Unsubscribe(Unsubscribe {
            pkid: rng.u16(1..),
            filters: vec![topic(rng), "x/#".into()],
            props: props(rng, props::Context::Unsubscribe),
        }),
        7 => Packet::PingReq,
        8 => Packet::Disconnect(Disconnect {
            code: if v5 { [0, 4, 0x8e][rng.usize(0..3)] } else { 0 },
            props: Props::default(),
        }),
        9 => Packet::SubAck(SubAck {
            pkid: rng.u16(1..),
            codes: vec![0, 1, 2, 0x80],
            props: props(rng, props::Context::SubAck),
        }),
        10 => Packet::ConnAck(ConnAck {
            session_present: rng.bool(),
            code: 0,
            props: props(rng, props::Context::ConnAck),
        }),
        _ => Packet::Connect(Box::new(Connect {
            level,
            clean: rng.bool(),
            keep_alive: rng.u16(..),
            client_id: text(rng, 23),
            will: rng.bool().then(|| Will {
                topic: topic(rng),
                payload: Bytes::from(text(rng, 20)),
                qos: rng.u8(0..3),
                retain: rng.bool(),
                props: props(rng, props::Context::Will),
            }),
            username: rng.bool().then(|| text(rng, 10)),
            password: None,
            props: props(rng, props::Context::Connect),
        })),
    }
}

#[test]
fn every_packet_decodes_to_what_was_encoded() {
    let mut rng = fastrand::Rng::with_seed(20_261_201);
    for level in [V311, V5] {
        for _ in 0..3000 {
            let p = random_packet(&mut rng, level);
            assert_eq!(round_trip(&p, level), p, "level {level}");
        }
    }
}

#[test]
fn random_bytes_never_panic_the_decoder() {
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..20_000 {
        let n = rng.usize(0..64);
        let mut b: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
        // Often a plausible header, so the body parsers are exercised.
        if n >= 2 && rng.bool() {
            b[1] = (n - 2).min(127) as u8;
        }
        let _ = decode_connect(&b);
        let _ = decode(&b, V311);
        let _ = decode(&b, V5);
        let mut buf = BytesMut::from(&b[..]);
        let _ = split_frame(&mut buf, 1000);
    }
}

fn frame(bytes: &[u8]) -> Bytes {
    let mut b = BytesMut::from(bytes);
    split_frame(&mut b, 1 << 20).expect("ok").expect("whole")
}

#[test]
fn connect_rules() {
    // Level 4, clean, keep-alive 0, client id with `/`.
    let ok = frame(&[
        0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 0, 0, 4, b'a', b'/', b'+', b'#',
    ]);
    let c = decode_connect(&ok).expect("valid");
    assert_eq!(
        (c.level, c.keep_alive, c.client_id.as_str()),
        (4, 0, "a/+#")
    );
    // Reserved flag set.
    let bad = frame(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 3, 0, 0, 0, 0]);
    assert!(matches!(
        decode_connect(&bad),
        Err(CodecError::Malformed(_))
    ));
    // Protocol level 7.
    let v7 = frame(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 7, 2, 0, 0, 0, 0]);
    assert_eq!(decode_connect(&v7), Err(CodecError::Version(7)));
    // Will QoS without a will.
    let wq = frame(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x0a, 0, 0, 0, 0]);
    assert!(decode_connect(&wq).is_err());
    // U+0000 in the client id.
    let nul = frame(&[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 0, 0, 1, 0]);
    assert!(decode_connect(&nul).is_err());
}

#[test]
fn publish_rules() {
    // QoS 1 with packet id 0.
    assert_eq!(
        decode(&frame(&[0x32, 5, 0, 1, b'a', 0, 0]), V311),
        Err(CodecError::Protocol("packet identifier 0"))
    );
    // QoS 3.
    assert!(decode(&frame(&[0x36, 5, 0, 1, b'a', 0, 1]), V311).is_err());
    // DUP on QoS 0.
    assert!(decode(&frame(&[0x38, 3, 0, 1, b'a']), V311).is_err());
    // An unknown MQTT 5 property, and one not allowed in PUBLISH.
    assert!(decode(&frame(&[0x30, 6, 0, 1, b'a', 2, 0x7f, 0]), V5).is_err());
    assert!(decode(&frame(&[0x30, 7, 0, 1, b'a', 3, 0x21, 0, 5]), V5).is_err());
    // Two payload format indicators.
    assert_eq!(
        decode(&frame(&[0x30, 8, 0, 1, b'a', 4, 1, 0, 1, 0]), V5),
        Err(CodecError::Protocol("a property given twice"))
    );
}

#[test]
fn subscribe_rules() {
    // A malformed filter is reported per filter: the packet is well formed.
    let s = decode(
        &frame(&[
            0x82, 14, 0, 1, 0, 5, b'a', b'/', b'#', b'/', b'b', 1, 0, 1, b'x', 0,
        ]),
        V311,
    );
    let Ok(Packet::Subscribe(s)) = s else {
        panic!("{s:?}")
    };
    assert!(s.filters[0].1.is_err());
    assert!(s.filters[1].1.is_ok());
    // Wrong fixed-header flags.
    assert!(decode(&frame(&[0x80, 6, 0, 1, 0, 1, b'x', 0]), V311).is_err());
    // No filter at all.
    assert!(decode(&frame(&[0x82, 2, 0, 1]), V311).is_err());
    // Reserved option bits (3.1.1).
    assert!(decode(&frame(&[0x82, 6, 0, 1, 0, 1, b'x', 4]), V311).is_err());
    for bad in ["a+/b", "", "a/#/b", "#/", "$share/g", "$share//x"] {
        assert!(check_filter(bad).is_err(), "{bad}");
    }
    for good in ["#", "+", "a/+/b", "a/#", "$share/g/a/#", "/", "+/+"] {
        assert!(check_filter(good).is_ok(), "{good}");
    }
}

#[test]
fn server_packets_sent_by_a_client_are_still_decoded_for_the_caller_to_refuse() {
    assert!(matches!(
        decode(&frame(&[0x20, 3, 0, 0, 0]), V5),
        Ok(Packet::ConnAck(_))
    ));
    assert!(matches!(
        decode(&frame(&[0xb0, 3, 0, 1, 0]), V5),
        Ok(Packet::UnsubAck(_))
    ));
}

#[test]
fn oversized_is_refused_before_buffering() {
    let mut buf = BytesMut::from(&[0x30, 0xc0, 0x9a, 0x0c][..]);
    assert_eq!(
        split_frame(&mut buf, 1000),
        Err(CodecError::TooLarge {
            size: 200_000,
            max: 1000
        })
    );
    let mut bad = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
    assert!(split_frame(&mut bad, usize::MAX).is_err());
}
