//! Codec behaviour: wire layout, pinned fingerprints, every error kind, schema evolution.

use std::collections::BTreeMap;

use chatlog_schemas::apache_avro::types::Value;
use chatlog_schemas::apache_avro::{self, Schema};
use chatlog_schemas::testing::schema_v2_with_content_type;
use chatlog_schemas::{
    ChatMessage, ChatMessageV2, Codec, ContentType, DecodeError, EncodeError, HEADER_LEN, Limits,
    SCHEMA_V1_JSON, SCHEMA_V2_JSON, SchemaError, SchemaVersion, SessionType, ValidationError,
    crc64_avro, header, parsing_canonical_form, schema_fingerprint, to_value_v1,
};

/// Parsing Canonical Form of v1, as computed by fastavro 1.13 (`to_parsing_canonical_form`).
const V1_CANONICAL: &str = r#"{"name":"chatlog.ChatMessage","type":"record","fields":[{"name":"msg_id","type":"string"},{"name":"client_msg_id","type":"string"},{"name":"session_id","type":"string"},{"name":"session_type","type":{"name":"chatlog.SessionType","type":"enum","symbols":["SINGLE","GROUP","SYSTEM"]}},{"name":"seq","type":"long"},{"name":"sender_id","type":"string"},{"name":"content_type","type":{"name":"chatlog.ContentType","type":"enum","symbols":["TEXT","IMAGE","VOICE","VIDEO","FILE","CUSTOM","UNKNOWN"]}},{"name":"content","type":"bytes"},{"name":"send_time","type":"long"},{"name":"server_time","type":"long"},{"name":"ext","type":{"type":"map","values":"string"}}]}"#;

/// Fingerprints as fastavro prints them (hex of the little-endian bytes) — pinned: changing a
/// shipped schema's canonical form would orphan every message already written with it.
const V1_FP_LE_HEX: &str = "1ebb96a945e24446";
const V2_FP_LE_HEX: &str = "3601df2f8f1707c4";
/// Schema v3, as fastavro computes it (`fingerprint(to_parsing_canonical_form(..), "CRC-64-AVRO")`).
const V3_FP_LE_HEX: &str = "16a359a99d0a4e57";

fn le_hex(fp: u64) -> String {
    fp.to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sample() -> ChatMessage {
    let mut ext = BTreeMap::new();
    ext.insert("client".to_owned(), "android/3.2".to_owned());
    ChatMessage {
        msg_id: "0190a6b2-7c3e-7d4f-8a9b-0c1d2e3f4a5b".to_owned(),
        client_msg_id: "c-77".to_owned(),
        session_id: "g:42".to_owned(),
        session_type: SessionType::Group,
        seq: 77,
        sender_id: "u-9".to_owned(),
        content_type: ContentType::Text,
        content: b"hi there".to_vec(),
        send_time_ms: 1_732_590_000_123,
        server_time_us: 1_732_590_000_125_456,
        ext,
        state: Default::default(),
    }
}

fn v1_bytes_of(codec: &Codec, value: Value) -> Vec<u8> {
    codec
        .encode_value(codec.fingerprint_v1(), value)
        .expect("value matches v1")
}

#[test]
fn codec_is_cheap_to_share() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<Codec>();
    let codec = Codec::default();
    let bytes = codec.encode(&sample()).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let c = codec.clone();
            let b = &bytes;
            s.spawn(move || assert_eq!(c.decode(b).unwrap(), sample()));
        }
    });
}

#[test]
fn canonical_form_and_fingerprints_are_pinned() {
    assert_eq!(
        parsing_canonical_form(SCHEMA_V1_JSON).unwrap(),
        V1_CANONICAL
    );
    let codec = Codec::default();
    assert_eq!(codec.fingerprint_v1(), crc64_avro(V1_CANONICAL.as_bytes()));
    assert_eq!(le_hex(codec.fingerprint_v1()), V1_FP_LE_HEX);
    assert_eq!(le_hex(codec.fingerprint_v2()), V2_FP_LE_HEX);
    assert_eq!(codec.current_fingerprint(), codec.fingerprint_v1());
    assert_eq!(
        codec.fingerprint(SchemaVersion::V2),
        schema_fingerprint(SCHEMA_V2_JSON).unwrap()
    );
    // Not apache-avro's `Schema::canonical_form` (0.21 keeps `{"type":"long"}` for the
    // timestamp fields): its fingerprint would not match Java's or fastavro's.
    let apache = Schema::parse_str(SCHEMA_V1_JSON).unwrap().canonical_form();
    if apache != V1_CANONICAL {
        eprintln!("note: apache-avro canonical form still differs: {apache}");
    }
    assert_eq!(
        codec.known_fingerprints(),
        vec![
            codec.fingerprint_v1(),
            codec.fingerprint_v2(),
            codec.fingerprint(SchemaVersion::V3)
        ]
    );
    assert_eq!(le_hex(codec.fingerprint(SchemaVersion::V3)), V3_FP_LE_HEX);
}

