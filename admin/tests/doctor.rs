//! `chatlog doctor` against the local stack: a healthy setup is all `ok` (exit 0); a missing topic,
//! pending migrations or an unreachable Redis are FAIL lines naming what is wrong (exit 1), and
//! the other services are still checked.

mod common;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The lines of doctor's output as (check, verdict, detail); the summary line last.
fn lines(stdout: &str) -> (Vec<(String, String, String)>, String) {
    let mut all: Vec<&str> = stdout.lines().collect();
    let summary = all.pop().unwrap_or_default().to_owned();
    let checks = all
        .iter()
        .map(|l| {
            let (name, rest) = l.split_at(20.min(l.len()));
            let rest = rest.trim_start();
            let (verdict, detail) = rest.split_once(' ').unwrap_or((rest, ""));
            (
                name.trim().to_owned(),
                verdict.to_owned(),
                detail.trim().to_owned(),
            )
        })
        .collect();
    (checks, summary)
}

/// The (verdict, detail) of check `name`, or a panic showing the whole run.
fn line<'a>(
    checks: &'a [(String, String, String)],
    name: &str,
    ran: &common::Ran,
) -> (&'a str, &'a str) {
    checks
        .iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, v, d)| (v.as_str(), d.as_str()))
        .unwrap_or_else(|| panic!("no `{name}` line:\n{ran}"))
}

/// A DLQ topic as docs/OPERATIONS.md says to create it: `max.message.bytes` large enough for the
/// largest record the consumer accepts (1 MiB by default) plus its DLQ headers.
async fn create_dlq_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", chatlog::kafka_bootstrap())
        .create()
        .expect("admin client");
    let topic =
        NewTopic::new(name, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "1064960");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&[topic], &opts)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}",
                chatlog::stack_hint("Kafka", &chatlog::kafka_bootstrap())
            )
        });
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

/// Whether `topic` exists (asked without creating it).
fn topic_exists(topic: &str) -> bool {
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", chatlog::kafka_bootstrap())
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("metadata client");
    let meta = probe
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    meta.topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}

#[tokio::test]
async fn doctor_reports_a_healthy_stack() {
    let (session, cql) = chatlog::fresh_keyspace("doctor_ok").await;
    let topic = chatlog::unique("doctor_topic");
    let dlq = chatlog::unique("doctor_dlq");
    chatlog::create_topic(&topic, 3).await;
    create_dlq_topic(&dlq).await;
    // A consumer of this topic has started: its limits are published (by the consumer's code).
    let mut consumer = chatlog_consumer::Config {
        cql: cql.clone(),
        ..Default::default()
    };
    consumer.kafka.topic = topic.clone();
    consumer.kafka.transactional_id = chatlog::unique("doctor_instance");
    consumer
        .publish_limits(&session)
        .await
        .expect("publish limits");

    let ran = common::run(
        common::chatlog(&cql.keyspace),
        &["--topic", &topic, "--dlq-topic", &dlq, "doctor"],
    )
    .await;

    assert_eq!(ran.code, Some(0), "{ran}");
    let (checks, summary) = lines(&ran.stdout);
    for (name, verdict, detail) in &checks {
        assert_eq!(verdict, "ok", "{name}: {detail}\n{ran}");
    }
    for name in [
        "kafka",
        "kafka topic",
        "kafka dlq topic",
        "kafka transactions",
        "cql",
        "cql batch size",
        "cql keyspace",
        "cql migrations",
        "redis",
        "redis role",
        "clock redis",
        "clock cql",
        "consumer limits",
    ] {
        line(&checks, name, &ran);
    }
    // The local stack runs Kafka 4.x: its finalized metadata.version is named 4.<minor>-IV<n>,
    // read with the doctor's own ApiVersions request (librdkafka does not tell it).
    let (_, detail) = line(&checks, "kafka", &ran);
    let version = detail
        .split_once("metadata.version ")
        .map(|(_, v)| v.split([',', ' ']).next().unwrap_or_default())
        .unwrap_or_else(|| panic!("the kafka line names no metadata.version\n{ran}"));
    assert!(version.starts_with("4."), "version {version:?}\n{ran}");
    let (_, detail) = line(&checks, "kafka topic", &ran);
    assert!(detail.contains(&format!("{topic}: 3 partitions")), "{ran}");
    let (_, detail) = line(&checks, "kafka dlq topic", &ran);
    assert!(detail.contains(&format!("{dlq}: 1 partition")), "{ran}");
    let (_, detail) = line(&checks, "cql migrations", &ran);
    let total = chatlog_store::migrate::MIGRATIONS.len();
    assert!(detail.contains(&format!("all {total} applied")), "{ran}");
    let (_, detail) = line(&checks, "consumer limits", &ran);
    assert!(detail.contains("1 instance published"), "{ran}");
    // The stack's Cassandra keeps the default thresholds (dev/conf/cassandra/cassandra.yaml).
    let (_, detail) = line(&checks, "cql batch size", &ran);
    assert!(
        detail.contains("fail threshold (50 KiB)") && detail.contains("above 5 KiB"),
        "{ran}"
    );
    assert_eq!(
        summary,
        format!("doctor: {} ok, 0 warn, 0 FAIL", checks.len()),
        "{ran}"
    );
}

