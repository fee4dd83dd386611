//! Just enough MQTT framing for the front: split a byte stream into whole
//! control packets, and read the few fields the front acts on (CONNECT's
//! protocol level and client id, PUBLISH's topic, QoS, packet id and payload,
//! the packet id of PUBACK/PUBREC). Everything else is relayed as opaque
//! bytes; rumqttd does the full protocol work.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

pub const CONNECT: u8 = 1;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const DISCONNECT: u8 = 14;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("packet of {size} bytes is larger than the limit of {max} bytes (broker.max_payload)")]
    TooLarge { size: usize, max: usize },
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

/// One whole MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub bytes: Bytes,
    /// Length of the fixed header (1 byte type/flags + 1–4 bytes length).
    pub header_len: usize,
}

impl Frame {
    pub fn kind(&self) -> u8 {
        self.bytes[0] >> 4
    }

    fn flags(&self) -> u8 {
        self.bytes[0] & 0x0f
    }

    pub fn body(&self) -> &[u8] {
        &self.bytes[self.header_len..]
    }

    /// Packet id of a PUBACK, PUBREC (and the other acks): the first two
    /// bytes of the body in MQTT 3.1.1 and 5 alike.
    pub fn ack_pkid(&self) -> Option<u16> {
        let b = self.body();
        (b.len() >= 2).then(|| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Splits a stream into frames, refusing any larger than `max_body` bytes of
/// remaining length before reading them into memory.
#[derive(Debug, Clone)]
pub struct Frames {
    pub max_body: usize,
}

impl Decoder for Frames {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        let Some((len, header_len)) = remaining_length(src).map_err(invalid)? else {
            return Ok(None);
        };
        if len > self.max_body {
            return Err(invalid(FrameError::TooLarge {
                size: len,
                max: self.max_body,
            }));
        }
        let total = header_len + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        Ok(Some(Frame {
            bytes: src.split_to(total).freeze(),
            header_len,
        }))
    }
}

fn invalid(e: FrameError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// The remaining length and the fixed header's size, once enough bytes are in.
fn remaining_length(src: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = src.get(1 + i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((len, 2 + i)));
        }
    }
    Err(FrameError::Malformed(
        "remaining length longer than 4 bytes",
    ))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, FrameError> {
        if self.0.is_empty() {
            return Err(FrameError::Malformed("packet ends early"));
        }
        Ok(self.0.get_u8())
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        if self.0.len() < 2 {
            return Err(FrameError::Malformed("packet ends early"));
        }
        Ok(self.0.get_u16())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Malformed("packet ends early"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn string(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    fn varint(&mut self) -> Result<usize, FrameError> {
        let mut v = 0usize;
        for i in 0..4 {
            let b = self.u8()?;
            v |= ((b & 0x7f) as usize) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(FrameError::Malformed(
            "variable integer longer than 4 bytes",
        ))
    }
}

/// What the front needs from a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// 3 = MQTT 3.1, 4 = 3.1.1, 5 = 5.0.
    pub level: u8,
    pub client_id: String,
}

pub fn parse_connect(f: &Frame) -> Result<Connect, FrameError> {
    if f.kind() != CONNECT {
        return Err(FrameError::Malformed("the first packet must be CONNECT"));
    }
    let mut r = Reader(f.body());
    let _name = r.string()?;
    let level = r.u8()?;
    let _flags = r.u8()?;
    let _keep_alive = r.u16()?;
    if level == 5 {
        let n = r.varint()?;
        r.take(n)?;
    }
    let id = r.string()?;
    let client_id = std::str::from_utf8(id)
        .map_err(|_| FrameError::Malformed("client id is not UTF-8"))?
        .to_string();
    Ok(Connect { level, client_id })
}

/// What the front needs from a PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    pub qos: u8,
    /// Empty when an MQTT 5 client uses a topic alias alone.
    pub topic: &'a str,
    pub pkid: Option<u16>,
    pub topic_alias: Option<u16>,
    pub payload: &'a [u8],
}

pub fn parse_publish(f: &Frame, v5: bool) -> Result<Publish<'_>, FrameError> {
    let qos = (f.flags() >> 1) & 0x03;
    if qos == 3 {
        return Err(FrameError::Malformed("PUBLISH with QoS 3"));
    }
    let mut r = Reader(f.body());
    let topic = std::str::from_utf8(r.string()?)
        .map_err(|_| FrameError::Malformed("topic is not UTF-8"))?;
    let pkid = if qos > 0 { Some(r.u16()?) } else { None };
    let mut topic_alias = None;
    if v5 {
        let n = r.varint()?;
        let mut props = Reader(r.take(n)?);
        while !props.0.is_empty() {
            match props.varint()? {
                0x01 => {
                    props.u8()?;
                }
                0x02 => {
                    props.take(4)?;
                }
                0x23 => topic_alias = Some(props.u16()?),
                0x03 | 0x08 | 0x09 => {
                    props.string()?;
                }
                0x26 => {
                    props.string()?;
                    props.string()?;
                }
                0x0b => {
                    props.varint()?;
                }
                _ => return Err(FrameError::Malformed("unknown PUBLISH property")),
            }
        }
    }
    Ok(Publish {
        qos,
        topic,
        pkid,
        topic_alias,
        payload: r.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8]) -> Frame {
        let mut b = BytesMut::from(bytes);
        Frames { max_body: 1 << 20 }
            .decode(&mut b)
            .expect("decode")
            .expect("whole frame")
    }

    #[test]
    fn splits_frames_and_waits_for_more() {
        let mut buf = BytesMut::from(&[0x30, 0x05, 0, 1, b'a', b'x'][..]);
        let mut d = Frames { max_body: 100 };
        assert_eq!(d.decode(&mut buf).expect("ok"), None);
        buf.extend_from_slice(&[b'y', 0xc0, 0x00]);
        let f = d.decode(&mut buf).expect("ok").expect("frame");
        assert_eq!(f.kind(), PUBLISH);
        assert_eq!(f.header_len, 2);
        let ping = d.decode(&mut buf).expect("ok").expect("pingreq");
        assert_eq!(ping.kind(), 12);
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_oversized_before_buffering() {
        // remaining length 200 000 (3-byte varint), only the header present
        let mut buf = BytesMut::from(&[0x30, 0xc0, 0x9a, 0x0c][..]);
        let err = Frames { max_body: 1000 }
            .decode(&mut buf)
            .expect_err("too large");
        assert!(err.to_string().contains("200000"), "{err}");
        let mut bad = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(Frames {
            max_body: usize::MAX
        }
        .decode(&mut bad)
        .is_err());
    }

    #[test]
    fn reads_connect_v4_and_v5() {
        // CONNECT "MQTT" level 4, flags 2, keepalive 60, client id "s1"
        let v4 = frame(&[
            0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 2, b's', b'1',
        ]);
        assert_eq!(
            parse_connect(&v4),
            Ok(Connect {
                level: 4,
                client_id: "s1".into()
            })
        );
        // level 5 with 3 bytes of properties (session expiry id 0x11 needs 4; use receive max 0x21 u16)
        let v5 = frame(&[
            0x10, 18, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 3, 0x21, 0, 10, 0, 2, b's', b'2',
        ]);
        assert_eq!(
            parse_connect(&v5),
            Ok(Connect {
                level: 5,
                client_id: "s2".into()
            })
        );
        assert!(parse_connect(&frame(&[0xc0, 0])).is_err());
    }

    #[test]
    fn reads_publish_v4() {
        // QoS 1, topic "a/b", pkid 7, payload "hi"
        let f = frame(&[0x32, 9, 0, 3, b'a', b'/', b'b', 0, 7, b'h', b'i']);
        let p = parse_publish(&f, false).expect("publish");
        assert_eq!(p.qos, 1);
        assert_eq!(p.topic, "a/b");
        assert_eq!(p.pkid, Some(7));
        assert_eq!(p.payload, b"hi");
    }

    #[test]
    fn reads_publish_v5_with_alias_and_user_property() {
        // QoS 1, empty topic, pkid 1, props: alias 3, user property ("k","v")
        let props = [0x23, 0, 3, 0x26, 0, 1, b'k', 0, 1, b'v'];
        let mut body = vec![0, 0, 0, 1, props.len() as u8];
        body.extend_from_slice(&props);
        body.extend_from_slice(b"{}");
        let mut bytes = vec![0x32, body.len() as u8];
        bytes.extend_from_slice(&body);
        let f = frame(&bytes);
        let p = parse_publish(&f, true).expect("publish");
        assert_eq!(p.topic, "");
        assert_eq!(p.topic_alias, Some(3));
        assert_eq!(p.payload, b"{}");
    }

    #[test]
    fn ack_packet_id() {
        assert_eq!(frame(&[0x40, 2, 0x01, 0x02]).ack_pkid(), Some(0x0102));
        // MQTT 5 PUBACK with reason code and no properties
        assert_eq!(frame(&[0x40, 3, 0, 9, 0x10]).ack_pkid(), Some(9));
    }

    #[test]
    fn truncated_publish_is_an_error_not_a_panic() {
        let f = frame(&[0x32, 3, 0, 9, b'a']);
        assert!(parse_publish(&f, false).is_err());
    }
}