#[test]
fn wire_layout_is_single_object_encoding() {
    let codec = Codec::default();
    let msg = sample();
    let bytes = codec.encode(&msg).unwrap();
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    assert_eq!(&bytes[..HEADER_LEN], &header(codec.fingerprint_v1()));
    // The datum is exactly what apache-avro writes for the v1 value.
    let datum =
        apache_avro::to_avro_datum(codec.schema(SchemaVersion::V1), to_value_v1(&msg)).unwrap();
    assert_eq!(&bytes[HEADER_LEN..], &datum[..]);
    assert_eq!(codec.decode(&bytes).unwrap(), msg);

    let mut buf = b"prefix".to_vec();
    codec.encode_into(&msg, &mut buf).unwrap();
    assert_eq!(&buf[6..], &bytes[..]);
}

#[test]
fn truncated() {
    let codec = Codec::default();
    let full = codec.encode(&sample()).unwrap();
    for len in [0, 1, 2, 9, 10, 11, full.len() / 2, full.len() - 1] {
        let err = codec.decode(&full[..len]).unwrap_err();
        assert_eq!(err, DecodeError::Truncated, "prefix of {len} bytes");
        assert_eq!(err.reason(), "truncated");
    }
    // Also on the general (schema-resolution) path.
    let v2 = codec.encode_v2(&sample().into()).unwrap();
    for len in [HEADER_LEN, v2.len() - 1] {
        assert_eq!(codec.decode(&v2[..len]), Err(DecodeError::Truncated));
        assert_eq!(codec.decode_as_v2(&v2[..len]), Err(DecodeError::Truncated));
    }
}

#[test]
fn bad_magic() {
    let codec = Codec::default();
    let mut bytes = codec.encode(&sample()).unwrap();
    bytes[1] = 0x02;
    let inputs: [&[u8]; 4] = [&[0x00], b"{\"msg_id\":\"x\"}", &[0xC3, 0x00], &bytes];
    for input in inputs {
        let err = codec.decode(input).unwrap_err();
        assert_eq!(err, DecodeError::BadMagic, "{input:?}");
        assert_eq!(err.reason(), "bad_magic");
    }
}

#[test]
fn unknown_fingerprint() {
    let codec = Codec::default();
    let mut bytes = header(0xdead_beef).to_vec();
    bytes.extend_from_slice(&codec.encode(&sample()).unwrap()[HEADER_LEN..]);
    let err = codec.decode(&bytes).unwrap_err();
    assert_eq!(err, DecodeError::UnknownFingerprint(0xdead_beef));
    assert_eq!(err.reason(), "unknown_fingerprint");
    // Header only is enough to tell.
    assert_eq!(
        codec.decode(&header(7)),
        Err(DecodeError::UnknownFingerprint(7))
    );
    // Byte-swapped (big-endian) fingerprint is not accepted.
    let be = header(codec.fingerprint_v1().swap_bytes());
    assert!(matches!(
        codec.decode(&be),
        Err(DecodeError::UnknownFingerprint(_))
    ));
}

#[test]
fn oversize_is_checked_before_parsing() {
    let small = Codec::new(64);
    let big = Codec::default();
    let mut msg = sample();
    msg.content = vec![b'x'; 100];
    let bytes = big.encode(&msg).unwrap();
    let err = small.decode(&bytes).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Oversize {
            len: bytes.len(),
            max: 64
        }
    );
    assert_eq!(err.reason(), "oversize");
    // Garbage that is too long is oversize, not bad magic: nothing is parsed.
    assert!(matches!(
        small.decode(&[0u8; 65]),
        Err(DecodeError::Oversize { len: 65, max: 64 })
    ));
    assert!(matches!(
        small.decode(&[0u8; 64]),
        Err(DecodeError::BadMagic)
    ));
    // The encoder refuses too.
    let err = small.encode(&msg).unwrap_err();
    assert_eq!(
        err,
        EncodeError::Oversize {
            len: bytes.len(),
            max: 64
        }
    );
    assert_eq!(err.reason(), "oversize");
    let mut buf = vec![1, 2, 3];
    assert!(small.encode_into(&msg, &mut buf).is_err());
    assert_eq!(buf, [1, 2, 3], "buffer restored on error");
}

fn malformed(codec: &Codec, bytes: &[u8], what: &str) {
    match codec.decode(bytes) {
        Err(e @ DecodeError::Malformed(_)) => assert_eq!(e.reason(), "malformed"),
        other => panic!("{what}: expected Malformed, got {other:?}"),
    }
}

