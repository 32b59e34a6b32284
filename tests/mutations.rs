//! Recall, edit, delete for everyone and delete for me end to end (issue 17): the producer
//! library's mutations through Kafka and the real `chatlog-consumer` binary into CQL and the Redis
//! window, read back through history, raw rows and raw window members — including a replay from
//! offset 0, a mutation that arrives before its original, a stale edit after a recall, and a
//! `kill -9` of the consumer between a mutation's acknowledgement and its commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chatlog::process::ConsumerProcess;
use chatlog::{
    create_topic, fresh_keyspace, kafka_bootstrap, new_message, redis_connection, unique,
};
use chatlog_producer::{
    Actor, ChatMessage, Error, MemberRole, MessageState, Mutated, MutationsConfig, NewMessage,
    Producer, ProducerConfig, Sent,
};
use chatlog_schemas::Codec;
use chatlog_store::RedisConnection;
use chatlog_store::history::History;
use chatlog_store::messages::{DEFAULT_BUCKET_SIZE, bucket_of};
use chatlog_store::{CqlConfig, keys, window};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use scylla::client::session::Session;

/// How long the pipeline may take to show a write (consumer start and group join included).
const SHOWS_WITHIN: Duration = Duration::from_secs(90);

/// The sender of every message of [`World::send`] ([`chatlog::new_message`]'s).
const SENDER: &str = "u-1";

/// The debug `chatlog-consumer` of this workspace (`CHATLOG_CONSUMER_BIN` if set), built once
/// per test process: cargo does nothing when it is up to date.
fn consumer_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CHATLOG_CONSUMER_BIN").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "chatlog-consumer"])
            .current_dir(&root)
            .status()
            .expect("run cargo build -p chatlog-consumer");
        assert!(
            status.success(),
            "cargo build -p chatlog-consumer: {status}"
        );
        std::env::var_os("CARGO_TARGET_DIR")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("debug")
            .join("chatlog-consumer")
    })
}

/// One test's world: a keyspace, a topic, the producer library, a history reader, a raw Kafka
/// producer and the consumer processes.
struct World {
    topic: String,
    dlq: String,
    cql: CqlConfig,
    session: Arc<Session>,
    producer: Producer,
    history: History,
    raw: FutureProducer,
    codec: Codec,
    redis: RedisConnection,
}

