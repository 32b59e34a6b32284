//! A batch's commit overlaps the next batch (see `Pipeline::consume` in the consumer): the next
//! batch is collected and written while the previous transaction is being closed on its own
//! thread, and a revocation waits for that commit before the partitions leave; batches written
//! while a commit is still slow are held and committed together by the next transaction, never
//! after a revocation. The tests make the commit slow on demand with the hidden fault
//! `CHATLOG_FAULT_COMMIT_DELAY_MS`. Batches written within `batch.commit_interval` of the last
//! transaction are held the same way, visible at once and committed together.

mod common;

use std::time::{Duration, Instant};

use chatlog::process::ConsumerProcess;
use common::{Env, base_time_us, dump_logs, message, poll_until, strip_ansi};

/// How long each transaction waits before its offsets are sent (the fault).
const COMMIT_DELAY: Duration = Duration::from_secs(10);

/// The same for the revocation test: the second member must start (CQL login and statements,
/// Kafka admin calls, its transactional producer) and join, and the first see the rebalance,
/// while the commit is still in flight — on a loaded 2-CPU machine that can take over 10 s.
const REVOKE_COMMIT_DELAY: Duration = Duration::from_secs(40);

/// Waits until `session`'s window holds `seq`.
async fn until_in_window(
    env: &Env,
    session: &str,
    seq: i64,
    c: &chatlog::process::ConsumerProcess,
) {
    poll_until(
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async {
            let window = env.window(session).await;
            if window.iter().any(|m| m.seq == seq) {
                Ok(())
            } else {
                Err(())
            }
        },
        |()| {
            dump_logs(&[c]);
            format!("{session}/{seq} never reached its window")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_batch_is_written_while_the_previous_commit_is_in_flight() {
    let env = Env::new("overlap", 1, 25).await;
    let delay = COMMIT_DELAY.as_millis().to_string();
    let c = consumer_assigned(
        &env,
        "overlap",
        &[("CHATLOG_FAULT_COMMIT_DELAY_MS", delay.as_str())],
    );
    let base = base_time_us();
    let (a, b) = (chatlog::unique("ov_a"), chatlog::unique("ov_b"));

    env.produce(&[message(&a, 1, base, 0)]).await;
    until_in_window(&env, &a, 1, &c).await;
    // A's batch is written; its transaction is now being closed, for COMMIT_DELAY at least.
    let sent_b = Instant::now();
    env.produce(&[message(&b, 1, base, 0)]).await;
    until_in_window(&env, &b, 1, &c).await;
    let b_visible = sent_b.elapsed();
    let committed = env.committed_offsets();
    assert!(
        committed.get(&0).copied().unwrap_or(-1) < 1,
        "B's window must be written while A's commit is still in flight (B visible {b_visible:?} \
         after its send, the commit takes over {COMMIT_DELAY:?}); committed offsets: {committed:?}"
    );

    // Both commit in the end, each once, and nothing was rewound on the way.
    env.wait_for_rows(
        &[a.clone(), b.clone()],
        1,
        2,
        Duration::from_secs(90),
        &[&c],
    )
    .await;
    assert_eq!(env.rows(&a, 1).await.len(), 1);
    assert_eq!(env.rows(&b, 1).await.len(), 1);
    let log = c.log_text();
    assert!(
        !log.contains("batch not committed"),
        "no batch rewound:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_waits_for_the_commit_in_flight() {
    let env = Env::new("overlap_rv", 2, 25).await;
    let delay = REVOKE_COMMIT_DELAY.as_millis().to_string();
    let args = ["--linger", "5ms"];
    let first = env.spawn_consumer_with_env(
        &chatlog::unique("overlap_rv_a"),
        &args,
        &[("CHATLOG_FAULT_COMMIT_DELAY_MS", delay.as_str())],
    );
    first
        .wait_log("partitions assigned", Duration::from_secs(60))
        .unwrap();
    let base = base_time_us();
    // One message, so one batch: with two batches the loop would be settling the first before
    // opening the second's transaction, and a blocked loop serves no rebalance callback.
    let sessions = vec![chatlog::unique("rv")];
    let messages: Vec<_> = sessions.iter().map(|s| message(s, 1, base, 0)).collect();
    env.produce(&messages).await;
    for s in &sessions {
        until_in_window(&env, s, 1, &first).await;
    }
    // The batch is written and its commit is in flight; a second member joins and takes one of
    // the two partitions from the first.
    let joined = Instant::now();
    let second = env.spawn_consumer(&chatlog::unique("overlap_rv_b"), &args);
    poll_until(
        Duration::from_secs(90),
        Duration::from_millis(100),
        || async {
            if first
                .log_text()
                .contains("partitions leaving this consumer")
            {
                Ok(())
            } else {
                Err(())
            }
        },
        |()| {
            dump_logs(&[&first, &second]);
            "the first member never gave a partition up".to_owned()
        },
    )
    .await;
    let log = strip_ansi(&first.log_text());
    let waited_ms: u64 = log
        .lines()
        .find(|l| l.contains("revocation waited for the last batch's commit"))
        .and_then(|l| l.split("waited_ms=").nth(1))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            dump_logs(&[&first, &second]);
            panic!(
                "the revocation did not wait for the commit in flight (joined {:?} ago)",
                joined.elapsed()
            )
        });
    assert!(waited_ms > 0, "waited {waited_ms} ms");
    // The revocation came after the commit ended, not before: the line that says the partition
    // leaves follows the wait.
    let wait_at = log.find("revocation waited").unwrap();
    let leave_at = log.find("partitions leaving this consumer").unwrap();
    assert!(
        wait_at < leave_at,
        "the partitions left before the commit ended:\n{log}"
    );

    env.wait_for_rows(
        &sessions,
        1,
        sessions.len(),
        Duration::from_secs(120),
        &[&first, &second],
    )
    .await;
    for s in &sessions {
        assert_eq!(env.rows(s, 1).await.len(), 1, "rows of {s}");
    }
}

/// The value of the counter `name` (with `labels`, e.g. `result="committed"`) on `c`'s
/// `/metrics`, 0 when absent.
async fn counter(c: &chatlog::process::ConsumerProcess, name: &str, labels: &str) -> f64 {
    let (_, text) = c.get_async("/metrics").await.expect("/metrics");
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .find_map(|l| {
            l.strip_prefix(&series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Waits until `chatlog_consumer_records_total{labels}` on `c` is `want`.
async fn until_counted(c: &chatlog::process::ConsumerProcess, labels: &str, want: f64) {
    poll_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let n = counter(c, "chatlog_consumer_records_total", labels).await;
            if n == want { Ok(()) } else { Err(n) }
        },
        |n| {
            dump_logs(&[c]);
            format!("chatlog_consumer_records_total{{{labels}}} is {n}, never {want}")
        },
    )
    .await;
}

/// Waits until the group's committed offset of partition 0 is `want`.
async fn until_committed(env: &Env, want: i64, c: &chatlog::process::ConsumerProcess) {
    poll_until(
        Duration::from_secs(90),
        Duration::from_millis(50),
        || async {
            let at = env.committed_offsets().get(&0).copied().unwrap_or(-1);
            if at == want { Ok(()) } else { Err(at) }
        },
        |at| {
            dump_logs(&[c]);
            format!("committed offset {at}, never {want}")
        },
    )
    .await;
}

/// Starts a consumer of `env` (linger 5 ms, group `group`-…) with `vars` in its environment;
/// returns once its partitions are assigned.
fn consumer_assigned(env: &Env, group: &str, vars: &[(&str, &str)]) -> ConsumerProcess {
    let c = env.spawn_consumer_with_env(&chatlog::unique(group), &["--linger", "5ms"], vars);
    c.wait_log("partitions assigned", Duration::from_secs(60))
        .unwrap();
    c
}

/// Three fresh session ids named after `prefix`.
fn three_sessions(prefix: &str) -> [String; 3] {
    ["a", "b", "d"].map(|s| chatlog::unique(&format!("{prefix}_{s}")))
}

/// A consumer of `env` with `batch.commit_interval` = `interval` (whole seconds), assigned.
fn interval_consumer(env: &Env, group: &str, interval: Duration) -> ConsumerProcess {
    let interval = format!("{}s", interval.as_secs());
    consumer_assigned(
        env,
        group,
        &[("CHATLOG__BATCH__COMMIT_INTERVAL", interval.as_str())],
    )
}

/// One message (seq 1) for each of `sessions`, each produced once the one before is visible in
/// its window: a batch each.
async fn one_batch_each(env: &Env, c: &ConsumerProcess, sessions: &[String], base: i64) {
    for s in sessions {
        env.produce(&[message(s, 1, base, 0)]).await;
        until_in_window(env, s, 1, c).await;
    }
}

/// Once held batches are committed: `transactions` committed in all (`why`), at least one batch
/// held for `reason`, a row for each of `sessions`, and no batch rewound.
async fn assert_held_then_committed(
    env: &Env,
    c: &ConsumerProcess,
    transactions: f64,
    why: &str,
    reason: &str,
    sessions: &[String],
) {
    assert_eq!(
        counter(
            c,
            "chatlog_consumer_transactions_total",
            "result=\"committed\""
        )
        .await,
        transactions,
        "{why}"
    );
    let held = format!("reason=\"{reason}\"");
    assert!(counter(c, "chatlog_consumer_batches_held_total", &held).await >= 1.0);
    for s in sessions {
        assert_eq!(env.rows(s, 1).await.len(), 1, "rows of {s}");
    }
    let log = c.log_text();
    assert!(
        !log.contains("batch not committed"),
        "no batch rewound:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_written_during_a_slow_commit_are_held_and_committed_together() {
    const DELAY: Duration = Duration::from_secs(8);
    let env = Env::new("held", 1, 25).await;
    let delay = DELAY.as_millis().to_string();
    let c = consumer_assigned(
        &env,
        "held",
        &[("CHATLOG_FAULT_COMMIT_DELAY_MS", delay.as_str())],
    );
    let base = base_time_us();
    let sessions = three_sessions("held");
    let [a, b, d] = &sessions;
    env.produce(&[message(a, 1, base, 0)]).await;
    until_in_window(&env, a, 1, &c).await;
    // A's transaction is being closed (DELAY at least). B, then a poison record and D, each
    // produced once the one before is written: batches of their own.
    let started = Instant::now();
    env.produce(&[message(b, 1, base, 0)]).await;
    until_in_window(&env, b, 1, &c).await;
    let d_record = env.record(&message(d, 1, base, 0));
    env.produce_raw(&[(Some(d.clone()), Some(b"not avro".to_vec())), d_record])
        .await;
    until_in_window(&env, d, 1, &c).await;
    let written = started.elapsed();
    let committed = env.committed_offsets().get(&0).copied().unwrap_or(-1);
    assert!(
        committed < 1,
        "B and D must both be written while A's commit is in flight (written within \
         {written:?}, the commit takes over {DELAY:?}); committed offset {committed}"
    );
    // A commits, then everything written since in one transaction.
    until_committed(&env, 4, &c).await;
    // The loop counts a transaction when it next comes round after the broker committed it
    // (up to a second later on an idle topic): wait for the records' counters, which go up
    // with it, before reading the count.
    until_counted(&c, "outcome=\"persisted\"", 3.0).await;
    until_counted(&c, "outcome=\"dlq\"", 1.0).await;
    assert_held_then_committed(
        &env,
        &c,
        2.0,
        "A's transaction, then one for B, the poison record and D",
        "commit",
        &sessions,
    )
    .await;
    let dlq = env.read_dlq(1);
    assert_eq!(dlq.len(), 1, "the poison record, once: {dlq:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_batches_are_not_committed_after_a_revocation() {
    // A's commit is made at once but returns late: the loop sees it in flight for DELAY, so B
    // is held, and the revocation (which waits for A's commit) lands while B waits. Under
    // cooperative-sticky a commit *sent* after the rebalance began fails on the generation
    // instead, and B would rewind with it: not the path under test.
    const DELAY: Duration = Duration::from_secs(25);
    let env = Env::new("held_rv", 2, 25).await;
    let delay = DELAY.as_millis().to_string();
    let args = ["--linger", "5ms"];
    let first = env.spawn_consumer_with_env(
        &chatlog::unique("held_rv_a"),
        &args,
        &[("CHATLOG_FAULT_COMMIT_RETURN_DELAY_MS", delay.as_str())],
    );
    first
        .wait_log("partitions assigned", Duration::from_secs(60))
        .unwrap();
    let base = base_time_us();
    let a = chatlog::unique("hrv_a");
    env.produce(&[message(&a, 1, base, 0)]).await;
    until_in_window(&env, &a, 1, &first).await;
    // Written while A's commit call has not returned, so held: a poison record and B's message.
    let b = chatlog::unique("hrv_b");
    let b_record = env.record(&message(&b, 1, base, 0));
    env.produce_raw(&[(Some(b.clone()), Some(b"not avro".to_vec())), b_record])
        .await;
    until_in_window(&env, &b, 1, &first).await;
    assert!(
        counter(
            &first,
            "chatlog_consumer_batches_held_total",
            "reason=\"commit\""
        )
        .await
            >= 1.0
    );
    // A second member joins: a partition leaves the first while B waits for a transaction.
    let second = env.spawn_consumer(&chatlog::unique("held_rv_b"), &args);
    env.wait_drained(Duration::from_secs(180), &[&first, &second])
        .await;
    let log = strip_ansi(&first.log_text());
    assert!(
        log.contains("partitions were revoked while written batches waited"),
        "the held batch was not rewound after the revocation:\n{log}"
    );
    for s in [&a, &b] {
        assert_eq!(env.rows(s, 1).await.len(), 1, "rows of {s}");
    }
    let dlq = env.read_dlq(1);
    assert_eq!(
        dlq.len(),
        1,
        "the poison record once, though it was written twice: {dlq:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_four_batches_within_a_commit_interval_share_one_transaction() {
    // Until stop 26 interval holds stopped at four batches (the slow-commit cap): the fifth
    // batch within the interval opened a transaction of its own.
    // The longest interval the consumer takes.
    const INTERVAL: Duration = Duration::from_secs(10);
    const BATCHES: usize = 6;
    let env = Env::new("interval_many", 1, 25).await;
    let c = interval_consumer(&env, "interval_many", INTERVAL);
    let base = base_time_us();
    let sessions: Vec<String> = (0..=BATCHES)
        .map(|i| chatlog::unique(&format!("ivm_{i}")))
        .collect();
    // The first batch opens its transaction at once (after this instant: the interval is
    // measured from here, a bound on its start).
    let first_sent = Instant::now();
    one_batch_each(&env, &c, &sessions[..1], base).await;
    until_committed(&env, 1, &c).await;
    // Then one batch after another.
    one_batch_each(&env, &c, &sessions[1..], base).await;
    let committed = env.committed_offsets().get(&0).copied().unwrap_or(-1);
    let written = first_sent.elapsed();
    assert!(
        written < INTERVAL,
        "the {BATCHES} batches took {written:?}, longer than the interval: nothing to check"
    );
    assert_eq!(
        committed, 1,
        "{BATCHES} batches are visible and all wait for the commit interval (written {written:?} \
         after the first was sent, the interval is {INTERVAL:?})"
    );
    until_committed(&env, 1 + BATCHES as i64, &c).await;
    until_counted(&c, "outcome=\"persisted\"", (1 + BATCHES) as f64).await;
    assert_held_then_committed(
        &env,
        &c,
        2.0,
        "the first batch's transaction, then one for all the others",
        "interval",
        &sessions,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_traffic_batches_share_a_transaction_per_commit_interval() {
    // Long enough for B and D to be written inside it on a loaded machine.
    const INTERVAL: Duration = Duration::from_secs(8);
    let env = Env::new("interval", 1, 25).await;
    let c = interval_consumer(&env, "interval", INTERVAL);
    let base = base_time_us();
    let sessions = three_sessions("iv");
    // A is the first batch: its transaction opens at once.
    one_batch_each(&env, &c, &sessions[..1], base).await;
    until_committed(&env, 1, &c).await;
    let a_committed = Instant::now();
    // B, then D, each produced once the one before is visible: batches of their own, written
    // (and visible) within the interval of A's transaction, so neither commits yet.
    one_batch_each(&env, &c, &sessions[1..], base).await;
    let written = a_committed.elapsed();
    let committed = env.committed_offsets().get(&0).copied().unwrap_or(-1);
    assert_eq!(
        committed, 1,
        "B and D are visible but wait for the commit interval (written {written:?} after A's \
         commit, the interval is {INTERVAL:?})"
    );
    // With no record arriving after them, the two are committed when the interval ends, in one
    // transaction.
    until_committed(&env, 3, &c).await;
    let waited = a_committed.elapsed();
    assert!(
        waited + Duration::from_secs(1) >= INTERVAL,
        "B and D committed {waited:?} after A, before the interval ({INTERVAL:?}) ended"
    );
    until_counted(&c, "outcome=\"persisted\"", 3.0).await;
    assert_held_then_committed(
        &env,
        &c,
        2.0,
        "A's transaction, then one for B and D",
        "interval",
        &sessions,
    )
    .await;
}
