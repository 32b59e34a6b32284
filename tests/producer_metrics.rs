//! The producer library's own metrics reach the application's exporter: a Logic process that
//! installs a Prometheus recorder sees `chatlog_producer_*` and `chatlog_seq_allocations_total`
//! with the right counts, in an exposition that `promtool check metrics` accepts.
//! (Its own test binary: the global recorder can be installed once per process.)

use std::time::Duration;

use chatlog::{
    create_topic, fresh_keyspace, kafka_bootstrap, new_message, redis_connection, unique,
};
use chatlog_producer::{Producer, ProducerConfig};

fn value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from:\n{exposition}"))
}

#[tokio::test]
async fn producer_metrics_reach_the_applications_exporter() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("recorder");
    let topic = unique("pmetrics");
    create_topic(&topic, 2).await;
    let (session, cql) = fresh_keyspace("pmetrics").await;
    let producer = Producer::new(
        ProducerConfig {
            bootstrap_servers: kafka_bootstrap(),
            topic,
            ..ProducerConfig::default()
        },
        session,
        &cql.keyspace,
        redis_connection().await,
    )
    .await
    .unwrap();
    let sid = unique("pm");
    for i in 0..5 {
        producer
            .send(new_message(&sid, &format!("c{i}")))
            .await
            .unwrap();
    }
    // No client id: invalid.
    assert!(producer.send(new_message(&sid, "")).await.is_err());
    producer.close(Duration::from_secs(10)).await.unwrap();

    let text = handle.render();
    assert_eq!(
        value(&text, "chatlog_producer_records_total{result=\"ok\"}"),
        5.0
    );
    assert_eq!(
        value(&text, "chatlog_producer_records_total{result=\"invalid\"}"),
        1.0
    );
    let fast = text
        .lines()
        .filter(|l| l.starts_with("chatlog_seq_allocations_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum::<f64>();
    assert_eq!(fast, 5.0, "one allocation per accepted message:\n{text}");
    assert!(
        text.contains("chatlog_producer_send_duration_seconds"),
        "{text}"
    );

    // promtool: Debian package prometheus; dev/stack.sh installs it.
    let out = chatlog::run_with_input("promtool", &["check", "metrics"], text.as_bytes());
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