impl World {
    /// A world whose mutations wait up to `wait_for_target` for their target.
    async fn new(prefix: &str, wait_for_target: Duration) -> World {
        let (session, cql) = fresh_keyspace(prefix).await;
        let topic = unique(&format!("{prefix}_in"));
        let dlq = unique(&format!("{prefix}_dlq"));
        create_topic(&topic, 2).await;
        create_topic(&dlq, 1).await;
        let redis = redis_connection().await;
        let producer = Producer::new(
            ProducerConfig {
                bootstrap_servers: kafka_bootstrap(),
                topic: topic.clone(),
                linger: Duration::from_millis(1),
                mutations: MutationsConfig { wait_for_target },
                ..ProducerConfig::default()
            },
            session.clone(),
            &cql.keyspace,
            redis.clone(),
        )
        .await
        .expect("producer");
        let history = chatlog::default_history(&session, &cql.keyspace, &redis).await;
        let raw = ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "1")
            .create()
            .expect("raw producer");
        World {
            topic,
            dlq,
            cql,
            session,
            producer,
            history,
            raw,
            codec: Codec::default(),
            redis,
        }
    }

    /// Starts the consumer binary in consumer group `group` (extra flags after the defaults).
    fn consumer(&self, group: &str, extra: &[&str]) -> ConsumerProcess {
        let id = unique("mut_tx");
        let log = std::env::temp_dir().join(format!("{id}.log"));
        let (bootstrap, redis, nodes) = (
            kafka_bootstrap(),
            chatlog::redis_url(),
            self.cql.nodes.join(","),
        );
        let mut args = vec![
            "--topic",
            &self.topic,
            "--dlq-topic",
            &self.dlq,
            "--group-id",
            group,
            "--transactional-id",
            &id,
            "--cql-nodes",
            &nodes,
            "--keyspace",
            &self.cql.keyspace,
            "--http-listen",
            "127.0.0.1:0",
            "--bootstrap-servers",
            &bootstrap,
            "--redis-url",
            &redis,
        ];
        args.extend(extra);
        ConsumerProcess::spawn(
            consumer_bin(),
            args,
            &[("CHATLOG_LOG", "info,chatlog_consumer=debug")],
            &log,
        )
        .expect("spawn chatlog-consumer")
    }

    /// Sends `text` from [`SENDER`] in `sid` through the library.
    async fn send(&self, sid: &str, text: &str) -> Sent {
        self.producer
            .send(NewMessage {
                content: text.as_bytes().to_vec(),
                ..new_message(sid, &unique("c"))
            })
            .await
            .expect("send")
    }

    /// Polls history until message `seq` of `sid` satisfies `want`; panics with what it saw and
    /// the consumers' logs after [`SHOWS_WITHIN`].
    async fn until_history(
        &self,
        sid: &str,
        seq: i64,
        procs: &[&ConsumerProcess],
        want: impl Fn(&ChatMessage) -> bool,
    ) -> ChatMessage {
        poll(
            procs,
            || async {
                let page = self.history.get(sid, &[seq]).await.expect("history get");
                match page.messages.into_iter().find(|m| m.seq == seq) {
                    Some(m) if want(&m) => Ok(m),
                    other => Err(format!("history has {other:?}")),
                }
            },
            &format!("history of {sid}/{seq}"),
        )
        .await
    }

    /// Waits until message `seq` of `sid` is in history (as sent or in any state).
    async fn until_stored(&self, sid: &str, seq: i64, procs: &[&ConsumerProcess]) -> ChatMessage {
        self.until_history(sid, seq, procs, |_| true).await
    }

    /// The row of `sid`/`seq` as raw CQL reads it.
    /// The row of `seq` once it holds `version` (its cells' write time), or as it is after 30 s.
    /// A batch's rows and window entries are written concurrently, so history may show a
    /// version a moment before the table holds it.
    async fn row_at(&self, sid: &str, seq: i64, version: i64) -> Option<Row> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let row = self.row(sid, seq).await;
            let there = row.as_ref().is_some_and(|r| r.writetime >= version);
            if there || std::time::Instant::now() > deadline {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn row(&self, sid: &str, seq: i64) -> Option<Row> {
        let cql = format!(
            "SELECT content, ext, state, edit_count, mutated_by, writetime(content) \
             FROM {}.messages WHERE session_id = ? AND bucket = ? AND seq = ?",
            self.cql.keyspace
        );
        let rows = self
            .session
            .query_unpaged(cql, (sid, bucket_of(seq, DEFAULT_BUCKET_SIZE), seq))
            .await
            .expect("read the row")
            .into_rows_result()
            .expect("rows");
        type Cols = (
            Option<Vec<u8>>,
            Option<BTreeMap<String, String>>,
            Option<i8>,
            Option<i32>,
            Option<String>,
            Option<i64>,
        );
        let mut it = rows.rows::<Cols>().expect("typed rows");
        it.next().map(|r| {
            let (content, ext, state, edit_count, mutated_by, writetime) = r.expect("row");
            Row {
                content: content.unwrap_or_default(),
                ext: ext.unwrap_or_default(),
                state: state.unwrap_or(0),
                edit_count: edit_count.unwrap_or(0),
                mutated_by,
                writetime: writetime.unwrap_or(-1),
            }
        })
    }

    /// Every column of every row of `sid` (seqs below 1000) with the write time of each written
    /// column: what a replay must leave exactly as it was.
    async fn full_rows(&self, sid: &str) -> Vec<scylla::value::Row> {
        let cql = format!(
            "SELECT seq, msg_id, client_msg_id, session_type, sender_id, content_type, content, \
             send_time, server_time, ext, state, mutated_at, mutated_by, edit_count, \
             writetime(msg_id), writetime(content), writetime(ext), writetime(state), \
             writetime(mutated_by) FROM {}.messages WHERE session_id = ? AND bucket = 0",
            self.cql.keyspace
        );
        let rows = self
            .session
            .query_unpaged(cql, (sid,))
            .await
            .expect("read rows")
            .into_rows_result()
            .expect("rows");
        rows.rows::<scylla::value::Row>()
            .expect("rows")
            .map(|r| r.expect("row"))
            .collect()
    }

    /// The window of `sid`: every member with its score, raw.
    async fn raw_window(&self, sid: &str) -> Vec<(Vec<u8>, f64)> {
        redis::cmd("ZRANGE")
            .arg(keys::window(sid))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut self.redis.clone())
            .await
            .expect("ZRANGE")
    }

    /// The window member of `sid`/`seq`: its version prefix and the message it decodes to.
    async fn window_member(&self, sid: &str, seq: i64) -> Option<(i64, ChatMessage)> {
        let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
            .arg(keys::window(sid))
            .arg(seq)
            .arg(seq)
            .arg("BYSCORE")
            .query_async(&mut self.redis.clone())
            .await
            .expect("ZRANGE BYSCORE");
        assert!(members.len() <= 1, "one member per seq: {members:?}");
        members.first().map(|m| {
            let (version, avro) = window::parse_member(m).expect("member format");
            (version, self.codec.decode(avro).expect("member decodes"))
        })
    }

    /// Produces `m` raw (encoded, keyed by its session) as another producer would.
    async fn produce_raw(&self, m: &ChatMessage) {
        let bytes = self.codec.encode(m).expect("encode");
        self.raw
            .send(
                FutureRecord::to(&self.topic)
                    .key(m.session_id.as_str())
                    .payload(&bytes),
                Duration::from_secs(30),
            )
            .await
            .expect("produce raw");
    }

    /// Sum of the end offsets of the topic's partitions: what was ever produced to it.
    fn end_offsets(&self) -> i64 {
        let probe = self.probe(&unique("probe"));
        let timeout = Duration::from_secs(10);
        (0..2)
            .map(|p| {
                probe
                    .fetch_watermarks(&self.topic, p, timeout)
                    .expect("watermarks")
                    .1
            })
            .sum()
    }

    fn probe(&self, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .set("group.id", group)
            .create()
            .expect("probe consumer")
    }

    /// Whether consumer group `group` has committed the end of every non-empty partition. A
    /// broker too busy to answer in time (a loaded CI machine) is an `Err`: asked again.
    fn drained(&self, group: &str) -> Result<bool, String> {
        let probe = self.probe(group);
        let timeout = Duration::from_secs(10);
        let mut tpl = TopicPartitionList::new();
        for p in 0..2 {
            tpl.add_partition(&self.topic, p);
        }
        let committed = probe
            .committed_offsets(tpl, timeout)
            .map_err(|e| format!("committed offsets: {e}"))?;
        for e in committed.elements() {
            let (_, high) = probe
                .fetch_watermarks(&self.topic, e.partition(), timeout)
                .map_err(|e| format!("watermarks: {e}"))?;
            if high != 0 && e.offset() != Offset::Offset(high) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn until_drained(&self, group: &str, procs: &[&ConsumerProcess]) {
        poll(
            procs,
            || async {
                match self.drained(group) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("offsets not committed to the end".to_owned()),
                    Err(e) => Err(e),
                }
            },
            &format!("group {group} drained"),
        )
        .await
    }
}

