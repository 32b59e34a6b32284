//! History against the local stack: messages written with the store's own writers (the table with
//! `MessageWriter`, windows with `WindowWriter`, as the consumer does), read back through
//! `History` from the window, the table, or both.
//!
//! Each test has its own keyspace and session. Concurrency is driven by `join_all` on one task,
//! so every call of a batch is registered before any I/O completes: no sleeps.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use chatlog::{
    TestRedis, admin, connect_to, free_port, fresh_keyspace, redis_connection, unique,
    until_answers,
};
use chatlog_schemas::testing;
use chatlog_schemas::{ChatMessage, Codec};
use chatlog_store::RedisConnection;
use chatlog_store::history::{History, HistoryConfig, Page, Source};
use chatlog_store::messages::{BatchLimits, MessageWriter};
use chatlog_store::verify::verify_window;
use chatlog_store::window::{self, WindowConfig, WindowEntry, WindowWriter};
use chatlog_store::window_start::WindowStarter;
use chatlog_store::{CqlConfig, keys};
use scylla::client::session::Session;

struct Fixture {
    cql: Arc<Session>,
    config: CqlConfig,
    redis: RedisConnection,
    codec: Codec,
    messages: MessageWriter,
    window: WindowWriter,
    starter: WindowStarter,
    history: History,
    sid: String,
    written: BTreeMap<i64, ChatMessage>,
}

fn history_config(window_size: usize, bucket_size: i64) -> HistoryConfig {
    HistoryConfig {
        window: WindowConfig {
            size: window_size,
            ..WindowConfig::default()
        },
        bucket_size,
        ..HistoryConfig::default()
    }
}

async fn fixture(window_size: usize, bucket_size: i64) -> Fixture {
    fixture_on(window_size, bucket_size, redis_connection().await).await
}

/// A fixture on the Redis behind `redis` (a private server, for tests that restart it).
async fn fixture_on(window_size: usize, bucket_size: i64, redis: RedisConnection) -> Fixture {
    let (cql, config) = fresh_keyspace("history").await;
    let codec = Codec::default();
    let hc = history_config(window_size, bucket_size);
    let messages = MessageWriter::new(
        cql.clone(),
        &config.keyspace,
        BatchLimits {
            bucket_size,
            ..BatchLimits::default()
        },
    )
    .await
    .expect("message writer");
    let history = history_reader(&cql, &config.keyspace, &redis, &codec, hc.clone()).await;
    let starter = WindowStarter::new(
        cql.clone(),
        &config.keyspace,
        bucket_size,
        hc.window.clone(),
        codec.clone(),
    )
    .await
    .expect("window starter");
    Fixture {
        starter,
        cql,
        config,
        redis,
        codec,
        messages,
        window: WindowWriter::new(hc.window),
        history,
        sid: unique("sess"),
        written: BTreeMap::new(),
    }
}

/// A history reader of these stores with `config`: the fixture's, and through
/// [`Fixture::reader`] those a test adds with other settings.
async fn history_reader(
    cql: &Arc<Session>,
    keyspace: &str,
    redis: &RedisConnection,
    codec: &Codec,
    config: HistoryConfig,
) -> History {
    History::new(cql.clone(), keyspace, redis.clone(), codec.clone(), config)
        .await
        .expect("history")
}

/// Asserts the range of seqs the page accounts for and its cursor.
fn assert_covered(page: &Page, covered: RangeInclusive<i64>, next: Option<i64>) {
    assert_eq!(
        (page.covered.clone(), page.next),
        (Some(covered), next),
        "{page:?}"
    );
}

/// A message with an extension, so every read also proves the extensions come back.
fn message(sid: &str, seq: i64) -> ChatMessage {
    ChatMessage {
        ext: BTreeMap::from([("k".to_owned(), format!("v{seq}"))]),
        ..testing::message(sid, seq)
    }
}

impl Fixture {
    /// Another history reader of the fixture's keyspace and Redis, with `config`.
    async fn reader(&self, config: HistoryConfig) -> History {
        history_reader(
            &self.cql,
            &self.config.keyspace,
            &self.redis,
            &self.codec,
            config,
        )
        .await
    }

    fn member(&self, m: &ChatMessage) -> Vec<u8> {
        window::member(m.version(), &self.codec.encode(m).expect("encode"))
    }

    /// Writes `seqs` to the table and the window, as the consumer would.
    async fn write(&mut self, seqs: impl IntoIterator<Item = i64>) {
        let msgs: Vec<ChatMessage> = seqs.into_iter().map(|s| message(&self.sid, s)).collect();
        self.write_messages(msgs).await;
    }

    /// Writes `msgs` to the table and the window, as the consumer would.
    async fn write_messages(&mut self, msgs: Vec<ChatMessage>) {
        self.write_rows(&msgs).await;
        self.append_window(&msgs).await;
    }

    /// Writes `msgs` to the table only (the window does not learn of them).
    async fn write_rows(&mut self, msgs: &[ChatMessage]) {
        self.messages.write(msgs).await.expect("write rows");
        self.written.extend(msgs.iter().map(|m| (m.seq, m.clone())));
    }

    /// Appends `msgs` to the window as the consumer does once their rows are written: an empty
    /// window is started from the table's newest rows.
    async fn consumer_append(&self, msgs: &[ChatMessage]) {
        let mut con = self.redis.clone();
        let not_started = self
            .window
            .append(&mut con, &self.window_entries(msgs))
            .await
            .expect("append window");
        let started = self
            .starter
            .start(&mut con, &not_started)
            .await
            .expect("start window");
        assert_eq!(started.failed, 0, "{:?}", started.first_error);
    }

