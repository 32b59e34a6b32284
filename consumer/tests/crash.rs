//! Crash replay: the consumer is killed with SIGKILL again and again in the middle of its batches
//! and restarted; in the end nothing is lost, nothing is duplicated (rows, windows and the DLQ under
//! read_committed), and every row's `writetime()` is its message's server time — exactly what a run
//! without crashes writes.

mod common;

use std::time::Duration;

use common::{Env, workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_batches_loses_and_duplicates_nothing() {
    let env = Env::new("crash", 4, 30).await;
    let per_session = 150;
    let (sessions, base, messages) = workload("c", 40, per_session);
    let total = messages.len();

    // Good records with some poison among them, which must reach the DLQ exactly once.
    let poison_count = 20;
    let mut records = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        records.push((
            Some(m.session_id.clone()),
            Some(env.codec.encode(m).unwrap()),
        ));
        if i % (total / poison_count) == 0 {
            records.push((
                Some(m.session_id.clone()),
                Some(format!("junk {i}").into_bytes()),
            ));
        }
    }
    let poisoned = records.len() - total;
    for chunk in records.chunks(1000) {
        env.produce_raw(chunk).await;
    }

    // Small batches: many transactions, so kills land between and inside them. Each
    // transaction's offsets wait 250 ms (a hidden fault; at most 4 batches are held meanwhile, so
    // ~2 000 records a second): the count that triggers a kill lands part-way through the records
    // even when counting is slow, where an unthrottled consumer could finish between two counts
    // and leave too few kills.
    let args = [
        "--max-records",
        "100",
        "--linger",
        "10ms",
        "--fault-commit-delay-ms",
        "250",
    ];
    let txn = chatlog::unique("crash_txn");
    let mut kills = 0;
    let mut last = 0;
    while kills < 5 {
        let consumer = env.spawn_consumer(&txn, &args);
        // Kill once this instance has made some progress (a committed or half-done batch).
        let n = env
            .wait_count(&sessions, per_session, &consumer, |n| {
                n >= total || n > last + 300
            })
            .await;
        if n < total {
            last = n;
        }
        consumer.kill();
        kills += 1;
        if env.count(&sessions, per_session).await >= total {
            break;
        }
    }
    assert!(
        kills >= 3,
        "the consumer finished before it could be killed enough ({kills})"
    );

    let consumer = env.spawn_consumer(&txn, &args);
    env.wait_for_rows(
        &sessions,
        per_session,
        total,
        Duration::from_secs(180),
        &[&consumer],
    )
    .await;
    env.assert_exact(&sessions, per_session, base).await;

    let dlq = env.read_dlq(poisoned);
    assert_eq!(
        dlq.len(),
        poisoned,
        "each poison record exactly once in the DLQ"
    );
    assert!(dlq.iter().all(|(reason, _)| reason == "bad_magic"));
}

/// Kafka unreachable at start is a start-up failure (exit 1: restart with backoff), not a fatal
/// error of the instance (exit 3), as docs/OPERATIONS.md's exit-code table says; the log names
/// the brokers it could not reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_at_start_exits_1_and_says_where_it_looked() {
    let env = Env::new("unreach", 1, 10).await;
    let config = std::env::temp_dir().join(format!("{}.toml", chatlog::unique("unreach")));
    // A short transaction timeout, so init_transactions gives up in seconds (validation wants
    // it above 2 × stage_budget + linger).
    std::fs::write(
        &config,
        "[kafka]\ntransaction_timeout = \"6s\"\n\n[retry]\nstage_budget = \"2s\"\n",
    )
    .expect("write config");
    let closed = format!("127.0.0.1:{}", chatlog::free_port());
    let consumer = env.spawn_consumer(
        &chatlog::unique("unreach_txn"),
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--bootstrap-servers",
            &closed,
        ],
    );
    let status = consumer
        .wait_exit(Duration::from_secs(120))
        .expect("the consumer gives up on an unreachable Kafka");
    let log = consumer.log_text();
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    assert!(
        log.contains("is it reachable?") && log.contains(&closed),
        "log:\n{log}"
    );
}
