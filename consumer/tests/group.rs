//! The fleet: consumers of one group split the partitions; members join and leave under load with
//! nothing lost or duplicated; a second process with the same transactional id fences the first,
//! which exits non-zero.

mod common;

use std::time::Duration;

use common::{Env, all_messages, assigned_partitions, workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_under_load_without_loss_or_duplicates() {
    let env = std::sync::Arc::new(Env::new("group", 6, 25).await);
    let per_session = 100;
    let (sessions, base, messages) = workload("g", 60, per_session);
    let total = messages.len();
    let args = ["--max-records", "200", "--linger", "20ms"];

    let a = env.spawn_consumer(&chatlog::unique("group_a"), &args);
    a.wait_log("partitions assigned", Duration::from_secs(60))
        .unwrap();
    let b = env.spawn_consumer(&chatlog::unique("group_b"), &args);
    b.wait_log("partitions assigned", Duration::from_secs(60))
        .unwrap();

    // Load arrives, paced over ~12 s, while the membership changes.
    let producer = {
        let env = env.clone();
        let messages = messages.clone();
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(100));
            for chunk in messages.chunks(50) {
                pace.tick().await;
                env.produce(chunk).await;
            }
        })
    };

    wait_until(&env, &sessions, per_session, total / 5).await;
    let c = env.spawn_consumer(&chatlog::unique("group_c"), &args);
    c.wait_log("partitions assigned", Duration::from_secs(60))
        .unwrap();
    wait_until(&env, &sessions, per_session, total / 2).await;
    a.terminate();
    let status = a.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "a leaving member exits 0 ({status})");
    producer.await.unwrap();

    env.wait_for_rows(
        &sessions,
        per_session,
        total,
        Duration::from_secs(180),
        &[&b, &c],
    )
    .await;
    env.assert_exact(&sessions, per_session, base).await;

    // Both original members held partitions at some point: the group really split the work.
    for (name, log) in [("a", a.log_text()), ("b", b.log_text())] {
        assert!(
            !assigned_partitions(&log).is_empty(),
            "{name} never got partitions:\n{log}"
        );
    }
    assert!(
        !assigned_partitions(&c.log_text()).is_empty(),
        "the joiner got partitions"
    );
}

async fn wait_until(env: &Env, sessions: &[String], per_session: i64, rows: usize) {
    common::poll_until(
        Duration::from_secs(120),
        Duration::from_millis(100),
        move || async move {
            let n = env.count(sessions, per_session).await;
            if n >= rows { Ok(()) } else { Err(n) }
        },
        |_| format!("stuck below {rows} rows"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_the_same_transactional_id_fences_the_first() {
    let env = Env::new("fence", 1, 10).await;
    let (sessions, base, first) = workload("f", 4, 10);
    env.produce(&first).await;

    let txn = chatlog::unique("fence_txn");
    let old = env.spawn_consumer(&txn, &[]);
    env.wait_for_rows(&sessions, 10, first.len(), Duration::from_secs(60), &[&old])
        .await;

    // The new instance (a restart elsewhere) takes the id over; the old one is now a zombie.
    let new = env.spawn_consumer(&txn, &[]);
    new.wait_log("consuming", Duration::from_secs(60)).unwrap();
    let more: Vec<_> = all_messages(&sessions, 20, base)
        .into_iter()
        .filter(|m| m.seq > 10)
        .collect();
    env.produce(&more).await;

    let status = old.wait_exit(Duration::from_secs(90)).unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "the fenced instance exits with code 3"
    );
    let log = old.log_text();
    assert!(log.contains("fatal"), "the reason is logged");
    // Said plainly, with the id: two instances configured alike would fence each other in a loop.
    assert!(
        log.contains("another instance started with this transactional_id") && log.contains(&txn),
        "the fenced instance says why and which id; log:\n{log}"
    );
    env.wait_for_rows(
        &sessions,
        20,
        first.len() + more.len(),
        Duration::from_secs(90),
        &[&new],
    )
    .await;
    env.assert_exact(&sessions, 20, base).await;
}