    /// Puts `msgs` in the window as the newest messages (proven: they may start it), with the
    /// consumer's window writer.
    async fn append_window(&self, msgs: &[ChatMessage]) {
        let mut con = self.redis.clone();
        self.window
            .append_proven(&mut con, &self.window_entries(msgs))
            .await
            .expect("append window");
    }

    /// The window entries of `msgs`, keyed by the fixture's session, as the writer takes them.
    fn window_entries(&self, msgs: &[ChatMessage]) -> BTreeMap<String, Vec<WindowEntry>> {
        let entries = msgs
            .iter()
            .map(|m| WindowEntry::of(m, &self.codec.encode(m).expect("encode")))
            .collect();
        BTreeMap::from([(self.sid.clone(), entries)])
    }

    /// Adds `msgs` to the window with a raw ZADD, bypassing the writer's rules (the state a
    /// rollback, a replay or an older writer can leave).
    async fn zadd_window(&self, msgs: &[ChatMessage]) {
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(keys::window(&self.sid));
        for m in msgs {
            cmd.arg(m.seq).arg(self.member(m));
        }
        let mut con = self.redis.clone();
        cmd.query_async::<()>(&mut con).await.expect("ZADD window");
    }

    /// Deletes the window, as FLUSHALL or expiry would.
    async fn drop_window(&self) {
        let mut con = self.redis.clone();
        redis::cmd("DEL")
            .arg(keys::window(&self.sid))
            .query_async::<()>(&mut con)
            .await
            .expect("DEL window");
    }

    async fn window_seqs(&self) -> Vec<i64> {
        let mut con = self.redis.clone();
        let scored: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
            .arg(keys::window(&self.sid))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut con)
            .await
            .expect("ZRANGE");
        scored.into_iter().map(|(_, s)| s as i64).collect()
    }

    /// Sets the allocator's ceiling row, as the seq allocator would have.
    async fn set_ceiling(&self, max_seq: i64) {
        self.cql
            .query_unpaged(
                chatlog_store::seq::insert_ceiling_cql(&self.config.keyspace),
                (&self.sid, max_seq),
            )
            .await
            .expect("insert ceiling");
    }

    /// [`Fixture::assert_messages`], and the page was read from `source`.
    fn assert_read(&self, page: &Page, source: Source, seqs: impl IntoIterator<Item = i64>) {
        self.assert_messages(page, seqs);
        assert_eq!(page.source, source, "{page:?}");
    }

    /// [`Fixture::assert_messages`], and the page reports no gap.
    fn assert_messages_no_gap(&self, page: &Page, seqs: impl IntoIterator<Item = i64>) {
        self.assert_messages(page, seqs);
        assert!(page.missing.is_empty(), "{page:?}");
    }

    /// Asserts the page's messages are exactly the written ones with these seqs.
    fn assert_messages(&self, page: &Page, seqs: impl IntoIterator<Item = i64>) {
        let want: Vec<&ChatMessage> = seqs.into_iter().map(|s| &self.written[&s]).collect();
        let want_seqs: Vec<i64> = want.iter().map(|m| m.seq).collect();
        assert_eq!(
            page.seqs(),
            want_seqs,
            "seqs; missing {:?}, covered {:?}",
            page.missing,
            page.covered
        );
        let got: Vec<&ChatMessage> = page.messages.iter().collect();
        assert_eq!(got, want, "page {page:?}");
    }
}

#[tokio::test]
async fn window_hit_reads_no_database() {
    let mut fx = fixture(200, 1000).await;
    fx.write(1..=30).await;

    let page = fx.history.latest(&fx.sid, 10).await.unwrap();
    fx.assert_read(&page, Source::Window, 21..=30);
    assert_eq!(page.covered, Some(21..=30));
    assert!(page.missing.is_empty());
    assert_eq!(page.next, Some(21));

    let page = fx.history.before(&fx.sid, 21, 5).await.unwrap();
    fx.assert_messages(&page, 16..=20);
    assert_eq!(
        (page.source, page.covered.clone()),
        (Source::Window, Some(16..=20))
    );

    let page = fx.history.after(&fx.sid, 25, 100).await.unwrap();
    fx.assert_messages(&page, 26..=30);
    assert_eq!((page.source, page.next), (Source::Window, None));

    let page = fx.history.after(&fx.sid, 10, 5).await.unwrap();
    fx.assert_messages(&page, 11..=15);
    assert_eq!(page.next, Some(15));

    let page = fx.history.get(&fx.sid, &[5, 3, 5]).await.unwrap();
    fx.assert_read(&page, Source::Window, [3, 5]);

    // More distinct seqs than a page holds: refused, not answered in part.
    let too_many: Vec<i64> = (1..=fx.history.config().max_limit as i64 + 1).collect();
    let err = fx.history.get(&fx.sid, &too_many).await.unwrap_err();
    assert!(
        matches!(err, chatlog_store::Error::Request(_)) && err.to_string().contains("max_limit"),
        "{err}"
    );

    // The whole history fits the window: latest(n > len) is still a window hit.
    let page = fx.history.latest(&fx.sid, 100).await.unwrap();
    fx.assert_messages(&page, 1..=30);
    assert_covered(&page, 1..=30, None);

    assert_eq!(fx.history.db_reads(), 0);
    assert_eq!(fx.history.db_queries(), 0);
}

