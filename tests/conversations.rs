//! Conversation lists and read state against the local stack (real Cassandra and Redis): a
//! 5,000-conversation list walked page by page is complete and in the documented order, mark_read
//! never moves backward whatever the order of concurrent calls, and no slow loader fills a list
//! cache with read state older than a write that returned.
//!
//! "Two processes" are two `Cache` values over one Redis (as in tests/repo.rs).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatlog::{fresh_keyspace, redis_connection, unique};
use chatlog_store::cache::{Cache, CacheConfig};
use chatlog_store::repo::conversations::{
    CachedConversationRepo, ConversationConfig, ConversationPage, ConversationRepo,
    CqlConversationRepo, Memberships, unread,
};
use chatlog_store::repo::latest::{LatestReader, LatestRow, LatestWriter};
use chatlog_store::window;

struct World {
    cql: Arc<scylla::client::session::Session>,
    keyspace: String,
    db: Arc<CqlConversationRepo>,
    latest: LatestWriter,
}

async fn world() -> World {
    let (cql, config) = fresh_keyspace("convs").await;
    let db = CqlConversationRepo::new(cql.clone(), &config.keyspace, Default::default())
        .await
        .expect("conversations repo");
    World {
        latest: LatestWriter::new(cql.clone(), &config.keyspace)
            .await
            .expect("latest writer"),
        db: Arc::new(db),
        keyspace: config.keyspace,
        cql,
    }
}

/// The latest row of `s` at (`seq`, `time`) whose message is `"<s>-<seq>-<time>"` followed by
/// `pad` bytes.
fn latest_row(s: &str, seq: i64, time: i64, pad: usize) -> LatestRow {
    LatestRow {
        session_id: s.to_owned(),
        seq,
        version: time,
        member: window::member(
            time,
            format!("{s}-{seq}-{time}{}", "x".repeat(pad)).as_bytes(),
        ),
    }
}

impl World {
    /// A latest reader straight from CQL (no Redis).
    async fn uncached_latest(&self) -> LatestReader {
        LatestReader::new(
            self.cql.clone(),
            &self.keyspace,
            None,
            Duration::from_secs(60),
        )
        .await
        .expect("latest reader")
    }

    /// A cached repository over `inner` with a Redis connection of its own ("a process").
    async fn cached<R: ConversationRepo>(&self, inner: &Arc<R>) -> CachedConversationRepo<R> {
        let redis = redis_connection().await;
        let cache = Cache::new(
            redis.clone().into(),
            CacheConfig::default(),
            "conversations",
        )
        .expect("cache");
        let config = ConversationConfig::default();
        let latest = LatestReader::new(
            self.cql.clone(),
            &self.keyspace,
            Some(redis.into()),
            config.latest_ttl,
        )
        .await
        .expect("latest reader");
        CachedConversationRepo::new(inner.clone(), cache, latest, config).expect("cached repo")
    }
}

/// Every page of `user`'s list, walked with the cursor (`limit` per page).
async fn walk<R: ConversationRepo>(
    repo: &R,
    user: &str,
    limit: usize,
) -> Vec<chatlog_store::repo::conversations::Conversation> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let ConversationPage {
            conversations,
            next,
            ..
        } = repo
            .conversations(user, limit, cursor.as_deref())
            .await
            .expect("page");
        assert!(conversations.len() <= limit);
        all.extend(conversations);
        match next {
            Some(n) => cursor = Some(n),
            None => return all,
        }
    }
    panic!("the walk did not end");
}

