//! Unread counts end to end: Kafka → the real `chatlog-consumer` (each session's latest in CQL and
//! Redis, written in its batch) → the conversation repositories Logic uses. Counts stay exact across
//! mark_read (forward only), new messages, clear_history, a consumer kill -9 in the middle of its
//! batches, Redis entries lost or of another epoch, and a full replay of the topic by a fresh
//! consumer group — during which no count moves, and after which CQL and Redis hold exactly what
//! they held before.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chatlog_store::RedisConnections;
use chatlog_store::cache::{Cache, CacheConfig};
use chatlog_store::keys;
use chatlog_store::repo::conversations::{
    CachedConversationRepo, ConversationConfig, ConversationRepo, CqlConversationRepo, unread,
};
use chatlog_store::repo::latest::LatestReader;
use common::{Env, all_messages, base_time_us, message, sessions};

/// (user, session) → (max_seq, has_read_seq, min_seq, unread).
type State = BTreeMap<(String, String), (i64, i64, i64, i64)>;

async fn state<R: ConversationRepo>(repo: &R, users: &[String]) -> State {
    let mut out = State::new();
    for u in users {
        let page = repo
            .conversations(u, 500, None)
            .await
            .expect("conversations");
        assert_eq!(page.next, None, "one page holds the test's list");
        for c in page.conversations {
            out.insert(
                (u.clone(), c.session_id.clone()),
                (c.max_seq, c.has_read_seq, c.min_seq, c.unread),
            );
        }
    }
    out
}

/// The users' lists through the cache and through CQL alone.
struct Lists<'a, C, D> {
    cached: &'a C,
    db: &'a D,
    users: &'a [String],
}

impl<C: ConversationRepo, D: ConversationRepo> Lists<'_, C, D> {
    /// Both must be `want`.
    async fn check(&self, what: &str, want: &State) {
        assert_eq!(&state(self.cached, self.users).await, want, "{what}");
        assert_eq!(&state(self.db, self.users).await, want, "{what}, CQL alone");
    }
}