#[tokio::test]
async fn partial_cover_merges_window_and_database() {
    let mut fx = fixture(5, 1000).await;
    fx.write(1..=20).await;
    assert_eq!(fx.window_seqs().await, (16..=20).collect::<Vec<_>>());

    let page = fx.history.before(&fx.sid, 18, 10).await.unwrap();
    fx.assert_read(&page, Source::Both, 8..=17);
    assert_eq!(page.covered, Some(8..=17));
    assert_eq!(page.next, Some(8));
    assert_eq!(fx.history.db_reads(), 1);

    let page = fx.history.latest(&fx.sid, 8).await.unwrap();
    fx.assert_read(&page, Source::Both, 13..=20);

    let page = fx.history.after(&fx.sid, 10, 8).await.unwrap();
    fx.assert_messages(&page, 11..=18);
    assert_eq!((page.source, page.next), (Source::Both, Some(18)));

    // Entirely below the window: the window only proves that 9 is below the head.
    let page = fx.history.before(&fx.sid, 10, 100).await.unwrap();
    fx.assert_read(&page, Source::Database, 1..=9);
    assert_covered(&page, 1..=9, None);

    let page = fx.history.get(&fx.sid, &[2, 19]).await.unwrap();
    fx.assert_read(&page, Source::Both, [2, 19]);
    assert_eq!(fx.history.db_reads(), 5);
}

#[tokio::test]
async fn window_gone_serves_from_database() {
    let mut fx = fixture(200, 1000).await;
    fx.write(1..=30).await;
    fx.drop_window().await;

    let page = fx.history.latest(&fx.sid, 10).await.unwrap();
    fx.assert_read(&page, Source::Database, 21..=30);
    assert_covered(&page, 21..=30, Some(21));

    let page = fx.history.before(&fx.sid, 21, 10).await.unwrap();
    fx.assert_messages(&page, 11..=20);
    assert_eq!((page.source, page.next), (Source::Database, Some(11)));

    let page = fx.history.after(&fx.sid, 25, 100).await.unwrap();
    fx.assert_messages(&page, 26..=30);
    assert_eq!((page.source, page.next), (Source::Database, None));

    // 31 is above the newest message: neither returned nor missing.
    let page = fx.history.get(&fx.sid, &[1, 30, 31]).await.unwrap();
    fx.assert_messages_no_gap(&page, [1, 30]);
    assert_eq!(page.covered, Some(1..=30));

    assert_eq!(fx.history.db_reads(), 4);
    // History never refills the window.
    assert!(fx.window_seqs().await.is_empty());

    // New messages restart the window; history uses it for what it holds and the table for the rest.
    fx.write(31..=32).await;
    let page = fx.history.latest(&fx.sid, 5).await.unwrap();
    fx.assert_read(&page, Source::Both, 28..=32);
}

#[tokio::test]
async fn gaps_are_reported_missing() {
    let mut fx = fixture(200, 1000).await;
    fx.write((1..=10).filter(|s| ![4, 7].contains(s))).await;
    let present: Vec<i64> = (1..=10).filter(|s| ![4, 7].contains(s)).collect();

    for from_window in [true, false] {
        if !from_window {
            fx.drop_window().await;
        }
        // A hole in the window is confirmed against the table before it is reported: the
        // window answers with the database's help.
        let source = if from_window {
            Source::Both
        } else {
            Source::Database
        };
        let queries = fx.history.db_queries();
        let page = fx.history.latest(&fx.sid, 20).await.unwrap();
        fx.assert_messages(&page, present.clone());
        assert_eq!(page.missing, vec![4..=4, 7..=7]);
        assert!(page.pending.is_empty());
        if from_window {
            // Both holes lie in one bucket: one `seq IN` query.
            assert_eq!(fx.history.db_queries() - queries, 1);
        }
        assert_covered(&page, 1..=10, None);
        assert_eq!(page.source, source);

        let page = fx.history.after(&fx.sid, 0, 100).await.unwrap();
        assert_eq!(
            (page.seqs(), page.missing.clone()),
            (present.clone(), vec![4..=4, 7..=7])
        );

        let page = fx.history.before(&fx.sid, 11, 100).await.unwrap();
        assert_eq!(
            (page.seqs(), page.missing.clone()),
            (present.clone(), vec![4..=4, 7..=7])
        );

        // 8 exists, so 7 is a gap even though no message between 7 and 8 is returned.
        let page = fx.history.before(&fx.sid, 8, 2).await.unwrap();
        assert_eq!(page.seqs(), vec![5, 6]);
        assert_eq!((page.missing.clone(), page.next), (vec![7..=7], Some(5)));

        let page = fx.history.get(&fx.sid, &[3, 4, 7, 11]).await.unwrap();
        assert_eq!(
            (page.seqs(), page.missing.clone()),
            (vec![3], vec![4..=4, 7..=7])
        );
    }
}