/// The `has_read_seq` of `user`'s first membership as `repo` reads it.
async fn has_read<R: ConversationRepo>(repo: &R, user: &str) -> i64 {
    repo.memberships(user).await.unwrap().list[0].has_read_seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_list_of_5000_is_complete_and_ordered() {
    let w = world().await;
    let user = unique("u");
    let n = 5000;
    let base_us = chatlog::now_ms() * 1000;
    // Session i: pinned every 97th; no message every 10th (sorted by its join time, some equal);
    // the others' latest times repeat in groups of 7 (ties broken by session id); joins at a few
    // distinct times so that message-less ones tie too.
    let sessions: Vec<String> = (0..n)
        .map(|i| format!("{user}-s{:05}", (i * 7919) % n))
        .collect();
    let joined = |i: usize| 1_000_000 + (i % 3) as i64;
    let time_of = |i: usize| base_us - ((i / 7) as i64) * 1_000;
    let seq_of = |i: usize| 1 + (i % 40) as i64;
    for chunk in sessions.chunks(100).enumerate() {
        let (c, ids) = chunk;
        let joins = ids
            .iter()
            .enumerate()
            .map(|(k, s)| w.db.join(&user, s, joined(c * 100 + k)));
        futures::future::try_join_all(joins).await.expect("join");
    }
    let rows: Vec<LatestRow> = sessions
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 != 0)
        .map(|(i, s)| LatestRow {
            session_id: s.clone(),
            seq: seq_of(i),
            version: time_of(i),
            member: window::member(time_of(i), format!("avro-{s}").as_bytes()),
        })
        .collect();
    w.latest.write(&rows).await.expect("latest");
    let cached = w.cached(&w.db).await;
    for (i, s) in sessions.iter().enumerate() {
        if i % 97 == 0 {
            cached.set_pinned(&user, s, true).await.expect("pin");
        }
        if i % 13 == 0 {
            cached
                .mark_read(&user, s, seq_of(i) / 2)
                .await
                .expect("mark");
        }
    }

    // The documented order, computed here from what was written.
    let mut expected: Vec<(bool, i64, String, i64)> = sessions
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let has_message = i % 10 != 0;
            let activity = if has_message {
                time_of(i)
            } else {
                joined(i) * 1000
            };
            let max_seq = if has_message { seq_of(i) } else { 0 };
            let read = if i % 13 == 0 { seq_of(i) / 2 } else { 0 };
            (i % 97 == 0, activity, s.clone(), unread(max_seq, read, 0))
        })
        .collect();
    expected.sort_by(|a, b| (!a.0, -a.1, &a.2).cmp(&(!b.0, -b.1, &b.2)));
    assert!(
        expected.windows(2).any(|p| p[0].1 == p[1].1),
        "the list has ties to break"
    );

    for (what, limit) in [("cold, 137 a page", 137), ("warm, 500 a page", 500)] {
        let started = Instant::now();
        let got = walk(&cached, &user, limit).await;
        eprintln!(
            "{what}: {} conversations in {:?}",
            got.len(),
            started.elapsed()
        );
        let ids: Vec<&str> = got.iter().map(|c| c.session_id.as_str()).collect();
        let unique_ids: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(ids.len(), n, "{what}: every conversation");
        assert_eq!(unique_ids.len(), n, "{what}: each exactly once");
        let shown: Vec<(bool, i64, String, i64)> = got
            .iter()
            .map(|c| (c.pinned, c.activity_us, c.session_id.clone(), c.unread))
            .collect();
        assert_eq!(shown, expected, "{what}: the documented order and counts");
        for c in &got {
            if let Some(l) = &c.latest {
                assert_eq!(l.avro, format!("avro-{}", c.session_id).into_bytes());
                assert_eq!(c.max_seq, l.seq);
            }
        }
    }
    // The database alone agrees with the cache.
    let from_db = walk(w.db.as_ref(), &user, 1000).await;
    let ids = |v: &[chatlog_store::repo::conversations::Conversation]| -> Vec<(String, i64)> {
        v.iter().map(|c| (c.session_id.clone(), c.unread)).collect()
    };
    assert_eq!(ids(&from_db), ids(&walk(&cached, &user, 1000).await));

    // A limit above the page bound is capped; a warm whole-list page comes from the cache. (Its
    // time is printed, not asserted: speed is the benchmarks' business, P9.)
    let reads_before = w.db.db_reads();
    let started = Instant::now();
    let page = cached.conversations(&user, 100_000, None).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(
        w.db.db_reads(),
        reads_before,
        "a warm page of a 5,000-conversation list read the database"
    );
    eprintln!(
        "warm first page of {} in {elapsed:?}",
        page.conversations.len()
    );
    assert_eq!(page.conversations.len(), 500, "limit capped at max_page");
    assert_eq!(page.total, n);
    assert!(!page.truncated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_lists_are_truncated_at_the_bound() {
    let (cql, config) = fresh_keyspace("convs").await;
    let small = ConversationConfig {
        max_conversations: 10,
        ..Default::default()
    };
    let db = CqlConversationRepo::new(cql, &config.keyspace, small)
        .await
        .unwrap();
    let user = unique("u");
    for i in 0..25 {
        db.join(&user, &format!("s{i:02}"), i).await.unwrap();
    }
    let Memberships { list, truncated } = db.memberships(&user).await.unwrap();
    assert!(truncated);
    assert_eq!(list.len(), 10, "nothing beyond the bound");
    let page = db.conversations(&user, 100, None).await.unwrap();
    assert_eq!((page.total, page.truncated), (10, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_mark_read_never_moves_backward_under_concurrent_marks() {
    let w = world().await;
    let user = unique("u");
    let session = unique("s");
    w.db.join(&user, &session, 1).await.unwrap();
    let a = Arc::new(w.cached(&w.db).await);
    let b = Arc::new(w.cached(&w.db).await);
    // Seqs 1..=400 in a scrambled order, from two processes at once, with reads in between: after
    // each mark returns, both processes read at least it (and the list stays cached meanwhile).
    let seqs: Vec<i64> = (0..400).map(|i| 1 + (i * 263) % 400).collect();
    let marks = seqs.chunks(8).enumerate().map(|(k, chunk)| {
        let (a, b, user, session) = (a.clone(), b.clone(), user.clone(), session.clone());
        let chunk = chunk.to_vec();
        async move {
            let (me, other) = if k % 2 == 0 { (a, b) } else { (b, a) };
            for seq in chunk {
                me.mark_read(&user, &session, seq).await.unwrap();
                for repo in [&me, &other] {
                    let seen = has_read(&**repo, &user).await;
                    assert!(seen >= seq, "read {seen} after mark_read({seq}) returned");
                }
            }
        }
    });
    futures::future::join_all(marks).await;
    for repo in [&a, &b] {
        assert_eq!(has_read(&**repo, &user).await, 400);
    }
    assert_eq!(has_read(&*w.db, &user).await, 400);
    // Lower marks afterwards change nothing, in the database or the cache.
    a.mark_read(&user, &session, 7).await.unwrap();
    b.mark_read(&user, &session, 0).await.unwrap();
    assert_eq!(has_read(&*a, &user).await, 400);
    assert_eq!(has_read(&*w.db, &user).await, 400);
    // clear_history: min_seq rises to the session's latest and never goes down.
    w.latest
        .write(&[LatestRow {
            session_id: session.clone(),
            seq: 450,
            version: 1,
            member: window::member(1, b"m"),
        }])
        .await
        .unwrap();
    assert_eq!(b.clear_history(&user, &session).await.unwrap(), 450);
    assert_eq!(a.min_seq(&user, &session).await.unwrap(), 450);
    a.clear_history_to(&user, &session, 300).await.unwrap();
    assert_eq!(
        b.min_seq(&user, &session).await.unwrap(),
        450,
        "never lowers"
    );
    assert_eq!(w.db.min_seq(&user, &session).await.unwrap(), 450);
    let page = a.conversations(&user, 10, None).await.unwrap();
    assert_eq!(
        (page.conversations[0].max_seq, page.conversations[0].unread),
        (450, 0)
    );
}

/// A repository whose membership reads return what the database held `delay` before they return:
/// a slow loader.
struct Slow<R> {
    inner: Arc<R>,
    delay: std::sync::Mutex<Duration>,
}

impl<R: ConversationRepo> ConversationRepo for Slow<R> {
    async fn join(&self, u: &str, s: &str, at: i64) -> chatlog_store::Result<()> {
        self.inner.join(u, s, at).await
    }
    async fn leave(&self, u: &str, s: &str) -> chatlog_store::Result<()> {
        self.inner.leave(u, s).await
    }
    async fn set_pinned(&self, u: &str, s: &str, p: bool) -> chatlog_store::Result<()> {
        self.inner.set_pinned(u, s, p).await
    }
    async fn set_muted(&self, u: &str, s: &str, m: bool) -> chatlog_store::Result<()> {
        self.inner.set_muted(u, s, m).await
    }
    async fn mark_read(&self, u: &str, s: &str, seq: i64) -> chatlog_store::Result<()> {
        self.inner.mark_read(u, s, seq).await
    }
    async fn clear_history(&self, u: &str, s: &str) -> chatlog_store::Result<i64> {
        self.inner.clear_history(u, s).await
    }
    async fn clear_history_to(&self, u: &str, s: &str, seq: i64) -> chatlog_store::Result<()> {
        self.inner.clear_history_to(u, s, seq).await
    }
    async fn min_seq(&self, u: &str, s: &str) -> chatlog_store::Result<i64> {
        self.inner.min_seq(u, s).await
    }
    async fn memberships(&self, u: &str) -> chatlog_store::Result<Memberships> {
        let read = self.inner.memberships(u).await;
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        read
    }
    fn latest(&self) -> &LatestReader {
        self.inner.latest()
    }
    fn config(&self) -> &ConversationConfig {
        self.inner.config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_cache_has_no_stale_fill_after_mark_read() {
    let w = world().await;
    let slow = Arc::new(Slow {
        inner: w.db.clone(),
        delay: std::sync::Mutex::new(Duration::ZERO),
    });
    let loader = Arc::new(w.cached(&slow).await);
    let writer = w.cached(&w.db).await;
    let checker = w.cached(&w.db).await;
    let mut stale = 0;
    let rounds = 60;
    for round in 0..rounds {
        let user = unique("u");
        let session = format!("{user}-s");
        w.db.join(&user, &session, 1).await.unwrap();
        writer.mark_read(&user, &session, 5).await.unwrap();
        // A cold read by the slow process: it locks the entry and reads has_read 5, then waits
        // 20–80 ms before filling; the writer's mark_read(9) lands in between.
        *slow.delay.lock().unwrap() = Duration::from_millis(20 + (round % 4) * 20);
        let slow_read = {
            let (loader, user) = (loader.clone(), user.clone());
            tokio::spawn(async move { loader.memberships(&user).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        writer.mark_read(&user, &session, 9).await.unwrap();
        let _ = slow_read.await.unwrap();
        // After the write returned (and the slow fill had its chance): every read sees 9.
        for _ in 0..3 {
            let seen = has_read(&checker, &user).await;
            if seen < 9 {
                stale += 1;
            }
        }
    }
    assert_eq!(stale, 0, "stale reads after mark_read returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_latest_keeps_the_newest_version_of_the_highest_seq() {
    let w = world().await;
    let reader = w.uncached_latest().await;
    let row = |s: &str, seq: i64, time: i64| latest_row(s, seq, time, 0);
    // Two sessions, the same writes in opposite orders (an edit of seq 5, a late seq 4): the
    // timestamp is the seq, so the versions of seq 5 tie and the database keeps the greater
    // value — the newer version, for the time and for the version-prefixed message alike.
    let (up, down) = (unique("s"), unique("s"));
    for r in [row(&up, 5, 100), row(&up, 5, 200), row(&up, 4, 900)] {
        w.latest.write(&[r]).await.unwrap();
    }
    for r in [row(&down, 4, 900), row(&down, 5, 200), row(&down, 5, 100)] {
        w.latest.write(&[r]).await.unwrap();
    }
    let got = reader
        .read(&[up.clone(), down.clone()], true)
        .await
        .unwrap();
    for (s, l) in [up, down].iter().zip(got) {
        let l = l.expect("a latest");
        assert_eq!((l.seq, l.version), (5, 200), "{s}");
        assert_eq!(l.avro, format!("{s}-5-200").into_bytes());
    }
}

/// The consumer writes the latests of many sessions at once, in UNLOGGED batches of sessions
/// with the same replicas: each session must end at its own highest (seq, version), whatever
/// else shares its batch — a row below what is stored, two rows of one session in one call, a
/// row too large to share a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_latest_batched_writes_keep_each_sessions_highest() {
    let w = world().await;
    let reader = w.uncached_latest().await;
    let row = latest_row;
    // More sessions than one batch holds (10), so several batches per call.
    let sessions: Vec<String> = (0..37).map(|_| unique("b")).collect();
    let first: Vec<LatestRow> = sessions.iter().map(|s| row(s, 10, 100, 0)).collect();
    w.latest.write(&first).await.unwrap();
    // Second call: even sessions move up to seq 12; odd ones get an older seq 9 (a replay of
    // an old batch), which must not win; session 0 also gets a lower row after its higher one
    // in the same call, and session 1 a row of 40 KiB (too large to share a batch).
    let mut second: Vec<LatestRow> = sessions
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if i % 2 == 0 {
                row(s, 12, 300, 0)
            } else {
                row(s, 9, 900, 0)
            }
        })
        .collect();
    second.push(row(&sessions[0], 11, 950, 0));
    second.push(row(&sessions[1], 13, 400, 40 * 1024));
    w.latest.write(&second).await.unwrap();
    let got = reader.read(&sessions, true).await.unwrap();
    for (i, (s, l)) in sessions.iter().zip(got).enumerate() {
        let l = l.unwrap_or_else(|| panic!("{s}: no latest"));
        let (seq, time, pad) = match i {
            1 => (13, 400, 40 * 1024),
            i if i % 2 == 0 => (12, 300, 0),
            _ => (10, 100, 0),
        };
        assert_eq!((l.seq, l.version), (seq, time), "{s}");
        assert_eq!(
            l.avro,
            format!("{s}-{seq}-{time}{}", "x".repeat(pad)).into_bytes(),
            "{s}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_latest_cold_reads_of_one_session_load_it_once() {
    let w = world().await;
    let redis = redis_connection().await;
    let reader = LatestReader::new(
        w.cql.clone(),
        &w.keyspace,
        Some(redis.into()),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let session = unique("s");
    w.latest
        .write(&[LatestRow {
            session_id: session.clone(),
            seq: 3,
            version: 30,
            member: window::member(30, b"m"),
        }])
        .await
        .unwrap();
    let ids = [session];
    let reads = (0..500).map(|_| reader.read(&ids, false));
    for got in futures::future::join_all(reads).await {
        assert_eq!(got.unwrap()[0].as_ref().map(|l| l.seq), Some(3));
    }
    assert_eq!(reader.db_reads(), 1, "500 cold reads, one CQL read");
    reader.read(&ids, true).await.unwrap();
    assert_eq!(reader.db_reads(), 1, "then filled: Redis answers");
}
