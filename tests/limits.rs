//! Bounds and limits shared by both ends (issue 14, items 4 and 5), against the real stack:
//! the producer's clock checked against Redis `TIME` (names contain `skew`), seqs never above
//! 2^53, and a producer whose limits are above a consumer's published ones refused at start.

use std::sync::Arc;
use std::time::Duration;

use chatlog::{
    create_topic, fresh_keyspace, kafka_bootstrap, new_message, redis_connection, unique,
};
use chatlog_consumer::Config as ConsumerConfig;
use chatlog_producer::{Clock, Error, Producer, ProducerConfig};
use chatlog_schemas::{Limits, MAX_SEQ};
use chatlog_store::CqlConfig;
use scylla::client::session::Session;

const HOUR_US: i64 = 3_600_000_000;

struct Stack {
    topic: String,
    session: Arc<Session>,
    cql: CqlConfig,
}

async fn stack() -> Stack {
    let topic = unique("limits");
    create_topic(&topic, 1).await;
    let (session, cql) = fresh_keyspace("limits").await;
    Stack {
        topic,
        session,
        cql,
    }
}

fn producer_config(topic: &str) -> ProducerConfig {
    ProducerConfig {
        bootstrap_servers: kafka_bootstrap(),
        topic: topic.to_owned(),
        linger: Duration::from_millis(1),
        ..ProducerConfig::default()
    }
}

impl Stack {
    async fn producer(&self, config: ProducerConfig, clock: Clock) -> Result<Producer, Error> {
        Producer::with_clock(
            config,
            self.session.clone(),
            &self.cql.keyspace,
            redis_connection().await,
            clock,
        )
        .await
    }

    /// Publishes `limits` and `max_record_bytes` as consumer `instance` of the topic, exactly as
    /// a consumer does at start.
    async fn publish_consumer(&self, instance: &str, limits: Limits, max_record_bytes: usize) {
        let mut c = ConsumerConfig::default();
        c.kafka.topic = self.topic.clone();
        c.kafka.transactional_id = instance.to_owned();
        c.cql = self.cql.clone();
        c.limits = limits;
        c.batch.max_record_bytes = max_record_bytes;
        c.validate().expect("consumer config");
        c.publish_limits(&self.session).await.expect("publish");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_refuses_to_start_with_a_clock_beyond_half_the_max_skew() {
    let s = stack().await;
    // Default max_skew 10 s: a producer's clock may be 5 s off the reference.
    for (offset, ahead) in [(HOUR_US, true), (-HOUR_US, false), (6_000_000, true)] {
        let err = s
            .producer(producer_config(&s.topic), Clock::skewed(offset))
            .await
            .expect_err("a skewed clock must not start");
        match &err {
            Error::ClockSkew {
                ahead: a, max_skew, ..
            } => {
                assert_eq!(*a, ahead, "{err}");
                assert_eq!(*max_skew, Duration::from_secs(10));
            }
            other => panic!("expected ClockSkew, got {other}"),
        }
        assert!(!err.is_retriable());
        assert_eq!(err.reason(), "skew");
        assert!(err.to_string().contains("Redis TIME"), "{err}");
    }
    for offset in [0, 2_000_000, -2_000_000] {
        s.producer(producer_config(&s.topic), Clock::skewed(offset))
            .await
            .unwrap_or_else(|e| panic!("a clock {offset} µs off must start: {e}"));
    }
}

/// A clock that jumps after the start is caught by the next send, without a round trip, and
/// nothing is allocated for the refused sends: once the clock is back, the session goes on with
/// the next seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_refuses_sends_while_its_clock_is_skewed() {
    let s = stack().await;
    let clock = Clock::skewed(0);
    let producer = s
        .producer(producer_config(&s.topic), clock.clone())
        .await
        .expect("producer");
    let sid = unique("sess");
    assert_eq!(producer.send(new_message(&sid, "c1")).await.unwrap().seq, 1);

    clock.set_offset_us(HOUR_US);
    for i in 0..3 {
        let err = producer
            .send(new_message(&sid, &format!("skewed-{i}")))
            .await
            .expect_err("a send with a clock an hour ahead");
        assert!(matches!(err, Error::ClockSkew { ahead: true, .. }), "{err}");
    }
    clock.set_offset_us(-HOUR_US);
    let err = producer
        .send(new_message(&sid, "behind"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ClockSkew { ahead: false, .. }),
        "{err}"
    );

    clock.set_offset_us(0);
    let sent = producer.send(new_message(&sid, "c2")).await.unwrap();
    assert_eq!(sent.seq, 2, "the refused sends allocated nothing");
    let drift = (sent.server_time_us - chatlog::now_ms() * 1000).abs();
    assert!(drift < 60_000_000, "stamped with the restored clock");
}

/// The allocator hands out seqs up to 2^53 and not one more: a session whose ceiling is three
/// below gets exactly three seqs, then a non-retriable error (nothing produced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_stop_at_2_pow_53() {
    let s = stack().await;
    let producer = s
        .producer(producer_config(&s.topic), Clock::system())
        .await
        .expect("producer");
    let sid = unique("sess");
    s.session
        .query_unpaged(
            chatlog_store::seq::insert_ceiling_cql(&s.cql.keyspace),
            (&sid, MAX_SEQ - 3),
        )
        .await
        .expect("ceiling");
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(
            producer
                .send(new_message(&sid, &format!("c{i}")))
                .await
                .unwrap()
                .seq,
        );
    }
    assert_eq!(seqs, vec![MAX_SEQ - 2, MAX_SEQ - 1, MAX_SEQ]);
    let err = producer
        .send(new_message(&sid, "one-too-many"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Allocation(chatlog_store::Error::Request(_))),
        "{err}"
    );
    assert!(err.to_string().contains("2^53"), "{err}");
    assert!(!err.is_retriable(), "{err}");
    let ceiling = producer.allocator().ceiling(&sid).await.unwrap();
    assert_eq!(ceiling, Some(MAX_SEQ), "no segment reserved above 2^53");
}