#[tokio::test]
async fn session_spanning_buckets() {
    let mut fx = fixture(20, 10).await;
    // Bucket 4 (40..=49) is empty, 63 is a gap; the window holds 76..=95.
    let present: Vec<i64> = (1..=95)
        .filter(|s| !(40..=49).contains(s) && *s != 63)
        .collect();
    fx.write(present.clone()).await;
    assert_eq!(fx.window_seqs().await, (76..=95).collect::<Vec<_>>());

    let page = fx.history.before(&fx.sid, 60, 25).await.unwrap();
    let want: Vec<i64> = (25..=39).chain(50..=59).collect();
    fx.assert_messages(&page, want);
    assert_eq!(page.missing, vec![40..=49]);
    assert_eq!((page.source, page.next), (Source::Database, Some(25)));

    let page = fx.history.after(&fx.sid, 30, 40).await.unwrap();
    let want: Vec<i64> = (31..=39).chain(50..=62).chain(64..=81).collect();
    fx.assert_messages(&page, want);
    assert_eq!(page.missing, vec![40..=49, 63..=63]);
    assert_eq!((page.source, page.next), (Source::Both, Some(81)));

    // Window gone; the allocator's ceiling is 25 above the head (3 empty buckets above it).
    fx.drop_window().await;
    fx.set_ceiling(120).await;
    let page = fx.history.latest(&fx.sid, 30).await.unwrap();
    fx.assert_messages(&page, 66..=95);
    assert_eq!((page.source, page.next), (Source::Database, Some(66)));

    // Scroll back with the cursors until the start: every message once, every gap reported.
    let (mut seqs, mut missing, mut next) = (
        page.seqs(),
        page.missing_seqs().collect::<Vec<_>>(),
        page.next,
    );
    while let Some(cursor) = next {
        let page = fx.history.before(&fx.sid, cursor, 30).await.unwrap();
        seqs.splice(0..0, page.seqs());
        missing.splice(0..0, page.missing_seqs());
        next = page.next;
    }
    assert_eq!(seqs, present);
    assert_eq!(missing, (40..=49).chain([63]).collect::<Vec<_>>());

    let page = fx.history.after(&fx.sid, 0, 1000).await.unwrap();
    assert_eq!((page.seqs(), page.next), (present.clone(), None));

    // With K = 2 the walk from the ceiling stops before the head: no claim, a cursor below it.
    let short = fx
        .reader(HistoryConfig {
            max_empty_buckets: 2,
            ..history_config(20, 10)
        })
        .await;
    let mut page = short.latest(&fx.sid, 5).await.unwrap();
    assert!(page.messages.is_empty() && page.covered.is_none());
    assert_eq!(page.next, Some(110));
    let mut cursors = Vec::new();
    while page.messages.is_empty() {
        let cursor = page.next.expect("a cursor below the early stop");
        cursors.push(cursor);
        page = short.before(&fx.sid, cursor, 5).await.unwrap();
    }
    assert_eq!(cursors, vec![110, 100]);
    fx.assert_messages(&page, 91..=95);
}

#[tokio::test]
async fn concurrent_identical_fallbacks_read_the_database_once() {
    let mut fx = fixture(10, 1000).await;
    fx.write(1..=50).await;
    fx.drop_window().await;

    let (reads, coalesced) = (fx.history.db_reads(), fx.history.coalesced());
    let pages =
        futures::future::join_all((0..50).map(|_| fx.history.before(&fx.sid, 40, 20))).await;
    for page in &pages {
        let page = page.as_ref().unwrap();
        fx.assert_messages(page, 20..=39);
        assert_eq!(page.source, Source::Database);
    }
    assert_eq!(fx.history.db_reads() - reads, 1);
    assert_eq!(fx.history.coalesced() - coalesced, 49);

    // Finished requests leave the single-flight map: the next identical call reads again.
    fx.history.before(&fx.sid, 40, 20).await.unwrap();
    assert_eq!(fx.history.db_reads() - reads, 2);

    // So do abandoned ones: a request dropped mid-flight is not joined by the next one.
    let mut abandoned = Box::pin(fx.history.before(&fx.sid, 40, 20));
    assert!(futures::poll!(&mut abandoned).is_pending());
    drop(abandoned);
    let coalesced = fx.history.coalesced();
    fx.history.before(&fx.sid, 40, 20).await.unwrap();
    assert_eq!(fx.history.coalesced(), coalesced);
}

#[tokio::test]
async fn verify_window_finds_planted_differences() {
    let mut fx = fixture(10, 1000).await;
    fx.write(1..=30).await;

    let report = verify_window(&fx.history, &fx.sid).await.unwrap();
    assert!(report.is_consistent(), "{report}");
    assert!(
        report.window_epoch_current,
        "written by the consumer in this epoch"
    );
    assert_eq!(report.window_range, Some((21, 30)));
    assert!(report.older_than_window.is_empty(), "{report}");

    // Plant: a hole (25), an extra member (40), different content (28), a different version (27),
    // and garbage (35).
    let key = keys::window(&fx.sid);
    let mut con = fx.redis.clone();
    let m25 = fx.member(&fx.written[&25]);
    let m28 = fx.member(&fx.written[&28]);
    let m27 = fx.member(&fx.written[&27]);
    let mut changed = fx.written[&28].clone();
    changed.content = b"tampered".to_vec();
    let mut newer = fx.written[&27].clone();
    newer.server_time_us += 1;
    let extra = message(&fx.sid, 40);
    redis::pipe()
        .cmd("ZREM")
        .arg(&key)
        .arg(&m25)
        .arg(&m28)
        .arg(&m27)
        .cmd("ZADD")
        .arg(&key)
        .arg(28)
        .arg(fx.member(&changed))
        .arg(27)
        .arg(fx.member(&newer))
        .arg(40)
        .arg(fx.member(&extra))
        .arg(35)
        .arg(b"not a member".as_slice())
        .query_async::<()>(&mut con)
        .await
        .unwrap();

    let report = verify_window(&fx.history, &fx.sid).await.unwrap();
    assert!(!report.is_consistent());
    assert_eq!(report.missing_in_window, vec![25], "{report}");
    assert_eq!(report.extra_in_window, vec![40], "{report}");
    assert_eq!(report.undecodable, vec![35], "{report}");
    let diffs: Vec<(i64, bool, bool)> = report
        .differing
        .iter()
        .map(|d| (d.seq, d.content_differs, d.window_version != d.db_version))
        .collect();
    assert_eq!(
        diffs,
        vec![(27, false, true), (28, true, false)],
        "{report}"
    );

    // An undecodable member makes history distrust the window and read the table.
    let page = fx.history.latest(&fx.sid, 5).await.unwrap();
    fx.assert_read(&page, Source::Database, 26..=30);
}

