//! Decoding packets, strictly.

use bytes::Bytes;

use super::props::{Context, Props};
use super::wire::{remaining_length, utf8, Reader};
use super::{
    check_filter, Ack, Auth, CodecError, ConnAck, Connect, Disconnect, Packet, Publish, SubAck,
    SubOpts, Subscribe, UnsubAck, Unsubscribe, Will, V31, V311, V5,
};

/// The fixed header's type, flags and the body of a whole frame.
fn split(frame: &[u8]) -> Result<(u8, u8, &[u8]), CodecError> {
    let (len, header) =
        remaining_length(frame)?.ok_or(CodecError::Malformed("packet ends early"))?;
    let first = *frame.first().ok_or(CodecError::Malformed("empty packet"))?;
    let body = frame
        .get(header..header.saturating_add(len))
        .ok_or(CodecError::Malformed("packet ends early"))?;
    Ok((first >> 4, first & 0x0f, body))
}

fn expect_flags(flags: u8, want: u8) -> Result<(), CodecError> {
    if flags != want {
        return Err(CodecError::Malformed(
            "reserved fixed-header flags are wrong",
        ));
    }
    Ok(())
}

/// The first packet of a connection: a CONNECT, for any protocol level
/// (an unsupported one is [`CodecError::Version`]).
pub fn decode_connect(frame: &[u8]) -> Result<Connect, CodecError> {
    let (kind, flags, body) = split(frame)?;
    if kind != 1 {
        return Err(CodecError::Protocol("the first packet must be CONNECT"));
    }
    expect_flags(flags, 0)?;
    let mut r = Reader::new(body);
    let name = r.string()?;
    let level = r.u8()?;
    match (name.as_str(), level) {
        ("MQTT", V311 | V5) | ("MQIsdp", V31) => {}
        ("MQTT" | "MQIsdp", other) => return Err(CodecError::Version(other)),
        _ => return Err(CodecError::Protocol("unknown protocol name")),
    }
    let cflags = r.u8()?;
    if cflags & 0x01 != 0 {
        return Err(CodecError::Malformed("CONNECT's reserved flag is set"));
    }
    let clean = cflags & 0x02 != 0;
    let will_flag = cflags & 0x04 != 0;
    let will_qos = (cflags >> 3) & 0x03;
    let will_retain = cflags & 0x20 != 0;
    let has_password = cflags & 0x40 != 0;
    let has_username = cflags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(CodecError::Malformed(
            "will QoS or retain set without a will",
        ));
    }
    if will_qos == 3 {
        return Err(CodecError::Malformed("will QoS 3"));
    }
    if level != V5 && has_password && !has_username {
        return Err(CodecError::Malformed("a password without a username"));
    }
    let keep_alive = r.u16()?;
    let props = if level == V5 {
        Props::read(&mut r, Context::Connect)?
    } else {
        Props::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let props = if level == V5 {
            Props::read(&mut r, Context::Will)?
        } else {
            Props::default()
        };
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            props,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    if !r.is_empty() {
        return Err(CodecError::Malformed("bytes after the end of CONNECT"));
    }
    Ok(Connect {
        level,
        clean,
        keep_alive,
        client_id,
        will,
        username,
        password,
        props,
    })
}