#[test]
fn malformed_datum() {
    let codec = Codec::default();
    let fp1 = codec.fingerprint_v1();
    let mut good = header(fp1).to_vec();
    good.extend_from_slice(&[2, b'm', 2, b'c', 2, b's']);

    // session_type index 9 (zig-zag 18).
    let mut b = good.clone();
    b.extend_from_slice(&[18, 2, 2, b'u', 0, 0, 0, 0, 0]);
    malformed(&codec, &b, "enum index out of range");

    // Negative enum index.
    let mut b = good.clone();
    b.extend_from_slice(&[1, 2, 2, b'u', 0, 0, 0, 0, 0]);
    malformed(&codec, &b, "negative enum index");

    // content_type index 7 (zig-zag 14): out of range for the writer schema itself.
    let mut b = good.clone();
    b.extend_from_slice(&[2, 2, 2, b'u', 14, 0, 0, 0, 0]);
    malformed(&codec, &b, "content_type index out of range");

    // Invalid UTF-8 in msg_id.
    let mut b = header(fp1).to_vec();
    b.extend_from_slice(&[
        4, 0xff, 0xfe, 2, b'c', 2, b's', 0, 2, 2, b'u', 0, 0, 0, 0, 0,
    ]);
    malformed(&codec, &b, "invalid UTF-8");

    // Negative string length.
    let mut b = header(fp1).to_vec();
    b.extend_from_slice(&[3, b'm']);
    malformed(&codec, &b, "negative length");

    // Varint longer than 10 bytes (seq).
    let mut b = good.clone();
    b.push(0);
    b.extend_from_slice(&[0xff; 11]);
    malformed(&codec, &b, "overlong varint");

    // General path: v2 bytes with a union index out of range and a bad boolean.
    let v2 = codec.encode_v2(&sample().into()).unwrap();
    let n = v2.len();
    assert_eq!(&v2[n - 2..], &[0, 0], "reply_to_seq = null, edited = false");
    let mut b = v2.clone();
    b[n - 2] = 4; // union index 2
    malformed(&codec, &b, "union index out of range");
    let mut b = v2.clone();
    b[n - 1] = 2; // boolean byte 2
    malformed(&codec, &b, "bad boolean");
}

#[test]
fn huge_counts_and_lengths_are_rejected_without_allocating() {
    // A 20-byte input claiming a map of 2^62 entries or a 2^62-byte string must fail fast on
    // both paths (apache-avro alone would try to reserve memory for them).
    let codec = Codec::default();
    for fp in [codec.fingerprint_v1(), codec.fingerprint_v2()] {
        let mut prefix = header(fp).to_vec();
        prefix.extend_from_slice(&[2, b'm', 2, b'c', 2, b's', 0, 2, 2, b'u', 0, 0, 0, 0]);
        let mut map = prefix.clone();
        map.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(codec.decode(&map), Err(DecodeError::Truncated));
        assert_eq!(codec.decode_as_v2(&map), Err(DecodeError::Truncated));
        let mut string = header(fp).to_vec();
        string.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(codec.decode(&string), Err(DecodeError::Truncated));
        assert_eq!(codec.decode_as_v2(&string), Err(DecodeError::Truncated));
    }
}

#[test]
fn trailing_bytes() {
    let codec = Codec::default();
    for mut bytes in [
        codec.encode(&sample()).unwrap(),
        codec.encode_v2(&sample().into()).unwrap(),
    ] {
        bytes.push(0);
        let err = codec.decode(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::TrailingBytes);
        assert_eq!(err.reason(), "trailing_bytes");
        assert_eq!(codec.decode_as_v2(&bytes), Err(DecodeError::TrailingBytes));
    }
}

#[test]
fn invalid_fields_are_rejected_on_decode() {
    let codec = Codec::default();
    let cases: Vec<(ChatMessage, ValidationError)> = vec![
        (
            ChatMessage { seq: 0, ..sample() },
            ValidationError::SeqNotPositive { seq: 0 },
        ),
        (
            ChatMessage {
                session_id: String::new(),
                ..sample()
            },
            ValidationError::EmptyId {
                field: "session_id",
            },
        ),
        (
            ChatMessage {
                server_time_us: -5,
                ..sample()
            },
            ValidationError::NegativeTime {
                field: "server_time",
                value: -5,
            },
        ),
    ];
    for (msg, want) in cases {
        // The encoder refuses it…
        assert_eq!(codec.encode(&msg), Err(EncodeError::Invalid(want.clone())));
        // …so write it the way a buggy producer would, bypassing validation.
        let bytes = v1_bytes_of(&codec, to_value_v1(&msg));
        let err = codec.decode(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::Invalid(want.clone()));
        assert_eq!(err.reason(), "invalid");
        assert!(err.to_string().contains(want.field()), "{err}");
    }
}