/// The state a Redis rollback leaves (a restart from an old snapshot, a failover to a lagging
/// replica): the window went back to `{1..100}`, the messages 101..150 written after the snapshot
/// are only in the table, and new messages 151..160 landed in the window above the old head. The
/// window's hole 101..150 is not a gap: history confirms it against the table and returns the rows.
#[tokio::test]
async fn rollback_hole_in_window_is_read_from_the_table() {
    let mut fx = fixture(200, 1000).await;
    let all: Vec<ChatMessage> = (1..=160).map(|s| message(&fx.sid, s)).collect();
    fx.write_rows(&all).await;
    fx.append_window(&all[..100]).await;
    fx.append_window(&all[150..]).await;
    let window: Vec<i64> = (1..=100).chain(151..=160).collect();
    assert_eq!(fx.window_seqs().await, window);

    let page = fx.history.latest(&fx.sid, 100).await.unwrap();
    fx.assert_messages(&page, 61..=160);
    assert_eq!(page.missing, vec![], "{:?}", page.covered);
    assert_covered(&page, 61..=160, Some(61));
    assert_eq!(page.source, Source::Both);

    let page = fx.history.latest(&fx.sid, 200).await.unwrap();
    fx.assert_messages_no_gap(&page, 1..=160);
    assert_covered(&page, 1..=160, None);

    let page = fx.history.before(&fx.sid, 161, 60).await.unwrap();
    fx.assert_messages_no_gap(&page, 101..=160);
    assert_covered(&page, 101..=160, Some(101));

    let page = fx.history.before(&fx.sid, 140, 30).await.unwrap();
    fx.assert_messages_no_gap(&page, 110..=139);
    assert_eq!(page.covered, Some(110..=139));

    // Sync from 90: the oldest 30 after it, through the hole, then on to the head.
    let page = fx.history.after(&fx.sid, 90, 30).await.unwrap();
    fx.assert_messages_no_gap(&page, 91..=120);
    assert_covered(&page, 91..=120, Some(120));
    let page = fx.history.after(&fx.sid, 120, 100).await.unwrap();
    fx.assert_messages_no_gap(&page, 121..=160);
    assert_eq!(page.next, None);
    let page = fx.history.after(&fx.sid, 0, 1000).await.unwrap();
    fx.assert_messages_no_gap(&page, 1..=160);

    let page = fx
        .history
        .get(&fx.sid, &[50, 101, 125, 150, 155])
        .await
        .unwrap();
    fx.assert_messages_no_gap(&page, [50, 101, 125, 150, 155]);
    assert_eq!(page.covered, Some(50..=155));
}

/// A late old seq below a short window (a DLQ replay, a rewind, a window that expired, a zombie
/// after FLUSHALL) makes `{150}` into `{120, 150}`; 121..149 are in the table, not gaps.
#[tokio::test]
async fn late_old_seq_below_the_window_is_no_gap() {
    let mut fx = fixture(200, 1000).await;
    let rows: Vec<ChatMessage> = (120..=150).map(|s| message(&fx.sid, s)).collect();
    fx.write_rows(&rows).await;
    fx.append_window(&rows[30..]).await;
    // Raw ZADD: whatever the writer's rules, this is the state an older writer or a replay leaves.
    fx.zadd_window(&rows[..1]).await;
    assert_eq!(fx.window_seqs().await, vec![120, 150]);

    let page = fx.history.latest(&fx.sid, 31).await.unwrap();
    fx.assert_messages_no_gap(&page, 120..=150);
    assert_covered(&page, 120..=150, Some(120));

    let page = fx.history.before(&fx.sid, 151, 31).await.unwrap();
    fx.assert_messages_no_gap(&page, 120..=150);

    let page = fx.history.after(&fx.sid, 119, 100).await.unwrap();
    fx.assert_messages_no_gap(&page, 120..=150);
    assert_covered(&page, 120..=150, None);

    let page = fx.history.after(&fx.sid, 125, 10).await.unwrap();
    fx.assert_messages_no_gap(&page, 126..=135);

    let page = fx
        .history
        .get(&fx.sid, &[121, 135, 149, 150])
        .await
        .unwrap();
    fx.assert_messages_no_gap(&page, [121, 135, 149, 150]);
}

/// Now, in microseconds since the Unix epoch (the unit of `server_time_us`).
fn now_us() -> i64 {
    chatlog::now_ms() * 1000
}

