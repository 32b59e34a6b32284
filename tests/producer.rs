//! The producer against the real stack: per-session partition and order, validation before
//! allocation, identical re-production of a retried send, the Java client's partitioning, close.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chatlog::{
    create_topic, fresh_keyspace, kafka_bootstrap, new_message, redis_connection, unique,
};
use chatlog_producer::{
    Error, NewMessage, Producer, ProducerConfig, SCHEMA_HEADER, Sent, SeqConfig,
};
use chatlog_schemas::{ChatMessage, Codec, Limits};
use chatlog_store::seq::AllocRequest;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A record read back from Kafka.
#[derive(Debug, Clone)]
struct Record {
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    payload: Vec<u8>,
    timestamp: Option<i64>,
    schema_header: Option<Vec<u8>>,
}

/// The codec of every record read back.
static CODEC: LazyLock<Codec> = LazyLock::new(Codec::default);

impl Record {
    /// The record's message, decoded.
    fn decoded(&self) -> ChatMessage {
        CODEC.decode(&self.payload).expect("decode")
    }
}

fn config(topic: &str) -> ProducerConfig {
    ProducerConfig {
        bootstrap_servers: kafka_bootstrap(),
        topic: topic.to_owned(),
        linger: Duration::from_millis(1),
        seq: SeqConfig {
            min_segment: 10,
            max_segment: 40,
            ..SeqConfig::default()
        },
        ..ProducerConfig::default()
    }
}

/// A topic with `partitions`, a fresh keyspace and a producer on them.
async fn setup(partitions: i32, tweak: impl FnOnce(&mut ProducerConfig)) -> (Producer, String) {
    let (producer, topic, _) = setup_with_keyspace(partitions, tweak).await;
    (producer, topic)
}

/// Like [`setup`], also returning the keyspace.
async fn setup_with_keyspace(
    partitions: i32,
    tweak: impl FnOnce(&mut ProducerConfig),
) -> (Producer, String, String) {
    let topic = unique("producer");
    create_topic(&topic, partitions).await;
    let (session, cql) = fresh_keyspace("producer").await;
    let mut c = config(&topic);
    tweak(&mut c);
    let producer = Producer::new(c, session, &cql.keyspace, redis_connection().await)
        .await
        .expect("producer");
    (producer, topic, cql.keyspace)
}

/// A send of `text`, with one extension (the producer's tests check extensions arrive).
fn message(session_id: &str, client_msg_id: &str, text: &str) -> NewMessage {
    NewMessage {
        content: text.as_bytes().to_vec(),
        ext: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        ..new_message(session_id, client_msg_id)
    }
}

