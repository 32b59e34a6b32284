//! `chatlog load` sends through the producer library: every acknowledged send is a record on the
//! topic, keyed by its session, and the summary counts them.

mod common;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

/// Sum over the partitions of `topic` of (high watermark − low watermark).
fn records_on(topic: &str) -> i64 {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", chatlog::kafka_bootstrap())
        .set("group.id", chatlog::unique("load_count"))
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("topic metadata");
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .expect("watermarks");
            high - low
        })
        .sum()
}

#[tokio::test]
async fn load_sends_every_message_through_the_producer() {
    let (_session, cql) = chatlog::fresh_keyspace("load").await;
    let topic = chatlog::unique("load_in");
    chatlog::create_topic(&topic, 4).await;
    let ran = common::run(
        common::chatlog(&cql.keyspace),
        &[
            "--topic",
            &topic,
            "load",
            "--messages",
            "300",
            "--sessions",
            "7",
            "--rate",
            "0",
            "--json",
        ],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let summary: serde_json::Value =
        serde_json::from_str(ran.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {ran}"));
    assert_eq!(summary["acknowledged"], 300, "{ran}");
    assert_eq!(summary["failed"], serde_json::json!({}), "{ran}");
    assert!(
        summary["latency_ms"]["p99"].as_f64().unwrap_or(0.0) > 0.0,
        "{ran}"
    );
    assert_eq!(records_on(&topic), 300);
}

#[tokio::test]
async fn load_refuses_zero_sessions_as_a_usage_error() {
    let ran = common::run(common::chatlog("unused"), &["load", "--sessions", "0"]).await;
    assert_eq!(ran.code, Some(2), "{ran}");
    assert!(ran.stderr.contains("--sessions"), "{ran}");
}