/// A gap is `pending` while the message right above it is younger than the settle horizon, and
/// `missing` once it is older; seqs above the head are in neither list. Ages come from the
/// messages' `server_time_us`, set in the past: no sleeping.
#[tokio::test]
async fn pending_gaps_younger_than_the_settle_horizon() {
    let mut fx = fixture(200, 1000).await;
    // 3 and 8 are gaps; 4 (above 3) was stored long ago, 9 (above 8) a minute ago.
    let minute_ago = now_us() - 60_000_000;
    let msgs: Vec<ChatMessage> = [1, 2, 4, 5, 6, 7, 9, 10]
        .into_iter()
        .map(|s| {
            let mut m = message(&fx.sid, s);
            if s >= 9 {
                m.server_time_us = minute_ago + s;
            }
            m
        })
        .collect();
    fx.write_messages(msgs).await;
    let present = vec![1, 2, 4, 5, 6, 7, 9, 10];
    let reader = |settle_horizon: Duration| {
        fx.reader(HistoryConfig {
            settle_horizon,
            ..history_config(200, 1000)
        })
    };
    let hour = reader(Duration::from_secs(3600)).await;
    let second = reader(Duration::from_secs(1)).await;
    assert_eq!(
        HistoryConfig::default().settle_horizon,
        Duration::from_secs(60)
    );

    for from_window in [true, false] {
        if !from_window {
            fx.drop_window().await;
        }
        let page = hour.latest(&fx.sid, 20).await.unwrap();
        fx.assert_messages(&page, present.clone());
        assert_eq!(
            (page.missing.clone(), page.pending.clone()),
            (vec![3..=3], vec![8..=8])
        );
        assert_eq!(page.covered, Some(1..=10));

        let page = hour.after(&fx.sid, 0, 100).await.unwrap();
        assert_eq!(page.seqs(), present);
        assert_eq!(
            (page.missing.clone(), page.pending.clone()),
            (vec![3..=3], vec![8..=8])
        );
        let page = hour.after(&fx.sid, 7, 100).await.unwrap();
        assert_eq!(
            (page.seqs(), page.pending.clone()),
            (vec![9, 10], vec![8..=8])
        );

        let page = hour.before(&fx.sid, 11, 100).await.unwrap();
        assert_eq!(
            (page.missing.clone(), page.pending.clone()),
            (vec![3..=3], vec![8..=8])
        );
        // 8 is the top of the covered range: aged by 9, the message at the cursor.
        let page = hour.before(&fx.sid, 9, 3).await.unwrap();
        assert_eq!(page.seqs(), vec![5, 6, 7]);
        assert_eq!(
            (page.missing.clone(), page.pending.clone()),
            (vec![], vec![8..=8])
        );
        assert_eq!(page.covered, Some(5..=8));

        // 11 is above the head: in neither list.
        let page = hour.get(&fx.sid, &[3, 4, 8, 11]).await.unwrap();
        assert_eq!(page.seqs(), vec![4]);
        assert_eq!(
            (page.missing.clone(), page.pending.clone()),
            (vec![3..=3], vec![8..=8])
        );
        assert_eq!(page.covered, Some(3..=10));

        // With a one-second horizon, the minute-old gap is settled: missing.
        let page = second.latest(&fx.sid, 20).await.unwrap();
        assert_eq!(
            (page.missing.clone(), page.pending.clone()),
            (vec![3..=3, 8..=8], vec![])
        );
        let page = second.get(&fx.sid, &[3, 8, 11]).await.unwrap();
        assert_eq!(
            (page.missing.clone(), page.pending.clone()),
            (vec![3..=3, 8..=8], vec![])
        );
        let page = second.before(&fx.sid, 9, 3).await.unwrap();
        assert_eq!(
            (page.missing.clone(), page.pending.clone()),
            (vec![8..=8], vec![])
        );
    }
}

/// A real recovery gap inside the window (21..=1020, a hundred buckets of 10) is confirmed
/// against the table a bounded walk at a time: at most `K` empty buckets per page, one query each,
/// whatever the gap's length; the page then ends inside the gap and its cursor continues there.
/// Paging through the whole session in either direction returns every message once and every
/// seq of the gap as missing exactly once.
#[tokio::test]
async fn rollback_confirmation_of_a_long_gap_is_bounded_by_the_request() {
    let mut fx = fixture(200, 10).await;
    let present: Vec<i64> = (1..=20).chain(1021..=1030).collect();
    fx.write(present.clone()).await;
    assert_eq!(fx.window_seqs().await, present);
    let k = fx.history.config().max_empty_buckets as u64;

    let queries = fx.history.db_queries();
    let page = fx.history.latest(&fx.sid, 15).await.unwrap();
    // Bucket 102 holds seq 1020 (one IN query), then K empty buckets 101..=86.
    assert_eq!(fx.history.db_queries() - queries, k + 1);
    fx.assert_messages(&page, 1021..=1030);
    assert_covered(&page, 860..=1030, Some(860));
    assert_eq!(page.missing, vec![860..=1020]);
    assert!(page.pending.is_empty());

    let (mut seqs, mut missing, mut next) = (
        page.seqs(),
        page.missing_seqs().collect::<Vec<_>>(),
        page.next,
    );
    while let Some(cursor) = next {
        let queries = fx.history.db_queries();
        let page = fx.history.before(&fx.sid, cursor, 15).await.unwrap();
        assert!(fx.history.db_queries() - queries <= k + 2, "{page:?}");
        assert!(page.pending.is_empty());
        seqs.splice(0..0, page.seqs());
        missing.splice(0..0, page.missing_seqs());
        next = page.next;
    }
    assert_eq!(seqs, present);
    assert_eq!(missing, (21..=1020).collect::<Vec<_>>());

    // Ascending (client sync from 0): the same, bounded the same way, the gap's top aged by 1021.
    let (mut seqs, mut missing, mut cursor) = (Vec::new(), Vec::new(), Some(0));
    while let Some(after) = cursor {
        let queries = fx.history.db_queries();
        let page = fx.history.after(&fx.sid, after, 100).await.unwrap();
        assert!(fx.history.db_queries() - queries <= k + 2, "{page:?}");
        assert!(page.pending.is_empty(), "{page:?}");
        seqs.extend(page.seqs());
        missing.extend(page.missing_seqs());
        cursor = page.next;
    }
    assert_eq!(seqs, present);
    assert_eq!(missing, (21..=1020).collect::<Vec<_>>());

    // get: exactly the requested seqs, one IN query per bucket; the gap's seqs are missing.
    let page = fx
        .history
        .get(&fx.sid, &[20, 21, 500, 1020, 1021])
        .await
        .unwrap();
    fx.assert_messages(&page, [20, 1021]);
    assert_eq!(page.missing, vec![21..=21, 500..=500, 1020..=1020]);
}

