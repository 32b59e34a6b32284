//! Smoke test of the local stack: each service is real, speaks the protocol chatlog relies on, and
//! a missing one fails here loudly (never a silent skip).
//!
//! - Kafka: a transactional producer whose aborted records a `read_committed` consumer never sees,
//!   and a consume-transform-produce step whose offsets are committed through the transaction.
//! - CQL: keyspace + table, a prepared insert, an UNLOGGED batch, a paged select.
//! - Redis: ZADD/ZRANGE and a script run by EVALSHA.

use std::time::Duration;

use chatlog::{cql_nodes, create_topic, kafka_bootstrap, redis_url, stack_hint, unique};
use futures::TryStreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

fn consumer(group: &str, isolation: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer")
}

/// Reads `topic` partition 0 until a record with payload `until` arrives; returns every payload read.
fn read_until(consumer: &BaseConsumer, topic: &str, until: &str) -> Vec<String> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    let deadline = std::time::Instant::now() + KAFKA_TIMEOUT;
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("consume");
            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            let done = payload == until;
            seen.push(payload);
            if done {
                return seen;
            }
        }
    }
    panic!("{until:?} not read from {topic} within {KAFKA_TIMEOUT:?}; read {seen:?}");
}

#[test]
fn kafka_transactions_hide_aborted_records_and_commit_offsets() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = unique("smoke_out");
    let input = unique("smoke_in");
    rt.block_on(create_topic(&out, 1));
    rt.block_on(create_topic(&input, 1));

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("transactional.id", unique("smoke_txn"))
        .set("transaction.timeout.ms", "30000")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(KAFKA_TIMEOUT)
        .unwrap_or_else(|e| {
            panic!(
                "init_transactions: {e}: {}",
                stack_hint("Kafka", &kafka_bootstrap())
            )
        });

    producer.begin_transaction().unwrap();
    producer
        .send(BaseRecord::<str, str>::to(&out).payload("aborted-1"))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(KAFKA_TIMEOUT).unwrap();
    producer.abort_transaction(KAFKA_TIMEOUT).unwrap();

    producer.begin_transaction().unwrap();
    producer
        .send(BaseRecord::<str, str>::to(&out).payload("committed-1"))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.commit_transaction(Timeout::Never).unwrap();

    // read_uncommitted sees both, which proves the aborted record really reached the log ...
    let all = read_until(
        &consumer(&unique("g"), "read_uncommitted"),
        &out,
        "committed-1",
    );
    assert_eq!(all, ["aborted-1", "committed-1"]);
    // ... and read_committed hides it.
    let committed = read_until(
        &consumer(&unique("g"), "read_committed"),
        &out,
        "committed-1",
    );
    assert_eq!(committed, ["committed-1"]);

    // Consume-transform-produce: the input offset is committed by the transaction, not the consumer.
    let plain: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .unwrap();
    for i in 0..3 {
        plain
            .send(BaseRecord::<str, str>::to(&input).payload(&format!("in-{i}")))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    plain.flush(KAFKA_TIMEOUT).unwrap();

    let group = unique("smoke_group");
    let source = consumer(&group, "read_committed");
    source.subscribe(&[&input]).unwrap();
    let deadline = std::time::Instant::now() + KAFKA_TIMEOUT;
    let mut next_offset = None;
    while next_offset.is_none() && std::time::Instant::now() < deadline {
        if let Some(m) = source.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            next_offset = Some(m.offset() + 1);
        }
    }
    let next_offset = next_offset.expect("no record from the input topic");
    producer.begin_transaction().unwrap();
    producer
        .send(BaseRecord::<str, str>::to(&out).payload("derived"))
        .map_err(|(e, _)| e)
        .unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&input, 0, Offset::Offset(next_offset))
        .unwrap();
    producer
        .send_offsets_to_transaction(&offsets, &source.group_metadata().unwrap(), KAFKA_TIMEOUT)
        .unwrap();
    producer.commit_transaction(Timeout::Never).unwrap();
    drop(source);

    let check = consumer(&group, "read_committed");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&input, 0);
    let committed = check.committed_offsets(tpl, KAFKA_TIMEOUT).unwrap();
    assert_eq!(
        committed.find_partition(&input, 0).unwrap().offset(),
        Offset::Offset(next_offset),
        "the transaction must commit the consumer group's offset"
    );
}

#[tokio::test]
async fn cql_prepared_insert_unlogged_batch_and_paged_select() {
    use scylla::client::session_builder::SessionBuilder;
    use scylla::statement::batch::{Batch, BatchType};

    let nodes = cql_nodes();
    let session = SessionBuilder::new()
        .known_nodes(&nodes)
        .user(chatlog::cql_username(), chatlog::cql_password().expose())
        .connection_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", stack_hint("CQL database", &nodes.join(","))));
    let ks = unique("smoke");
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            (),
        )
        .await
        .unwrap();
    session
        .query_unpaged(
            format!("CREATE TABLE {ks}.t (p text, c int, v text, PRIMARY KEY (p, c))"),
            (),
        )
        .await
        .unwrap();
    let insert = session
        .prepare(format!("INSERT INTO {ks}.t (p, c, v) VALUES (?, ?, ?)"))
        .await
        .unwrap();
    session
        .execute_unpaged(&insert, ("p1", 0, "single"))
        .await
        .unwrap();

    let mut batch = Batch::new(BatchType::Unlogged);
    let mut values = Vec::new();
    for c in 1..=10 {
        batch.append_statement(insert.clone());
        values.push(("p1", c, format!("batched-{c}")));
    }
    session.batch(&batch, &values).await.unwrap();

    let mut select = session
        .prepare(format!("SELECT c, v FROM {ks}.t WHERE p = ?"))
        .await
        .unwrap();
    select.set_page_size(3);
    let rows: Vec<(i32, String)> = session
        .execute_iter(select, ("p1",))
        .await
        .unwrap()
        .rows_stream::<(i32, String)>()
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        11,
        "paging must return every row across 4 pages"
    );
    assert_eq!(rows[0], (0, "single".to_owned()));
    assert_eq!(rows[10], (10, "batched-10".to_owned()));
    session
        .query_unpaged(format!("DROP KEYSPACE {ks}"), ())
        .await
        .unwrap();
}

#[tokio::test]
async fn redis_zset_and_evalsha() {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .unwrap_or_else(|_| panic!("{}", stack_hint("Redis", &url)))
    .unwrap_or_else(|e| panic!("{}: {e}", stack_hint("Redis", &url)));
    let key = unique("smoke:zset");
    let _: () = redis::cmd("ZADD")
        .arg(&key)
        .arg(2)
        .arg("b")
        .arg(1)
        .arg("a")
        .arg(3)
        .arg("c")
        .query_async(&mut con)
        .await
        .unwrap();
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(members, ["a", "b", "c"]);

    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('ZCARD', KEYS[1]) * tonumber(ARGV[1])")
        .query_async(&mut con)
        .await
        .unwrap();
    let n: i64 = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(1)
        .arg(&key)
        .arg(10)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(n, 30);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
}