/// A producer whose limits are above a consumer's published ones does not start, naming the
/// consumer and every limit; equal or lower limits start. With no consumer published, any
/// limits start (above the consumer defaults with a warning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_above_a_published_consumer_limit_does_not_start() {
    let s = stack().await;
    let big = Limits {
        max_content_bytes: 128 * 1024,
        ..Limits::default()
    };
    let config = |limits: Limits| ProducerConfig {
        limits,
        ..producer_config(&s.topic)
    };
    s.producer(config(big), Clock::system())
        .await
        .expect("nothing published: starts (warns)");

    let strict = Limits {
        max_content_bytes: 1000,
        max_ext_entries: 4,
        ..Limits::default()
    };
    s.publish_consumer("consumer-a", Limits::default(), 1 << 20)
        .await;
    s.publish_consumer("consumer-b", strict, 1 << 20).await;
    let err = s
        .producer(config(Limits::default()), Clock::system())
        .await
        .expect_err("limits above consumer-b's");
    match &err {
        Error::LimitsAboveConsumer {
            instance, above, ..
        } => {
            assert_eq!(instance, "consumer-b");
            assert_eq!(above.len(), 2, "{above:?}");
            assert!(
                above[0].starts_with("max_content_bytes = 65536 > 1000"),
                "{above:?}"
            );
            assert!(
                above[1].starts_with("max_ext_entries = 32 > 4"),
                "{above:?}"
            );
        }
        other => panic!("expected LimitsAboveConsumer, got {other}"),
    }
    assert!(!err.is_retriable());
    assert!(err.to_string().contains("consumer-b"), "{err}");
    s.producer(config(strict), Clock::system())
        .await
        .expect("equal limits start");
    s.producer(
        config(Limits {
            max_content_bytes: 10,
            ..strict
        }),
        Clock::system(),
    )
    .await
    .expect("lower limits start");
    let err = s
        .producer(
            config(Limits {
                max_skew: Duration::from_secs(20),
                ..strict
            }),
            Clock::system(),
        )
        .await
        .expect_err("a larger max_skew");
    assert!(err.to_string().contains("max_skew"), "{err}");

    // The consumer's largest record bounds the producer's largest encoded message.
    s.publish_consumer("consumer-b", strict, 2000).await;
    let err = s
        .producer(config(strict), Clock::system())
        .await
        .expect_err("largest message above batch.max_record_bytes");
    assert!(
        err.to_string().contains("batch.max_record_bytes = 2000"),
        "{err}"
    );
}