/// Every record of `topic` (`partitions` partitions) once `count` arrived, checked to be all it
/// holds ([`chatlog::read_topic`]).
async fn read_back(topic: &str, partitions: i32, count: usize) -> Vec<Record> {
    chatlog::read_topic(topic, partitions, count)
        .await
        .iter()
        .map(|m| Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().unwrap_or_default().to_vec(),
            payload: m.payload().unwrap_or_default().to_vec(),
            timestamp: m.timestamp().to_millis(),
            schema_header: m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == SCHEMA_HEADER)
                    .and_then(|h| h.value.map(<[u8]>::to_vec))
            }),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_session_lands_on_one_partition_in_send_order() {
    let (producer, topic) = setup(6, |c| c.schema_header = true).await;
    let sessions: Vec<String> = (0..4).map(|_| unique("sess")).collect();
    const PER_SESSION: usize = 25;
    let mut sent: HashMap<String, Vec<Sent>> = HashMap::new();
    // Sessions 0 and 1: one send after another.
    for i in 0..PER_SESSION {
        for s in &sessions[..2] {
            let r = producer
                .send(message(s, &format!("c{i}"), &format!("{s} #{i}")))
                .await
                .expect("send");
            sent.entry(s.clone()).or_default().push(r);
        }
    }
    // Sessions 2 and 3: one interleaved batch.
    let batch: Vec<NewMessage> = (0..PER_SESSION)
        .flat_map(|i| {
            sessions[2..]
                .iter()
                .map(move |s| message(s, &format!("c{i}"), &format!("{s} #{i}")))
        })
        .collect();
    let inputs: Vec<String> = batch.iter().map(|m| m.session_id.clone()).collect();
    for (s, r) in inputs.into_iter().zip(producer.send_batch(batch).await) {
        sent.entry(s).or_default().push(r.expect("batch send"));
    }
    producer.flush(TIMEOUT).await.expect("flush");

    let records = read_back(&topic, 6, sessions.len() * PER_SESSION).await;
    let mut by_session: HashMap<String, Vec<(Record, ChatMessage)>> = HashMap::new();
    for r in records {
        let m = r.decoded();
        assert_eq!(r.key, m.session_id.as_bytes(), "key = session id");
        assert_eq!(r.timestamp, Some(m.server_time_us / 1000));
        assert_eq!(
            r.schema_header.as_deref(),
            Some(format!("{:016x}", CODEC.current_fingerprint()).as_bytes())
        );
        by_session
            .entry(m.session_id.clone())
            .or_default()
            .push((r, m));
    }
    for s in &sessions {
        let mut got = by_session.remove(s).expect("session read back");
        got.sort_by_key(|(r, _)| r.offset);
        let partition = got[0].0.partition;
        assert!(got.iter().all(|(r, _)| r.partition == partition));
        let expected = &sent[s];
        assert_eq!(got.len(), PER_SESSION);
        for (i, ((r, m), e)) in got.iter().zip(expected).enumerate() {
            assert_eq!(m.seq, i as i64 + 1, "offset order = seq order = send order");
            assert_eq!(m.content, format!("{s} #{i}").into_bytes());
            assert_eq!(m.client_msg_id, format!("c{i}"));
            assert_eq!(
                (m.seq, &m.msg_id, m.server_time_us),
                (e.seq, &e.msg_id, e.server_time_us)
            );
            assert_eq!((r.partition, r.offset), (e.partition, e.offset));
            assert!(!e.duplicate);
            uuid::Uuid::parse_str(&m.msg_id).expect("msg_id is a UUID");
            assert_eq!(
                uuid::Uuid::parse_str(&m.msg_id).unwrap().get_version_num(),
                7
            );
        }
    }
    producer.close(TIMEOUT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_of_one_session_share_seq_calls_and_keep_kafka_in_seq_order() {
    let (producer, topic) = setup(3, |_| {}).await;
    let session = unique("hot");
    const SENDS: usize = 300;
    let tasks: Vec<_> = (0..SENDS)
        .map(|i| {
            let (producer, session) = (producer.clone(), session.clone());
            tokio::spawn(async move {
                producer
                    .send(message(&session, &format!("c{i}"), &format!("#{i}")))
                    .await
            })
        })
        .collect();
    let mut acked = 0;
    for t in tasks {
        t.await.unwrap().expect("send");
        acked += 1;
    }
    producer.flush(TIMEOUT).await.expect("flush");
    let calls = producer.allocator().fast_calls();
    assert!(
        calls < acked as u64,
        "{calls} seq calls for {acked} concurrent sends: no turn served more than one"
    );

    let records = read_back(&topic, 3, acked).await;
    let mut got: Vec<(Record, ChatMessage)> = records
        .into_iter()
        .map(|r| {
            let m = r.decoded();
            (r, m)
        })
        .filter(|(_, m)| m.session_id == session)
        .collect();
    got.sort_by_key(|(r, _)| r.offset);
    assert_eq!(got.len(), SENDS);
    for pair in got.windows(2) {
        let ((_, a), (_, b)) = (&pair[0], &pair[1]);
        assert!(
            a.seq < b.seq,
            "offset order = seq order ({} then {})",
            a.seq,
            b.seq
        );
        assert!(
            a.server_time_us <= b.server_time_us,
            "server time follows seq order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_input_is_rejected_before_any_seq_is_allocated() {
    let (producer, topic) = setup(2, |c| {
        c.limits = Limits {
            max_content_bytes: 16,
            max_ext_entries: 2,
            ..Limits::default()
        };
    })
    .await;
    let s = unique("sess");
    assert_eq!(producer.send(message(&s, "c0", "ok")).await.unwrap().seq, 1);

    let mut invalid = Vec::new();
    invalid.push(NewMessage {
        sender_id: String::new(),
        ..message(&s, "c1", "x")
    });
    invalid.push(NewMessage {
        client_msg_id: String::new(),
        ..message(&s, "", "x")
    });
    invalid.push(message(&s, "c2", "seventeen bytes!!"));
    invalid.push(NewMessage {
        ext: (0..3).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
        ..message(&s, "c3", "x")
    });
    invalid.push(NewMessage {
        send_time_ms: -1,
        ..message(&s, "c4", "x")
    });
    invalid.push(NewMessage {
        session_id: "s".repeat(129),
        ..message(&s, "c5", "x")
    });
    // A `}` would cut the session's Redis Cluster hash tag short.
    invalid.push(NewMessage {
        session_id: format!("}}{s}"),
        ..message(&s, "c5b", "x")
    });
    for m in invalid {
        let err = producer.send(m.clone()).await.unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{m:?} gave {err}");
        assert!(!err.is_retriable());
    }
    assert_eq!(producer.send(message(&s, "c6", "ok")).await.unwrap().seq, 2);

    // In a batch: the invalid one fails alone, the others go on in order.
    let results = producer
        .send_batch(vec![
            message(&s, "c7", "ok"),
            message(&s, "c8", "far too long for the limit"),
            message(&s, "c9", "ok"),
        ])
        .await;
    assert_eq!(results[0].as_ref().unwrap().seq, 3);
    assert!(matches!(results[1], Err(Error::Invalid(_))));
    assert_eq!(results[2].as_ref().unwrap().seq, 4);
    assert_eq!(producer.allocator().ceiling(&s).await.unwrap(), Some(10));

    let records = read_back(&topic, 2, 4).await;
    let mut seqs: Vec<i64> = records.iter().map(|r| r.decoded().seq).collect();
    seqs.sort();
    assert_eq!(seqs, [1, 2, 3, 4], "invalid messages were never produced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_send_reproduces_the_identical_record() {
    let (producer, topic) = setup(3, |_| {}).await;
    let s = unique("sess");
    let first = producer.send(message(&s, "c-1", "hello")).await.unwrap();
    let again = producer.send(message(&s, "c-1", "hello")).await.unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(
        (
            &again.msg_id,
            again.seq,
            again.server_time_us,
            again.partition
        ),
        (
            &first.msg_id,
            first.seq,
            first.server_time_us,
            first.partition
        )
    );
    assert_eq!(again.offset, first.offset + 1);
    let records = read_back(&topic, 3, 2).await;
    assert_eq!(records[0].payload, records[1].payload, "byte-identical");
    assert_eq!(records[0].key, records[1].key);
    assert_eq!(records[0].timestamp, records[1].timestamp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_produce_is_retriable_and_the_retry_keeps_the_allocation() {
    let (producer, topic, keyspace) = setup_with_keyspace(3, |_| {}).await;
    let s = unique("sess");
    // Same Redis and keyspace, but Kafka unreachable: the seq is allocated, the produce times out.
    let dead = {
        let mut c = config(&topic);
        c.bootstrap_servers = "127.0.0.1:1".into();
        c.message_timeout = Duration::from_millis(500);
        let cql = chatlog::cql_config(&keyspace);
        let session = Arc::new(cql.connect().await.unwrap());
        Producer::new(c, session, &keyspace, redis_connection().await)
            .await
            .unwrap()
    };
    let err = dead.send(message(&s, "c-1", "hello")).await.unwrap_err();
    assert!(matches!(err, Error::Kafka { .. }), "{err}");
    assert!(err.is_retriable(), "{err}");

    let retried = producer.send(message(&s, "c-1", "hello")).await.unwrap();
    assert!(retried.duplicate, "the retry found the first allocation");
    assert_eq!(retried.seq, 1);
    let next = producer.send(message(&s, "c-2", "next")).await.unwrap();
    assert_eq!(next.seq, 2);
    let records = read_back(&topic, 3, 2).await;
    assert_eq!(records.len(), 2);
}

/// Where the Kafka jars are: `$CHATLOG_KAFKA_LIB`, else `~/.cache/chatlog/lib/kafka-*`.
fn kafka_lib() -> PathBuf {
    if let Some(dir) = std::env::var_os("CHATLOG_KAFKA_LIB").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cache = home.join(".cache/chatlog/lib");
    let found = std::fs::read_dir(&cache).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("kafka-"))
            })
            .find(|p| {
                std::fs::read_dir(p).is_ok_and(|mut files| {
                    files.any(|f| {
                        f.ok().is_some_and(|f| {
                            f.file_name()
                                .to_str()
                                .is_some_and(|n| n.starts_with("kafka-clients-"))
                        })
                    })
                })
            })
    });
    found.unwrap_or_else(|| {
        panic!(
            "no Kafka jars: set CHATLOG_KAFKA_LIB (`eval \"$(dev/stack.sh env)\"`) or run \
             `dev/stack.sh up kafka`, which puts them in {}/kafka-*",
            cache.display()
        )
    })
}

/// The Java client's partition of each key, computed by the real kafka-clients jar.
fn java_partitions(partitions: i32, keys: &[String]) -> Vec<i32> {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/java/Murmur2Partition.java");
    let classpath = format!("{}/*", kafka_lib().display());
    let mut child = Command::new("java")
        .arg("-cp")
        .arg(&classpath)
        .arg(&source)
        .arg(partitions.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run java (Java 17 is needed by the local stack anyway)");
    let mut stdin = child.stdin.take().unwrap();
    for k in keys {
        writeln!(stdin, "{k}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "java {}: {}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().expect("a partition number"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_go_to_the_partition_the_java_client_would_choose() {
    const PARTITIONS: i32 = 6;
    let (producer, _topic) = setup(PARTITIONS, |_| {}).await;
    let mut keys: Vec<String> = (0..16).map(|_| unique("sess")).collect();
    keys.extend(
        ["g:42", "单聊:alice:bob", "séance-ß", "\u{1F600}-emoji"]
            .iter()
            .map(|k| format!("{k}-{}", unique("x"))),
    );
    let java = tokio::task::spawn_blocking({
        let keys = keys.clone();
        move || java_partitions(PARTITIONS, &keys)
    })
    .await
    .unwrap();
    assert_eq!(java.len(), keys.len());
    let sent = producer
        .send_batch(keys.iter().map(|k| message(k, "c-1", "hi")).collect())
        .await;
    let mut spread = std::collections::BTreeSet::new();
    for ((key, expected), sent) in keys.iter().zip(&java).zip(sent) {
        let sent = sent.expect("send");
        assert_eq!(sent.partition, *expected, "session {key:?}");
        spread.insert(sent.partition);
    }
    assert!(
        spread.len() > 1,
        "20 keys all on one partition: not hashing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_close_every_clone_refuses_to_send() {
    let (producer, _topic) = setup(1, |c| c.max_in_flight = 2).await;
    let s = unique("sess");
    // More messages than in-flight permits: backpressure, not failure.
    let results = producer
        .send_batch(
            (0..20)
                .map(|i| message(&s, &format!("c{i}"), "x"))
                .collect(),
        )
        .await;
    let seqs: Vec<i64> = results.into_iter().map(|r| r.unwrap().seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let clone = producer.clone();
    producer.close(TIMEOUT).await.unwrap();
    let err = clone.send(message(&s, "c-late", "x")).await.unwrap_err();
    assert!(matches!(err, Error::Closed), "{err}");
    assert!(matches!(clone.flush(TIMEOUT).await, Err(Error::Closed)));
}

/// The stack's Kafka has a listener that requires a SASL/PLAIN login: the producer's SASL settings
/// log in there and a message gets through (and is read back through the plaintext listener); with
/// a wrong password nothing is acknowledged, and no error shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sasl_login_is_used_and_a_wrong_password_never_shows() {
    use chatlog_producer::{KafkaProtocol, KafkaSecurity};
    use chatlog_store::Secret;
    let sasl = chatlog::kafka_sasl();
    let security = |password: Secret| KafkaSecurity {
        protocol: KafkaProtocol::SaslPlaintext,
        sasl_mechanism: Some("PLAIN".into()),
        sasl_username: Some(sasl.username.clone()),
        sasl_password: password,
        ..KafkaSecurity::default()
    };
    let (producer, topic, keyspace) = setup_with_keyspace(1, |c| {
        c.bootstrap_servers = sasl.bootstrap.clone();
        c.security = security(sasl.password.clone());
    })
    .await;
    let sid = unique("sasl");
    let sent = producer
        .send(message(&sid, "c-sasl", "over SASL"))
        .await
        .expect("sent through the SASL listener");
    assert_eq!(sent.seq, 1);
    let records = read_back(&topic, 1, 1).await;
    assert_eq!(records.len(), 1);

    let wrong = unique("wrong-sasl-pw");
    let mut c = config(&topic);
    c.bootstrap_servers = sasl.bootstrap.clone();
    c.security = security(Secret::new(wrong.clone()));
    c.message_timeout = Duration::from_secs(3);
    let session = Arc::new(chatlog::cql_config(&keyspace).connect().await.unwrap());
    let err = match Producer::new(c, session, &keyspace, redis_connection().await).await {
        Err(e) => e.to_string(),
        Ok(refused) => {
            let e = refused
                .send(message(&sid, "c-wrong", "refused"))
                .await
                .expect_err("a wrong SASL password must not get a message through");
            format!("{e} {e:?}")
        }
    };
    assert!(!err.contains(&wrong), "an error shows the password: {err}");
    let (low, high) = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .create()
            .expect("consumer");
        c.fetch_watermarks(&topic, 0, Duration::from_secs(10))
            .expect("watermarks")
    })
    .await
    .unwrap();
    assert_eq!(
        high - low,
        1,
        "only the message with the right login arrived"
    );
}

/// A retried send is re-produced under its first seq only while it can still land inside the
/// settle horizon (so history never reports it `missing` and shows it later): here the horizon is
/// 60 s and `message_timeout` 30 s, so a first allocation 45 s old is refused with `Settled`, and
/// nothing is produced; one 5 s old is re-produced as a duplicate.
#[tokio::test]
async fn a_late_retry_past_the_pending_horizon_is_refused_instead_of_reproduced() {
    let (producer, topic) = setup(1, |c| {
        c.message_timeout = Duration::from_secs(30);
        c.settle_horizon = Duration::from_secs(60);
    })
    .await;
    let session = unique("late");
    let now_us = chatlog::now_ms() * 1000;
    // A send retried `age_us` after its first try: the first try's allocation, made directly under
    // the producer's key (session, sender, id), and what the retry gets.
    let retry = async |client_msg_id: &str, msg_id: &str, age_us: i64| {
        let request = AllocRequest {
            client_msg_id: client_msg_id.to_owned(),
            sender_id: "u-1".to_owned(),
            fingerprint: String::new(),
            candidate_msg_id: msg_id.to_owned(),
            server_time_us: now_us - age_us,
        };
        let first = producer
            .allocator()
            .allocate_request(&session, &request)
            .await
            .unwrap_or_else(|e| panic!("a first allocation {age_us} µs ago: {e}"));
        let retried = producer
            .send(message(&session, client_msg_id, "retried"))
            .await;
        (first, retried)
    };
    let (old, retried) = retry("late", "m-first-try", 45_000_000).await;
    let err = retried.expect_err("too late to produce seq again");
    match &err {
        Error::Settled { seq, msg_id, age } => {
            assert_eq!((*seq, msg_id.as_str()), (old.seq, "m-first-try"));
            assert!(*age >= Duration::from_secs(45), "{age:?}");
        }
        other => panic!("expected Settled, got {other}"),
    }
    assert!(!err.is_retriable());
    assert_eq!(err.reason(), "settled");

    let (recent, retried) = retry("recent", "m-recent", 5_000_000).await;
    let sent = retried.expect("re-produced");
    assert!(sent.duplicate);
    assert_eq!((sent.seq, sent.msg_id.as_str()), (recent.seq, "m-recent"));
    producer.flush(TIMEOUT).await.expect("flush");
    let records = read_back(&topic, 1, 1).await;
    let seqs: Vec<i64> = records.iter().map(|r| r.decoded().seq).collect();
    assert_eq!(
        seqs,
        vec![recent.seq],
        "only the recent retry reached Kafka"
    );
}

/// A repeated `client_msg_id` with other content or ext is refused with `Conflict` and produces
/// nothing; the same message again is an ordinary duplicate; the same id from another sender is
/// another message (idempotency is per session, sender and id).
#[tokio::test]
async fn a_conflicting_retry_is_refused_and_never_acknowledged() {
    let (producer, topic) = setup(1, |_| {}).await;
    let session = unique("conflict");
    let first = producer
        .send(message(&session, "same-id", "the first text"))
        .await
        .expect("first send");
    let other_text = producer
        .send(message(&session, "same-id", "another text"))
        .await
        .expect_err("a retry with other content is refused");
    match &other_text {
        Error::Conflict { seq, msg_id } => assert_eq!((*seq, msg_id), (first.seq, &first.msg_id)),
        other => panic!("expected Conflict, got {other}"),
    }
    assert!(!other_text.is_retriable());
    assert_eq!(other_text.reason(), "conflict");
    let mut other_ext = message(&session, "same-id", "the first text");
    other_ext.ext.insert("k".to_owned(), "changed".to_owned());
    assert!(matches!(
        producer.send(other_ext).await,
        Err(Error::Conflict { .. })
    ));
    let again = producer
        .send(message(&session, "same-id", "the first text"))
        .await
        .expect("the same message again");
    assert!(again.duplicate);
    assert_eq!((again.seq, &again.msg_id), (first.seq, &first.msg_id));
    let mut other_sender = message(&session, "same-id", "another sender's text");
    other_sender.sender_id = "u-2".to_owned();
    let theirs = producer.send(other_sender).await.expect("another sender");
    assert!(!theirs.duplicate);
    assert_ne!(theirs.seq, first.seq);

    producer.flush(TIMEOUT).await.expect("flush");
    let records = read_back(&topic, 1, 3).await;
    let contents: Vec<(i64, Vec<u8>)> = records
        .iter()
        .map(Record::decoded)
        .map(|m| (m.seq, m.content))
        .collect();
    assert_eq!(
        contents,
        vec![
            (first.seq, b"the first text".to_vec()),
            (first.seq, b"the first text".to_vec()),
            (theirs.seq, b"another sender's text".to_vec()),
        ],
        "nothing of the conflicting retries reached Kafka"
    );
}
