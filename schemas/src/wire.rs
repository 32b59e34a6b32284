//! Hand-written Avro binary encoding of schemas v1 and v3 — the fast path.
//!
//! [`Codec`](crate::Codec) uses it when the writer schema *is* the reader schema, so no schema
//! resolution is needed. It produces exactly what any Avro implementation writes for
//! `chat_message.avsc` (checked against apache-avro in unit tests and against Python fastavro in
//! `tests/interop_fastavro.rs`). Bytes written under any other schema go through apache-avro.

use std::collections::BTreeMap;

use crate::error::DecodeError;
use crate::model::{ChatMessage, ContentType, MessageState, SessionType};

/// Appends the zig-zag varint encoding of `v` (Avro `int` and `long`).
#[inline]
pub(crate) fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Appends an Avro `bytes`/`string`: length as `long`, then the bytes.
#[inline]
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// An upper bound of the encoded datum size, to allocate once.
pub(crate) fn datum_len_hint(m: &ChatMessage) -> usize {
    // 10 bytes per varint is the maximum; 11 varints outside ext, 2 per ext entry, 2 map markers.
    let strings = m.msg_id.len()
        + m.client_msg_id.len()
        + m.session_id.len()
        + m.sender_id.len()
        + m.content.len();
    let ext: usize = m.ext.iter().map(|(k, v)| k.len() + v.len() + 20).sum();
    strings + ext + 13 * 10
}

/// Appends the Avro binary datum of `m` under schema v3 (`chat_message_v3.avsc`): the v1 fields,
/// v2's `reply_to_seq` (null) and `edited`, then `state`, `mutated_at`, `mutated_by`,
/// `edit_count`.
pub(crate) fn encode_v3(m: &ChatMessage, out: &mut Vec<u8>) {
    encode_v1(m, out);
    put_long(out, 0); // reply_to_seq: union branch 0, null
    out.push(u8::from(matches!(m.state, MessageState::Edited { .. }))); // edited
    put_long(out, i64::from(m.state.index()));
    put_long(out, m.state.mutated_at_us().unwrap_or(0));
    put_bytes(out, m.state.mutated_by().unwrap_or("").as_bytes());
    put_long(out, i64::from(m.state.edit_count()));
}

/// Appends the Avro binary datum of `m` under schema v1 (field order of `chat_message.avsc`);
/// its state is not part of v1.
pub(crate) fn encode_v1(m: &ChatMessage, out: &mut Vec<u8>) {
    put_bytes(out, m.msg_id.as_bytes());
    put_bytes(out, m.client_msg_id.as_bytes());
    put_bytes(out, m.session_id.as_bytes());
    put_long(out, i64::from(m.session_type.index()));
    put_long(out, m.seq);
    put_bytes(out, m.sender_id.as_bytes());
    put_long(out, i64::from(m.content_type.index()));
    put_bytes(out, &m.content);
    put_long(out, m.send_time_ms);
    put_long(out, m.server_time_us);
    if !m.ext.is_empty() {
        // One block holding every entry, then the empty block that ends the map.
        put_long(out, m.ext.len() as i64);
        for (k, v) in &m.ext {
            put_bytes(out, k.as_bytes());
            put_bytes(out, v.as_bytes());
        }
    }
    put_long(out, 0);
}

/// A bounds-checked reader over an Avro binary datum. Every read either succeeds or returns
/// [`DecodeError::Truncated`] / [`DecodeError::Malformed`]; nothing allocates more than the input
/// can back.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails with [`DecodeError::TrailingBytes`] unless the whole input was consumed.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }

    #[inline]
    pub(crate) fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// A zig-zag varint `long` (at most 10 bytes).
    #[inline]
    pub(crate) fn long(&mut self) -> Result<i64, DecodeError> {
        let mut z: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(DecodeError::Malformed("varint overflows 64 bits".into()));
            }
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    /// A zig-zag varint `int`: a `long` that must fit in 32 bits.
    pub(crate) fn int(&mut self) -> Result<i32, DecodeError> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| DecodeError::Malformed(format!("int out of range: {v}")))
    }

    /// A length prefix (`long`): non-negative; a length beyond the input means truncation.
    pub(crate) fn len(&mut self) -> Result<usize, DecodeError> {
        let v = self.long()?;
        let len = usize::try_from(v)
            .map_err(|_| DecodeError::Malformed(format!("negative length: {v}")))?;
        if len > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        Ok(len)
    }

    /// `n` raw bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// An Avro `bytes` or `string` body (length-prefixed).
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.len()?;
        self.take(n)
    }

    /// An Avro `string`, checked to be UTF-8.
    fn string(&mut self, field: &str) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(DecodeError::Malformed(format!(
                "field `{field}`: invalid UTF-8: {e}"
            ))),
        }
    }

    /// The item count of the next array/map block; 0 ends the sequence. A negative count is
    /// followed by the block's byte size, which is read and ignored. Each item takes at least
    /// one byte, so a count beyond the remaining input is rejected before anything is allocated.
    pub(crate) fn block_count(&mut self) -> Result<usize, DecodeError> {
        let raw = self.long()?;
        let count = if raw < 0 {
            let _block_bytes = self.long()?;
            raw.checked_neg()
                .ok_or_else(|| DecodeError::Malformed("block count overflows".into()))?
        } else {
            raw
        };
        let count = count as usize; // non-negative here
        if count > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        Ok(count)
    }

    /// An array or map: block after block until the empty one, `block` reading the items of each
    /// (it gets their count, already checked against the remaining input).
    pub(crate) fn blocks(
        &mut self,
        mut block: impl FnMut(&mut Self, usize) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        loop {
            let n = self.block_count()?;
            if n == 0 {
                return Ok(());
            }
            block(self, n)?;
        }
    }

    /// An Avro `map` of `string` values.
    fn string_map(&mut self, field: &str) -> Result<BTreeMap<String, String>, DecodeError> {
        let mut map = BTreeMap::new();
        self.blocks(|c, n| {
            for _ in 0..n {
                let k = c.string(field)?;
                map.insert(k, c.string(field)?);
            }
            Ok(())
        })?;
        Ok(map)
    }

    fn enum_index(&mut self, field: &str) -> Result<u32, DecodeError> {
        let i = self.int()?;
        u32::try_from(i).map_err(|_| {
            DecodeError::Malformed(format!("field `{field}`: negative enum index {i}"))
        })
    }

    /// An enum symbol of `field`, by its index. Writer and reader schema are the same here, so an
    /// out-of-range index is corruption, not an unknown symbol (those can only come from another
    /// writer schema, resolved by apache-avro).
    fn symbol<T>(
        &mut self,
        field: &str,
        from_index: fn(u32) -> Option<T>,
    ) -> Result<T, DecodeError> {
        let i = self.enum_index(field)?;
        from_index(i).ok_or_else(|| {
            DecodeError::Malformed(format!("field `{field}`: enum index {i} out of range"))
        })
    }
}

