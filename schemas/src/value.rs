//! Conversions between the typed model and apache-avro's generic [`Value`], used on the general
//! (schema-resolution) path and for writing under schema v2.

use std::collections::{BTreeMap, HashMap};

use apache_avro::types::Value;

use crate::error::DecodeError;
use crate::model::{ChatMessage, ChatMessageV2, ContentType, MessageState, SessionType};

fn v1_fields(m: &ChatMessage) -> Vec<(String, Value)> {
    vec![
        ("msg_id".into(), Value::String(m.msg_id.clone())),
        (
            "client_msg_id".into(),
            Value::String(m.client_msg_id.clone()),
        ),
        ("session_id".into(), Value::String(m.session_id.clone())),
        (
            "session_type".into(),
            Value::Enum(m.session_type.index(), m.session_type.symbol().into()),
        ),
        ("seq".into(), Value::Long(m.seq)),
        ("sender_id".into(), Value::String(m.sender_id.clone())),
        (
            "content_type".into(),
            Value::Enum(m.content_type.index(), m.content_type.symbol().into()),
        ),
        ("content".into(), Value::Bytes(m.content.clone())),
        ("send_time".into(), Value::TimestampMillis(m.send_time_ms)),
        (
            "server_time".into(),
            Value::TimestampMicros(m.server_time_us),
        ),
        (
            "ext".into(),
            Value::Map(
                m.ext
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect::<HashMap<_, _>>(),
            ),
        ),
    ]
}

/// The schema-v1 record value of a message.
pub fn to_value_v1(m: &ChatMessage) -> Value {
    Value::Record(v1_fields(m))
}

/// The schema-v2 record value of a message.
pub fn to_value_v2(m: &ChatMessageV2) -> Value {
    let mut fields = v1_fields(&m.message);
    let reply = match m.reply_to_seq {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(s) => Value::Union(1, Box::new(Value::Long(s))),
    };
    fields.push(("reply_to_seq".into(), reply));
    fields.push(("edited".into(), Value::Boolean(m.edited)));
    Value::Record(fields)
}

fn bad(field: &str, v: &Value) -> DecodeError {
    DecodeError::Malformed(format!("field `{field}`: unexpected value {v:?}"))
}

fn string(field: &str, v: Value) -> Result<String, DecodeError> {
    match v {
        Value::String(s) => Ok(s),
        v => Err(bad(field, &v)),
    }
}

fn long(field: &str, v: Value) -> Result<i64, DecodeError> {
    match v {
        Value::Long(x) | Value::TimestampMillis(x) | Value::TimestampMicros(x) => Ok(x),
        Value::Int(x) => Ok(i64::from(x)),
        v => Err(bad(field, &v)),
    }
}

fn symbol(field: &str, v: Value) -> Result<String, DecodeError> {
    match v {
        Value::Enum(_, s) | Value::String(s) => Ok(s),
        v => Err(bad(field, &v)),
    }
}

/// Fields of a resolved record, taken by name (order-independent).
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn take(&mut self, name: &str) -> Result<Value, DecodeError> {
        let i = self
            .0
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| DecodeError::Malformed(format!("field `{name}` missing")))?;
        Ok(self.0.swap_remove(i).1)
    }
}

fn record(v: Value) -> Result<Fields, DecodeError> {
    match v {
        Value::Record(f) => Ok(Fields(f)),
        v => Err(DecodeError::Malformed(format!(
            "expected a record, got {v:?}"
        ))),
    }
}