/// What CQL and Redis hold for the sessions' latests and the users' read state, with write times.
async fn stored(env: &Env, redis: &RedisConnections, sessions: &[String]) -> Vec<String> {
    let ks = &env.cql.keyspace;
    let mut out = Vec::new();
    for s in sessions {
        let row = env
            .session
            .query_unpaged(
                format!(
                    "SELECT max_seq, server_time, message, writetime(max_seq), \
                     writetime(message) FROM {ks}.session_latest WHERE session_id = ?"
                ),
                (s,),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .maybe_first_row::<(i64, i64, Vec<u8>, i64, i64)>()
            .unwrap();
        out.push(format!("cql {s}: {row:?}"));
        let cached: (Option<String>, Option<String>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(keys::latest(s))
            .arg("s")
            .arg("t")
            .arg("m")
            .query_async(&mut redis.get())
            .await
            .unwrap();
        out.push(format!("redis {s}: {cached:?}"));
    }
    let rows = env
        .session
        .query_unpaged(
            format!(
                "SELECT user_id, session_id, has_read_seq, min_seq, writetime(has_read_seq) \
                 FROM {ks}.read_state"
            ),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let mut read: Vec<String> = rows
        .rows::<(String, String, Option<i64>, Option<i64>, Option<i64>)>()
        .unwrap()
        .map(|r| format!("read_state {:?}", r.unwrap()))
        .collect();
    read.sort();
    out.extend(read);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_stay_exact_across_marks_clears_kill_9_and_a_full_replay() {
    let mut env = Env::new("unread", 3, 20).await;
    let sessions = sessions("un", 6);
    let users = vec![chatlog::unique("ua"), chatlog::unique("ub")];
    let redis: RedisConnections = chatlog::redis_connection().await.into();
    let config = ConversationConfig::default();
    let db = std::sync::Arc::new(
        CqlConversationRepo::new(env.session.clone(), &env.cql.keyspace, config.clone())
            .await
            .unwrap(),
    );
    let latest = LatestReader::new(
        env.session.clone(),
        &env.cql.keyspace,
        Some(redis.clone()),
        config.latest_ttl,
    )
    .await
    .unwrap();
    let cache = Cache::new(redis.clone(), CacheConfig::default(), "conversations").unwrap();
    let repo = CachedConversationRepo::new(db.clone(), cache, latest, config).unwrap();
    let lists = Lists {
        cached: &repo,
        db: db.as_ref(),
        users: &users,
    };
    for u in &users {
        for s in &sessions {
            repo.join(u, s, 1).await.unwrap();
        }
    }
    let (a, b) = (&users[0], &users[1]);
    // Expected state for `per_session` messages in every session, from the marks below.
    let marks: BTreeMap<(String, String), (i64, i64)> = [
        ((a.clone(), sessions[0].clone()), (10, 0)),
        ((a.clone(), sessions[1].clone()), (30, 0)),
        ((b.clone(), sessions[2].clone()), (0, 30)),
        ((b.clone(), sessions[3].clone()), (25, 0)),
    ]
    .into();
    let expected = |per_session: i64, marked: bool| -> State {
        let mut out = State::new();
        for u in &users {
            for s in &sessions {
                let (read, min) = if marked {
                    marks
                        .get(&(u.clone(), s.clone()))
                        .copied()
                        .unwrap_or((0, 0))
                } else {
                    (0, 0)
                };
                out.insert(
                    (u.clone(), s.clone()),
                    (per_session, read, min, unread(per_session, read, min)),
                );
            }
        }
        out
    };
    let check = |what: &str, got: &State, want: &State| {
        assert_eq!(got, want, "{what}");
    };
    assert_eq!(
        state(&repo, &users).await,
        expected(0, false),
        "no messages yet"
    );

    // 1. Thirty messages per session, consumed.
    let base = base_time_us();
    env.produce(&all_messages(&sessions, 30, base)).await;
    // Four records per transaction: step 3's 180 records take 45 transactions, so the test sees
    // the consumer part-way through before it kills it (with 40 per transaction, a fast run
    // finished them before the first count).
    // And each transaction's offsets wait 250 ms (a hidden fault): with at most 4 batches held
    // meanwhile, at most ~64 records a second, so the count that triggers the kill lands
    // part-way even when the test is slow to look.
    let args = [
        "--max-records",
        "4",
        "--linger",
        "10ms",
        "--fault-commit-delay-ms",
        "250",
    ];
    let txn = chatlog::unique("unread_txn");
    let consumer = env.spawn_consumer(&txn, &args);
    env.wait_all(&sessions, 30, &[&consumer]).await;
    check(
        "30 messages",
        &state(&repo, &users).await,
        &expected(30, false),
    );

    // 2. Marks (one backwards, ignored) and a clear.
    repo.mark_read(a, &sessions[0], 10).await.unwrap();
    repo.mark_read(a, &sessions[1], 30).await.unwrap();
    repo.mark_read(a, &sessions[1], 12).await.unwrap();
    assert_eq!(repo.clear_history(b, &sessions[2]).await.unwrap(), 30);
    repo.mark_read(b, &sessions[3], 25).await.unwrap();
    lists.check("marked", &expected(30, true)).await;

    // 3. Thirty more per session; the consumer is killed with SIGKILL in the middle.
    let more: Vec<_> = (31..=60)
        .flat_map(|seq| sessions.iter().map(move |s| (s.clone(), seq)))
        .map(|(s, seq)| message(&s, seq, base, 0))
        .collect();
    env.produce(&more).await;
    let total = sessions.len() * 60;
    env.wait_count(&sessions, 60, &consumer, |n| {
        assert!(n < total, "the consumer finished before it could be killed");
        n > sessions.len() * 35
    })
    .await;
    consumer.kill();
    let consumer = env.spawn_consumer(&txn, &args);
    env.wait_for_rows(&sessions, 60, total, Duration::from_secs(120), &[&consumer])
        .await;
    lists
        .check("60 messages after kill -9", &expected(60, true))
        .await;
    let page = repo.conversations(a, 10, None).await.unwrap();
    for c in &page.conversations {
        let l = c.latest.as_ref().expect("a latest message");
        let m = env.codec.decode(&l.avro).expect("the latest decodes");
        assert_eq!((m.seq, m.session_id.as_str()), (60, c.session_id.as_str()));
        assert_eq!(l.version, m.version());
    }

    // 4. Redis loses an entry, and another comes from another epoch holding an old value: both
    //    are read from CQL again.
    let mut con = redis.get();
    let _: () = redis::cmd("DEL")
        .arg(keys::latest(&sessions[0]))
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(keys::latest(&sessions[1]))
        .arg("e")
        .arg("another-epoch")
        .arg("s")
        .arg("5")
        .query_async(&mut con)
        .await
        .unwrap();
    check(
        "entries refilled",
        &state(&repo, &users).await,
        &expected(60, true),
    );
    consumer
        .terminate_cleanly(Duration::from_secs(30))
        .expect("the first group's consumer stops");

    // 5. A full replay: a fresh group reads the topic from the start. No count moves meanwhile,
    //    and CQL and Redis end exactly as they were.
    let before = stored(&env, &redis, &sessions).await;
    env.group = chatlog::unique("unread_replay");
    let replay = env.spawn_consumer(&chatlog::unique("unread_replay_txn"), &args);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut looks = 0;
    while !env.committed_to_end().await {
        lists.check("during the replay", &expected(60, true)).await;
        looks += 1;
        assert!(
            Instant::now() < deadline,
            "replay not done:\n{}",
            replay.log_text()
        );
    }
    env.wait_drained(Duration::from_secs(60), &[&replay]).await;
    eprintln!("{looks} looks during the replay");
    check(
        "after the replay",
        &state(&repo, &users).await,
        &expected(60, true),
    );
    assert_eq!(
        stored(&env, &redis, &sessions).await,
        before,
        "state after the replay"
    );
}
