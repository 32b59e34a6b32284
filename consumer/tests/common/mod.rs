//! Shared harness of the consumer's end-to-end tests: a fresh keyspace and topics per test, the real
//! `chatlog-consumer` binary as a child process, a raw Kafka producer (tests choose seqs, order and
//! poison bytes themselves) and readers of what landed in CQL, Redis and the DLQ.
#![allow(dead_code)]

pub mod deploy_files;
pub mod prometheus;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use chatlog::process::ConsumerProcess;

use chatlog_schemas::{ChatMessage, Codec};
use chatlog_store::messages::{DEFAULT_BUCKET_SIZE, bucket_of, select_writetimes_cql};
use chatlog_store::{CqlConfig, keys, window};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use scylla::client::session::Session;

/// One test's world.
pub struct Env {
    pub topic: String,
    pub dlq: String,
    pub group: String,
    pub cql: CqlConfig,
    pub session: Arc<Session>,
    pub codec: Codec,
    pub window_size: usize,
    producer: FutureProducer,
}

/// A consumer config file holding `text`, in a temporary folder (removed when the first value
/// drops); returns it and the file's path.
pub fn config_file(prefix: &str, text: &str) -> (chatlog::TempDir, String) {
    let dir = chatlog::TempDir::new(prefix);
    let path = dir.0.join("consumer.toml");
    std::fs::write(&path, text).expect("write the config file");
    let path = path.to_str().expect("utf-8 temp path").to_owned();
    (dir, path)
}

/// A base for server times, so every test run writes distinct, realistic timestamps.
pub fn base_time_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A deterministic message of `session` with `seq`; `version` distinguishes edits of one seq.
pub use chatlog_schemas::testing::message_at as message;

impl Env {
    pub async fn new(prefix: &str, partitions: i32, window_size: usize) -> Env {
        let (session, cql) = chatlog::fresh_keyspace(prefix).await;
        let topic = chatlog::unique(&format!("{prefix}_in"));
        let dlq = chatlog::unique(&format!("{prefix}_dlq"));
        chatlog::create_topic(&topic, partitions).await;
        chatlog::create_topic(&dlq, 1).await;
        let producer = ClientConfig::new()
            .set("bootstrap.servers", chatlog::kafka_bootstrap())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        Env {
            group: chatlog::unique(&format!("{prefix}_group")),
            topic,
            dlq,
            cql,
            session,
            codec: Codec::default(),
            window_size,
            producer,
        }
    }

