//! `chatlog dlq list|show|replay` against the local stack's Kafka: DLQ records written with the
//! consumer's headers, read back by the binary, replayed, and the replayed records read back from
//! the target topic — their partitions checked against Java's own partitioner (kafka-clients,
//! through admin/tests/java/Partition.java) and against the producer library's librdkafka
//! settings.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chatlog_kafka::dlq;
use chatlog_schemas::{ChatMessage, Codec, ContentType, MessageState, SessionType};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// Partitions of the replay targets: a prime, so a wrong hash rarely agrees by chance.
const PARTITIONS: i32 = 7;
/// The keyspace named on the command line (the dlq subcommands never open CQL).
const KEYSPACE: &str = "chatlog_dlq_tests";

/// One record to put in the DLQ.
#[derive(Debug, Clone)]
struct Poison {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Poison {
    /// A valid message of session `key` refused with `reason`, from `chat.src/3@<100+n>`.
    fn message(key: &str, n: i64, reason: &str) -> Poison {
        Poison {
            key: Some(key.as_bytes().to_vec()),
            value: codec().encode(&message(key, n)).expect("encode"),
            headers: vec![
                (dlq::REASON, reason.to_owned()),
                (dlq::DETAIL, format!("refused for the test ({reason})")),
                (dlq::TOPIC, "chat.src".to_owned()),
                (dlq::PARTITION, "3".to_owned()),
                (dlq::OFFSET, (100 + n).to_string()),
            ],
        }
    }
}

fn codec() -> Codec {
    Codec::new(1 << 20)
}

fn message(session: &str, seq: i64) -> ChatMessage {
    ChatMessage {
        msg_id: format!("0190a5e0-0000-7000-8000-{seq:012}"),
        client_msg_id: format!("c-{seq}"),
        session_id: session.to_owned(),
        session_type: SessionType::Group,
        seq,
        sender_id: format!("u-{seq}"),
        content_type: ContentType::Text,
        content: format!("hello {seq}").into_bytes(),
        send_time_ms: 1_700_000_000_000,
        server_time_us: 1_700_000_000_000_000 + seq,
        ext: Default::default(),
        state: MessageState::Normal,
    }
}

/// Session-id-like keys of every shape: ASCII and not, short and long (each tail length of
/// murmur2's 4-byte blocks), unique to this run.
fn session_keys(run: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 5 {
            0 => format!("g:{run}-{i}"),
            1 => format!("s:{i}"),
            2 => format!("群聊-{run}-{i}"),
            3 => format!("p:ünïcødé-{i}-{run}-🙂"),
            _ => format!("{i}{}", "x".repeat(i % 4)),
        })
        .collect()
}

/// `chatlog --topic target --dlq-topic dlq_topic …`.
fn chatlog(target: &str, dlq_topic: &str) -> std::process::Command {
    let mut cmd = common::chatlog(KEYSPACE);
    cmd.args(["--topic", target, "--dlq-topic", dlq_topic]);
    cmd
}

fn plain_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", chatlog::kafka_bootstrap())
        .create()
        .expect("producer")
}

/// How records are written to the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Without a transaction.
    Plain,
    /// In one transaction, committed (as the consumer writes them: a marker follows).
    Committed,
    /// In one transaction, aborted (a `read_committed` reader never sees them).
    Aborted,
}

/// Writes `records` to partition `i % partitions` of `topic`, in order; their DLQ positions
/// (`partition/offset`).
async fn write_dlq(topic: &str, partitions: i32, records: &[Poison], how: Write) -> Vec<String> {
    let timeout = Duration::from_secs(30);
    let producer: FutureProducer = match how {
        Write::Plain => plain_producer(),
        Write::Committed | Write::Aborted => {
            let p: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", chatlog::kafka_bootstrap())
                .set("transactional.id", chatlog::unique("dlq_test_writer"))
                .create()
                .expect("transactional producer");
            p.init_transactions(timeout).expect("init transactions");
            p.begin_transaction().expect("begin");
            p
        }
    };
    let mut positions = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_str()),
            });
        }
        let partition = i as i32 % partitions;
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .payload(&r.value)
            .headers(headers);
        if let Some(k) = &r.key {
            record = record.key(k.as_slice());
        }
        let d = producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("write the DLQ record: {e}"));
        positions.push(format!("{}/{}", d.partition, d.offset));
    }
    match how {
        Write::Plain => {}
        Write::Committed => producer.commit_transaction(timeout).expect("commit"),
        Write::Aborted => producer.abort_transaction(timeout).expect("abort"),
    }
    positions
}