/// Redis restarted from a snapshot and the session has had no message since: its window ends at
/// 100 while the table reaches 150, and nothing but the epoch says so. History does not trust a
/// window of another epoch: `latest` and `after` answer from the table, and the consumer's next
/// message (a window restarted in the new epoch) makes the window answer again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_with_no_message_since_never_serves_the_stale_window_head() {
    let port = free_port();
    let mut redis = TestRedis::start(&["--port".into(), port.to_string()], port);
    let mut con = connect_to(port).await;
    let mut fx = fixture_on(200, 1000, con.clone()).await;
    fx.write(1..=100).await;
    let _: String = admin(&mut con, &["SAVE"]).await;
    fx.write(101..=150).await;
    let page = fx.history.latest(&fx.sid, 10).await.expect("latest");
    assert_eq!(
        (page.seqs(), page.source),
        ((141..=150).collect(), Source::Window)
    );

    redis.restart();
    until_answers(&mut con).await;
    let page = fx.history.latest(&fx.sid, 10).await.expect("latest");
    assert_eq!(
        page.seqs(),
        (141..=150).collect::<Vec<_>>(),
        "the head is the table's, not the rolled-back window's (100)"
    );
    assert_eq!(page.source, Source::Database);
    let page = fx.history.after(&fx.sid, 100, 20).await.expect("after");
    assert_eq!(page.seqs(), (101..=120).collect::<Vec<_>>());
    assert!(
        page.missing.is_empty() && page.pending.is_empty(),
        "{page:?}"
    );

    fx.write(151..=151).await;
    let page = fx.history.latest(&fx.sid, 1).await.expect("latest");
    assert_eq!((page.seqs(), page.source), (vec![151], Source::Window));
}

/// One message with seq 10^15 (a foreign producer, a corrupted record; still below 2^53, so
/// valid) above seqs 1..=3. Every read of the session is answered with gaps as ranges: at most
/// one per hole between the page's messages, never an entry per absent seq (before: each page
/// listed every seq of the `K` buckets it walked, and a larger bucket size or `K` multiplied
/// that; the `covered` range alone spans 10^15 seqs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_seq_gap_is_listed_as_ranges_bounded_by_the_page() {
    let mut fx = fixture(200, 1000).await;
    let hour_ago = now_us() - 3_600_000_000;
    let far = 1_000_000_000_000_000_i64;
    let msgs: Vec<ChatMessage> = [1, 2, 3, far]
        .into_iter()
        .map(|s| {
            let mut m = message(&fx.sid, s);
            m.server_time_us = hour_ago + s % 1000;
            m
        })
        .collect();
    fx.write_messages(msgs).await;
    let limit = 10;
    let bounded = |page: &Page, what: &str| {
        let entries = page.missing.len() + page.pending.len();
        assert!(
            entries <= limit + 1,
            "{what}: {entries} gap entries for a page of {limit} (covered {:?})",
            page.covered
        );
    };
    for from_window in [true, false] {
        if !from_window {
            fx.drop_window().await;
        }
        let reads = async {
            let page = fx.history.latest(&fx.sid, limit).await.unwrap();
            bounded(&page, "latest");
            // Without the window (and no allocator ceiling) the probe for the head stops `K`
            // empty buckets above seq 3: the far message is not found, which is no gap either.
            let head = if from_window { far } else { 3 };
            assert_eq!(page.seqs().last(), Some(&head));
            let page = fx.history.after(&fx.sid, 0, limit).await.unwrap();
            bounded(&page, "after(0)");
            assert_eq!(page.seqs()[..3], [1, 2, 3]);
            let page = fx.history.after(&fx.sid, 3, limit).await.unwrap();
            bounded(&page, "after(3)");
            let page = fx.history.before(&fx.sid, far, limit).await.unwrap();
            bounded(&page, "before(far)");
            let page = fx.history.get(&fx.sid, &[2, 4, 5, 6, far]).await.unwrap();
            bounded(&page, "get");
        };
        tokio::time::timeout(Duration::from_secs(60), reads)
            .await
            .expect("every read returns within a minute");
    }
}

/// Delete for me: the viewer who hid seqs gets every page without them (latest, before, after,
/// get), listed in `hidden` — not as gaps — while another viewer and the shared history still see
/// them; a seq hidden before its message is stored applies when it arrives.
#[tokio::test]
async fn delete_for_me_hides_messages_from_that_viewer_only() {
    use chatlog_store::hidden::HiddenMessages;

    let mut f = fixture(5, 1000).await;
    f.write(1..=10).await; // seqs 6..=10 in the window, 1..=5 in the table only
    let hidden = HiddenMessages::new(f.cql.clone(), &f.config.keyspace)
        .await
        .expect("hidden");
    hidden
        .hide("alice", &f.sid, &[2, 9, 12], 0)
        .await
        .expect("hide"); // 12 is not stored yet

    let alice = f.history.viewer("alice");
    let page = alice.latest(&f.sid, 10).await.expect("latest");
    f.assert_messages(&page, [1, 3, 4, 5, 6, 7, 8, 10]);
    assert_eq!(page.hidden, vec![2, 9], "{page:?}");
    assert!(
        page.missing.is_empty() && page.pending.is_empty(),
        "{page:?}"
    );
    let page = alice.get(&f.sid, &[2, 3, 9]).await.expect("get");
    f.assert_messages(&page, [3]);
    assert_eq!(page.hidden, vec![2, 9]);
    let page = alice.before(&f.sid, 5, 10).await.expect("before");
    f.assert_messages(&page, [1, 3, 4]);
    let page = alice.after(&f.sid, 8, 10).await.expect("after");
    f.assert_messages(&page, [10]);
    assert_eq!(page.hidden, vec![9]);

    for page in [
        f.history
            .viewer("bob")
            .latest(&f.sid, 10)
            .await
            .expect("bob"),
        f.history.latest(&f.sid, 10).await.expect("shared"),
    ] {
        f.assert_messages(&page, 1..=10);
        assert!(page.hidden.is_empty());
    }

    f.write(11..=12).await;
    let page = f
        .history
        .viewer("alice")
        .latest(&f.sid, 3)
        .await
        .expect("latest");
    f.assert_messages(&page, [10, 11]);
    assert_eq!(page.hidden, vec![12]);
}