fn message_from(f: &mut Fields) -> Result<ChatMessage, DecodeError> {
    let session_type = symbol("session_type", f.take("session_type")?)?;
    let session_type = SessionType::from_symbol(&session_type).ok_or_else(|| {
        DecodeError::Malformed(format!(
            "field `session_type`: unknown symbol {session_type}"
        ))
    })?;
    let content_type = symbol("content_type", f.take("content_type")?)?;
    let content_type = ContentType::from_symbol(&content_type).unwrap_or(ContentType::Unknown);
    let content = match f.take("content")? {
        Value::Bytes(b) | Value::Fixed(_, b) => b,
        v => return Err(bad("content", &v)),
    };
    let ext = match f.take("ext")? {
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| Ok((k, string("ext", v)?)))
            .collect::<Result<BTreeMap<_, _>, DecodeError>>()?,
        v => return Err(bad("ext", &v)),
    };
    Ok(ChatMessage {
        msg_id: string("msg_id", f.take("msg_id")?)?,
        client_msg_id: string("client_msg_id", f.take("client_msg_id")?)?,
        session_id: string("session_id", f.take("session_id")?)?,
        session_type,
        seq: long("seq", f.take("seq")?)?,
        sender_id: string("sender_id", f.take("sender_id")?)?,
        content_type,
        content,
        send_time_ms: long("send_time", f.take("send_time")?)?,
        server_time_us: long("server_time", f.take("server_time")?)?,
        ext,
        state: Default::default(),
    })
}

/// The schema-v3 record value of a message (`reply_to_seq` null).
pub fn to_value_v3(m: &ChatMessage) -> Value {
    let mut fields = v1_fields(m);
    fields.push((
        "reply_to_seq".into(),
        Value::Union(0, Box::new(Value::Null)),
    ));
    fields.push((
        "edited".into(),
        Value::Boolean(matches!(m.state, MessageState::Edited { .. })),
    ));
    fields.push((
        "state".into(),
        Value::Enum(m.state.index(), m.state.symbol().into()),
    ));
    fields.push((
        "mutated_at".into(),
        Value::TimestampMicros(m.state.mutated_at_us().unwrap_or(0)),
    ));
    fields.push((
        "mutated_by".into(),
        Value::String(m.state.mutated_by().unwrap_or("").into()),
    ));
    fields.push((
        "edit_count".into(),
        Value::Int(i32::try_from(m.state.edit_count()).unwrap_or(i32::MAX)),
    ));
    Value::Record(fields)
}

/// A message from a record value resolved into the v3 reader schema (state included).
pub(crate) fn from_value_v3(v: Value) -> Result<ChatMessage, DecodeError> {
    let mut f = record(v)?;
    let mut m = message_from(&mut f)?;
    let state = symbol("state", f.take("state")?)?;
    // The enum declares NORMAL as its default: resolution already mapped unknown symbols.
    let index = MessageState::SYMBOLS
        .iter()
        .position(|s| *s == state)
        .unwrap_or(0) as u32;
    let at_us = long("mutated_at", f.take("mutated_at")?)?;
    let by = string("mutated_by", f.take("mutated_by")?)?;
    let count = match f.take("edit_count")? {
        Value::Int(n) => u32::try_from(n).map_err(|_| {
            DecodeError::Malformed(format!("field `edit_count`: negative count {n}"))
        })?,
        v => return Err(bad("edit_count", &v)),
    };
    m.state = MessageState::from_parts(index, at_us, by, count).unwrap_or_default();
    Ok(m)
}

/// A message from a record value resolved into the v1 reader schema.
pub(crate) fn from_value_v1(v: Value) -> Result<ChatMessage, DecodeError> {
    message_from(&mut record(v)?)
}

/// A message from a record value resolved into the v2 reader schema.
pub(crate) fn from_value_v2(v: Value) -> Result<ChatMessageV2, DecodeError> {
    let mut f = record(v)?;
    let message = message_from(&mut f)?;
    let reply_to_seq = match f.take("reply_to_seq")? {
        Value::Union(_, inner) => match *inner {
            Value::Null => None,
            other => Some(long("reply_to_seq", other)?),
        },
        Value::Null => None,
        other => Some(long("reply_to_seq", other)?),
    };
    let edited = match f.take("edited")? {
        Value::Boolean(b) => b,
        v => return Err(bad("edited", &v)),
    };
    Ok(ChatMessageV2 {
        message,
        reply_to_seq,
        edited,
    })
}
