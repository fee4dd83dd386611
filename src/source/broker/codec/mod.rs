//! MQTT 3.1.1 and 5 control packets: strict decoding of everything a peer
//! may send, and encoding of every packet (the broker sends the server's
//! half; the tests and the health probe send the client's).
//!
//! Decoding follows the specifications' "MUST" rules: fixed-header flags,
//! packet identifiers, UTF-8 strings without U+0000, topic names without
//! wildcards, well-formed topic filters, the properties a packet may carry.
//! A violation is a [`CodecError`] that says which rule; the connection
//! turns it into the right reason code (or a plain close for 3.1.1).

mod decode;
mod encode;
pub mod props;
mod wire;

use bytes::{Bytes, BytesMut};

pub use decode::{decode, decode_connect};
pub use encode::encode;
pub use props::Props;

/// Protocol levels.
pub const V31: u8 = 3;
pub const V311: u8 = 4;
pub const V5: u8 = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// MQTT 5 reason 0x81.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// MQTT 5 reason 0x82.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// MQTT 5 reason 0x95.
    #[error("packet of {size} bytes is larger than the limit of {max} bytes (broker.max_payload)")]
    TooLarge { size: usize, max: usize },
    /// A CONNECT for a protocol outpost does not speak (CONNACK 0x01 / 0x84).
    #[error("unsupported protocol level {0}")]
    Version(u8),
}

impl CodecError {
    /// The MQTT 5 reason code for a DISCONNECT saying so.
    pub fn reason(&self) -> u8 {
        match self {
            CodecError::Malformed(_) => 0x81,
            CodecError::Protocol(_) => 0x82,
            CodecError::TooLarge { .. } => 0x95,
            CodecError::Version(_) => 0x84,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub props: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// 3 = MQTT 3.1, 4 = 3.1.1, 5 = 5.0.
    pub level: u8,
    /// Clean session (3.1.1) or clean start (5).
    pub clean: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub props: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: u8,
    pub props: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    /// Empty only when an MQTT 5 topic alias stands for it.
    pub topic: String,
    /// 0 for QoS 0.
    pub pkid: u16,
    pub payload: Bytes,
    pub props: Props,
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub pkid: u16,
    pub code: u8,
    pub props: Props,
}

impl Ack {
    pub fn ok(pkid: u16) -> Ack {
        Ack {
            pkid,
            code: 0,
            props: Props::default(),
        }
    }
}

/// One topic filter's subscription options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubOpts {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained messages; 1: only for a new subscription; 2: never.
    pub retain_handling: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    /// Each filter with its options, or why it is not a valid filter (the
    /// packet itself was well formed; MQTT 5 answers 0x8F for it, 3.1.1
    /// closes the connection).
    pub filters: Vec<(String, Result<SubOpts, &'static str>)>,
    pub props: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub codes: Vec<u8>,
    pub props: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub filters: Vec<String>,
    pub props: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub pkid: u16,
    /// MQTT 5 only (3.1.1's UNSUBACK has no payload).
    pub codes: Vec<u8>,
    pub props: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u8,
    pub props: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub code: u8,
    pub props: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// The packet type's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// Takes one whole packet (fixed header and body) off the front of `src`,
/// refusing one whose body is larger than `max_body` before buffering it.
/// `None`: not all of it is here yet.
pub fn split_frame(src: &mut BytesMut, max_body: usize) -> Result<Option<Bytes>, CodecError> {
    let Some((len, header)) = wire::remaining_length(src)? else {
        return Ok(None);
    };
    if len > max_body {
        return Err(CodecError::TooLarge {
            size: len,
            max: max_body,
        });
    }
    let total = header.saturating_add(len);
    if src.len() < total {
        src.reserve(total.saturating_sub(src.len()));
        return Ok(None);
    }
    Ok(Some(src.split_to(total).freeze()))
}

/// Is `topic` a valid topic name to publish on: non-empty, no wildcards
/// (U+0000 is refused by the UTF-8 check already)?
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#'])
}

/// Is `filter` a valid topic filter? `Err` says what is wrong. A shared
/// subscription (`$share/{group}/{filter}`) is checked as such.
pub fn check_filter(filter: &str) -> Result<(), &'static str> {
    let inner = match filter.strip_prefix("$share/") {
        Some(rest) => {
            let (group, f) = rest
                .split_once('/')
                .ok_or("a shared subscription needs $share/{group}/{filter}")?;
            if group.is_empty() || group.contains(['+', '#']) {
                return Err("a shared subscription's group is a name without wildcards");
            }
            f
        }
        None => filter,
    };
    if inner.is_empty() {
        return Err("an empty topic filter");
    }
    let levels: Vec<&str> = inner.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i != levels.len().saturating_sub(1)) {
            return Err("`#` must be a whole level and the last one");
        }
        if l.contains('+') && *l != "+" {
            return Err("`+` must be a whole level");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
