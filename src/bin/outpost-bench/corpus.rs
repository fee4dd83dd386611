//! The hostile-client corpus as a figure, for any broker: each case sends
//! its packets, then a canary (an MQTT 3.1.1 and an MQTT 5 client) must get
//! its CONNACK, and a message it publishes at QoS 1 must be acknowledged
//! and reach a subscriber. A case the broker survives counts.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use outpost::source::broker::codec::props::{self, Value};
use outpost::source::broker::codec::{
    self, Ack, ConnAck, Connect, Packet, Props, Publish, SubOpts, Subscribe, UnsubAck, V311, V5,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct C {
    s: TcpStream,
    buf: BytesMut,
    level: u8,
}

impl C {
    async fn open(port: u16, level: u8) -> Option<C> {
        let s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        Some(C {
            s,
            buf: BytesMut::new(),
            level,
        })
    }

    async fn send(&mut self, p: &Packet) {
        let mut b = BytesMut::new();
        codec::encode(p, self.level, &mut b);
        let _ = self.s.write_all(&b).await;
    }

    async fn recv(&mut self, within: Duration) -> Option<Packet> {
        let read = async {
            loop {
                if let Ok(Some(f)) = codec::split_frame(&mut self.buf, 1 << 24) {
                    return codec::decode(&f, self.level).ok();
                }
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(within, read).await.ok().flatten()
    }

    async fn connect(port: u16, level: u8, id: &str, clean: bool) -> Option<C> {
        let mut c = C::open(port, level).await?;
        let mut p = Props::default();
        if !clean && level == V5 {
            p.set(props::SESSION_EXPIRY, Value::U32(600));
        }
        c.send(&Packet::Connect(Box::new(Connect {
            level,
            clean,
            keep_alive: 30,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            props: p,
        })))
        .await;
        match c.recv(Duration::from_secs(3)).await {
            Some(Packet::ConnAck(a)) if a.code == 0 => Some(c),
            _ => None,
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: u8) -> Option<Vec<u8>> {
        self.send(&Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![(
                filter.into(),
                Ok(SubOpts {
                    qos,
                    ..SubOpts::default()
                }),
            )],
            props: Props::default(),
        }))
        .await;
        loop {
            match self.recv(Duration::from_secs(3)).await? {
                Packet::SubAck(a) => return Some(a.codes),
                _ => continue,
            }
        }
    }
}

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

/// A 3.1.1 and an MQTT 5 client connect, subscribe, publish at QoS 1, get
/// the PUBACK and their own message back.
async fn canary(port: u16, n: usize) -> bool {
    for level in [V311, V5] {
        let topic = format!("canary/{n}/{level}");
        let Some(mut c) = C::connect(port, level, &format!("canary-{n}-{level}"), true).await
        else {
            return false;
        };
        if c.subscribe(&topic, 1).await.is_none() {
            return false;
        }
        c.send(&publish(&topic, b"alive", 1, 9, Props::default()))
            .await;
        let (mut acked, mut back) = (false, false);
        while !(acked && back) {
            match c.recv(Duration::from_secs(3)).await {
                Some(Packet::PubAck(a)) if a.pkid == 9 => acked = true,
                Some(Packet::Publish(p)) if p.topic == topic => {
                    back = true;
                    if p.qos == 1 {
                        c.send(&Packet::PubAck(Ack::ok(p.pkid))).await;
                    }
                }
                Some(_) => {}
                None => return false,
            }
        }
    }
    true
}

/// (case, survived) for the whole corpus against the broker at `port`.
pub async fn run(port: u16) -> Vec<(&'static str, bool)> {
    let mut out = Vec::new();
    for (i, name) in CASES.iter().enumerate() {
        let expected = case(port, name).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        out.push((*name, expected && canary(port, i).await));
    }
    out
}

const CASES: &[&str] = &[
    "v5 properties to a 3.1.1 subscriber, which reconnects",
    "client ids /, +, #, $ sent twice",
    "CONNACK and UNSUBACK sent by a client, which reconnects",
    "3.1.1 and 5 clients fighting over one client id",
    "persistent client alone in a shared group leaves with a message unacked",
    "keep-alive 0",
    "QoS 1 PUBLISH with packet id 0 is refused",
    "SUBSCRIBE to a/#/b is not granted",
];

/// Runs one case; false if the broker misbehaved in the case itself.
async fn case(port: u16, name: &str) -> bool {
    match name {
        "v5 properties to a 3.1.1 subscriber, which reconnects" => {
            let Some(mut sub) = C::connect(port, V311, "c1-sub", true).await else {
                return false;
            };
            sub.subscribe("c1/t", 1).await;
            let Some(mut p) = C::connect(port, V5, "c1-pub", true).await else {
                return false;
            };
            let mut props = Props::default();
            props.set(props::USER_PROPERTY, Value::Pair("k".into(), "v".into()));
            props.set(props::MESSAGE_EXPIRY, Value::U32(60));
            props.set(props::PAYLOAD_FORMAT, Value::Byte(1));
            props.set(props::TOPIC_ALIAS, Value::U16(1));
            p.send(&publish("c1/t", b"x", 1, 1, props)).await;
            let _ = p.recv(Duration::from_secs(1)).await;
            let _ = sub.recv(Duration::from_secs(1)).await;
            drop(sub);
            tokio::time::sleep(Duration::from_millis(200)).await;
            C::connect(port, V311, "c1-sub", true).await.is_some()
        }
        "client ids /, +, #, $ sent twice" => {
            for id in ["a/b", "+", "#", "$x"] {
                let _a = C::connect(port, V311, id, true).await;
                if C::connect(port, V311, id, true).await.is_none() {
                    return false;
                }
            }
            true
        }
        "CONNACK and UNSUBACK sent by a client, which reconnects" => {
            let server = [
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
            ];
            for p in server {
                if let Some(mut c) = C::connect(port, V5, "c3", true).await {
                    c.send(&p).await;
                    let _ = c.recv(Duration::from_millis(500)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            C::connect(port, V5, "c3", true).await.is_some()
        }
        "3.1.1 and 5 clients fighting over one client id" => {
            let mut keep = Vec::new();
            let until = tokio::time::Instant::now() + Duration::from_secs(3);
            let mut n = 0u32;
            while tokio::time::Instant::now() < until {
                n += 1;
                let level = if n % 2 == 0 { V5 } else { V311 };
                if let Some(c) = C::connect(port, level, "clone", true).await {
                    keep.push(c);
                }
                if keep.len() > 3 {
                    keep.remove(0);
                }
            }
            true
        }
        "persistent client alone in a shared group leaves with a message unacked" => {
            let Some(mut g) = C::connect(port, V311, "c5-g", false).await else {
                return false;
            };
            g.subscribe("$share/g/c5/+", 1).await;
            let Some(mut p) = C::connect(port, V311, "c5-p", true).await else {
                return false;
            };
            p.send(&publish("c5/1", b"x", 1, 1, Props::default())).await;
            let _ = p.recv(Duration::from_secs(1)).await;
            let _ = g.recv(Duration::from_secs(1)).await;
            drop(g);
            tokio::time::sleep(Duration::from_millis(300)).await;
            C::connect(port, V311, "c5-g", false).await.is_some()
        }
        "keep-alive 0" => {
            let Some(mut c) = C::open(port, V311).await else {
                return false;
            };
            c.send(&Packet::Connect(Box::new(Connect {
                level: V311,
                clean: true,
                keep_alive: 0,
                client_id: "c6".into(),
                will: None,
                username: None,
                password: None,
                props: Props::default(),
            })))
            .await;
            matches!(c.recv(Duration::from_secs(3)).await, Some(Packet::ConnAck(a)) if a.code == 0)
        }
        "QoS 1 PUBLISH with packet id 0 is refused" => {
            let Some(mut c) = C::connect(port, V311, "c7", true).await else {
                return false;
            };
            c.send(&publish("c7/t", b"x", 1, 0, Props::default())).await;
            // Refused: closed, never acknowledged.
            !matches!(
                c.recv(Duration::from_secs(1)).await,
                Some(Packet::PubAck(_))
            )
        }
        "SUBSCRIBE to a/#/b is not granted" => {
            let Some(mut c) = C::connect(port, V311, "c8", true).await else {
                return false;
            };
            match c.subscribe("a/#/b", 1).await {
                Some(codes) => codes.iter().all(|c| *c >= 0x80),
                None => true,
            }
        }
        _ => false,
    }
}