#[tokio::test]
async fn doctor_fails_when_batches_would_exceed_the_nodes_fail_threshold() {
    // writer.max_bytes above Cassandra's batch_size_fail_threshold (50 KiB): full partition
    // batches would be refused by the node.
    let (_session, cql) = chatlog::fresh_keyspace("doctor_batch").await;
    let topic = chatlog::unique("doctor_batch_topic");
    let dlq = chatlog::unique("doctor_dlq");
    chatlog::create_topic(&topic, 1).await;
    create_dlq_topic(&dlq).await;
    let mut cmd = common::chatlog(&cql.keyspace);
    cmd.env("CHATLOG__WRITER__MAX_BYTES", (60 * 1024).to_string());

    let ran = common::run(cmd, &["--topic", &topic, "--dlq-topic", &dlq, "doctor"]).await;

    assert_eq!(ran.code, Some(1), "{ran}");
    let (checks, _) = lines(&ran.stdout);
    let (verdict, detail) = line(&checks, "cql batch size", &ran);
    assert_eq!(verdict, "FAIL", "{ran}");
    assert!(
        detail.contains("60 KiB") && detail.contains("(50 KiB)"),
        "{ran}"
    );
}

#[tokio::test]
async fn doctor_fails_on_a_missing_topic_and_pending_migrations() {
    // The keyspace exists (migration 1 run by hand), nothing else is applied.
    let cql = chatlog::cql_config(&chatlog::unique("doctor_pending"));
    let session = cql.connect().await.expect("connect to CQL");
    for stmt in chatlog_store::migrate::MIGRATIONS[0].statements(&cql) {
        session
            .query_unpaged(stmt, ())
            .await
            .expect("create keyspace");
    }
    let topic = chatlog::unique("doctor_missing");
    let dlq = chatlog::unique("doctor_dlq");
    create_dlq_topic(&dlq).await;

    let ran = common::run(
        common::chatlog(&cql.keyspace),
        &["--topic", &topic, "--dlq-topic", &dlq, "doctor"],
    )
    .await;

    assert_eq!(ran.code, Some(1), "{ran}");
    let (checks, summary) = lines(&ran.stdout);
    let (verdict, detail) = line(&checks, "kafka topic", &ran);
    assert_eq!(verdict, "FAIL", "{ran}");
    assert!(
        detail.contains(&topic) && detail.contains("does not exist"),
        "{ran}"
    );
    let (verdict, detail) = line(&checks, "cql migrations", &ran);
    assert_eq!(verdict, "FAIL", "{ran}");
    let total = chatlog_store::migrate::MIGRATIONS.len();
    assert!(
        detail.contains(&format!("{total} of {total} pending"))
            && detail.contains("chatlog migrate up"),
        "{ran}"
    );
    // The rest is checked and fine.
    for name in ["kafka", "kafka dlq topic", "cql", "cql keyspace", "redis"] {
        assert_eq!(line(&checks, name, &ran).0, "ok", "{name}\n{ran}");
    }
    assert!(summary.ends_with(" 2 FAIL"), "{ran}");
    // Looking did not create the topic.
    assert!(!topic_exists(&topic), "doctor created topic {topic}");
}

#[tokio::test]
async fn doctor_fails_when_redis_is_unreachable() {
    let (_session, cql) = chatlog::fresh_keyspace("doctor_noredis").await;
    let topic = chatlog::unique("doctor_topic");
    let dlq = chatlog::unique("doctor_dlq");
    chatlog::create_topic(&topic, 1).await;
    create_dlq_topic(&dlq).await;
    let url = format!("redis://127.0.0.1:{}/", chatlog::free_port());

    let ran = common::run(
        common::chatlog(&cql.keyspace),
        &[
            "--topic",
            &topic,
            "--dlq-topic",
            &dlq,
            "--redis-url",
            &url,
            "doctor",
            "--timeout",
            "5s",
        ],
    )
    .await;

    assert_eq!(ran.code, Some(1), "{ran}");
    let (checks, _) = lines(&ran.stdout);
    let (verdict, detail) = line(&checks, "redis", &ran);
    assert_eq!(verdict, "FAIL", "{ran}");
    assert!(
        detail.contains(&url) && detail.contains("dev/stack.sh up"),
        "{ran}"
    );
    for name in ["redis role", "clock redis"] {
        assert_eq!(line(&checks, name, &ran).0, "FAIL", "{name}\n{ran}");
    }
    // Kafka and CQL are still checked, and fine.
    for name in [
        "kafka",
        "kafka topic",
        "kafka dlq topic",
        "cql",
        "cql keyspace",
        "cql migrations",
        "clock cql",
    ] {
        assert_eq!(line(&checks, name, &ran).0, "ok", "{name}\n{ran}");
    }
}

