//! A raw MQTT client: sends exactly the packets (or bytes) a test gives it
//! and reports exactly what comes back, for MQTT 3.1.1 and 5. Hostile and
//! conformance tests use it against outpost and against mosquitto alike.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use outpost::source::broker::codec::{
    self, props, Ack, ConnAck, Connect, Packet, Props, Publish, SubOpts, Subscribe, Unsubscribe,
    Will,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a read gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Packet(Packet),
    /// The broker closed the connection.
    Closed,
    /// Nothing within the wait.
    Nothing,
}

impl Got {
    pub fn packet(self) -> Packet {
        match self {
            Got::Packet(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }
}

pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    pub level: u8,
    next_pkid: u16,
}

/// How a raw client connects.
#[derive(Debug, Clone)]
pub struct Hello {
    pub level: u8,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub props: Props,
    pub will: Option<Will>,
    pub login: Option<(String, String)>,
}

impl Hello {
    pub fn new(level: u8, client_id: &str) -> Hello {
        Hello {
            level,
            client_id: client_id.to_string(),
            clean: true,
            keep_alive: 30,
            props: Props::default(),
            will: None,
            login: None,
        }
    }

    pub fn persistent(mut self) -> Hello {
        self.clean = false;
        if self.level == codec::V5 {
            self.props
                .set(props::SESSION_EXPIRY, props::Value::U32(3600));
        }
        self
    }

    pub fn packet(&self) -> Packet {
        Packet::Connect(Box::new(Connect {
            level: self.level,
            clean: self.clean,
            keep_alive: self.keep_alive,
            client_id: self.client_id.clone(),
            will: self.will.clone(),
            username: self.login.as_ref().map(|(u, _)| u.clone()),
            password: self.login.as_ref().map(|(_, p)| Bytes::from(p.clone())),
            props: self.props.clone(),
        }))
    }
}

impl Raw {
    /// A TCP connection and nothing sent yet.
    pub async fn open(port: u16, level: u8) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the broker");
        Raw::on(stream, level)
    }

    fn on(stream: TcpStream, level: u8) -> Raw {
        let _ = stream.set_nodelay(true);
        Raw {
            stream,
            buf: BytesMut::new(),
            level,
            next_pkid: 0,
        }
    }

