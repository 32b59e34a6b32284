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

/// `--metrics-listen` serves the producer's metrics as a Logic process would (histograms with
/// buckets, not summaries), and `--forever` stops cleanly on SIGTERM with its summary.
#[tokio::test]
async fn load_serves_producer_metrics_and_stops_on_sigterm() {
    let (_session, cql) = chatlog::fresh_keyspace("load_metrics").await;
    let topic = chatlog::unique("load_metrics_in");
    chatlog::create_topic(&topic, 2).await;
    let port = chatlog::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = common::chatlog(&cql.keyspace);
    cmd.args([
        "--topic",
        &topic,
        "load",
        "--forever",
        "--messages",
        "50",
        "--sessions",
        "5",
    ])
    .args(["--rate", "200", "--quiet", "--metrics-listen", &listen])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("start chatlog load");
    let addr: std::net::SocketAddr = listen.parse().expect("address");
    let ok = "chatlog_producer_records_total{result=\"ok\"}";
    let text = chatlog::poll_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        move || async move {
            match chatlog::http::get(addr, "/metrics") {
                Ok((200, text)) if chatlog::prometheus::sample(&text, ok).unwrap_or(0.0) >= 1.0 => {
                    Ok(text)
                }
                Ok((status, text)) => Err(format!("{status}: {text}")),
                Err(e) => Err(e.to_string()),
            }
        },
        |last| format!("no producer metrics on /metrics: {last}"),
    )
    .await;
    assert!(
        text.contains("chatlog_producer_send_duration_seconds_bucket"),
        "the send duration must be a histogram:\n{text}"
    );
    assert!(text.contains("chatlog_seq_allocations_total"), "{text}");
    chatlog::signal(child.id(), "-TERM").expect("SIGTERM");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("acknowledged, 0 failed"), "{stdout}");
}