/// Any packet after CONNECT, for protocol `level`.
pub fn decode(frame: &[u8], level: u8) -> Result<Packet, CodecError> {
    let (kind, flags, body) = split(frame)?;
    let v5 = level == V5;
    let mut r = Reader::new(body);
    let packet = match kind {
        1 => {
            // A CONNECT inside a connection is a protocol error; decode it
            // anyway so the caller can say what came.
            return decode_connect(frame)
                .map(|c| Packet::Connect(Box::new(c)))
                .and(Err(CodecError::Protocol("a second CONNECT")));
        }
        2 => {
            expect_flags(flags, 0)?;
            let ack_flags = r.u8()?;
            if ack_flags & 0xfe != 0 {
                return Err(CodecError::Malformed("CONNACK's reserved flags are set"));
            }
            let code = r.u8()?;
            let props = if v5 {
                Props::read(&mut r, Context::ConnAck)?
            } else {
                Props::default()
            };
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 1 == 1,
                code,
                props,
            })
        }
        3 => Packet::Publish(publish(flags, &mut r, v5)?),
        4 => {
            expect_flags(flags, 0)?;
            Packet::PubAck(ack(&mut r, v5)?)
        }
        5 => {
            expect_flags(flags, 0)?;
            Packet::PubRec(ack(&mut r, v5)?)
        }
        6 => {
            expect_flags(flags, 0b0010)?;
            Packet::PubRel(ack(&mut r, v5)?)
        }
        7 => {
            expect_flags(flags, 0)?;
            Packet::PubComp(ack(&mut r, v5)?)
        }
        8 => {
            expect_flags(flags, 0b0010)?;
            Packet::Subscribe(subscribe(&mut r, v5)?)
        }
        9 => {
            expect_flags(flags, 0)?;
            let pkid = r.u16()?;
            let props = if v5 {
                Props::read(&mut r, Context::SubAck)?
            } else {
                Props::default()
            };
            Packet::SubAck(SubAck {
                pkid,
                codes: r.rest().to_vec(),
                props,
            })
        }
        10 => {
            expect_flags(flags, 0b0010)?;
            let pkid = nonzero_pkid(r.u16()?)?;
            let props = if v5 {
                Props::read(&mut r, Context::Unsubscribe)?
            } else {
                Props::default()
            };
            let mut filters = Vec::new();
            while !r.is_empty() {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(CodecError::Protocol("UNSUBSCRIBE without a topic filter"));
            }
            Packet::Unsubscribe(Unsubscribe {
                pkid,
                filters,
                props,
            })
        }
        11 => {
            expect_flags(flags, 0)?;
            let pkid = r.u16()?;
            let props = if v5 {
                Props::read(&mut r, Context::UnsubAck)?
            } else {
                Props::default()
            };
            Packet::UnsubAck(UnsubAck {
                pkid,
                codes: r.rest().to_vec(),
                props,
            })
        }
        12 => {
            expect_flags(flags, 0)?;
            Packet::PingReq
        }
        13 => {
            expect_flags(flags, 0)?;
            Packet::PingResp
        }
        14 => {
            expect_flags(flags, 0)?;
            let (code, props) = if v5 && !r.is_empty() {
                let code = r.u8()?;
                let props = if r.is_empty() {
                    Props::default()
                } else {
                    Props::read(&mut r, Context::Disconnect)?
                };
                (code, props)
            } else {
                (0, Props::default())
            };
            Packet::Disconnect(Disconnect { code, props })
        }
        15 if v5 => {
            expect_flags(flags, 0)?;
            let (code, props) = if r.is_empty() {
                (0, Props::default())
            } else {
                (r.u8()?, Props::read(&mut r, Context::Auth)?)
            };
            Packet::Auth(Auth { code, props })
        }
        _ => return Err(CodecError::Malformed("an unknown packet type")),
    };
    if !r.is_empty() {
        return Err(CodecError::Malformed("bytes after the end of the packet"));
    }
    Ok(packet)
}

fn nonzero_pkid(pkid: u16) -> Result<u16, CodecError> {
    if pkid == 0 {
        return Err(CodecError::Protocol("packet identifier 0"));
    }
    Ok(pkid)
}

fn publish(flags: u8, r: &mut Reader<'_>, v5: bool) -> Result<Publish, CodecError> {
    let dup = flags & 0x08 != 0;
    let qos = (flags >> 1) & 0x03;
    let retain = flags & 0x01 != 0;
    if qos == 3 {
        return Err(CodecError::Malformed("PUBLISH with QoS 3"));
    }
    if qos == 0 && dup {
        return Err(CodecError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = r.string()?;
    let pkid = if qos > 0 { nonzero_pkid(r.u16()?)? } else { 0 };
    let props = if v5 {
        Props::read(r, Context::Publish)?
    } else {
        Props::default()
    };
    let payload = Bytes::copy_from_slice(r.rest());
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        pkid,
        payload,
        props,
    })
}

fn ack(r: &mut Reader<'_>, v5: bool) -> Result<Ack, CodecError> {
    let pkid = nonzero_pkid(r.u16()?)?;
    let (code, props) = if v5 && !r.is_empty() {
        let code = r.u8()?;
        let props = if r.is_empty() {
            Props::default()
        } else {
            Props::read(r, Context::Ack)?
        };
        (code, props)
    } else {
        (0, Props::default())
    };
    Ok(Ack { pkid, code, props })
}

fn subscribe(r: &mut Reader<'_>, v5: bool) -> Result<Subscribe, CodecError> {
    let pkid = nonzero_pkid(r.u16()?)?;
    let props = if v5 {
        Props::read(r, Context::Subscribe)?
    } else {
        Props::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let n = usize::from(r.u16()?);
        let filter = utf8(r.take(n)?)?;
        let o = r.u8()?;
        let reserved = if v5 { o & 0xc0 } else { o & 0xfc };
        if reserved != 0 {
            return Err(CodecError::Malformed(
                "reserved subscription option bits are set",
            ));
        }
        let qos = o & 0x03;
        if qos == 3 {
            return Err(CodecError::Malformed("a subscription with QoS 3"));
        }
        let opts = SubOpts {
            qos,
            no_local: v5 && o & 0x04 != 0,
            retain_as_published: v5 && o & 0x08 != 0,
            retain_handling: if v5 { (o >> 4) & 0x03 } else { 0 },
        };
        if opts.retain_handling == 3 {
            return Err(CodecError::Protocol("retain handling 3"));
        }
        if opts.no_local && filter.starts_with("$share/") {
            return Err(CodecError::Protocol("no local on a shared subscription"));
        }
        let checked = check_filter(&filter).map(|()| opts);
        filters.push((filter, checked));
    }
    if filters.is_empty() {
        return Err(CodecError::Protocol("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe {
        pkid,
        filters,
        props,
    })
}