/// The columns of a row the assertions look at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    content: Vec<u8>,
    ext: BTreeMap<String, String>,
    /// 0 NORMAL (unset), 1 EDITED, 2 RECALLED, 3 DELETED.
    state: i8,
    edit_count: i32,
    mutated_by: Option<String>,
    writetime: i64,
}

/// Calls `probe` every 25 ms until it is `Ok`; panics after [`SHOWS_WITHIN`] with what it saw
/// last and the logs of `procs`.
async fn poll<T, Fut>(procs: &[&ConsumerProcess], probe: impl FnMut() -> Fut, what: &str) -> T
where
    Fut: std::future::Future<Output = Result<T, String>>,
{
    chatlog::poll_until(SHOWS_WITHIN, Duration::from_millis(25), probe, |seen| {
        for p in procs {
            eprintln!("---- {} ----\n{}", p.log_path().display(), p.log_text());
        }
        format!("{what}: not within {SHOWS_WITHIN:?}; last seen: {seen}")
    })
    .await
}

fn sender() -> Actor {
    Actor::Sender(SENDER.to_owned())
}

fn as_member(user: &str, role: MemberRole) -> Actor {
    Actor::Member {
        user_id: user.to_owned(),
        role,
    }
}

fn is_recalled(m: &ChatMessage) -> bool {
    matches!(m.state, MessageState::Recalled { .. })
}

