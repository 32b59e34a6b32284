//! Encode/decode cost per message: the Avro single-object codec next to serde_json of the same
//! struct as a reference point.
//!
//! Run: `cargo bench -p chatlog-schemas -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;

use chatlog_schemas::{ChatMessage, ChatMessageV2, Codec, ContentType, SessionType};
use criterion::{Criterion, criterion_main};

/// A typical text message: 36-byte UUID, short ids, ~120 bytes of text, two ext entries.
fn typical() -> ChatMessage {
    let mut ext = BTreeMap::new();
    ext.insert("client".to_owned(), "ios/8.4.1".to_owned());
    ext.insert("mentions".to_owned(), "u-20391,u-88121".to_owned());
    ChatMessage {
        msg_id: "0190a6b2-7c3e-7d4f-8a9b-0c1d2e3f4a5b".to_owned(),
        client_msg_id: "c5d4e7a0-1f2b-4c3d-9e8f-7a6b5c4d3e2f".to_owned(),
        session_id: "g:team-platform-2024".to_owned(),
        session_type: SessionType::Group,
        seq: 1_234_567,
        sender_id: "u-20391".to_owned(),
        content_type: ContentType::Text,
        content:
            "Deploy of chatlog-consumer 0.1.0 finished on all 12 instances; lag is back under \
                  100 records. Thanks everyone!"
                .as_bytes()
                .to_vec(),
        send_time_ms: 1_732_590_000_123,
        server_time_us: 1_732_590_000_125_456,
        ext,
        state: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let codec = Codec::default();
    let msg = typical();
    let avro = codec.encode(&msg).unwrap();
    let json = serde_json::to_vec(&msg).unwrap();
    let v2 = codec
        .encode_v2(&ChatMessageV2 {
            message: msg.clone(),
            reply_to_seq: Some(1_234_000),
            edited: false,
        })
        .unwrap();
    eprintln!(
        "encoded sizes: avro single-object {} B, v2 {} B, json {} B",
        avro.len(),
        v2.len(),
        json.len()
    );

    let mut g = c.benchmark_group("encode");
    g.bench_function("avro", |b| {
        b.iter(|| codec.encode(black_box(&msg)).unwrap())
    });
    let mut buf = Vec::with_capacity(1024);
    g.bench_function("avro_into_reused_buf", |b| {
        b.iter(|| {
            buf.clear();
            codec.encode_into(black_box(&msg), &mut buf).unwrap();
        })
    });
    g.bench_function("json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&msg)).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("decode");
    g.bench_function("avro", |b| {
        b.iter(|| codec.decode(black_box(&avro)).unwrap())
    });
    g.bench_function("avro_v2_writer_resolved", |b| {
        b.iter(|| codec.decode(black_box(&v2)).unwrap())
    });
    g.bench_function("json", |b| {
        b.iter(|| serde_json::from_slice::<ChatMessage>(black_box(&json)).unwrap())
    });
    g.finish();
}

// `criterion_group!` generates an undocumented `pub fn`.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
