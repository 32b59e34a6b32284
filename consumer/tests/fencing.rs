//! A consumer that may no longer own its partitions must not write: a zombie (a process frozen
//! past its session timeout) writes no window, and a rewind that cannot seek ends the process
//! instead of letting the next commit cover a batch that was never written.

mod common;

use std::time::{Duration, Instant};

use chatlog_store::keys;
use common::{ConsumerProcess, Env, base_time_us, message};

/// Window seqs of `session`, ascending, read from the Redis at `url`.
async fn window_seqs(url: &str, session: &str, env: &Env) -> Vec<i64> {
    let client = redis::Client::open(url).expect("redis url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    env.window_on(&mut con, session)
        .await
        .iter()
        .map(|m| m.seq)
        .collect()
}

/// The CQL seqs of `session`.
async fn row_seqs(env: &Env, session: &str, max_seq: i64) -> Vec<i64> {
    env.rows(session, max_seq)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_frozen_while_lingering_on_polled_records_writes_no_window() {
    let env = Env::new("zombie", 1, 10).await;
    let s = chatlog::unique("zmb");
    let base = base_time_us();
    // The broker's smallest session timeout, heartbeats every second: a window fence of 4 s.
    let (_dir, config) = common::config_file(
        "fencing_config",
        "[kafka]\nsession_timeout = \"6s\"\n\
         [kafka.properties]\n\"heartbeat.interval.ms\" = \"1000\"\n",
    );

    // The zombie-to-be lingers 2 s on a batch once it has its first record, and is frozen then:
    // it resumes (long after the linger) holding records it polled before it was evicted.
    let zombie = env.spawn_consumer(
        &chatlog::unique("zombie_old"),
        &["--config", &config, "--linger", "2s"],
    );
    zombie
        .wait_log(
            "partitions assigned to this consumer",
            Duration::from_secs(60),
        )
        .unwrap();
    let first: Vec<_> = (1..=5).map(|seq| message(&s, seq, base, 0)).collect();
    env.produce(&first).await;
    zombie
        .wait_log("first record of a batch polled", Duration::from_secs(60))
        .unwrap();
    zombie.signal("-STOP").unwrap();
    let _resume = chatlog::Resume(zombie.pid());

    // Its partition moves on once its session times out: the new owner writes seqs 1..5, then
    // 6..10.
    let owner = env.spawn_consumer(&chatlog::unique("zombie_new"), &["--config", &config]);
    env.wait_session(&s, 5, Duration::from_secs(120), &[&owner, &zombie])
        .await;
    let more: Vec<_> = (6..=10).map(|seq| message(&s, seq, base, 0)).collect();
    env.produce(&more).await;
    env.wait_session(&s, 10, Duration::from_secs(60), &[&owner, &zombie])
        .await;

    // The window loses its data (a Redis restart, FLUSHALL or failover, seen as an empty window).
    let mut con = chatlog::redis_connection().await;
    let _: () = redis::cmd("DEL")
        .arg(keys::window(&s))
        .query_async(&mut con)
        .await
        .unwrap();

    // The zombie resumes. Whatever it does with its stale batch, it then learns that its
    // partition is gone (the eviction surfaces in its next poll): by then it must not have
    // written.
    zombie.signal("-CONT").unwrap();
    zombie
        .wait_log("partitions leaving this consumer", Duration::from_secs(60))
        .unwrap();
    let after_zombie = window_seqs(&chatlog::redis_url(), &s, &env).await;

    // The next message: a window refilled by the zombie would now read {1..5, 11}, and history,
    // trusting it between its lowest and highest member, would report 6..10 as missing.
    env.produce(&[message(&s, 11, base, 0)]).await;
    env.wait_session(&s, 11, Duration::from_secs(60), &[&owner, &zombie])
        .await;
    assert!(
        after_zombie.is_empty(),
        "a zombie wrote seqs it polled before its eviction into the window ({after_zombie:?}); \
         zombie log:\n{}",
        zombie.log_text()
    );
    // The owner found the window empty and started it from the table's newest rows.
    assert_eq!(
        window_seqs(&chatlog::redis_url(), &s, &env).await,
        (2..=11).collect::<Vec<_>>()
    );
    assert_eq!(row_seqs(&env, &s, 20).await, (1..=11).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_replaced_under_its_static_group_instance_id_exits_and_writes_no_more() {
    let env = Env::new("zombie_static", 1, 20).await;
    let s = chatlog::unique("zst");
    let base = base_time_us();
    let instance = chatlog::unique("member");
    let (_dir, config) = common::config_file(
        "fencing_config",
        &format!("[kafka]\ngroup_instance_id = \"{instance}\"\n"),
    );

    let old = env.spawn_consumer(&chatlog::unique("static_old"), &["--config", &config]);
    old.wait_log(
        "partitions assigned to this consumer",
        Duration::from_secs(60),
    )
    .unwrap();
    let first: Vec<_> = (1..=5).map(|seq| message(&s, seq, base, 0)).collect();
    env.produce(&first).await;
    env.wait_session(&s, 5, Duration::from_secs(60), &[&old])
        .await;

    // A replacement starts under the same static member id (a rescheduled pod while the old
    // one still runs): the coordinator hands it the membership and fences the old member, which
    // can no longer commit nor own anything, and must stop rather than keep reading.
    let new = env.spawn_consumer(&chatlog::unique("static_new"), &["--config", &config]);
    let status = old.wait_exit(Duration::from_secs(60)).unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "a member fenced under its static id exits 3; log:\n{}",
        old.log_text()
    );

    let more: Vec<_> = (6..=10).map(|seq| message(&s, seq, base, 0)).collect();
    env.produce(&more).await;
    env.wait_session(&s, 10, Duration::from_secs(90), &[&new, &old])
        .await;
    assert_eq!(row_seqs(&env, &s, 20).await, (1..=10).collect::<Vec<_>>());
    assert_eq!(
        window_seqs(&chatlog::redis_url(), &s, &env).await,
        (1..=10).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_seek_after_a_failed_batch_exits_and_the_next_instance_redoes_the_batch() {
    let env = Env::new("seek", 1, 30).await;
    let s = chatlog::unique("sk");
    let base = base_time_us();
    // A private Redis, made to refuse writes below so that one batch fails.
    let port = chatlog::free_port();
    let _redis = chatlog::TestRedis::start(&["--port".into(), port.to_string()], port);
    let url = format!("redis://127.0.0.1:{port}/");
    wait_for_redis(&url).await;
    let (_dir, config) = common::config_file(
        "fencing_config",
        "[retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\nstage_budget = \"2s\"\n\
         [redis]\nresponse_timeout = \"300ms\"\n",
    );
    let args = ["--config", config.as_str(), "--redis-url", url.as_str()];
    let txn = chatlog::unique("seek_txn");

    // Seeks fail: librdkafka cannot be made to refuse one on demand (see `Faults::fail_seeks`).
    let consumer =
        env.spawn_consumer_with_env(&txn, &args, &[("CHATLOG_FAULT_FAIL_SEEKS", "true")]);
    let batch = |seqs: std::ops::RangeInclusive<i64>| {
        seqs.map(|seq| message(&s, seq, base, 0))
            .collect::<Vec<_>>()
    };
    env.produce(&batch(1..=10)).await;
    env.wait_session(&s, 10, Duration::from_secs(60), &[&consumer])
        .await;

    // Seqs 11..20: the window write fails for the whole stage budget, so the batch does not
    // commit and the consumer rewinds to seq 11 — and that seek fails.
    // Redis refuses writes (out of memory) until the limit is lifted: unlike a frozen server, it
    // does not run the timed-out commands later.
    set_maxmemory(&url, "1").await;
    env.produce(&batch(11..=20)).await;
    consumer
        .wait_log("seek failed", Duration::from_secs(60))
        .unwrap();
    set_maxmemory(&url, "0").await;

    // Seqs 21..30 arrive. A consumer that went on past its failed seek would read them (its
    // position is past seq 20) and commit them, covering 11..20, whose window was never written.
    env.produce(&batch(21..=30)).await;
    let exit = exit_or_drained(&env, &consumer, Duration::from_secs(90)).await;
    let window = window_seqs(&url, &s, &env).await;
    assert!(
        window.iter().all(|seq| *seq <= 10),
        "the consumer went on after its failed seek and committed past seqs 11..20, which its \
         window lacks ({window:?}); log:\n{}",
        consumer.log_text()
    );
    let status = exit.expect("the consumer kept running after a failed seek");
    assert_eq!(status.code(), Some(3), "a failed seek is fatal (exit 3)");
    assert!(consumer.log_text().contains("seek"), "the reason is logged");

    // The next instance resumes from the committed offsets: the batch is redone, nothing lost.
    let next = env.spawn_consumer(&txn, &args);
    env.wait_session(&s, 30, Duration::from_secs(90), &[&next])
        .await;
    assert_eq!(row_seqs(&env, &s, 30).await, (1..=30).collect::<Vec<_>>());
    assert_eq!(
        window_seqs(&url, &s, &env).await,
        (1..=30).collect::<Vec<_>>()
    );
}

async fn set_maxmemory(url: &str, bytes: &str) {
    let client = redis::Client::open(url).expect("redis url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(bytes)
        .query_async(&mut con)
        .await
        .expect("CONFIG SET maxmemory");
}

async fn wait_for_redis(url: &str) {
    let client = redis::Client::open(url).expect("redis url");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut con) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut con)
                .await
                .is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "redis-server on {url} not up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `consumer` exits (its status) or the group has committed everything on the topic
/// while it keeps running (`None`).
async fn exit_or_drained(
    env: &Env,
    consumer: &ConsumerProcess,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = consumer.exited() {
            return Some(status);
        }
        if env.committed_to_end().await {
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "neither exited nor drained within {limit:?}; log:\n{}",
            consumer.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