/// Decodes a datum written with schema v1 (the whole of `datum`, no trailing bytes).
pub(crate) fn decode_v1(datum: &[u8]) -> Result<ChatMessage, DecodeError> {
    let mut c = Cursor::new(datum);
    let m = v1_fields(&mut c)?;
    c.finish()?;
    Ok(m)
}

/// Decodes a datum written with schema v3 (the whole of `datum`, no trailing bytes).
pub(crate) fn decode_v3(datum: &[u8]) -> Result<ChatMessage, DecodeError> {
    let mut c = Cursor::new(datum);
    let mut m = v1_fields(&mut c)?;
    match c.long()? {
        0 => {}
        1 => {
            let _reply_to_seq = c.long()?;
        }
        b => {
            return Err(DecodeError::Malformed(format!(
                "field `reply_to_seq`: union branch {b} out of range"
            )));
        }
    }
    match c.byte()? {
        0 | 1 => {}
        b => {
            return Err(DecodeError::Malformed(format!(
                "field `edited`: boolean byte {b}"
            )));
        }
    }
    let index = c.enum_index("state")?;
    let at_us = c.long()?;
    let by = c.string("mutated_by")?;
    let count = c.int()?;
    let count = u32::try_from(count).map_err(|_| {
        DecodeError::Malformed(format!("field `edit_count`: negative count {count}"))
    })?;
    m.state = MessageState::from_parts(index, at_us, by, count).ok_or_else(|| {
        DecodeError::Malformed(format!("field `state`: enum index {index} out of range"))
    })?;
    c.finish()?;
    Ok(m)
}

/// The v1 fields, read from the start of a v1 or v3 datum.
fn v1_fields(c: &mut Cursor<'_>) -> Result<ChatMessage, DecodeError> {
    // A struct expression evaluates its fields in the order written: this is the field order of
    // `chat_message.avsc`, the order the datum holds them in.
    let m = ChatMessage {
        msg_id: c.string("msg_id")?,
        client_msg_id: c.string("client_msg_id")?,
        session_id: c.string("session_id")?,
        session_type: c.symbol("session_type", SessionType::from_index)?,
        seq: c.long()?,
        sender_id: c.string("sender_id")?,
        content_type: c.symbol("content_type", ContentType::from_index)?,
        content: c.bytes()?.to_vec(),
        send_time_ms: c.long()?,
        server_time_us: c.long()?,
        ext: c.string_map("ext")?,
        state: MessageState::Normal,
    };
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_varints_match_the_spec_table() {
        // Avro spec, "Binary Encoding": 0→00, -1→01, 1→02, -2→03, 2→04, -64→7f, 64→80 01.
        for (v, want) in [
            (0i64, &[0x00u8][..]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-2, &[0x03]),
            (2, &[0x04]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
        ] {
            let mut out = Vec::new();
            put_long(&mut out, v);
            assert_eq!(out, want, "{v}");
            assert_eq!(Cursor::new(&out).long().unwrap(), v);
        }
        for v in [i64::MIN, i64::MAX, i64::from(i32::MIN), i64::from(i32::MAX)] {
            let mut out = Vec::new();
            put_long(&mut out, v);
            let mut c = Cursor::new(&out);
            assert_eq!(c.long().unwrap(), v);
            c.finish().unwrap();
        }
    }

    #[test]
    fn overlong_varint_is_malformed_and_short_one_truncated() {
        let eleven = [0xffu8; 11];
        assert!(matches!(
            Cursor::new(&eleven).long(),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(Cursor::new(&[0x80]).long(), Err(DecodeError::Truncated));
    }

    #[test]
    fn huge_block_count_is_rejected_before_allocating() {
        let mut out = Vec::new();
        put_long(&mut out, i64::MAX);
        assert_eq!(Cursor::new(&out).block_count(), Err(DecodeError::Truncated));
        let mut out = Vec::new();
        put_long(&mut out, i64::MIN);
        put_long(&mut out, 0);
        assert!(matches!(
            Cursor::new(&out).block_count(),
            Err(DecodeError::Malformed(_))
        ));
    }
}