/// A mutation (recall, edit) of an older message after the session's window was lost (FLUSHALL,
/// failover, idle expiry) must not start the window at that old seq: history takes the window's
/// newest member for the session's head, so `latest` would answer the recalled seq 3 instead of
/// 10, and `after` would skip 4..=10. The chaos run found it (59 window mismatches). The
/// consumer's append leaves the empty window alone and starts it from the table's newest rows,
/// where the mutations already are.
#[tokio::test]
async fn recall_of_an_old_message_after_the_window_was_lost_restarts_the_window_from_the_table() {
    use chatlog_schemas::testing::{edited, recalled};

    let mut f = fixture(5, 1000).await;
    f.write(1..=10).await;
    f.drop_window().await;
    let t = f.written[&3].server_time_us;
    let recall = recalled(&f.written[&3], t + 1_000);
    let edit = edited(&f.written[&9], t + 2_000, 1, b"edited");
    f.write_rows(&[recall.clone(), edit.clone()]).await;
    f.consumer_append(&[recall.clone(), edit.clone()]).await;
    assert_eq!(
        f.window_seqs().await,
        (6..=10).collect::<Vec<_>>(),
        "the table's newest rows, not the recalled seq"
    );

    let page = f.history.latest(&f.sid, 3).await.expect("latest");
    f.assert_read(&page, Source::Window, [8, 9, 10]);
    assert_eq!(page.messages[1], edit, "the edit, in the window");
    let page = f.history.after(&f.sid, 2, 10).await.expect("after");
    f.assert_messages(&page, 3..=10);
    assert_eq!(page.messages[0], recall, "the recall, from the table");

    // New messages and a mutation of one of them go on into the window.
    let next: Vec<ChatMessage> = (11..=12).map(|s| message(&f.sid, s)).collect();
    f.write_rows(&next).await;
    f.consumer_append(&next).await;
    let again = edited(&f.written[&12], t + 3_000, 1, b"edited 12");
    f.write_rows(std::slice::from_ref(&again)).await;
    f.consumer_append(std::slice::from_ref(&again)).await;
    assert_eq!(f.window_seqs().await, (8..=12).collect::<Vec<_>>());
    let page = f.history.latest(&f.sid, 2).await.expect("latest");
    f.assert_read(&page, Source::Window, [11, 12]);
    assert_eq!(page.messages[1], again);
}

/// `latest` reads of many sessions at once share round trips (issue 18, P5): the reads queued
/// while a call is in flight go out together, one epoch read for all of them, instead of a
/// transaction each. On a private Redis, so its command counts are this test's alone; the reads
/// are started on one task (`join_all`), so all are queued before any is sent.
#[tokio::test]
async fn concurrent_latest_reads_of_many_sessions_share_round_trips() {
    let port = free_port();
    let _redis = TestRedis::start(&["--port".into(), port.to_string()], port);
    let mut con = connect_to(port).await;
    let mut fx = fixture_on(200, 1000, con.clone()).await;
    let sessions: Vec<String> = (0..16).map(|i| unique(&format!("many{i}"))).collect();
    for sid in &sessions {
        fx.sid = sid.clone();
        fx.write(1..=10).await;
    }
    // The window epoch script loaded once beforehand, as by an earlier read.
    let warm = fx.history.latest(&sessions[0], 5).await.expect("latest");
    assert_eq!(warm.seqs(), (6..=10).collect::<Vec<_>>());
    let _: String = admin(&mut con, &["CONFIG", "RESETSTAT"]).await;

    let pages = futures::future::join_all(sessions.iter().map(|s| fx.history.latest(s, 5))).await;
    for (sid, page) in sessions.iter().zip(pages) {
        let page = page.expect("latest");
        assert_eq!(
            (page.seqs(), page.source),
            ((6..=10).collect(), Source::Window),
            "{sid}"
        );
        assert!(page.messages.iter().all(|m| &m.session_id == sid), "{sid}");
    }
    let stats: String = admin(&mut con, &["INFO", "commandstats"]).await;
    let calls = |command: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    // Sixteen reads: one transaction each before; now one for them all (two if the first read
    // went out before the others were queued).
    assert!(
        calls("exec") <= 2 && calls("evalsha") <= 2,
        "{} EXEC and {} EVALSHA for {} reads:\n{stats}",
        calls("exec"),
        calls("evalsha"),
        sessions.len()
    );
    assert_eq!(calls("zrevrange"), sessions.len() as u64, "{stats}");
    assert_eq!(fx.history.db_reads(), 0);
}
