//! The `messages` table against the dev stack's CQL database (`dev/stack.sh up`; the
//! `CHATLOG_CQL_*` variables of `dev/stack.sh env`): the typed row round-trips every column the
//! writer binds, and the one row-count statement counts what the writer stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use chatlog_schemas::testing::{self, message};
use chatlog_schemas::{ChatMessage, ContentType, SessionType};
use chatlog_store::messages::{
    BatchLimits, MessageRow, MessageWriter, RowCounter, bucket_of, select_range_desc_cql,
};
use chatlog_store::{CqlConfig, Secret, migrate};
use futures::TryStreamExt;
use scylla::client::session::Session;

fn env(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A new keyspace with every migration applied (the root test kit's `fresh_keyspace`, which this
/// crate cannot depend on).
async fn fresh_keyspace(prefix: &str) -> (Arc<Session>, CqlConfig) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let config = CqlConfig {
        nodes: env("CHATLOG_CQL_NODES", "127.0.0.1:9042")
            .split(',')
            .map(str::to_owned)
            .collect(),
        keyspace: format!("{prefix}_{}_{nanos}", std::process::id()),
        username: env("CHATLOG_CQL_USERNAME", "cassandra"),
        password: Secret::new(env("CHATLOG_CQL_PASSWORD", "cassandra")),
        ..CqlConfig::default()
    };
    let session = config
        .connect()
        .await
        .expect("CQL database (start it with dev/stack.sh up)");
    migrate::apply(&session, &config)
        .await
        .expect("apply migrations");
    (Arc::new(session), config)
}

/// A fresh keyspace and the consumer's writer on it, with the default limits.
async fn writer_in(prefix: &str) -> (Arc<Session>, CqlConfig, MessageWriter) {
    let (session, config) = fresh_keyspace(prefix).await;
    let writer = MessageWriter::new(session.clone(), &config.keyspace, BatchLimits::default())
        .await
        .expect("writer");
    (session, config, writer)
}

#[tokio::test]
async fn a_typed_row_reads_back_every_column_the_writer_bound() {
    let (session, config, writer) = writer_in("store_rows").await;
    let limits = BatchLimits::default();
    let mut with_ext = message("s-rows", 7);
    with_ext.session_type = SessionType::Single;
    with_ext.content_type = ContentType::Image;
    with_ext.content = vec![0, 255, 1, 254];
    with_ext.ext = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
    let plain = message("s-rows", 8);
    writer
        .write(&[with_ext.clone(), plain.clone()])
        .await
        .expect("write");

    let select = session
        .prepare(select_range_desc_cql(&config.keyspace))
        .await
        .expect("prepare");
    let bucket = bucket_of(7, limits.bucket_size);
    let rows: Vec<MessageRow> = session
        .execute_iter(select, ("s-rows", bucket, 1i64, 100i64))
        .await
        .expect("read")
        .rows_stream::<MessageRow>()
        .expect("typed rows")
        .try_collect()
        .await
        .expect("rows");
    assert_eq!(
        rows.iter().map(|r| (r.seq, r.bucket)).collect::<Vec<_>>(),
        vec![(8, bucket), (7, bucket)],
        "newest first, in their bucket"
    );
    let messages: Vec<ChatMessage> = rows.into_iter().map(ChatMessage::from).collect();
    assert_eq!(messages, vec![plain, with_ext]);
}

#[tokio::test]
async fn the_row_counter_counts_what_the_writer_stored() {
    let (session, config, writer) = writer_in("store_count").await;
    let limits = BatchLimits::default();
    let bs = limits.bucket_size;
    // Session a spans two buckets: seqs 1..=5 and bs-2..bs-1 in bucket 0, bs..=bs+2 in bucket 1.
    let a = testing::messages("count-a", (1..=5).chain(bs - 2..=bs + 2));
    let b = testing::messages("count-b", 1..=3);
    writer.write(&a).await.expect("write a");
    writer.write(&b).await.expect("write b");

    let counter = RowCounter::new(&session, &config.keyspace)
        .await
        .expect("prepare count");
    assert_eq!(counter.partition(&session, "count-a", 0).await.unwrap(), 7);
    assert_eq!(counter.partition(&session, "count-a", 1).await.unwrap(), 3);
    assert_eq!(
        counter.partition(&session, "count-none", 0).await.unwrap(),
        0
    );
    let total = counter
        .sessions(&session, &["count-a", "count-b", "count-none"], 0..=1)
        .await
        .unwrap();
    assert_eq!(total, (a.len() + b.len()) as i64);
}

/// Every order of `items` (Heap's algorithm; `items` is small).
fn orders<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    fn heap<T: Clone>(k: usize, a: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
        if k <= 1 {
            out.push(a.clone());
            return;
        }
        for i in 0..k {
            heap(k - 1, a, out);
            let j = if k.is_multiple_of(2) { i } else { 0 };
            a.swap(j, k - 1);
        }
    }
    let mut out = Vec::new();
    heap(items.len(), &mut items.to_vec(), &mut out);
    out
}