    /// Produces `(key, value)` records and waits for every acknowledgement.
    pub async fn produce_raw(&self, records: &[(Option<String>, Option<Vec<u8>>)]) {
        let sends = records.iter().map(|(key, value)| {
            let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic);
            if let Some(k) = key {
                r = r.key(k.as_str());
            }
            if let Some(v) = value {
                r = r.payload(v.as_slice());
            }
            self.producer.send(r, Duration::from_secs(30))
        });
        for result in futures::future::join_all(sends).await {
            result.expect("produce");
        }
    }

    /// The record of `m` as Logic produces it: keyed by its session, encoded.
    pub fn record(&self, m: &ChatMessage) -> (Option<String>, Option<Vec<u8>>) {
        (
            Some(m.session_id.clone()),
            Some(self.codec.encode(m).expect("encode")),
        )
    }

    /// Produces messages keyed by their session.
    pub async fn produce(&self, messages: &[ChatMessage]) {
        let records: Vec<_> = messages.iter().map(|m| self.record(m)).collect();
        for chunk in records.chunks(1000) {
            self.produce_raw(chunk).await;
        }
    }

    /// Starts the real consumer binary for this env.
    pub fn spawn_consumer(&self, transactional_id: &str, extra: &[&str]) -> ConsumerProcess {
        self.spawn_consumer_with_env(transactional_id, extra, &[])
    }

    /// Like [`Env::spawn_consumer`], with extra environment variables.
    pub fn spawn_consumer_with_env(
        &self,
        transactional_id: &str,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> ConsumerProcess {
        let log = std::env::temp_dir().join(format!("{}.log", chatlog::unique(transactional_id)));
        let (bootstrap, redis, nodes) = (
            chatlog::kafka_bootstrap(),
            chatlog::redis_url(),
            self.cql.nodes.join(","),
        );
        let window_size = self.window_size.to_string();
        let mut args = vec![
            "--topic",
            &self.topic,
            "--dlq-topic",
            &self.dlq,
            "--group-id",
            &self.group,
            "--transactional-id",
            transactional_id,
            "--cql-nodes",
            &nodes,
            "--keyspace",
            &self.cql.keyspace,
            "--http-listen",
            "127.0.0.1:0",
            "--window-size",
            &window_size,
        ];
        // `extra` may name other brokers (the SASL listener) or another Redis.
        for (flag, default) in [("--bootstrap-servers", &bootstrap), ("--redis-url", &redis)] {
            if !extra.contains(&flag) {
                args.extend([flag, default.as_str()]);
            }
        }
        args.extend(extra);
        let mut env = vec![("CHATLOG_LOG", "info,chatlog_consumer=debug")];
        env.extend(vars);
        ConsumerProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_chatlog-consumer")),
            args,
            &env,
            &log,
        )
        .expect("spawn chatlog-consumer")
    }

    /// `(seq, msg_id, writetime)` of every row of `session` (buckets 0..=max_bucket).
    pub async fn rows(&self, session: &str, max_seq: i64) -> Vec<(i64, i64)> {
        let stmt = self
            .session
            .prepare(select_writetimes_cql(&self.cql.keyspace))
            .await
            .unwrap();
        let mut out = Vec::new();
        for bucket in 0..=bucket_of(max_seq, DEFAULT_BUCKET_SIZE) {
            let rows = self
                .session
                .execute_unpaged(&stmt, (session, bucket))
                .await
                .unwrap()
                .into_rows_result()
                .unwrap();
            for r in rows.rows::<(i64, Option<i64>)>().unwrap() {
                let (seq, wt) = r.unwrap();
                out.push((seq, wt.unwrap_or(-1)));
            }
        }
        out.sort();
        out
    }

    /// Total rows over `sessions`.
    pub async fn count(&self, sessions: &[String], max_seq: i64) -> usize {
        let mut n = 0;
        for s in sessions {
            n += self.rows(s, max_seq).await.len();
        }
        n
    }

    /// [`wait_for_rows`](Self::wait_for_rows) for every message of [`workload`]`(…, per_session)`
    /// over `sessions`, within 120 s.
    pub async fn wait_all(
        &self,
        sessions: &[String],
        per_session: i64,
        procs: &[&ConsumerProcess],
    ) {
        let expected = sessions.len() * per_session as usize;
        self.wait_for_rows(
            sessions,
            per_session,
            expected,
            Duration::from_secs(120),
            procs,
        )
        .await;
    }

    /// [`wait_for_rows`](Self::wait_for_rows) for one session of fewer than 1000 seqs (its first
    /// bucket): until it holds `expected` rows.
    pub async fn wait_session(
        &self,
        session: &str,
        expected: usize,
        limit: Duration,
        procs: &[&ConsumerProcess],
    ) {
        let sessions = [session.to_owned()];
        self.wait_for_rows(&sessions, DEFAULT_BUCKET_SIZE - 1, expected, limit, procs)
            .await;
    }

    /// Counts the rows of `sessions` (seqs up to `max_seq`) every 20 ms until `enough(count)`,
    /// and returns that count; fails with `consumer`'s log after 90 s without it.
    pub async fn wait_count(
        &self,
        sessions: &[String],
        max_seq: i64,
        consumer: &ConsumerProcess,
        enough: impl Fn(usize) -> bool,
    ) -> usize {
        let probe = || async {
            let n = self.count(sessions, max_seq).await;
            if enough(n) { Ok(n) } else { Err(n) }
        };
        let stalled = |n| format!("no progress at {n} rows:\n{}", consumer.log_text());
        poll_until(
            Duration::from_secs(90),
            Duration::from_millis(20),
            probe,
            stalled,
        )
        .await
    }

    /// Polls the database until `sessions` hold `expected` rows in all, or panics after `limit`
    /// with the consumer logs.
    pub async fn wait_for_rows(
        &self,
        sessions: &[String],
        max_seq: i64,
        expected: usize,
        limit: Duration,
        procs: &[&ConsumerProcess],
    ) {
        let deadline = Instant::now() + limit;
        let n = poll_until(
            limit,
            Duration::from_millis(200),
            move || async move {
                let n = self.count(sessions, max_seq).await;
                if n >= expected { Ok(n) } else { Err(n) }
            },
            |n| {
                dump_logs(procs);
                format!("only {n} of {expected} rows after {limit:?}")
            },
        )
        .await;
        assert_eq!(n, expected, "more rows than messages");
        // Rows and windows land before their batch commits: wait for the commit.
        self.wait_drained(deadline.saturating_duration_since(Instant::now()), procs)
            .await;
    }

    /// Polls until the group's committed offsets reach the end of every partition of the topic:
    /// every batch read so far is fully processed (CQL, Redis, DLQ and commit).
    pub async fn wait_drained(&self, limit: Duration, procs: &[&ConsumerProcess]) {
        poll_until(
            limit.max(Duration::from_secs(5)),
            Duration::from_millis(100),
            move || async move {
                let behind = self.partitions_behind();
                if behind.is_empty() {
                    Ok(())
                } else {
                    Err(behind)
                }
            },
            |behind| {
                dump_logs(procs);
                format!("partitions {behind:?} not fully committed within {limit:?}")
            },
        )
        .await;
    }

    /// Whether the group's committed offsets are at the end of every partition of the topic now.
    pub async fn committed_to_end(&self) -> bool {
        self.partitions_behind().is_empty()
    }

    /// The partitions of the topic whose committed offset is not at their end (empty ones never).
    fn partitions_behind(&self) -> Vec<i32> {
        let timeout = Duration::from_secs(10);
        let probe = self.group_probe();
        self.committed_offsets_on(&probe)
            .into_iter()
            .filter(|(partition, offset)| {
                let (_, high) = probe
                    .fetch_watermarks(&self.topic, *partition, timeout)
                    .unwrap();
                high > 0 && *offset != high
            })
            .map(|(partition, _)| partition)
            .collect()
    }

    /// The group's committed offset of each partition of the topic (-1: none yet).
    pub fn committed_offsets(&self) -> BTreeMap<i32, i64> {
        self.committed_offsets_on(&self.group_probe())
    }

    /// [`committed_offsets`](Self::committed_offsets) read through `probe`.
    fn committed_offsets_on(&self, probe: &BaseConsumer) -> BTreeMap<i32, i64> {
        use rdkafka::{Offset, TopicPartitionList};
        let timeout = Duration::from_secs(10);
        let metadata = probe.fetch_metadata(Some(&self.topic), timeout).unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            tpl.add_partition(&self.topic, p.id());
        }
        let committed = probe.committed_offsets(tpl, timeout).unwrap();
        committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                };
                (e.partition(), offset)
            })
            .collect()
    }

    /// A client of the group that only reads its offsets and the topic's watermarks.
    fn group_probe(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", chatlog::kafka_bootstrap())
            .set("group.id", &self.group)
            .create()
            .unwrap()
    }

    /// The messages in `session`'s window, ascending by seq, decoded.
    pub async fn window(&self, session: &str) -> Vec<ChatMessage> {
        self.window_on(&mut chatlog::redis_connection().await, session)
            .await
    }

    /// [`window`](Self::window) read through `con` (a private Redis).
    pub async fn window_on<C: redis::aio::ConnectionLike + Send>(
        &self,
        con: &mut C,
        session: &str,
    ) -> Vec<ChatMessage> {
        let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
            .arg(keys::window(session))
            .arg(0)
            .arg(-1)
            .query_async(con)
            .await
            .unwrap();
        members
            .iter()
            .map(|m| {
                let (version, avro) = window::parse_member(m).expect("window member format");
                let msg = self.codec.decode(avro).expect("window member decodes");
                assert_eq!(version, msg.server_time_us, "member version = server time");
                msg
            })
            .collect()
    }

    /// Reads the DLQ with read_committed until `expected` records arrived (then 1 s more, to
    /// catch extra ones); returns (reason header, payload) pairs.
    pub fn read_dlq(&self, expected: usize) -> Vec<(String, Option<Vec<u8>>)> {
        self.read_dlq_records(expected)
            .into_iter()
            .map(|r| (r.header("chatlog-dlq-reason").to_owned(), r.payload))
            .collect()
    }

    /// Reads the DLQ with read_committed until `expected` records arrived (then 1 s more, to
    /// catch extra ones; expecting none, 3 s), with every header and the key of each record.
    pub fn read_dlq_records(&self, expected: usize) -> Vec<DlqRecord> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", chatlog::kafka_bootstrap())
            .set("group.id", chatlog::unique("dlq_reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        consumer.subscribe(&[&self.dlq]).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        // Expecting none: read for a few seconds to catch any.
        let mut quiet_until: Option<Instant> =
            (expected == 0).then(|| Instant::now() + Duration::from_secs(3));
        while Instant::now() < deadline && quiet_until.is_none_or(|q| Instant::now() < q) {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                (h.key.to_owned(), v.unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(DlqRecord {
                    headers,
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                });
                if out.len() >= expected && quiet_until.is_none() {
                    quiet_until = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
        out
    }

    /// Asserts every session holds exactly seqs `1..=per_session`, each written at its message's
    /// server time, and that each window holds exactly the newest `window_size` messages.
    pub async fn assert_exact(&self, sessions: &[String], per_session: i64, base_us: i64) {
        for s in sessions {
            let rows = self.rows(s, per_session).await;
            let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let want: Vec<i64> = (1..=per_session).collect();
            assert_eq!(seqs, want, "rows of {s}");
            for (seq, wt) in rows {
                assert_eq!(
                    wt,
                    message(s, seq, base_us, 0).server_time_us,
                    "writetime of {s}/{seq} must be the message's server time"
                );
            }
            let window: Vec<i64> = self.window(s).await.iter().map(|m| m.seq).collect();
            let lo = (per_session - self.window_size as i64 + 1).max(1);
            let want: Vec<i64> = (lo..=per_session).collect();
            assert_eq!(window, want, "window of {s}");
        }
    }
}

pub use chatlog::poll_until;

/// Prints the log of every process in `procs` (before a failure).
pub fn dump_logs(procs: &[&ConsumerProcess]) {
    for p in procs {
        eprintln!("---- {} ----\n{}", p.log_path().display(), p.log_text());
    }
}

/// A record read from the DLQ.
#[derive(Debug)]
pub struct DlqRecord {
    /// Every header, by key (values as text).
    pub headers: BTreeMap<String, String>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl DlqRecord {
    /// The value of header `key`, or "" if absent.
    pub fn header(&self, key: &str) -> &str {
        self.headers.get(key).map_or("", String::as_str)
    }
}

/// `n` unique session ids.
pub fn sessions(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| chatlog::unique(&format!("{prefix}{i}")))
        .collect()
}

/// A test's traffic: `n` unique sessions named after `prefix`, the base server time, and every
/// message of them with seqs `1..=per_session` ([`all_messages`]).
pub fn workload(prefix: &str, n: usize, per_session: i64) -> (Vec<String>, i64, Vec<ChatMessage>) {
    let sessions = sessions(prefix, n);
    let base = base_time_us();
    let messages = all_messages(&sessions, per_session, base);
    (sessions, base, messages)
}

/// Every message of `sessions` with seqs `1..=per_session`, interleaved across sessions.
pub fn all_messages(sessions: &[String], per_session: i64, base_us: i64) -> Vec<ChatMessage> {
    let mut out = Vec::new();
    for seq in 1..=per_session {
        for s in sessions {
            out.push(message(s, seq, base_us, 0));
        }
    }
    out
}

/// `text` without its ANSI colour sequences (the consumer's human log format colours field names).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The distinct partitions a log reports as assigned.
pub fn assigned_partitions(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter(|l| l.contains("partitions assigned to this consumer"))
        .map(str::to_owned)
        .collect()
}