#[tokio::test(flavor = "multi_thread")]
async fn recall_removes_content_from_cql_and_the_window_and_history_shows_it_recalled() {
    let w = World::new("mut_recall", Duration::from_secs(30)).await;
    let consumer = w.consumer(&unique("g"), &[]);
    let sid = unique("s");
    let sent = w.send(&sid, "secret").await;
    let original = w.until_stored(&sid, sent.seq, &[&consumer]).await;
    assert_eq!(original.content, b"secret");

    let recalled = w
        .producer
        .recall(&sid, sent.seq, &sender())
        .await
        .expect("recall");
    assert!(!recalled.unchanged && recalled.partition == sent.partition);
    assert!(
        recalled.offset > sent.offset,
        "after the original on its partition"
    );
    assert!(is_recalled(&recalled.message) && recalled.message.content.is_empty());
    assert_eq!(recalled.version, recalled.message.version());
    assert!(recalled.version > chatlog_producer::FINAL_VERSION_BIT);

    let seen = w
        .until_history(&sid, sent.seq, &[&consumer], is_recalled)
        .await;
    assert_eq!(
        seen, recalled.message,
        "history returns the state as produced"
    );
    match &seen.state {
        MessageState::Recalled { at_us, by } => {
            assert_eq!(by, SENDER);
            assert!(*at_us > original.server_time_us);
        }
        s => panic!("{s:?}"),
    }
    let row = w
        .row_at(&sid, sent.seq, recalled.version)
        .await
        .expect("row");
    assert!(row.content.is_empty(), "content left in CQL: {row:?}");
    assert_eq!((row.state, row.writetime), (2, recalled.version), "{row:?}");
    let (version, member) = w.window_member(&sid, sent.seq).await.expect("member");
    assert_eq!(version, recalled.version);
    assert!(
        is_recalled(&member) && member.content.is_empty(),
        "{member:?}"
    );

    // Recalling again, or deleting it for everyone: already final, nothing sent.
    let end = w.end_offsets();
    let again = w.producer.recall(&sid, sent.seq, &sender()).await.unwrap();
    let delete = w
        .producer
        .delete_for_everyone(&sid, sent.seq, &as_member("admin", MemberRole::Admin))
        .await
        .unwrap();
    assert!(again.unchanged && delete.unchanged);
    assert_eq!(again.message, recalled.message);
    assert_eq!(
        w.end_offsets(),
        end,
        "nothing produced for an unchanged message"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn edit_twice_counts_two_keeps_the_last_content_and_writes_at_its_version() {
    let w = World::new("mut_edit", Duration::from_secs(30)).await;
    let consumer = w.consumer(&unique("g"), &[]);
    let sid = unique("s");
    let sent = w.send(&sid, "first").await;
    w.until_stored(&sid, sent.seq, &[&consumer]).await;

    // Back to back: the second builds on the first before the consumer stored it.
    let one = w
        .producer
        .edit(&sid, sent.seq, b"second".to_vec(), &sender())
        .await
        .expect("edit 1");
    let two = w
        .producer
        .edit(&sid, sent.seq, b"third".to_vec(), &sender())
        .await
        .expect("edit 2");
    assert!(two.version > one.version && one.version > sent.server_time_us);
    assert_eq!(two.message.state.edit_count(), 2);

    let seen = w
        .until_history(&sid, sent.seq, &[&consumer], |m| m.version() == two.version)
        .await;
    assert_eq!(seen.content, b"third");
    match &seen.state {
        MessageState::Edited { at_us, count, by } => {
            assert_eq!((*at_us, *count, by.as_str()), (two.version, 2, SENDER));
        }
        s => panic!("{s:?}"),
    }
    assert_eq!(seen, two.message);
    let row = w.row_at(&sid, sent.seq, two.version).await.expect("row");
    assert_eq!(
        (
            row.content.as_slice(),
            row.state,
            row.edit_count,
            row.writetime
        ),
        (&b"third"[..], 1, 2, two.version),
        "{row:?}"
    );
    let (version, member) = w.window_member(&sid, sent.seq).await.expect("member");
    assert_eq!((version, member), (two.version, two.message.clone()));

    // Content above the limit: Invalid, nothing produced.
    let end = w.end_offsets();
    let big = vec![b'x'; chatlog_producer::Limits::default().max_content_bytes + 1];
    let err = w
        .producer
        .edit(&sid, sent.seq, big, &sender())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(w.end_offsets(), end);
}

#[tokio::test(flavor = "multi_thread")]
async fn edit_after_recall_is_final_and_a_stale_edit_record_does_not_bring_content_back() {
    let w = World::new("mut_final", Duration::from_secs(30)).await;
    let consumer = w.consumer(&unique("g"), &[]);
    let sid = unique("s");
    let sent = w.send(&sid, "hello").await;
    let original = w.until_stored(&sid, sent.seq, &[&consumer]).await;
    let recalled = w.producer.recall(&sid, sent.seq, &sender()).await.unwrap();

    // Refused at once (this producer knows of its recall), and once it is stored too.
    let end = w.end_offsets();
    let err = w
        .producer
        .edit(&sid, sent.seq, b"back".to_vec(), &sender())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Final { state: "RECALLED" }), "{err}");
    assert!(!err.is_retriable());
    w.until_history(&sid, sent.seq, &[&consumer], is_recalled)
        .await;
    assert_eq!(w.end_offsets(), end, "a refused edit produced nothing");

    // An edit decided from a read that had not seen the recall, produced (raw) after it, at a
    // later time than the recall: its version is still below the final bit.
    let at_us = (recalled.version & !chatlog_producer::FINAL_VERSION_BIT) + 1_000;
    let stale = chatlog_schemas::testing::edited(&original, at_us, 1, b"resurrected");
    w.produce_raw(&stale).await;
    // A marker after it on the same session (same partition): once it is stored, so is `stale`.
    let marker = w.send(&sid, "marker").await;
    w.until_stored(&sid, marker.seq, &[&consumer]).await;

    let seen = w.until_stored(&sid, sent.seq, &[&consumer]).await;
    assert_eq!(seen, recalled.message, "history after the stale edit");
    let row = w.row(&sid, sent.seq).await.expect("row");
    assert!(row.content.is_empty() && row.state == 2, "{row:?}");
    assert_eq!(row.writetime, recalled.version);
    let (version, member) = w.window_member(&sid, sent.seq).await.expect("member");
    assert_eq!(
        (version, member),
        (recalled.version, recalled.message.clone())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_for_me_hides_the_seqs_from_that_user_only() {
    let w = World::new("mut_hide", Duration::from_secs(30)).await;
    let consumer = w.consumer(&unique("g"), &[]);
    let sid = unique("s");
    let mut seqs = Vec::new();
    for i in 0..4 {
        seqs.push(w.send(&sid, &format!("m{i}")).await.seq);
    }
    w.until_stored(&sid, seqs[3], &[&consumer]).await;
    w.producer
        .delete_for_me("u-2", &sid, &[seqs[0], seqs[2]])
        .await
        .expect("delete for me");

    let u2 = w.history.viewer("u-2").latest(&sid, 10).await.unwrap();
    assert_eq!(u2.seqs(), vec![seqs[1], seqs[3]]);
    let mut hidden = u2.hidden.clone();
    hidden.sort_unstable();
    assert_eq!(hidden, vec![seqs[0], seqs[2]]);
    let u1 = w.history.viewer(SENDER).latest(&sid, 10).await.unwrap();
    assert_eq!(u1.seqs(), seqs, "another user sees every message");
    assert!(u1.hidden.is_empty());
    assert_eq!(w.history.latest(&sid, 10).await.unwrap().seqs(), seqs);
    for seq in &seqs {
        let row = w.row(&sid, *seq).await.expect("row");
        assert_eq!(row.state, 0, "delete for me changes no stored message");
    }

    // Bounds: too many seqs, a bad seq, an empty user: refused, nothing written.
    let many = vec![seqs[1]; chatlog_producer::MAX_HIDE + 1];
    let err = w
        .producer
        .delete_for_me("u-2", &sid, &many)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooManySeqs { .. }), "{err}");
    let err = w
        .producer
        .delete_for_me("u-2", &sid, &[0])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    let err = w
        .producer
        .delete_for_me("", &sid, &[seqs[1]])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    let u2 = w.history.viewer("u-2").latest(&sid, 10).await.unwrap();
    assert_eq!(u2.seqs(), vec![seqs[1], seqs[3]]);
}