/// One record read from a topic.
#[derive(Debug, Clone)]
struct Landed {
    partition: i32,
    key: Vec<u8>,
    value: Vec<u8>,
    timestamp_ms: i64,
}

/// Every record of `topic` (`partitions` partitions), once `expected` are there, checked to be all
/// it holds ([`chatlog::read_topic`]).
async fn read_topic(topic: &str, partitions: i32, expected: usize) -> Vec<Landed> {
    chatlog::read_topic(topic, partitions, expected)
        .await
        .iter()
        .map(|m| Landed {
            partition: m.partition(),
            key: m.key().expect("keyed").to_vec(),
            value: m.payload().unwrap_or_default().to_vec(),
            timestamp_ms: m.timestamp().to_millis().expect("timestamp"),
        })
        .collect()
}

/// Records in `topic` (its high watermarks summed).
async fn record_count(topic: &str, partitions: i32) -> i64 {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", chatlog::kafka_bootstrap())
            .create()
            .expect("probe");
        (0..partitions)
            .map(|p| {
                probe
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .sum()
    })
    .await
    .expect("join")
}

/// The partitions Java's partitioner (kafka-clients' BuiltInPartitioner.partitionForKey, i.e.
/// `toPositive(Utils.murmur2(key)) % partitions`) gives `keys`, from a real JVM.
fn java_partitions(partitions: i32, keys: &[String]) -> Vec<i32> {
    let lib = std::env::var("CHATLOG_KAFKA_LIB")
        .expect("CHATLOG_KAFKA_LIB (eval \"$(dev/stack.sh env)\"): the Kafka jars");
    // The stack's cache holds the jars directly; a Kafka distribution holds them in libs/.
    let libs = std::path::Path::new(&lib).join("libs");
    let classpath = if libs.is_dir() {
        format!("{}/*", libs.display())
    } else {
        format!("{lib}/*")
    };
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/java/Partition.java");
    let hex_keys: Vec<String> = keys
        .iter()
        .map(|k| k.bytes().map(|b| format!("{b:02x}")).collect())
        .collect();
    let out = std::process::Command::new("java")
        .args(["-cp", &classpath, source, &partitions.to_string()])
        .args(&hex_keys)
        .output()
        .expect("run java (Java 17 or later)");
    assert!(
        out.status.success(),
        "Partition.java: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().expect("a partition"))
        .collect();
    assert_eq!(parsed.len(), keys.len(), "one partition per key");
    parsed
}

/// The partitions the producer library's own librdkafka settings
/// (`ProducerConfig::client_config`) send `keys` to, through a real send to `topic`.
async fn producer_partitions(topic: &str, keys: &[String]) -> Vec<i32> {
    let producer: FutureProducer = chatlog::producer_config(topic)
        .client_config()
        .expect("the producer's settings")
        .create()
        .expect("producer");
    let mut partitions = Vec::new();
    for k in keys {
        let d = producer
            .send(
                FutureRecord::to(topic).key(k.as_str()).payload("x"),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("send {k:?}: {e}"));
        partitions.push(d.partition);
    }
    partitions
}

/// From replay output lines `P/O  reason  … to TOPIC/N…`: DLQ position → partition N.
fn destinations(stdout: &str, topic: &str) -> HashMap<String, i32> {
    let marker = format!(" to {topic}/");
    stdout
        .lines()
        .filter_map(|line| {
            let position = line.split_whitespace().next()?.to_owned();
            let rest = &line[line.find(&marker)? + marker.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            Some((position, digits.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_lands_in_the_partition_the_producer_would_choose() {
    let run = chatlog::unique("dlqr");
    let (dlq_topic, target, reference) = (
        format!("{run}_dlq"),
        format!("{run}_target"),
        format!("{run}_ref"),
    );
    chatlog::create_topic(&dlq_topic, 2).await;
    chatlog::create_topic(&target, PARTITIONS).await;
    chatlog::create_topic(&reference, PARTITIONS).await;
    let keys = session_keys(&run, 30);
    let records: Vec<Poison> = keys
        .iter()
        .zip(1..)
        .map(|(k, n)| Poison::message(k, n, "unknown_fingerprint"))
        .collect();
    let positions = write_dlq(&dlq_topic, 2, &records, Write::Plain).await;

    // What Java's partitioner and the producer library's settings choose for each key.
    let java = java_partitions(PARTITIONS, &keys);
    let producer = producer_partitions(&reference, &keys).await;
    let spread: BTreeSet<i32> = java.iter().copied().collect();
    assert!(
        spread.len() >= 4,
        "30 keys over {PARTITIONS} partitions should reach several: {java:?}"
    );

    // A dry run says where each record would go, and produces nothing.
    let dry = common::run(
        chatlog(&target, &dlq_topic),
        &["dlq", "replay", "--dry-run", "--quiet"],
    )
    .await;
    let dry_to = destinations(&dry.stdout, &target);
    assert_eq!(
        record_count(&target, PARTITIONS).await,
        0,
        "a dry run produced: {dry}"
    );

    let ran = common::run(
        chatlog(&target, &dlq_topic),
        &["dlq", "replay", "--rate", "0", "--quiet"],
    )
    .await;
    let landed = read_topic(&target, PARTITIONS, keys.len()).await;
    let by_key: HashMap<&[u8], &Landed> = landed.iter().map(|l| (l.key.as_slice(), l)).collect();
    for (i, key) in keys.iter().enumerate() {
        let l = by_key
            .get(key.as_bytes())
            .unwrap_or_else(|| panic!("{key:?} was not replayed: {ran}"));
        assert_eq!(
            (l.partition, producer[i], dry_to.get(&positions[i]).copied()),
            (java[i], java[i], Some(java[i])),
            "{key:?} (DLQ {}): (replayed to, the producer's settings, dry run) vs Java's \
             partitioner\n{ran}\n{dry}",
            positions[i]
        );
        assert_eq!(l.value, records[i].value, "{key:?}: the original bytes");
    }
    assert_eq!(dry.code, Some(0), "{dry}");
    assert!(
        dry.stdout.contains("would replay 30 to"),
        "dry run summary: {dry}"
    );
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(
        ran.stdout.contains("replayed 30 to") && ran.stdout.contains("skipped 0, failed 0"),
        "summary: {ran}"
    );
    // The replay's own lines name the partition each record landed in.
    let said = destinations(&ran.stdout, &target);
    for (i, p) in positions.iter().enumerate() {
        assert_eq!(said.get(p), Some(&java[i]), "line of {p}: {ran}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_and_show_read_the_headers() {
    let run = chatlog::unique("dlql");
    let dlq_topic = format!("{run}_dlq");
    chatlog::create_topic(&dlq_topic, 1).await;
    let session = format!("群聊-{run}");
    let long_detail = format!(
        "redis: WRONGTYPE Operation against a key holding the wrong kind of value\n(session \
         {session}, seq 2) — and more words, so that list has to shorten it"
    );
    let mut failed = Poison::message(&format!("g:{run}"), 2, "write_failed");
    failed.headers[1].1 = long_detail.clone();
    failed.headers.push((dlq::STAGE, "redis".into()));
    let garbage = vec![0xc3, 0x01, 0xff, 0xee, 0x00];
    let records = vec![
        Poison::message(&session, 1, "unknown_fingerprint"),
        failed,
        Poison {
            key: Some(vec![0xff, 0xfe, 0x01]),
            value: garbage.clone(),
            headers: vec![
                (dlq::REASON, "bad_magic".into()),
                (dlq::DETAIL, "not single-object encoding".into()),
                (dlq::TOPIC, "chat.src".into()),
                (dlq::PARTITION, "0".into()),
                (dlq::OFFSET, "7".into()),
            ],
        },
    ];
    // As the consumer writes them: in a transaction, then a marker; and an aborted one after.
    let positions = write_dlq(&dlq_topic, 1, &records, Write::Committed).await;
    let aborted_key = format!("aborted-{run}");
    let aborted = write_dlq(
        &dlq_topic,
        1,
        &[Poison::message(&aborted_key, 4, "invalid")],
        Write::Aborted,
    )
    .await;
    let cli = || chatlog("unused", &dlq_topic);

    let list = common::run(cli(), &["dlq", "list"]).await;
    assert_eq!(list.code, Some(0), "{list}");
    let line = |position: &str| {
        list.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(position))
            .unwrap_or_else(|| panic!("no line for {position}: {list}"))
            .to_owned()
    };
    let first = line(&positions[0]);
    for part in [
        "unknown_fingerprint",
        "chat.src/3@101",
        &format!("{session:?}"),
        &records[0].value.len().to_string(),
    ] {
        assert!(first.contains(part), "{part} in {first:?}");
    }
    assert!(
        !list.stdout.contains(&aborted_key) && !list.stdout.contains("invalid"),
        "an aborted record is listed: {list}"
    );
    let second = line(&positions[1]);
    assert!(
        second.contains("write_failed")
            && second.contains("redis: WRONGTYPE Operation")
            && second.contains('…')
            && !second.contains("shorten it"),
        "the detail on one line, shortened: {second:?}"
    );
    let third = line(&positions[2]);
    assert!(
        third.contains("bad_magic") && third.contains("0xfffe01") && third.contains("chat.src/0@7"),
        "{third:?}"
    );
    assert!(
        list.stdout
            .contains("3 records; by reason: bad_magic 1, unknown_fingerprint 1, write_failed 1"),
        "summary: {list}"
    );

    let only = common::run(cli(), &["dlq", "list", "--reason", "write_failed"]).await;
    assert_eq!(only.code, Some(0), "{only}");
    assert!(
        only.stdout.contains(&positions[1])
            && !only.stdout.contains("unknown_fingerprint")
            && only.stdout.contains("1 record; by reason: write_failed 1"),
        "{only}"
    );

    let json = common::run(cli(), &["dlq", "list", "--json"]).await;
    assert_eq!(json.code, Some(0), "{json}");
    let objects: Vec<serde_json::Value> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert_eq!(objects.len(), 3, "{json}");
    let o = &objects[1];
    assert_eq!(o["reason"], "write_failed");
    assert_eq!(o["stage"], "redis");
    assert_eq!(o["detail"], long_detail.as_str(), "the whole detail");
    assert_eq!(o["origin_topic"], "chat.src");
    assert_eq!(o["origin_partition"], 3);
    assert_eq!(o["origin_offset"], 102);
    assert_eq!(o["key"], format!("g:{run}"));
    assert_eq!(o["truncated"], false);
    assert_eq!(objects[2]["key"], serde_json::Value::Null);
    assert_eq!(objects[2]["key_hex"], "fffe01");
    assert_eq!(objects[2]["value_bytes"], garbage.len());

    let (p0, o0) = positions[0].split_once('/').expect("p/o");
    let show = common::run(cli(), &["dlq", "show", p0, o0]).await;
    assert_eq!(show.code, Some(0), "{show}");
    let sent = message(&session, 1);
    for part in [
        "chatlog-dlq-reason",
        "unknown_fingerprint",
        "chatlog-dlq-offset",
        "101",
        "decodes",
        &sent.msg_id,
        &format!("{session:?} (= the key)"),
        "\"hello 1\"",
        "GROUP",
    ] {
        assert!(show.stdout.contains(part), "{part} in: {show}");
    }
    let (p2, o2) = positions[2].split_once('/').expect("p/o");
    let show = common::run(cli(), &["dlq", "show", p2, o2]).await;
    assert_eq!(show.code, Some(0), "{show}");
    let error = codec().decode(&garbage).expect_err("garbage");
    assert!(
        show.stdout.contains(&format!(
            "does not decode: {error} (reason {})",
            error.reason()
        )),
        "{show}"
    );

    let (pa, oa) = aborted[0].split_once('/').expect("p/o");
    let hidden = common::run(cli(), &["dlq", "show", pa, oa]).await;
    assert_eq!(hidden.code, Some(1), "{hidden}");
    assert!(
        hidden.stderr.contains(&format!(
            "no committed record at offset {oa} of partition {pa}"
        )),
        "{hidden}"
    );
    let beyond = common::run(cli(), &["dlq", "show", "0", "999"]).await;
    assert_eq!(beyond.code, Some(1), "{beyond}");
    assert!(
        beyond
            .stderr
            .contains("no committed record at offset 999 of partition 0"),
        "{beyond}"
    );
    let no_partition = common::run(cli(), &["dlq", "list", "--partition", "5"]).await;
    assert_eq!(no_partition.code, Some(2), "{no_partition}");
    assert!(
        no_partition.stderr.contains("has no partition 5"),
        "{no_partition}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_skips_truncated_copies() {
    let run = chatlog::unique("dlqt");
    let (dlq_topic, target) = (format!("{run}_dlq"), format!("{run}_target"));
    chatlog::create_topic(&dlq_topic, 1).await;
    chatlog::create_topic(&target, 3).await;
    let keys = session_keys(&run, 4);
    let mut records: Vec<Poison> = keys
        .iter()
        .zip(1..)
        .map(|(k, n)| Poison::message(k, n, "oversize"))
        .collect();
    // A copy too large for the DLQ: its first bytes, the original length and hash.
    let mut truncated = Poison::message(&format!("g:{run}-big"), 9, "oversize");
    truncated.value.truncate(10);
    let sha = "ab".repeat(32);
    truncated.headers.push((dlq::TRUNCATED, "2097152".into()));
    truncated.headers.push((dlq::SHA256, sha.clone()));
    records.insert(2, truncated);
    let mut keyless = Poison::message(&format!("g:{run}-nokey"), 10, "no_key");
    keyless.key = None;
    records.push(keyless);
    let positions = write_dlq(&dlq_topic, 1, &records, Write::Plain).await;

    // 10 a second: the 4 records replayed take at least 300 ms from the first to the last.
    let ran = common::run(
        chatlog(&target, &dlq_topic),
        &["dlq", "replay", "--rate", "10", "--quiet"],
    )
    .await;
    assert_eq!(ran.code, Some(1), "skipped records mean exit 1: {ran}");
    let skipped = ran
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{} ", positions[2])))
        .unwrap_or_else(|| panic!("no line for the truncated copy: {ran}"));
    assert!(
        skipped.contains("skipped: truncated copy of 2097152 bytes")
            && skipped.contains(&sha)
            && skipped.contains("producer's copy"),
        "{skipped}"
    );
    assert!(
        ran.stdout.contains("replayed 4 to")
            && ran
                .stdout
                .contains("skipped 2 (no key 1, truncated copy 1), failed 0"),
        "summary: {ran}"
    );
    let landed = read_topic(&target, 3, 4).await;
    let got: BTreeSet<Vec<u8>> = landed.iter().map(|l| l.key.clone()).collect();
    let want: BTreeSet<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
    assert_eq!(got, want, "only the whole records are replayed");
    let first = landed.iter().map(|l| l.timestamp_ms).min().expect("some");
    let last = landed.iter().map(|l| l.timestamp_ms).max().expect("some");
    assert!(
        last - first >= 290,
        "--rate 10 spaces 4 records over 300 ms, not {} ms",
        last - first
    );
}