/// The row at (session, seq) as a message, with `writetime(content)`.
async fn stored(
    session: &Session,
    keyspace: &str,
    session_id: &str,
    seq: i64,
) -> (ChatMessage, i64) {
    let bucket = bucket_of(seq, BatchLimits::default().bucket_size);
    let rows: Vec<MessageRow> = session
        .query_unpaged(
            select_range_desc_cql(keyspace),
            (session_id, bucket, seq, seq),
        )
        .await
        .expect("read")
        .into_rows_result()
        .expect("rows")
        .rows::<MessageRow>()
        .expect("typed")
        .collect::<Result<_, _>>()
        .expect("rows");
    let (writetime,): (i64,) = session
        .query_unpaged(
            format!(
                "SELECT writetime(content) FROM {keyspace}.messages \
                 WHERE session_id = ? AND bucket = ? AND seq = ?"
            ),
            (session_id, bucket, seq),
        )
        .await
        .expect("read writetime")
        .into_rows_result()
        .expect("rows")
        .single_row::<(i64,)>()
        .expect("one row");
    assert_eq!(rows.len(), 1, "{session_id}/{seq}");
    (
        rows.into_iter().next().map(ChatMessage::from).unwrap(),
        writetime,
    )
}

/// A message, two edits and a recall of it — the recall *between* the edits in time — applied in
/// every one of the 24 orders (each version written alone, as separate batches would), then the
/// whole history replayed in send order: CQL and the window always end at the recall, content
/// gone, `writetime` = its version (the final bit outranks the later edit). Edits alone end at the
/// newest edit. This is what lets a mutation arrive before its original (a retried send, another
/// producer) or be replayed after a crash.
#[tokio::test]
async fn recall_and_edits_converge_in_every_order_and_on_replay() {
    use chatlog_schemas::Codec;
    use chatlog_schemas::testing::{edited, recalled};
    use chatlog_store::window::{self, WindowConfig, WindowEntry, WindowWriter};
    use chatlog_store::window_start::WindowStarter;
    use chatlog_store::{RedisConfig, keys};

    let (session, config, writer) = writer_in("store_mut").await;
    let mut redis = RedisConfig {
        url: env("CHATLOG_REDIS_URL", "redis://127.0.0.1:6390/"),
        ..RedisConfig::default()
    }
    .connect()
    .await
    .expect("Redis (start it with dev/stack.sh up)");
    let windows = WindowWriter::new(WindowConfig::default());
    let codec = Codec::default();
    let starter = WindowStarter::new(
        session.clone(),
        &config.keyspace,
        BatchLimits::default().bucket_size,
        WindowConfig::default(),
        codec.clone(),
    )
    .await
    .expect("window starter");
    let run = config.keyspace.clone();

    let cases: Vec<(&str, Vec<ChatMessage>, usize)> = {
        let m = message("mut", 5);
        let t = m.server_time_us;
        let e1 = edited(&m, t + 100, 1, b"first edit");
        let r = recalled(&m, t + 150);
        let e2 = edited(&m, t + 200, 2, b"second edit, after the recall in time");
        vec![
            ("recall", vec![m.clone(), e1.clone(), r, e2.clone()], 2),
            ("edits", vec![m, e1, e2], 2),
        ]
    };
    for (name, versions, winner) in cases {
        let want = versions[winner].clone();
        for (i, order) in orders(&versions).into_iter().enumerate() {
            let sid = format!("{run}-{name}-{i}");
            let each: Vec<ChatMessage> = order
                .iter()
                .chain(versions.iter()) // the replay, in send order
                .map(|m| ChatMessage {
                    session_id: sid.clone(),
                    ..m.clone()
                })
                .collect();
            for m in &each {
                writer.write(std::slice::from_ref(m)).await.expect("write");
                // As the consumer writes it: the first record finds no window, which is then
                // started from the table (the row just written).
                let entry = WindowEntry::of(m, &codec.encode(m).expect("encode"));
                let not_started = windows
                    .append(&mut redis, &BTreeMap::from([(sid.clone(), vec![entry])]))
                    .await
                    .expect("window");
                let started = starter
                    .start(&mut redis, &not_started)
                    .await
                    .expect("start window");
                assert_eq!(started.failed, 0, "{:?}", started.first_error);
            }
            let (row, writetime) = stored(&session, &config.keyspace, &sid, want.seq).await;
            let want_here = ChatMessage {
                session_id: sid.clone(),
                ..want.clone()
            };
            assert_eq!(row, want_here, "{name}, order {i}");
            assert_eq!(writetime, want.version(), "{name}, order {i}");
            let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                .arg(keys::window(&sid))
                .arg(0)
                .arg(-1)
                .query_async(&mut redis)
                .await
                .expect("ZRANGE");
            let want_member_here =
                window::member(want.version(), &codec.encode(&want_here).expect("encode"));
            assert_eq!(members, vec![want_member_here], "{name}, order {i}");
        }
    }
}

