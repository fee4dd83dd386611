//! Encoding packets for protocol level 3, 4 or 5. MQTT 5-only fields
//! (reason codes, properties) are left out for 3.1.1 peers.

use bytes::{BufMut, BytesMut};

use super::wire::{put_binary, put_string, put_varint};
use super::{Ack, Packet, SubOpts, V31, V5};

/// Appends `packet`, encoded for protocol `level`, to `out`.
pub fn encode(packet: &Packet, level: u8, out: &mut BytesMut) {
    let v5 = level == V5;
    let mut body = BytesMut::new();
    let first = match packet {
        Packet::Connect(c) => {
            let name = if c.level == V31 { "MQIsdp" } else { "MQTT" };
            put_string(&mut body, name);
            body.put_u8(c.level);
            let mut flags = 0u8;
            if c.clean {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | (w.qos << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            body.put_u8(flags);
            body.put_u16(c.keep_alive);
            if c.level == V5 {
                c.props.put(&mut body);
            }
            put_string(&mut body, &c.client_id);
            if let Some(w) = &c.will {
                if c.level == V5 {
                    w.props.put(&mut body);
                }
                put_string(&mut body, &w.topic);
                put_binary(&mut body, &w.payload);
            }
            if let Some(u) = &c.username {
                put_string(&mut body, u);
            }
            if let Some(p) = &c.password {
                put_binary(&mut body, p);
            }
            0x10
        }
        Packet::ConnAck(a) => {
            body.put_u8(u8::from(a.session_present));
            body.put_u8(a.code);
            if v5 {
                a.props.put(&mut body);
            }
            0x20
        }
        Packet::Publish(p) => {
            put_string(&mut body, &p.topic);
            if p.qos > 0 {
                body.put_u16(p.pkid);
            }
            if v5 {
                p.props.put(&mut body);
            }
            body.put_slice(&p.payload);
            0x30 | (u8::from(p.dup) << 3) | (p.qos << 1) | u8::from(p.retain)
        }
        Packet::PubAck(a) => {
            ack(&mut body, a, v5);
            0x40
        }
        Packet::PubRec(a) => {
            ack(&mut body, a, v5);
            0x50
        }
        Packet::PubRel(a) => {
            ack(&mut body, a, v5);
            0x62
        }
        Packet::PubComp(a) => {
            ack(&mut body, a, v5);
            0x70
        }
        Packet::Subscribe(s) => {
            body.put_u16(s.pkid);
            if v5 {
                s.props.put(&mut body);
            }
            for (filter, opts) in &s.filters {
                put_string(&mut body, filter);
                body.put_u8(options(opts.as_ref().copied().unwrap_or_default(), v5));
            }
            0x82
        }
        Packet::SubAck(s) => {
            body.put_u16(s.pkid);
            if v5 {
                s.props.put(&mut body);
            }
            body.put_slice(&s.codes);
            0x90
        }
        Packet::Unsubscribe(u) => {
            body.put_u16(u.pkid);
            if v5 {
                u.props.put(&mut body);
            }
            for f in &u.filters {
                put_string(&mut body, f);
            }
            0xa2
        }
        Packet::UnsubAck(u) => {
            body.put_u16(u.pkid);
            if v5 {
                u.props.put(&mut body);
                body.put_slice(&u.codes);
            }
            0xb0
        }
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect(d) => {
            if v5 && (d.code != 0 || !d.props.is_empty()) {
                body.put_u8(d.code);
                d.props.put(&mut body);
            }
            0xe0
        }
        Packet::Auth(a) => {
            body.put_u8(a.code);
            a.props.put(&mut body);
            0xf0
        }
    };
    out.put_u8(first);
    put_varint(out, u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.put_slice(&body);
}

fn ack(body: &mut BytesMut, a: &Ack, v5: bool) {
    body.put_u16(a.pkid);
    if v5 && (a.code != 0 || !a.props.is_empty()) {
        body.put_u8(a.code);
        if !a.props.is_empty() {
            a.props.put(body);
        }
    }
}

fn options(o: SubOpts, v5: bool) -> u8 {
    let mut b = o.qos & 0x03;
    if v5 {
        if o.no_local {
            b |= 0x04;
        }
        if o.retain_as_published {
            b |= 0x08;
        }
        b |= (o.retain_handling & 0x03) << 4;
    }
    b
}