#[tokio::test]
async fn doctor_fails_when_kafka_and_cql_are_unreachable() {
    let kafka = format!("127.0.0.1:{}", chatlog::free_port());
    let cql = format!("127.0.0.1:{}", chatlog::free_port());

    let ran = common::run(
        common::chatlog(&chatlog::unique("doctor_nocql")),
        &[
            "--bootstrap-servers",
            &kafka,
            "--cql-nodes",
            &cql,
            "doctor",
            "--timeout",
            "3s",
        ],
    )
    .await;

    assert_eq!(ran.code, Some(1), "{ran}");
    let (checks, _) = lines(&ran.stdout);
    for (name, address) in [("kafka", &kafka), ("cql", &cql)] {
        let (verdict, detail) = line(&checks, name, &ran);
        assert_eq!(verdict, "FAIL", "{name}\n{ran}");
        assert!(
            detail.contains(address.as_str()) && detail.contains("dev/stack.sh up"),
            "{name}\n{ran}"
        );
    }
    for name in ["kafka topic", "cql migrations", "clock cql"] {
        let (verdict, detail) = line(&checks, name, &ran);
        assert_eq!(verdict, "FAIL", "{name}\n{ran}");
        assert!(detail.contains("not checked"), "{name}\n{ran}");
    }
    // Redis is still checked, and fine.
    for name in ["redis", "redis role", "clock redis"] {
        assert_eq!(line(&checks, name, &ran).0, "ok", "{name}\n{ran}");
    }
}

/// On a Redis Cluster (`dev/cluster.sh up`) the doctor checks the cluster as a whole — every slot
/// served, a replica per master — and every master serving slots, not whichever node answered.
#[tokio::test]
async fn cluster_doctor_checks_the_slots_and_every_master() {
    chatlog::cluster::settled().await;
    let (_session, cql) = chatlog::fresh_keyspace("doctor_cluster").await;
    let topic = chatlog::unique("doctor_topic");
    let dlq = chatlog::unique("doctor_dlq");
    chatlog::create_topic(&topic, 1).await;
    create_dlq_topic(&dlq).await;
    let mut cmd = common::chatlog(&cql.keyspace);
    cmd.env(
        "CHATLOG_REDIS_CLUSTER_NODES",
        chatlog::cluster::redis_nodes().join(","),
    );

    let ran = common::run(cmd, &["--topic", &topic, "--dlq-topic", &dlq, "doctor"]).await;

    let (checks, _) = lines(&ran.stdout);
    let (verdict, detail) = line(&checks, "redis cluster", &ran);
    assert_eq!(verdict, "ok", "{ran}");
    assert!(
        detail.starts_with("3 masters serving 16384 of 16384 slots, 3 live replicas"),
        "{ran}"
    );
    let masters: Vec<String> = chatlog::cluster::nodes()
        .await
        .into_iter()
        .filter(|n| n.master && !n.failed && !n.slots.is_empty())
        .map(|n| n.address)
        .collect();
    let versions: Vec<&(String, String, String)> =
        checks.iter().filter(|(n, _, _)| n == "redis").collect();
    assert_eq!(
        versions.len(),
        masters.len(),
        "a `redis` line per master\n{ran}"
    );
    for address in &masters {
        assert!(
            versions
                .iter()
                .any(|(_, v, d)| v == "ok" && d.contains(address.as_str())),
            "no ok `redis` line for master {address}\n{ran}"
        );
    }
    let roles: Vec<&(String, String, String)> = checks
        .iter()
        .filter(|(n, _, _)| n == "redis role")
        .collect();
    assert_eq!(roles.len(), masters.len(), "{ran}");
    assert!(
        roles
            .iter()
            .all(|(_, v, d)| v == "ok" && d.starts_with("master")),
        "{ran}"
    );
    assert_eq!(ran.code, Some(0), "{ran}");
}