/// Retention: a row's TTL is what remains of its session type's retention counted from its send,
/// so a replay neither extends it nor brings back a message already past it (skipped); a type
/// without retention is kept forever (no TTL).
#[tokio::test]
async fn retention_ttl_is_anchored_at_the_send_and_expired_rows_are_not_written() {
    use chatlog_store::retention::{Retention, now_us};
    use std::time::Duration;

    let (session, config, writer) = writer_in("store_ttl").await;
    let writer = writer.with_retention(Retention {
        group: Some(Duration::from_secs(3_600)),
        ..Retention::default()
    });
    let now = now_us();
    let mut fresh = message("ttl", 1); // a group message sent 10 minutes ago
    fresh.server_time_us = now - 600_000_000;
    let mut expired = message("ttl", 2); // sent two hours ago: past its hour
    expired.server_time_us = now - 7_200_000_000;
    let mut single = message("ttl", 3); // a one-to-one message: no retention
    single.session_type = SessionType::Single;
    single.server_time_us = now - 7_200_000_000;
    writer
        .write(&[fresh.clone(), expired, single])
        .await
        .expect("write");

    let ttls: Vec<(i64, Option<i32>)> = session
        .query_unpaged(
            format!(
                "SELECT seq, ttl(content) FROM {}.messages WHERE session_id = ? AND bucket = 0",
                config.keyspace
            ),
            ("ttl",),
        )
        .await
        .expect("read")
        .into_rows_result()
        .expect("rows")
        .rows::<(i64, Option<i32>)>()
        .expect("typed")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        ttls.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![3, 1],
        "the expired message is not written"
    );
    assert_eq!(ttls[0].1, None, "no retention for one-to-one: no TTL");
    let ttl = ttls[1].1.expect("a TTL on the group message");
    assert!(
        (2_900..=3_000).contains(&ttl),
        "about 50 of its 60 minutes remain, got {ttl} s"
    );
}

/// An erasure removes a row for good, even a recalled one — whose cells carry the final bit of
/// its version, far above the clock a plain `DELETE` uses (the chaos sabotage's planted deletion
/// silently failed on such rows) — and no replay brings it back.
#[tokio::test]
async fn erasing_a_recalled_row_sticks_through_a_replay() {
    use chatlog_schemas::testing::recalled;
    use chatlog_store::messages::delete_row_cql;

    let (session, config, writer) = writer_in("store_erase").await;
    let m = message("erase", 4);
    let r = recalled(&m, m.server_time_us + 10);
    writer.write(&[m.clone(), r.clone()]).await.expect("write");
    let bucket = bucket_of(4, BatchLimits::default().bucket_size);
    session
        .query_unpaged(delete_row_cql(&config.keyspace), ("erase", bucket, 4i64))
        .await
        .expect("erase");
    writer.write(&[m, r]).await.expect("replay");
    let left = session
        .query_unpaged(
            select_range_desc_cql(&config.keyspace),
            ("erase", bucket, 1i64, 10i64),
        )
        .await
        .expect("read")
        .into_rows_result()
        .expect("rows")
        .rows_num();
    assert_eq!(
        left, 0,
        "the erased row is gone, the replay notwithstanding"
    );
}

/// The window starter reads the newest rows below the head — also for a session without a
/// `session_latest` row (rows from before it existed: a probe finds the head) — and starts at
/// most `STARTS_PER_CALL` sessions per call, leaving the rest for their next message; sessions
/// without rows get no window.
#[tokio::test]
async fn window_starts_read_the_newest_rows_and_are_bounded_per_call() {
    use chatlog_schemas::Codec;
    use chatlog_store::window::WindowConfig;
    use chatlog_store::window_start::{STARTS_PER_CALL, WindowStarter};

    let (session, config, writer) = writer_in("store_start").await;
    let starter = WindowStarter::new(
        session.clone(),
        &config.keyspace,
        BatchLimits::default().bucket_size,
        WindowConfig {
            size: 10,
            ..WindowConfig::default()
        },
        Codec::default(),
    )
    .await
    .expect("window starter");
    let rows: Vec<ChatMessage> = (1..=30).map(|seq| message("legacy", seq)).collect();
    writer.write(&rows).await.expect("write");

    let started = starter.read(&["legacy", "never-written"]).await;
    assert_eq!((started.failed, started.deferred), (0, 0), "{started:?}");
    let seqs: Vec<i64> = started.windows["legacy"].iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (21..=30).collect::<Vec<_>>());
    assert!(!started.windows.contains_key("never-written"));

    let many: Vec<String> = (0..STARTS_PER_CALL + 7).map(|i| format!("n{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let started = starter.read(&many).await;
    assert_eq!((started.failed, started.deferred), (0, 7), "{started:?}");
}
