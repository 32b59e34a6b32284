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
