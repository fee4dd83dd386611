//! The wire's primitives: big-endian integers, variable byte integers,
//! length-prefixed UTF-8 strings and binary data, read without ever
//! reading past the packet.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::CodecError;

/// Reads a packet body; every read is bounds-checked.
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Reader<'a> {
        Reader(b)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn remaining(&self) -> usize {
        self.0.len()
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        if self.0.is_empty() {
            return Err(CodecError::Malformed("packet ends early"));
        }
        Ok(self.0.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, CodecError> {
        if self.0.len() < 2 {
            return Err(CodecError::Malformed("packet ends early"));
        }
        Ok(self.0.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, CodecError> {
        if self.0.len() < 4 {
            return Err(CodecError::Malformed("packet ends early"));
        }
        Ok(self.0.get_u32())
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Malformed("packet ends early"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    /// A variable byte integer (at most 4 bytes, at most 268,435,455).
    pub fn varint(&mut self) -> Result<u32, CodecError> {
        let mut v: u32 = 0;
        for shift in [0u32, 7, 14, 21] {
            let b = self.u8()?;
            v |= u32::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    }

    pub fn binary(&mut self) -> Result<Bytes, CodecError> {
        let n = usize::from(self.u16()?);
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }

    /// A UTF-8 string as MQTT defines it: well-formed, without U+0000.
    pub fn string(&mut self) -> Result<String, CodecError> {
        let n = usize::from(self.u16()?);
        utf8(self.take(n)?)
    }
}

/// Checks MQTT's rules for UTF-8 strings.
pub fn utf8(b: &[u8]) -> Result<String, CodecError> {
    let s =
        std::str::from_utf8(b).map_err(|_| CodecError::Malformed("a string that is not UTF-8"))?;
    if s.contains('\0') {
        return Err(CodecError::Malformed("a string containing U+0000"));
    }
    Ok(s.to_string())
}

pub fn varint_len(n: u32) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub fn put_varint(out: &mut BytesMut, mut n: u32) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if n == 0 {
            break;
        }
    }
}

pub fn put_string(out: &mut BytesMut, s: &str) {
    put_binary(out, s.as_bytes());
}

/// A length-prefixed byte string; longer than 65,535 bytes cannot be
/// encoded and is cut (callers check lengths first).
pub fn put_binary(out: &mut BytesMut, b: &[u8]) {
    let n = u16::try_from(b.len()).unwrap_or(u16::MAX);
    out.put_u16(n);
    out.put_slice(b.get(..usize::from(n)).unwrap_or(b));
}

/// The remaining length and the fixed header's size, once enough bytes
/// are in; an error if the length field itself is malformed.
pub fn remaining_length(src: &[u8]) -> Result<Option<(usize, usize)>, CodecError> {
    let mut len = 0usize;
    for (at, shift) in [(1usize, 0u32), (2, 7), (3, 14), (4, 21)] {
        let Some(&b) = src.get(at) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            // The fixed header: the type byte and `at` length bytes.
            return Ok(Some((len, at.saturating_add(1))));
        }
    }
    Err(CodecError::Malformed(
        "remaining length longer than 4 bytes",
    ))
}
