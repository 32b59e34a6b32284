//! The consumer's bounds and `[limits]` against the real stack (issue 14, items 4 and 5): a
//! record whose server time is too far in the future goes to the DLQ as `skew` (an old one is a
//! replay and is stored), a seq above 2^53 as `invalid`; a running consumer publishes its
//! `[limits]` (what producers check at their start, tests/limits.rs) and enforces them.

mod common;

use std::time::Duration;

use chatlog_schemas::{Limits, MAX_SEQ, to_value_v1};
use common::{Env, base_time_us, message, poll_until};

const HOUR_US: i64 = 3_600_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_server_time_goes_to_the_dlq_as_skew_and_seq_above_2_pow_53_as_invalid() {
    let env = Env::new("skew", 1, 20).await;
    let s = chatlog::unique("skew");
    let base = base_time_us();
    let mut old = message(&s, 2, base, 0);
    old.server_time_us = base - 365 * 24 * HOUR_US; // a replay of a year-old record
    let mut future = message(&s, 3, base, 0);
    future.server_time_us = base + HOUR_US;
    env.produce(&[message(&s, 1, base, 0), old]).await;
    // Encoded by hand: the codec refuses to write either.
    let too_far = env
        .codec
        .encode_value(env.codec.fingerprint_v1(), to_value_v1(&future))
        .unwrap();
    let too_big = env
        .codec
        .encode_value(
            env.codec.fingerprint_v1(),
            to_value_v1(&message(&s, MAX_SEQ + 1, base, 0)),
        )
        .unwrap();
    env.produce_raw(&[
        (Some(s.clone()), Some(too_far.clone())),
        (Some(s.clone()), Some(too_big.clone())),
    ])
    .await;
    env.produce(&[message(&s, 4, base, 0)]).await;

    let consumer = env.spawn_consumer(&chatlog::unique("skew_txn"), &[]);
    env.wait_session(&s, 3, Duration::from_secs(120), &[&consumer])
        .await;
    let seqs: Vec<i64> = env.rows(&s, 4).await.iter().map(|r| r.0).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 4],
        "the year-old record is stored, the future one is not"
    );

    let mut dlq = env.read_dlq_records(2);
    dlq.sort_by(|a, b| {
        a.header("chatlog-dlq-reason")
            .cmp(b.header("chatlog-dlq-reason"))
    });
    let reasons: Vec<&str> = dlq.iter().map(|r| r.header("chatlog-dlq-reason")).collect();
    assert_eq!(reasons, vec!["invalid", "skew"], "each poison record once");
    assert_eq!(dlq[0].payload.as_deref(), Some(too_big.as_slice()));
    assert!(dlq[0].header("chatlog-dlq-detail").contains("2^53"));
    assert_eq!(dlq[1].payload.as_deref(), Some(too_far.as_slice()));
    let detail = dlq[1].header("chatlog-dlq-detail");
    assert!(
        detail.contains("ahead") && detail.contains("max_skew"),
        "{detail}"
    );
}

/// A consumer started with `[limits] max_content_bytes = 100` publishes them (the row a
/// producer with larger limits refuses to start against, tests/limits.rs) and sends a larger
/// message to the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_consumer_publishes_and_enforces_its_limits() {
    let env = Env::new("limits", 1, 20).await;
    let (_dir, config) = common::config_file(
        "limits",
        "[limits]\nmax_content_bytes = 100\nmax_skew = \"20s\"\n",
    );
    let txn = chatlog::unique("limits_txn");
    let consumer = env.spawn_consumer(&txn, &["--config", config.as_str()]);

    // The row appears once the consumer has started.
    let (envr, txnr) = (&env, &txn);
    let published = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        move || async move {
            let rows = chatlog_store::limits::read(&envr.session, &envr.cql.keyspace, &envr.topic)
                .await
                .expect("read consumer_limits");
            rows.into_iter().find(|p| p.instance == *txnr).ok_or(())
        },
        |()| format!("no limits published by {txn}:\n{}", consumer.log_text()),
    )
    .await;
    let want = Limits {
        max_content_bytes: 100,
        max_skew: Duration::from_secs(20),
        ..Limits::default()
    };
    assert_eq!(
        (published.limits, published.max_record_bytes),
        (want, 1 << 20)
    );

    // It enforces them.
    let s = chatlog::unique("lim");
    let base = base_time_us();
    let mut big = message(&s, 1, base, 0);
    big.content = vec![b'x'; 101];
    env.produce(&[big, message(&s, 2, base, 0)]).await;
    env.wait_session(&s, 1, Duration::from_secs(120), &[&consumer])
        .await;
    let dlq = env.read_dlq_records(1);
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header("chatlog-dlq-reason"), "invalid");
    assert!(dlq[0].header("chatlog-dlq-detail").contains("content"));
}
