//! MQTT 5 properties: one table says, for every property, its type and the
//! packets it may appear in; decoding refuses anything else (an unknown
//! identifier, a property in the wrong packet, a duplicate, a bad value).

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{put_binary, put_string, put_varint, varint_len, Reader};
use super::CodecError;

/// Where a property list stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Connect,
    ConnAck,
    Publish,
    Will,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Context {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A property's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    Var(u32),
    Str(String),
    Bin(Bytes),
    Pair(String, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Byte,
    U16,
    U32,
    Var,
    Str,
    Bin,
    Pair,
}

pub const PAYLOAD_FORMAT: u8 = 0x01;
pub const MESSAGE_EXPIRY: u8 = 0x02;
pub const CONTENT_TYPE: u8 = 0x03;
pub const RESPONSE_TOPIC: u8 = 0x08;
pub const CORRELATION_DATA: u8 = 0x09;
pub const SUBSCRIPTION_ID: u8 = 0x0B;
pub const SESSION_EXPIRY: u8 = 0x11;
pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
pub const SERVER_KEEP_ALIVE: u8 = 0x13;
pub const AUTH_METHOD: u8 = 0x15;
pub const AUTH_DATA: u8 = 0x16;
pub const REQUEST_PROBLEM_INFO: u8 = 0x17;
pub const WILL_DELAY: u8 = 0x18;
pub const REQUEST_RESPONSE_INFO: u8 = 0x19;
pub const RESPONSE_INFO: u8 = 0x1A;
pub const SERVER_REFERENCE: u8 = 0x1C;
pub const REASON_STRING: u8 = 0x1F;
pub const RECEIVE_MAX: u8 = 0x21;
pub const TOPIC_ALIAS_MAX: u8 = 0x22;
pub const TOPIC_ALIAS: u8 = 0x23;
pub const MAX_QOS: u8 = 0x24;
pub const RETAIN_AVAILABLE: u8 = 0x25;
pub const USER_PROPERTY: u8 = 0x26;
pub const MAX_PACKET_SIZE: u8 = 0x27;
pub const WILDCARD_AVAILABLE: u8 = 0x28;
pub const SUB_ID_AVAILABLE: u8 = 0x29;
pub const SHARED_AVAILABLE: u8 = 0x2A;

/// (identifier, type, contexts) for every MQTT 5 property.
fn spec(id: u8) -> Option<(Kind, &'static [Context])> {
    use Context::*;
    Some(match id {
        PAYLOAD_FORMAT => (Kind::Byte, &[Publish, Will]),
        MESSAGE_EXPIRY => (Kind::U32, &[Publish, Will]),
        CONTENT_TYPE => (Kind::Str, &[Publish, Will]),
        RESPONSE_TOPIC => (Kind::Str, &[Publish, Will]),
        CORRELATION_DATA => (Kind::Bin, &[Publish, Will]),
        SUBSCRIPTION_ID => (Kind::Var, &[Publish, Subscribe]),
        SESSION_EXPIRY => (Kind::U32, &[Connect, ConnAck, Disconnect]),
        ASSIGNED_CLIENT_ID => (Kind::Str, &[ConnAck]),
        SERVER_KEEP_ALIVE => (Kind::U16, &[ConnAck]),
        AUTH_METHOD => (Kind::Str, &[Connect, ConnAck, Auth]),
        AUTH_DATA => (Kind::Bin, &[Connect, ConnAck, Auth]),
        REQUEST_PROBLEM_INFO => (Kind::Byte, &[Connect]),
        WILL_DELAY => (Kind::U32, &[Will]),
        REQUEST_RESPONSE_INFO => (Kind::Byte, &[Connect]),
        RESPONSE_INFO => (Kind::Str, &[ConnAck]),
        SERVER_REFERENCE => (Kind::Str, &[ConnAck, Disconnect]),
        REASON_STRING => (
            Kind::Str,
            &[ConnAck, Ack, SubAck, UnsubAck, Disconnect, Auth],
        ),
        RECEIVE_MAX => (Kind::U16, &[Connect, ConnAck]),
        TOPIC_ALIAS_MAX => (Kind::U16, &[Connect, ConnAck]),
        TOPIC_ALIAS => (Kind::U16, &[Publish]),
        MAX_QOS => (Kind::Byte, &[ConnAck]),
        RETAIN_AVAILABLE => (Kind::Byte, &[ConnAck]),
        USER_PROPERTY => (
            Kind::Pair,
            &[
                Connect,
                ConnAck,
                Publish,
                Will,
                Ack,
                Subscribe,
                SubAck,
                Unsubscribe,
                UnsubAck,
                Disconnect,
                Auth,
            ],
        ),
        MAX_PACKET_SIZE => (Kind::U32, &[Connect, ConnAck]),
        WILDCARD_AVAILABLE => (Kind::Byte, &[ConnAck]),
        SUB_ID_AVAILABLE => (Kind::Byte, &[ConnAck]),
        SHARED_AVAILABLE => (Kind::Byte, &[ConnAck]),
        _ => return None,
    })
}

/// A property list, in the order it came.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props(pub Vec<(u8, Value)>);

impl Props {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn get(&self, id: u8) -> Option<&Value> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    pub fn byte(&self, id: u8) -> Option<u8> {
        match self.get(id)? {
            Value::Byte(b) => Some(*b),
            _ => None,
        }
    }

    pub fn u16(&self, id: u8) -> Option<u16> {
        match self.get(id)? {
            Value::U16(v) => Some(*v),
            _ => None,
        }
    }

    pub fn u32(&self, id: u8) -> Option<u32> {
        match self.get(id)? {
            Value::U32(v) | Value::Var(v) => Some(*v),
            _ => None,
        }
    }

    pub fn str(&self, id: u8) -> Option<&str> {
        match self.get(id)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn has(&self, id: u8) -> bool {
        self.get(id).is_some()
    }

    /// Adds (or, for single-valued properties, replaces) a property.
    pub fn set(&mut self, id: u8, value: Value) {
        if id != USER_PROPERTY && id != SUBSCRIPTION_ID {
            self.0.retain(|(i, _)| *i != id);
        }
        self.0.push((id, value));
    }

    pub fn remove(&mut self, id: u8) {
        self.0.retain(|(i, _)| *i != id);
    }

    /// Only the properties for which `keep` says yes.
    pub fn filtered(&self, keep: impl Fn(u8) -> bool) -> Props {
        Props(self.0.iter().filter(|(i, _)| keep(*i)).cloned().collect())
    }

    /// Encoded length of the list, without its own length prefix.
    pub fn len(&self) -> usize {
        self.0
            .iter()
            .map(|(id, v)| {
                let value = match v {
                    Value::Byte(_) => 1,
                    Value::U16(_) => 2,
                    Value::U32(_) => 4,
                    Value::Var(n) => varint_len(*n),
                    Value::Str(s) => s.len().saturating_add(2),
                    Value::Bin(b) => b.len().saturating_add(2),
                    Value::Pair(k, v) => k.len().saturating_add(v.len()).saturating_add(4),
                };
                varint_len(u32::from(*id)).saturating_add(value)
            })
            .fold(0, usize::saturating_add)
    }

    /// Writes the length prefix and the list.
    pub fn put(&self, out: &mut BytesMut) {
        let n = u32::try_from(self.len()).unwrap_or(u32::MAX);
        put_varint(out, n);
        for (id, v) in &self.0 {
            put_varint(out, u32::from(*id));
            match v {
                Value::Byte(b) => out.put_u8(*b),
                Value::U16(x) => out.put_u16(*x),
                Value::U32(x) => out.put_u32(*x),
                Value::Var(x) => put_varint(out, *x),
                Value::Str(s) => put_string(out, s),
                Value::Bin(b) => put_binary(out, b),
                Value::Pair(k, v) => {
                    put_string(out, k);
                    put_string(out, v);
                }
            }
        }
    }

    /// Reads a length-prefixed property list allowed in `ctx`.
    pub fn read(r: &mut Reader<'_>, ctx: Context) -> Result<Props, CodecError> {
        let len = r.varint()? as usize;
        let mut inner = Reader::new(r.take(len)?);
        let mut props = Props::default();
        while !inner.is_empty() {
            let id = inner.varint()?;
            let id = u8::try_from(id).map_err(|_| CodecError::Malformed("unknown property"))?;
            let (kind, contexts) = spec(id).ok_or(CodecError::Malformed("unknown property"))?;
            if !contexts.iter().any(|c| c.bit() == ctx.bit()) {
                return Err(CodecError::Malformed(
                    "a property not allowed in this packet",
                ));
            }
            let value = match kind {
                Kind::Byte => Value::Byte(inner.u8()?),
                Kind::U16 => Value::U16(inner.u16()?),
                Kind::U32 => Value::U32(inner.u32()?),
                Kind::Var => Value::Var(inner.varint()?),
                Kind::Str => Value::Str(inner.string()?),
                Kind::Bin => Value::Bin(inner.binary()?),
                Kind::Pair => Value::Pair(inner.string()?, inner.string()?),
            };
            let repeatable = id == USER_PROPERTY;
            if !repeatable && props.has(id) {
                return Err(CodecError::Protocol("a property given twice"));
            }
            check_value(id, &value)?;
            props.0.push((id, value));
        }
        Ok(props)
    }
}

/// Values the specification rules out.
fn check_value(id: u8, v: &Value) -> Result<(), CodecError> {
    let bad = match (id, v) {
        (PAYLOAD_FORMAT | REQUEST_PROBLEM_INFO | REQUEST_RESPONSE_INFO, Value::Byte(b)) => *b > 1,
        (RECEIVE_MAX, Value::U16(0)) => true,
        (MAX_PACKET_SIZE, Value::U32(0)) => true,
        (SUBSCRIPTION_ID, Value::Var(0)) => true,
        _ => false,
    };
    if bad {
        return Err(CodecError::Protocol(
            "a property with a value it may not have",
        ));
    }
    Ok(())
}
