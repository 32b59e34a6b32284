//! chatlog's producer, the library Logic links to store a chat message: it acknowledges a message
//! once Kafka has it, and never loses it.
//!
//! For each [`NewMessage`], [`Producer::send`]:
//! 1. validates it against the configured [`Limits`] — an invalid
//!    message is an [`Error::Invalid`] and nothing is allocated or sent; so is a send while the
//!    host clock is off the reference (Redis `TIME`) by more than half of `limits.max_skew`
//!    ([`Error::ClockSkew`], see [`Clock`]);
//! 2. allocates its per-session `seq` with [`chatlog_store::seq::SeqAllocator`] (Redis fast
//!    path, CQL LWT segments; a `client_msg_id` seen before gets its first seq, msg_id and
//!    server time back);
//! 3. encodes it as Avro single-object bytes ([`chatlog_schemas::Codec`]);
//! 4. produces it keyed by `session_id` with an idempotent producer (`acks=all`,
//!    `partitioner=murmur2_random`, the Java client's partitioner), and returns [`Sent`] once it
//!    is acknowledged.
//!
//! Retrying a failed send with the same `client_msg_id` is always safe: the duplicate allocation
//! re-produces the identical bytes, and the consumer's writes are idempotent. Use
//! [`Error::is_retriable`] to decide. In-flight sends are bounded
//! ([`ProducerConfig::max_in_flight`]): beyond it, `send` waits (backpressure).
//!
//! Metrics (through the `metrics` facade): `chatlog_producer_records_total{result=ok|invalid|error}`,
//! `chatlog_producer_send_duration_seconds`, `chatlog_producer_clock_offset_seconds` (host clock
//! minus Redis `TIME` at the last reading), and the allocator's
//! `chatlog_seq_allocations_total{path=fast|segment|recover}`.
//!
//! # Example: Logic's send handler
//!
//! ```no_run
//! use std::{collections::BTreeMap, sync::Arc, time::Duration};
//! use chatlog_producer::{ContentType, NewMessage, Producer, ProducerConfig, SessionType};
//!
//! # async fn logic() -> Result<(), Box<dyn std::error::Error>> {
//! let cql = chatlog_store::CqlConfig::default();
//! let session = Arc::new(cql.connect().await?);
//! let redis = chatlog_store::RedisConfig::default().connect().await?;
//! let producer = Producer::new(ProducerConfig::default(), session, &cql.keyspace, redis).await?;
//!
//! let sent = producer
//!     .send(NewMessage {
//!         client_msg_id: "c-7f3a".into(),
//!         session_id: "g:42".into(),
//!         session_type: SessionType::Group,
//!         sender_id: "u:1".into(),
//!         content_type: ContentType::Text,
//!         content: b"hello".to_vec(),
//!         send_time_ms: 1_700_000_000_000,
//!         ext: BTreeMap::new(),
//!     })
//!     .await?;
//! println!("ack seq={} msg_id={}", sent.seq, sent.msg_id);
//!
//! producer.close(Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```
//!
//! # Mutations: recall, edit, delete for everyone, delete for me
//!
//! [`Producer::recall`], [`Producer::edit`] and [`Producer::delete_for_everyone`] change a stored
//! message. Each one reads the message through history (window first, CQL second), waiting up to
//! [`MutationsConfig::wait_for_target`] when it is sent but not stored yet (a revoke right after
//! the send is not a "message not found"), applies the policy to the [`Actor`] Logic checked
//! (only the sender edits or recalls; the sender, an admin or the owner of the session deletes
//! for everyone — [`Error::NotAllowed`] otherwise, nothing sent), then produces the *whole*
//! message in its new state ([`MessageState`]) to the same topic with the same key, at a version
//! above the one it replaces, and returns [`Mutated`] once Kafka has it. The consumer applies it
//! like any message, and the highest version wins everywhere (CQL write timestamp, window
//! member), so any order of original, mutations and replays ends in the same state. A recalled or
//! deleted message keeps no content and no ext, and is final: an edit of it is
//! [`Error::Final`], a second recall or delete is `Ok` with [`Mutated::unchanged`].
//!
//! Mutations of one message through one producer take turns and build on each other even
//! before the consumer stored the previous one (an edit right after an edit counts 2). Two Logic
//! processes mutating one message at the same instant may both build on the same version: the
//! higher version wins, and an edit racing a recall never outranks it (the final bit).
//!
//! [`Producer::delete_for_me`] is per-user state, not a Kafka record: it hides seqs from one user
//! (`History::viewer(user)` leaves them out), idempotently.
//!
//! Metrics: `chatlog_producer_mutations_total{action, result}` (see [`metrics::MUTATIONS`]).
//!
//! ```no_run
//! # async fn logic(producer: chatlog_producer::Producer) -> chatlog_producer::Result<()> {
//! use chatlog_producer::{Actor, Error, MemberRole};
//!
//! // The sender fixes a typo, then takes the message back.
//! let me = Actor::Sender("u:1".into());
//! let edited = producer.edit("g:42", 17, b"hello, world".to_vec(), &me).await?;
//! assert_eq!(edited.message.state.edit_count(), 1);
//! producer.recall("g:42", 17, &me).await?;
//!
//! // A moderator removes another message; a plain member may not.
//! let admin = Actor::Member { user_id: "u:9".into(), role: MemberRole::Admin };
//! producer.delete_for_everyone("g:42", 18, &admin).await?;
//! let member = Actor::Member { user_id: "u:5".into(), role: MemberRole::Member };
//! match producer.delete_for_everyone("g:42", 19, &member).await {
//!     Err(Error::NotAllowed { reason, .. }) => println!("refused: {reason}"),
//!     other => println!("{other:?}"),
//! }
//!
//! // Hide two messages from user u:5 only.
//! producer.delete_for_me("u:5", "g:42", &[20, 21]).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod clock;
mod config;
mod error;
pub mod metrics;
mod mutate;
mod producer;

// The Kafka settings of `ProducerConfig::security` and `ProducerConfig::kafka`.
pub use chatlog_kafka::{KafkaProtocol, KafkaSecurity, Properties};
pub use chatlog_schemas::{
    ChatMessage, ContentType, FINAL_VERSION_BIT, Limits, MessageState, NewMessage, SessionType,
    ValidationError,
};
pub use chatlog_store::hidden::MAX_HIDE;
pub use chatlog_store::repo::sessions::MemberRole;
pub use chatlog_store::seq::{AllocPath, Allocation, SeqAllocator, SeqConfig};
pub use clock::Clock;
pub use config::{Compression, FORCED_KAFKA_SETTINGS, MutationsConfig, ProducerConfig};
pub use error::{Error, Result, code_retriable, kafka_retriable};
pub use metrics::CLOCK_OFFSET;
pub use mutate::{Actor, Mutated};
pub use producer::{Producer, SCHEMA_HEADER, Sent, max_encoded_len};
