//! Property tests: round trips of arbitrary valid messages, agreement of the hand-written fast
//! path with apache-avro, and "decode never panics" on arbitrary and mutated input.

use std::collections::BTreeMap;

use chatlog_schemas::apache_avro;
use chatlog_schemas::{
    ChatMessage, ChatMessageV2, Codec, ContentType, DecodeError, FINAL_VERSION_BIT, HEADER_LEN,
    Limits, MAX_SEQ, MessageState, SchemaVersion, SessionType, header, to_value_v1, to_value_v3,
};
use proptest::prelude::*;

/// Ids of 1..=32 arbitrary (printable, possibly multi-byte) chars: at most 128 bytes.
fn id() -> impl Strategy<Value = String> {
    "\\PC{1,32}"
}

/// Session ids: like [`id`], without `}` (it would end the Redis Cluster hash tag).
fn session_id() -> impl Strategy<Value = String> {
    "[^}\\p{C}]{1,32}"
}

fn message() -> impl Strategy<Value = ChatMessage> {
    (
        (
            id(),
            id(),
            session_id(),
            prop::sample::select(SessionType::ALL.to_vec()),
        ),
        (
            // Valid seqs: 1..=2^53 (JavaScript-safe).
            1..=MAX_SEQ,
            id(),
            prop::sample::select(ContentType::ALL.to_vec()),
        ),
        prop::collection::vec(any::<u8>(), 0..1024),
        (0..=i64::MAX, 0..=i64::MAX),
        prop::collection::btree_map("\\PC{0,16}", "\\PC{0,32}", 0..8),
    )
        .prop_map(
            |(
                (msg_id, client_msg_id, session_id, session_type),
                (seq, sender_id, content_type),
                content,
                (send_time_ms, server_time_us),
                ext,
            )| ChatMessage {
                msg_id,
                client_msg_id,
                session_id,
                session_type,
                seq,
                sender_id,
                content_type,
                content,
                send_time_ms,
                server_time_us,
                ext: ext.into_iter().collect::<BTreeMap<_, _>>(),
                state: Default::default(),
            },
        )
}

fn message_v2() -> impl Strategy<Value = ChatMessageV2> {
    (message(), prop::option::of(1..=MAX_SEQ), any::<bool>()).prop_map(
        |(message, reply_to_seq, edited)| ChatMessageV2 {
            message,
            reply_to_seq,
            edited,
        },
    )
}

/// A valid mutated message: an edit (content kept as drawn) or a recall or deletion for everyone
/// (content and ext removed), at a time after the send and below the final bit.
fn mutated() -> impl Strategy<Value = ChatMessage> {
    (
        message(),
        0..3u32,
        1..=1_000_000_000i64,
        id(),
        1..=i32::MAX as u32,
    )
        .prop_map(|(mut m, kind, after, by, count)| {
            m.server_time_us %= FINAL_VERSION_BIT / 2;
            let at_us = m.server_time_us + after;
            m.state = match kind {
                0 => MessageState::Edited { at_us, count, by },
                1 => MessageState::Recalled { at_us, by },
                _ => MessageState::Deleted { at_us, by },
            };
            if m.state.is_final() {
                m.content.clear();
                m.ext.clear();
            }
            m
        })
}

