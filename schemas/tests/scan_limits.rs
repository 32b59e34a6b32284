//! The bounds check of datums written under a non-current writer schema caps the total number of
//! array/map items: zero-byte items (here `null`s) take no input, so a count checked only against
//! the remaining input let block after block claim ~remaining items each — quadratic work for the
//! walk, and unbounded `Vec`s for apache-avro after it.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use chatlog_schemas::{
    ChatMessage, Codec, ContentType, DecodeError, HEADER_LEN, SCHEMA_V1_JSON, SessionType, header,
    schema_fingerprint,
};

/// v1 with one more field at the end: an array of nulls (every item zero bytes).
fn schema_with_null_array() -> String {
    let mut s: serde_json::Value = serde_json::from_str(SCHEMA_V1_JSON).unwrap();
    s["fields"].as_array_mut().unwrap().push(serde_json::json!({
        "name": "marks", "type": {"type": "array", "items": "null"}, "default": []
    }));
    s.to_string()
}

fn message() -> ChatMessage {
    ChatMessage {
        msg_id: "0190a6b2-7c3e-7d4f-8a9b-0c1d2e3f4a5b".into(),
        client_msg_id: "c-1".into(),
        session_id: "s-1".into(),
        session_type: SessionType::Group,
        seq: 1,
        sender_id: "u-1".into(),
        content_type: ContentType::Text,
        content: b"hi".to_vec(),
        send_time_ms: 1_700_000_000_000,
        server_time_us: 1_700_000_000_000_000,
        ext: Default::default(),
        state: Default::default(),
    }
}

fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// `bytes` of array blocks, each claiming as many items as there are bytes after its count
/// (the most a per-block check lets through), then the end marker.
fn greedy_blocks(bytes: usize) -> Vec<u8> {
    // Built back to front: a block's count is the length of everything after it.
    let mut counts: Vec<Vec<u8>> = Vec::new();
    let mut after = 1; // the end marker
    while after < bytes {
        let mut v = Vec::new();
        put_long(&mut v, after as i64);
        after += v.len();
        counts.push(v);
    }
    let mut out: Vec<u8> = counts.into_iter().rev().flatten().collect();
    out.push(0);
    out
}

/// Decodes on a thread and gives up after `limit` (old code would run for hours).
fn decode_within(
    codec: &Codec,
    bytes: Vec<u8>,
    limit: Duration,
) -> Result<ChatMessage, DecodeError> {
    let (tx, rx) = mpsc::channel();
    let codec = codec.clone();
    std::thread::spawn(move || {
        let _ = tx.send(codec.decode(&bytes));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("decode did not return within {limit:?}"))
}

#[test]
fn zero_byte_items_are_capped_in_total() {
    let schema = schema_with_null_array();
    let fp = schema_fingerprint(&schema).unwrap();
    let codec = Codec::builder().writer_schema(schema).build().unwrap();
    let v1 = Codec::default().encode(&message()).unwrap();

    // A legitimate datum under that schema: one null, then the end marker.
    let mut ok = header(fp).to_vec();
    ok.extend_from_slice(&v1[HEADER_LEN..]);
    ok.extend_from_slice(&[2, 0]);
    assert_eq!(codec.decode(&ok).unwrap(), message());

    // 256 KiB of blocks, each claiming every byte after it as an item: ~10^10 items in all.
    let mut hostile = header(fp).to_vec();
    hostile.extend_from_slice(&v1[HEADER_LEN..]);
    hostile.extend_from_slice(&greedy_blocks(256 * 1024));
    assert!(hostile.len() <= chatlog_schemas::DEFAULT_MAX_ENCODED_BYTES);
    let started = Instant::now();
    let err = decode_within(&codec, hostile, Duration::from_secs(10)).unwrap_err();
    assert_eq!(err.reason(), "malformed", "{err}");
    assert!(err.to_string().contains("items"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "linear, not quadratic: {:?}",
        started.elapsed()
    );
}