    /// [`Raw::open`] from another loopback address (`127.0.0.X`), so the
    /// broker sees another host.
    pub async fn open_from(from: [u8; 4], port: u16, level: u8) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::from((from, 0)))
            .expect("bind to the source address");
        let stream = socket
            .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .expect("connect to the broker");
        Raw::on(stream, level)
    }

    /// [`Raw::connected`] from another loopback address.
    pub async fn connected_from(from: [u8; 4], port: u16, h: &Hello) -> (Raw, ConnAck) {
        let mut r = Raw::open_from(from, port, h.level).await;
        r.send(&h.packet()).await;
        match r.recv(Duration::from_secs(5)).await {
            Got::Packet(Packet::ConnAck(a)) if a.code == 0 => (r, a),
            other => panic!("{} was not accepted: {other:?}", h.client_id),
        }
    }

    /// Connects; returns the CONNACK (or what came instead).
    pub async fn hello(port: u16, h: &Hello) -> (Raw, Got) {
        let mut r = Raw::open(port, h.level).await;
        r.send(&h.packet()).await;
        let got = r.recv(Duration::from_secs(5)).await;
        (r, got)
    }

    /// Connects and insists on CONNACK 0.
    pub async fn connected(port: u16, h: &Hello) -> (Raw, ConnAck) {
        let (r, got) = Raw::hello(port, h).await;
        match got {
            Got::Packet(Packet::ConnAck(a)) if a.code == 0 => (r, a),
            other => panic!("{} was not accepted: {other:?}", h.client_id),
        }
    }

    pub fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid % u16::MAX + 1;
        self.next_pkid
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut b = BytesMut::new();
        codec::encode(p, self.level, &mut b);
        self.send_bytes(&b).await;
    }

    /// Writes bytes as they are; a broker that already closed is not an
    /// error here (the test looks at what it answers).
    pub async fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.stream.write_all(b).await;
    }

    /// The next packet, a close, or nothing within `within`.
    pub async fn recv(&mut self, within: Duration) -> Got {
        let read = async {
            loop {
                match codec::split_frame(&mut self.buf, 16 << 20) {
                    Ok(Some(frame)) => {
                        let p = if frame.first().is_some_and(|b| b >> 4 == 1) {
                            Packet::Connect(Box::new(
                                codec::decode_connect(&frame).expect("a CONNECT"),
                            ))
                        } else {
                            codec::decode(&frame, self.level)
                                .unwrap_or_else(|e| panic!("the broker sent a bad packet: {e}"))
                        };
                        return Got::Packet(p);
                    }
                    Ok(None) => {}
                    Err(e) => panic!("the broker sent a bad frame: {e}"),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return Got::Closed,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(within, read)
            .await
            .unwrap_or(Got::Nothing)
    }

    /// Packets until `within` passes with nothing new, or a close.
    pub async fn drain(&mut self, within: Duration) -> (Vec<Packet>, bool) {
        let mut out = Vec::new();
        loop {
            match self.recv(within).await {
                Got::Packet(p) => out.push(p),
                Got::Closed => return (out, true),
                Got::Nothing => return (out, false),
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> Packet {
        let opts = SubOpts {
            qos,
            ..SubOpts::default()
        };
        self.subscribe_with(vec![(filter.to_string(), Ok(opts))], Props::default())
            .await
    }

    pub async fn subscribe_with(
        &mut self,
        filters: Vec<(String, Result<SubOpts, &'static str>)>,
        props: Props,
    ) -> Packet {
        let pkid = self.pkid();
        self.send(&Packet::Subscribe(Subscribe {
            pkid,
            filters,
            props,
        }))
        .await;
        loop {
            match self.recv(Duration::from_secs(5)).await {
                Got::Packet(Packet::SubAck(a)) if a.pkid == pkid => return Packet::SubAck(a),
                Got::Packet(Packet::Publish(_)) => {}
                other => return other_packet(other),
            }
        }
    }

    pub async fn unsubscribe(&mut self, filter: &str) -> Packet {
        let pkid = self.pkid();
        self.send(&Packet::Unsubscribe(Unsubscribe {
            pkid,
            filters: vec![filter.to_string()],
            props: Props::default(),
        }))
        .await;
        other_packet(self.recv(Duration::from_secs(5)).await)
    }

    /// Publishes and, for QoS 1 and 2, completes the exchange; returns the
    /// acknowledgement's reason code (0 for QoS 0), or the packet that came
    /// instead.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        props: Props,
    ) -> Result<u8, Got> {
        let pkid = if qos > 0 { self.pkid() } else { 0 };
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.to_string(),
            pkid,
            payload: Bytes::copy_from_slice(payload),
            props,
        }))
        .await;
        if qos == 0 {
            return Ok(0);
        }
        loop {
            match self.recv(Duration::from_secs(10)).await {
                Got::Packet(Packet::PubAck(a)) if a.pkid == pkid && qos == 1 => return Ok(a.code),
                Got::Packet(Packet::PubRec(a)) if a.pkid == pkid && qos == 2 => {
                    if a.code >= 0x80 {
                        return Ok(a.code);
                    }
                    self.send(&Packet::PubRel(Ack::ok(pkid))).await;
                }
                Got::Packet(Packet::PubComp(a)) if a.pkid == pkid => return Ok(a.code),
                Got::Packet(Packet::Publish(_)) => {}
                other => return Err(other),
            }
        }
    }

    /// Acknowledges a received QoS 1 or 2 PUBLISH the way a client must.
    pub async fn ack(&mut self, p: &Publish) {
        match p.qos {
            1 => self.send(&Packet::PubAck(Ack::ok(p.pkid))).await,
            2 => self.send(&Packet::PubRec(Ack::ok(p.pkid))).await,
            _ => {}
        }
    }

    /// The next PUBLISH (acknowledged), skipping other packets.
    pub async fn next_publish(&mut self, within: Duration) -> Option<Publish> {
        let until = tokio::time::Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Got::Packet(Packet::Publish(p)) => {
                    self.ack(&p).await;
                    return Some(p);
                }
                Got::Packet(Packet::PubRel(a)) => {
                    self.send(&Packet::PubComp(Ack::ok(a.pkid))).await;
                }
                Got::Packet(_) => {}
                _ => return None,
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.send(&Packet::Disconnect(codec::Disconnect {
            code: 0,
            props: Props::default(),
        }))
        .await;
        let _ = self.stream.shutdown().await;
    }
}

fn other_packet(g: Got) -> Packet {
    match g {
        Got::Packet(p) => p,
        other => panic!("expected an answer, got {other:?}"),
    }
}