/// Decoding must return (never panic); used on every input below.
fn decode_all_ways(codec: &Codec, bytes: &[u8]) {
    let _ = codec.decode(bytes);
    let _ = codec.decode_as_v2(bytes);
    let _ = codec.decode_value(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_messages_are_valid(m in message()) {
        prop_assert_eq!(m.validate(&Limits::default()), Ok(()));
    }

    #[test]
    fn round_trip(m in message()) {
        let codec = Codec::default();
        let bytes = codec.encode(&m).unwrap();
        prop_assert_eq!(&bytes[..HEADER_LEN], &header(codec.current_fingerprint())[..]);
        prop_assert_eq!(codec.decode(&bytes).unwrap(), m.clone());
        // The v2 reader gets the defaults.
        prop_assert_eq!(codec.decode_as_v2(&bytes).unwrap(), ChatMessageV2::from(m));
    }

    #[test]
    fn round_trip_v2(m in message_v2()) {
        let codec = Codec::default();
        let bytes = codec.encode_v2(&m).unwrap();
        prop_assert_eq!(codec.decode_as_v2(&bytes).unwrap(), m.clone());
        prop_assert_eq!(codec.decode(&bytes).unwrap(), m.message);
    }

    /// The hand-written encoder and decoder agree with apache-avro in both directions.
    #[test]
    fn fast_path_agrees_with_apache_avro(m in message()) {
        let codec = Codec::default();
        let ours = codec.encode(&m).unwrap();
        // apache-avro reads our datum as the same value…
        let value = apache_avro::from_avro_datum(
            codec.schema(SchemaVersion::V1),
            &mut &ours[HEADER_LEN..],
            None,
        ).unwrap();
        prop_assert_eq!(value, to_value_v1(&m));
        // …and our decoder reads apache-avro's datum as the same message.
        let theirs = codec.encode_value(codec.fingerprint_v1(), to_value_v1(&m)).unwrap();
        prop_assert_eq!(codec.decode(&theirs).unwrap(), m.clone());
        // Byte-identical whenever map order cannot differ (apache-avro writes a HashMap).
        if m.ext.len() <= 1 {
            prop_assert_eq!(theirs, ours);
        }
    }

    /// A mutated message is written as v3 (its state is not part of v1), read back whole by the
    /// fast path, agrees with apache-avro both ways, and is an unknown fingerprint — DLQ, not a
    /// crash and not a silent downgrade to the original — for a reader of an older release.
    #[test]
    fn mutated_messages_round_trip_as_v3_and_agree_with_apache_avro(m in mutated()) {
        prop_assert_eq!(m.validate(&Limits::default()), Ok(()));
        let codec = Codec::default();
        let ours = codec.encode(&m).unwrap();
        let v3 = codec.fingerprint(SchemaVersion::V3);
        prop_assert_eq!(&ours[..HEADER_LEN], &header(v3)[..]);
        prop_assert_eq!(codec.decode(&ours).unwrap(), m.clone());
        prop_assert!(m.version() > m.server_time_us);
        let value = apache_avro::from_avro_datum(
            codec.schema(SchemaVersion::V3),
            &mut &ours[HEADER_LEN..],
            None,
        ).unwrap();
        prop_assert_eq!(value, to_value_v3(&m));
        let theirs = codec.encode_value(v3, to_value_v3(&m)).unwrap();
        prop_assert_eq!(codec.decode(&theirs).unwrap(), m.clone());
        let older = Codec::builder()
            .readable_versions(&[SchemaVersion::V1, SchemaVersion::V2])
            .build()
            .unwrap();
        prop_assert_eq!(older.decode(&ours), Err(DecodeError::UnknownFingerprint(v3)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_all_ways(&Codec::default(), &bytes);
    }

    /// Random datum behind a valid header, so the datum decoders (fast path for v1, bounds check
    /// + apache-avro + resolution for v2) see garbage.
    #[test]
    fn garbage_datum_behind_valid_header_never_panics(
        version in prop::sample::select(SchemaVersion::ALL.to_vec()),
        datum in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let codec = Codec::default();
        let fp = codec.fingerprint(version);
        let mut bytes = header(fp).to_vec();
        bytes.extend_from_slice(&datum);
        decode_all_ways(&codec, &bytes);
    }

    /// Valid encodings (v1, v2, and v3 of a mutated message) with a few bytes overwritten,
    /// truncated or extended.
    #[test]
    fn damaged_encodings_never_panic(
        m in message_v2(),
        changed in mutated(),
        which in 0..3u8,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        tail in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        let codec = Codec::default();
        let mut bytes = match which {
            0 => codec.encode(&m.message).unwrap(),
            1 => codec.encode_v2(&m).unwrap(),
            _ => codec.encode(&changed).unwrap(),
        };
        for (i, b) in &edits {
            let i = HEADER_LEN + i.index(bytes.len() - HEADER_LEN);
            bytes[i] = *b;
        }
        decode_all_ways(&codec, &bytes);
        let cut = HEADER_LEN + cut.index(bytes.len() - HEADER_LEN);
        decode_all_ways(&codec, &bytes[..cut]);
        bytes.extend_from_slice(&tail);
        decode_all_ways(&codec, &bytes);
    }
}
