//! Property tests: round trips of arbitrary valid messages, agreement of the hand-written fast
//! path with apache-avro, and "decode never panics" on arbitrary and mutated input.

use std::collections::BTreeMap;

use chatlog_schemas::apache_avro;
use chatlog_schemas::{
    ChatMessage, ChatMessageV2, Codec, ContentType, HEADER_LEN, Limits, MAX_SEQ, SchemaVersion,
    SessionType, header, to_value_v1,
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

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_all_ways(&Codec::default(), &bytes);
    }

    /// Random datum behind a valid header, so the datum decoders (fast path for v1, bounds check
    /// + apache-avro + resolution for v2) see garbage.
    #[test]
    fn garbage_datum_behind_valid_header_never_panics(
        v2 in any::<bool>(),
        datum in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let codec = Codec::default();
        let fp = if v2 { codec.fingerprint_v2() } else { codec.fingerprint_v1() };
        let mut bytes = header(fp).to_vec();
        bytes.extend_from_slice(&datum);
        decode_all_ways(&codec, &bytes);
    }

    /// Valid encodings with a few bytes overwritten, truncated or extended.
    #[test]
    fn mutated_encodings_never_panic(
        m in message_v2(),
        v2 in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        tail in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        let codec = Codec::default();
        let mut bytes = if v2 {
            codec.encode_v2(&m).unwrap()
        } else {
            codec.encode(&m.message).unwrap()
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