#[test]
fn codec_limits_are_configurable() {
    let strict = Codec::builder()
        .limits(Limits {
            max_content_bytes: 4,
            ..Limits::default()
        })
        .build()
        .unwrap();
    assert_eq!(strict.limits().max_content_bytes, 4);
    let bytes = Codec::default().encode(&sample()).unwrap();
    assert_eq!(
        strict.decode(&bytes),
        Err(DecodeError::Invalid(ValidationError::ContentTooLarge {
            len: 8,
            max: 4
        }))
    );
    assert!(matches!(
        strict.encode(&sample()),
        Err(EncodeError::Invalid(
            ValidationError::ContentTooLarge { .. }
        ))
    ));
}

#[test]
fn v2_bytes_decode_with_the_v1_codec() {
    let codec = Codec::default();
    let v2 = ChatMessageV2 {
        message: sample(),
        reply_to_seq: Some(12),
        edited: true,
    };
    let bytes = codec.encode_v2(&v2).unwrap();
    assert_eq!(&bytes[2..HEADER_LEN], &codec.fingerprint_v2().to_le_bytes());
    assert_eq!(codec.decode(&bytes).unwrap(), sample());
    assert_eq!(codec.decode_as_v2(&bytes).unwrap(), v2);
}

#[test]
fn v1_bytes_read_as_v2_get_the_defaults() {
    let codec = Codec::default();
    let bytes = codec.encode(&sample()).unwrap();
    let v2 = codec.decode_as_v2(&bytes).unwrap();
    assert_eq!(
        v2,
        ChatMessageV2 {
            message: sample(),
            reply_to_seq: None,
            edited: false
        }
    );
}

#[test]
fn unknown_content_type_symbol_from_a_newer_writer_resolves_to_unknown() {
    let newer = schema_v2_with_content_type("LOCATION").to_string();
    assert!(newer.contains("LOCATION"), "schema edited");
    let fp = schema_fingerprint(&newer).unwrap();
    let codec = Codec::builder().writer_schema(newer).build().unwrap();
    assert!(codec.known_fingerprints().contains(&fp));

    let Value::Record(mut fields) = chatlog_schemas::to_value_v2(&sample().into()) else {
        unreachable!()
    };
    for (name, v) in &mut fields {
        if name == "content_type" {
            *v = Value::Enum(7, "LOCATION".into());
        }
    }
    let bytes = codec.encode_value(fp, Value::Record(fields)).unwrap();
    let msg = codec.decode(&bytes).unwrap();
    assert_eq!(msg.content_type, ContentType::Unknown);
    assert_eq!(
        msg,
        ChatMessage {
            content_type: ContentType::Unknown,
            ..sample()
        }
    );
    assert_eq!(
        codec.decode_as_v2(&bytes).unwrap().message.content_type,
        ContentType::Unknown
    );
    // A codec that does not ship that schema sends it to the DLQ instead.
    assert_eq!(
        Codec::default().decode(&bytes),
        Err(DecodeError::UnknownFingerprint(fp))
    );
}

#[test]
fn bad_extra_writer_schemas_are_refused() {
    assert!(matches!(
        Codec::builder().writer_schema("{not json").build(),
        Err(SchemaError::Parse(_))
    ));
    assert!(matches!(
        Codec::builder().writer_schema(r#""string""#).build(),
        Err(SchemaError::NotChatMessage(_))
    ));
    assert!(matches!(
        Codec::builder()
            .writer_schema(r#"{"type":"record","name":"Other","fields":[]}"#)
            .build(),
        Err(SchemaError::NotChatMessage(n)) if n == "Other"
    ));
    // Registering a shipped schema again is harmless.
    let c = Codec::builder()
        .writer_schema(SCHEMA_V1_JSON)
        .build()
        .unwrap();
    assert_eq!(c.known_fingerprints().len(), 3);
}

#[test]
fn decode_value_exposes_the_writer_datum() {
    let codec = Codec::default();
    let bytes = codec.encode(&sample()).unwrap();
    let (fp, value) = codec.decode_value(&bytes).unwrap();
    assert_eq!(fp, codec.fingerprint_v1());
    let Value::Record(fields) = value else {
        panic!("record expected")
    };
    assert_eq!(
        fields[0],
        ("msg_id".to_owned(), Value::String(sample().msg_id))
    );
    assert_eq!(
        fields[8],
        (
            "send_time".to_owned(),
            Value::TimestampMillis(sample().send_time_ms)
        )
    );
}