#[tokio::test(flavor = "multi_thread")]
async fn not_allowed_recall_edit_and_delete_for_everyone_produce_nothing() {
    let w = World::new("mut_policy", Duration::from_secs(30)).await;
    let consumer = w.consumer(&unique("g"), &[]);
    let sid = unique("s");
    let sent = w.send(&sid, "mine").await;
    let before = w.until_stored(&sid, sent.seq, &[&consumer]).await;
    let end = w.end_offsets();

    let other = Actor::Sender("u-2".into());
    let refusals = [
        (
            "recall by another user",
            w.producer.recall(&sid, sent.seq, &other).await,
        ),
        (
            "edit by another user",
            w.producer.edit(&sid, sent.seq, b"x".to_vec(), &other).await,
        ),
        (
            "edit by an admin",
            w.producer
                .edit(
                    &sid,
                    sent.seq,
                    b"x".to_vec(),
                    &as_member("a", MemberRole::Admin),
                )
                .await,
        ),
        (
            "recall by the owner",
            w.producer
                .recall(&sid, sent.seq, &as_member("o", MemberRole::Owner))
                .await,
        ),
        (
            "delete for everyone by a member",
            w.producer
                .delete_for_everyone(&sid, sent.seq, &as_member("u-3", MemberRole::Member))
                .await,
        ),
        (
            "delete for everyone by another user as sender",
            w.producer.delete_for_everyone(&sid, sent.seq, &other).await,
        ),
    ];
    for (what, r) in refusals {
        match r {
            Err(e @ Error::NotAllowed { .. }) => assert!(!e.is_retriable(), "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    assert_eq!(w.end_offsets(), end, "a refused mutation produced a record");
    assert_eq!(
        w.history.get(&sid, &[sent.seq]).await.unwrap().messages,
        vec![before]
    );

    // The owner may delete it for everyone.
    let deleted = w
        .producer
        .delete_for_everyone(&sid, sent.seq, &as_member("o", MemberRole::Owner))
        .await
        .expect("owner deletes");
    assert_eq!(w.end_offsets(), end + 1);
    let seen = w
        .until_history(&sid, sent.seq, &[&consumer], |m| m.state.is_final())
        .await;
    assert_eq!(seen, deleted.message);
    assert!(matches!(&seen.state, MessageState::Deleted { by, .. } if by == "o"));
}

#[tokio::test(flavor = "multi_thread")]
async fn recall_waits_for_a_message_sent_but_not_stored_yet() {
    // OpenIM #3241: a revoke right after the send fails with "msg not found". Here the consumer
    // is not even running when the recall is asked.
    // Long enough for a consumer to start on a loaded machine (at most the settle horizon).
    let w = World::new("mut_wait", Duration::from_secs(55)).await;
    let sid = unique("s");
    let sent = w.send(&sid, "fast").await;
    let producer = w.producer.clone();
    let sid2 = sid.clone();
    let recall = tokio::spawn(async move { producer.recall(&sid2, sent.seq, &sender()).await });
    let consumer = w.consumer(&unique("g"), &[]);
    let recalled = recall
        .await
        .unwrap()
        .expect("the recall waited for its target");
    let seen = w
        .until_history(&sid, sent.seq, &[&consumer], is_recalled)
        .await;
    assert_eq!(seen, recalled.message);

    // A seq above anything sent is not found once the wait is over (retriable: it may come),
    // and nothing is produced.
    let quick = World::new("mut_wait_quick", Duration::from_millis(300)).await;
    let end = quick.end_offsets();
    let err = quick
        .producer
        .recall(&sid, 1_000, &sender())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TargetNotFound {
                settled: false,
                seq: 1_000,
                ..
            }
        ) && err.is_retriable(),
        "{err}"
    );
    assert_eq!(quick.end_offsets(), end);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_from_offset_0_after_mutations_leaves_rows_and_windows_as_they_were() {
    let w = World::new("mut_replay", Duration::from_secs(30)).await;
    let first_group = unique("g1");
    let first = w.consumer(&first_group, &[]);
    let sid = unique("s");
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(w.send(&sid, &format!("m{i}")).await.seq);
    }
    w.until_stored(&sid, seqs[4], &[&first]).await;
    let recalled = w.producer.recall(&sid, seqs[0], &sender()).await.unwrap();
    w.producer
        .edit(&sid, seqs[1], b"e1".to_vec(), &sender())
        .await
        .unwrap();
    let edited = w
        .producer
        .edit(&sid, seqs[1], b"e2".to_vec(), &sender())
        .await
        .unwrap();
    let deleted = w
        .producer
        .delete_for_everyone(&sid, seqs[2], &as_member("adm", MemberRole::Admin))
        .await
        .unwrap();
    let edited_then_recalled = w
        .producer
        .edit(&sid, seqs[3], b"e".to_vec(), &sender())
        .await
        .unwrap();
    let then_recalled = w.producer.recall(&sid, seqs[3], &sender()).await.unwrap();
    assert!(then_recalled.version > edited_then_recalled.version);
    let last = [
        (seqs[0], &recalled),
        (seqs[1], &edited),
        (seqs[2], &deleted),
        (seqs[3], &then_recalled),
    ];
    for (seq, m) in last {
        let seen = w
            .until_history(&sid, seq, &[&first], |s| s.version() == m.version)
            .await;
        assert_eq!(&seen, &m.message);
    }
    w.until_drained(&first_group, &[&first]).await;
    let rows = w.full_rows(&sid).await;
    let window = w.raw_window(&sid).await;
    assert_eq!((rows.len(), window.len()), (5, 5));
    first.terminate_cleanly(Duration::from_secs(30)).unwrap();

    // Everything again from offset 0 under a new group: originals after their mutations.
    let second_group = unique("g2");
    let second = w.consumer(&second_group, &[]);
    w.until_drained(&second_group, &[&second]).await;
    assert_eq!(w.full_rows(&sid).await, rows, "rows after the replay");
    assert_eq!(w.raw_window(&sid).await, window, "window after the replay");
    for (seq, m) in last {
        let page = w.history.get(&sid, &[seq]).await.unwrap();
        assert_eq!(
            page.messages,
            vec![m.message.clone()],
            "history of seq {seq}"
        );
    }
}

/// A world with a consumer, and in a new session two messages, seq 1 recalled and seq 2 edited:
/// for the tests where mutations arrive before their originals. Nothing produced yet.
struct EarlyMutations {
    w: World,
    group: String,
    consumer: ConsumerProcess,
    sid: String,
    /// The messages' server time base: a minute ago (realistic, distinct per run).
    base: i64,
    one: ChatMessage,
    two: ChatMessage,
    one_recalled: ChatMessage,
    two_edited: ChatMessage,
}

impl EarlyMutations {
    async fn new(prefix: &str) -> EarlyMutations {
        use chatlog_schemas::testing::{edited, message_at, recalled};
        let w = World::new(prefix, Duration::from_secs(30)).await;
        let group = unique("g");
        let consumer = w.consumer(&group, &[]);
        let sid = unique("s");
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64
            - 60_000_000;
        let one = message_at(&sid, 1, base, 0);
        let two = message_at(&sid, 2, base, 0);
        let one_recalled = recalled(&one, one.server_time_us + 500);
        let two_edited = edited(&two, two.server_time_us + 500, 1, b"edited first");
        EarlyMutations {
            w,
            group,
            consumer,
            sid,
            base,
            one,
            two,
            one_recalled,
            two_edited,
        }
    }

    /// History and the window show the recall of seq 1 and the edit of seq 2, whatever order
    /// their records came in.
    async fn assert_the_mutations_won(&self) {
        for want in [&self.one_recalled, &self.two_edited] {
            let seen = self
                .w
                .until_stored(&self.sid, want.seq, &[&self.consumer])
                .await;
            assert_eq!(&seen, want, "history of seq {}", want.seq);
            let (version, member) = self
                .w
                .window_member(&self.sid, want.seq)
                .await
                .expect("member");
            assert_eq!((version, &member), (want.version(), want));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_a_mutation_before_its_original_converges_to_the_mutation() {
    let e = EarlyMutations::new("mut_early").await;
    let w = &e.w;
    // Mutations first (a retried send, another producer), then the originals, then a marker.
    for m in [&e.one_recalled, &e.two_edited, &e.one, &e.two] {
        w.produce_raw(m).await;
    }
    let marker = chatlog_schemas::testing::message_at(&e.sid, 3, e.base, 0);
    w.produce_raw(&marker).await;
    w.until_stored(&e.sid, 3, &[&e.consumer]).await;
    // Committed: the windows of every batch are written (a row is readable before its window).
    w.until_drained(&e.group, &[&e.consumer]).await;

    e.assert_the_mutations_won().await;
    for want in [&e.one_recalled, &e.two_edited] {
        let row = w.row(&e.sid, want.seq).await.expect("row");
        assert_eq!(
            (row.content.as_slice(), row.writetime, i32::from(row.state)),
            (
                want.content.as_slice(),
                want.version(),
                want.state.index() as i32
            ),
            "{row:?}"
        );
    }
}

/// The same when the mutations are stored (committed) before their originals are even
/// consumed: a window must not start from the originals alone — the table already holds the
/// mutated rows, and a window started from the later records would show the content again.
#[tokio::test(flavor = "multi_thread")]
async fn replay_a_recall_and_an_edit_committed_before_their_originals_keeps_them_in_the_window() {
    let e = EarlyMutations::new("mut_early2").await;
    let w = &e.w;
    let marker = chatlog_schemas::testing::message_at(&e.sid, 3, e.base, 0);
    for m in [&e.one_recalled, &e.two_edited] {
        w.produce_raw(m).await;
    }
    // Stored and committed: a later batch holds the originals.
    w.until_drained(&e.group, &[&e.consumer]).await;
    for m in [&e.one, &e.two, &marker] {
        w.produce_raw(m).await;
    }
    w.until_drained(&e.group, &[&e.consumer]).await;

    e.assert_the_mutations_won().await;
    let head = w
        .window_member(&e.sid, 3)
        .await
        .expect("the head in the window");
    assert_eq!(head.1.seq, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn recall_and_edit_after_kill_9_between_produce_and_commit_end_in_the_last_acknowledged_state()
 {
    let w = World::new("mut_kill", Duration::from_secs(30)).await;
    let group = unique("g");
    // Small transactions, committed late — each waits a second before its offsets are sent (the
    // hidden fault): a kill right after an acknowledgement lands before its commit, however
    // fast or slow the machine is.
    let flags = [
        "--max-records",
        "4",
        "--linger",
        "300ms",
        "--fault-commit-delay-ms",
        "1000",
    ];
    let mut consumer = w.consumer(&group, &flags);
    let sid = unique("s");
    let mut seqs = Vec::new();
    for i in 0..6 {
        seqs.push(w.send(&sid, &format!("m{i}")).await.seq);
    }
    for seq in &seqs {
        w.until_stored(&sid, *seq, &[&consumer]).await;
    }
    let mut last: BTreeMap<i64, Mutated> = BTreeMap::new();
    let mut killed_uncommitted = false;
    let mut probes = Vec::new();
    for round in 0..6 {
        // Every message edited once more (concurrently), odd ones recalled in round 3.
        let edits = seqs.iter().map(|&seq| {
            let p = w.producer.clone();
            let sid = sid.clone();
            async move {
                let text = format!("r{round} s{seq}").into_bytes();
                if round == 3 && seq % 2 == 1 {
                    p.recall(&sid, seq, &sender()).await
                } else {
                    p.edit(&sid, seq, text, &sender()).await
                }
            }
        });
        for r in futures::future::join_all(edits).await {
            match r {
                Ok(m) => {
                    last.insert(m.seq, m);
                }
                Err(Error::Final { .. }) => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        if !killed_uncommitted {
            consumer.kill();
            // Proven only by an answer: a broker too busy to say leaves it to the next round.
            let drained = w.drained(&group);
            killed_uncommitted = drained == Ok(false);
            probes.push(format!("round {round}: drained {drained:?}"));
            consumer = w.consumer(&group, &flags);
        }
    }
    assert!(
        killed_uncommitted,
        "no kill landed between an acknowledged mutation and its commit: {probes:?}"
    );
    for (seq, m) in &last {
        let seen = w
            .until_history(&sid, *seq, &[&consumer], |s| s.version() >= m.version)
            .await;
        assert_eq!(&seen, &m.message, "seq {seq}");
        let row = w.row_at(&sid, *seq, m.version).await.expect("row");
        assert_eq!(row.writetime, m.version, "{row:?}");
        assert_eq!(row.content, m.message.content);
        let (version, member) = w.window_member(&sid, *seq).await.expect("member");
        assert_eq!((version, &member), (m.version, &m.message));
    }
    let recalled = last.values().filter(|m| is_recalled(&m.message)).count();
    assert_eq!(recalled, 3, "odd seqs recalled: {last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn recall_and_edit_are_refused_while_the_clock_is_skewed() {
    let w = World::new("mut_skew", Duration::from_secs(30)).await;
    let consumer = w.consumer(&unique("g"), &[]);
    let sid = unique("s");
    let sent = w.send(&sid, "hello").await;
    let before = w.until_stored(&sid, sent.seq, &[&consumer]).await;
    let clock = chatlog_producer::Clock::system();
    let skewed = Producer::with_clock(
        ProducerConfig {
            bootstrap_servers: kafka_bootstrap(),
            topic: w.topic.clone(),
            ..ProducerConfig::default()
        },
        w.session.clone(),
        &w.cql.keyspace,
        redis_connection().await,
        clock.clone(),
    )
    .await
    .expect("a producer with the host clock");
    // The host clock jumps a minute ahead: a mutation stamped with it would outrank later ones.
    clock.set_offset_us(60_000_000);
    let end = w.end_offsets();
    let recall = skewed.recall(&sid, sent.seq, &sender()).await;
    let edit = skewed.edit(&sid, sent.seq, b"x".to_vec(), &sender()).await;
    for r in [recall, edit] {
        assert!(
            matches!(r, Err(Error::ClockSkew { ahead: true, .. })),
            "{r:?}"
        );
    }
    assert_eq!(w.end_offsets(), end, "nothing produced while skewed");
    assert_eq!(
        w.history.get(&sid, &[sent.seq]).await.unwrap().messages,
        vec![before]
    );
    // Back in bounds, it mutates again.
    clock.set_offset_us(0);
    let recalled = skewed
        .recall(&sid, sent.seq, &sender())
        .await
        .expect("recall");
    let seen = w
        .until_history(&sid, sent.seq, &[&consumer], is_recalled)
        .await;
    assert_eq!(seen, recalled.message);
}
