//! The `messages` table: its statements, the bucket rule, row ↔ [`ChatMessage`] mapping and the
//! batch writer the consumer uses.
//!
//! Writes are deterministic and idempotent: every row is written `USING TIMESTAMP <version>` of its
//! message ([`ChatMessage::version`]: the server time as sent, the mutation's time once recalled,
//! edited or deleted, with bit 62 set for the final states), so replaying a batch rewrites identical
//! cells with the identical timestamp (the state and `writetime()` are the same as without the
//! replay), and a replay of an older version can never overwrite a newer one. A mutation writes
//! *every* column (a recalled row's content becomes the empty blob), so cell-by-cell last-writer-
//! wins never leaves a row mixed from two versions. A message as sent leaves the state columns
//! unset (no tombstones). Batches are UNLOGGED, capped by count and bytes (Cassandra fails batches
//! over 50 KiB by default, ScyllaDB over 1 MiB): a partition's rows together, and small groups of
//! partitions with the same replicas packed together, at most ten partitions a batch (see
//! [`crate::replicas`]). A batch is not atomic and nothing here needs it to be.

use std::collections::BTreeMap;
use std::sync::Arc;

use chatlog_schemas::{ChatMessage, ContentType, MessageState, SessionType};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, MaybeUnset};
use scylla::{DeserializeRow, SerializeRow};
use serde::{Deserialize, Serialize};

use crate::replicas;
use crate::retention::Retention;
use crate::{Error, Result};

/// Rows per partition bucket unless configured otherwise: `bucket = seq / bucket_size`.
pub const DEFAULT_BUCKET_SIZE: i64 = 1000;

/// The bucket (second part of the partition key) of `seq`.
pub fn bucket_of(seq: i64, bucket_size: i64) -> i64 {
    seq.max(0) / bucket_size.max(1)
}

/// The columns of a message row, in the order every statement here uses.
const COLUMNS: &str = "session_id, bucket, seq, msg_id, client_msg_id, session_type, sender_id, \
                       content_type, content, send_time, server_time, ext, state, mutated_at, \
                       mutated_by, edit_count";

/// `INSERT` of one message with its own write timestamp and time to live (the last two bind
/// markers; a TTL of 0 keeps the row forever).
pub fn insert_cql(keyspace: &str) -> String {
    format!(
        "INSERT INTO {keyspace}.messages ({COLUMNS}) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?"
    )
}

/// `SELECT` of the rows of one partition with `lo <= seq <= hi`, newest first (the clustering order).
pub fn select_range_desc_cql(keyspace: &str) -> String {
    format!(
        "SELECT {COLUMNS} FROM {keyspace}.messages \
         WHERE session_id = ? AND bucket = ? AND seq >= ? AND seq <= ?"
    )
}

/// Like [`select_range_desc_cql`], oldest first.
pub fn select_range_asc_cql(keyspace: &str) -> String {
    format!("{} ORDER BY seq ASC", select_range_desc_cql(keyspace))
}

/// `SELECT seq, writetime(content)` of one partition: used to check that replays keep write times.
pub fn select_writetimes_cql(keyspace: &str) -> String {
    format!(
        "SELECT seq, writetime(content) FROM {keyspace}.messages WHERE session_id = ? AND bucket = ?"
    )
}

/// `SELECT` of the rows of one partition whose seq is in a bound list (`seq IN ?`): history's `get`.
pub fn select_seqs_cql(keyspace: &str) -> String {
    format!(
        "SELECT {COLUMNS} FROM {keyspace}.messages WHERE session_id = ? AND bucket = ? AND seq IN ?"
    )
}

/// `SELECT seq` of the newest row of one partition (the clustering order is `seq DESC`): whether a
/// bucket holds anything, and its highest seq. History probes buckets with it.
pub fn select_bucket_max_seq_cql(keyspace: &str) -> String {
    format!("SELECT seq FROM {keyspace}.messages WHERE session_id = ? AND bucket = ? LIMIT 1")
}

/// `SELECT max_seq` of a session from `session_seq`: the seq allocator's reserved ceiling, an upper
/// bound of every seq ever handed out for the session (history reads it, never writes it). The
/// allocator's own statement ([`crate::seq::select_ceiling_cql`]).
pub fn select_session_max_seq_cql(keyspace: &str) -> String {
    crate::seq::select_ceiling_cql(keyspace)
}

/// `SELECT COUNT(*)` of one partition (`session_id`, `bucket`): the one row-count statement
/// (benchmarks, the chaos checker and the demo count what was persisted with it, through
/// [`RowCounter`]).
pub fn select_partition_count_cql(keyspace: &str) -> String {
    format!("SELECT COUNT(*) FROM {keyspace}.messages WHERE session_id = ? AND bucket = ?")
}

/// `DELETE` of one row (`session_id`, `bucket`, `seq`) for good: an erasure (and the chaos run's
/// sabotage, which plants a lost row the checker must find).
///
/// Written at the largest timestamp, [`ERASE_TIMESTAMP`]: a plain `DELETE` takes the current time,
/// which loses to the cells of a recalled or deleted message (their version carries bit 62, far
/// above any clock), and a replay of the message would bring the row back. Nothing written later
/// outranks this tombstone: an erased message stays erased, whatever is replayed.
pub fn delete_row_cql(keyspace: &str) -> String {
    format!(
        "DELETE FROM {keyspace}.messages USING TIMESTAMP {ERASE_TIMESTAMP} \
         WHERE session_id = ? AND bucket = ? AND seq = ?"
    )
}

/// The write timestamp of [`delete_row_cql`]: above every version ([`ChatMessage::version`]).
pub const ERASE_TIMESTAMP: i64 = i64::MAX;

/// Counts stored rows, partition by partition ([`select_partition_count_cql`]): how tools see what
/// was persisted. Never on a request path: a count reads whole partitions.
#[derive(Debug, Clone)]
pub struct RowCounter {
    statement: PreparedStatement,
}

impl RowCounter {
    /// Partitions counted at once by [`RowCounter::sessions`].
    const IN_FLIGHT: usize = 32;

    /// Prepares the count statement of `keyspace`.
    pub async fn new(session: &Session, keyspace: &str) -> Result<RowCounter> {
        let mut statement = session
            .prepare(select_partition_count_cql(keyspace))
            .await
            .map_err(|e| Error::cql("prepare messages count", e))?;
        statement.set_is_idempotent(true);
        Ok(RowCounter { statement })
    }

    /// Rows of one partition.
    pub async fn partition(&self, session: &Session, session_id: &str, bucket: i64) -> Result<i64> {
        let what = "count messages of a partition";
        let (count,): (i64,) = session
            .execute_unpaged(&self.statement, (session_id, bucket))
            .await
            .map_err(|e| Error::cql(what, e))?
            .into_rows_result()
            .map_err(|e| Error::cql(what, e))?
            .single_row()
            .map_err(|e| Error::cql(what, e))?;
        Ok(count)
    }

    /// Rows of `sessions` in the buckets `buckets` (e.g. `0..=bucket_of(max_seq, bucket_size)`),
    /// summed; 32 partitions at a time.
    pub async fn sessions<S: AsRef<str>>(
        &self,
        session: &Session,
        sessions: &[S],
        buckets: std::ops::RangeInclusive<i64>,
    ) -> Result<i64> {
        let partitions = sessions
            .iter()
            .flat_map(|s| buckets.clone().map(move |b| (s.as_ref(), b)));
        let counts: Vec<i64> = futures::stream::iter(partitions)
            .map(|(s, b)| self.partition(session, s, b))
            .buffer_unordered(Self::IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(counts.into_iter().sum())
    }
}

/// One `messages` row as the driver reads it (the columns of every `SELECT` here, matched by
/// name).
#[derive(Debug, Clone, PartialEq, Eq, DeserializeRow)]
pub struct MessageRow {
    /// Partition key, first part.
    pub session_id: String,
    /// Partition key, second part: [`bucket_of`] the seq.
    pub bucket: i64,
    /// Clustering key.
    pub seq: i64,
    /// The message id.
    pub msg_id: String,
    /// The client's idempotency key.
    pub client_msg_id: String,
    /// [`SessionType`] index.
    pub session_type: i8,
    /// The sender.
    pub sender_id: String,
    /// [`ContentType`] index.
    pub content_type: i8,
    /// The content bytes.
    pub content: Vec<u8>,
    /// The client's send time (ms).
    pub send_time: CqlTimestamp,
    /// The server time (µs); also the row's write timestamp.
    pub server_time: i64,
    /// Extension fields (`null` when empty).
    pub ext: Option<BTreeMap<String, String>>,
    /// [`MessageState`] index; `null` as sent.
    pub state: Option<i8>,
    /// The last mutation's server time (µs); `null` as sent.
    pub mutated_at: Option<i64>,
    /// Who made the last mutation; `null` as sent.
    pub mutated_by: Option<String>,
    /// Number of edits; `null` as sent.
    pub edit_count: Option<i32>,
}

impl From<MessageRow> for ChatMessage {
    fn from(row: MessageRow) -> ChatMessage {
        ChatMessage {
            msg_id: row.msg_id,
            client_msg_id: row.client_msg_id,
            session_id: row.session_id,
            session_type: SessionType::from_index(row.session_type as u32)
                .unwrap_or(SessionType::Single),
            seq: row.seq,
            sender_id: row.sender_id,
            content_type: ContentType::from_index(row.content_type as u32)
                .unwrap_or(ContentType::Unknown),
            content: row.content,
            send_time_ms: row.send_time.0,
            server_time_us: row.server_time,
            ext: row.ext.unwrap_or_default(),
            // An index this release does not know reads as the message as sent, like Avro's
            // enum default.
            state: row
                .state
                .and_then(|index| {
                    MessageState::from_parts(
                        u32::try_from(index).ok()?,
                        row.mutated_at.unwrap_or(0),
                        row.mutated_by.unwrap_or_default(),
                        u32::try_from(row.edit_count.unwrap_or(0)).unwrap_or(0),
                    )
                })
                .unwrap_or_default(),
        }
    }
}

/// The 18 bind values of [`insert_cql`]: a message's columns, borrowed, its write timestamp and
/// its time to live. Bound in order (`enforce_order`): the last markers are `USING TIMESTAMP ?
/// AND TTL ?`, which have no column name to match.
#[derive(Debug, SerializeRow)]
#[scylla(flavor = "enforce_order", skip_name_checks)]
pub struct InsertRow<'a> {
    session_id: &'a str,
    bucket: i64,
    seq: i64,
    msg_id: &'a str,
    client_msg_id: &'a str,
    session_type: i8,
    sender_id: &'a str,
    content_type: i8,
    content: &'a [u8],
    send_time: CqlTimestamp,
    server_time: i64,
    ext: &'a BTreeMap<String, String>,
    state: MaybeUnset<i8>,
    mutated_at: MaybeUnset<i64>,
    mutated_by: MaybeUnset<&'a str>,
    edit_count: MaybeUnset<i32>,
    write_time: i64,
    ttl: i32,
}

/// The bind values of [`insert_cql`] for `m`, kept forever.
pub fn insert_bind(m: &ChatMessage, bucket_size: i64) -> InsertRow<'_> {
    insert_bind_ttl(m, bucket_size, 0)
}

/// The bind values of [`insert_cql`] for `m` with a time to live of `ttl_secs` (0: forever; see
/// [`crate::retention`]).
pub fn insert_bind_ttl(m: &ChatMessage, bucket_size: i64, ttl_secs: i32) -> InsertRow<'_> {
    let mutated = m.is_mutated();
    fn when<T>(set: bool, v: T) -> MaybeUnset<T> {
        if set {
            MaybeUnset::Set(v)
        } else {
            MaybeUnset::Unset
        }
    }
    InsertRow {
        session_id: &m.session_id,
        bucket: bucket_of(m.seq, bucket_size),
        seq: m.seq,
        msg_id: &m.msg_id,
        client_msg_id: &m.client_msg_id,
        session_type: m.session_type.index() as i8,
        sender_id: &m.sender_id,
        content_type: m.content_type.index() as i8,
        content: &m.content,
        send_time: CqlTimestamp(m.send_time_ms),
        server_time: m.server_time_us,
        ext: &m.ext,
        state: when(mutated, m.state.index() as i8),
        mutated_at: when(mutated, m.state.mutated_at_us().unwrap_or(0)),
        mutated_by: when(mutated, m.state.mutated_by().unwrap_or("")),
        edit_count: when(
            mutated,
            i32::try_from(m.state.edit_count()).unwrap_or(i32::MAX),
        ),
        write_time: m.version(),
        ttl: ttl_secs.max(0),
    }
}

/// The message a row holds.
pub fn row_to_message(row: MessageRow) -> ChatMessage {
    row.into()
}

/// An upper bound of the bytes one row adds to a batch (values plus per-statement overhead).
pub fn approx_row_bytes(m: &ChatMessage) -> usize {
    const OVERHEAD: usize = 96;
    OVERHEAD
        + m.session_id.len()
        + m.msg_id.len()
        + m.client_msg_id.len()
        + m.sender_id.len()
        + m.content.len()
        + m.ext
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
}

/// Limits of the batch writer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchLimits {
    /// Rows of one session per partition bucket: `bucket = seq / bucket_size`. Fixed for the life
    /// of a deployment (readers must use the same value).
    pub bucket_size: i64,
    /// Most rows in one UNLOGGED batch.
    pub max_rows: usize,
    /// Most bytes (estimated) in one batch; keep it below the server's batch fail threshold
    /// (Cassandra 50 KiB, ScyllaDB 1 MiB by default). A single larger row is written alone.
    pub max_bytes: usize,
    /// Batches in flight at once.
    pub concurrency: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            bucket_size: DEFAULT_BUCKET_SIZE,
            max_rows: 100,
            max_bytes: 40 * 1024,
            concurrency: 16,
        }
    }
}

/// Splits `messages` into write groups: one partition each, at most `max_rows` rows and `max_bytes`
/// (estimated) each, a row larger than `max_bytes` alone. Order inside a group follows the input.
pub fn plan_batches<'a>(
    messages: &'a [ChatMessage],
    limits: &BatchLimits,
) -> Vec<Vec<&'a ChatMessage>> {
    plan_batches_of(messages, limits)
}

/// [`plan_batches`] of borrowed messages.
pub fn plan_batches_of<'a>(
    messages: impl IntoIterator<Item = &'a ChatMessage>,
    limits: &BatchLimits,
) -> Vec<Vec<&'a ChatMessage>> {
    let mut by_partition: BTreeMap<(&str, i64), Vec<&ChatMessage>> = BTreeMap::new();
    for m in messages {
        by_partition
            .entry((m.session_id.as_str(), bucket_of(m.seq, limits.bucket_size)))
            .or_default()
            .push(m);
    }
    by_partition
        .into_values()
        .flat_map(|rows| {
            crate::cql::chunk_by(rows, limits.max_rows, limits.max_bytes, |m| {
                approx_row_bytes(m)
            })
        })
        .collect()
}

/// Packs the partition groups of [`plan_batches`] that are at most half full and whose partitions
/// have the same `replicas` (of a group's first row; `None`: unknown) into shared batches — at most
/// [`MAX_BATCH_PARTITIONS`](replicas::MAX_BATCH_PARTITIONS) partitions, `max_rows` rows and `max_bytes` each ([`replicas::pack`]).
/// A group more than half full, or of unknown replicas, stays a batch of its own (sharing would
/// save little). Rows keep their order within their partition.
pub fn pack_groups<'a, K: Ord>(
    groups: Vec<Vec<&'a ChatMessage>>,
    limits: &BatchLimits,
    mut replicas: impl FnMut(&ChatMessage) -> Option<K>,
) -> Vec<Vec<&'a ChatMessage>> {
    let (max_rows, max_bytes) = (limits.max_rows.max(1), limits.max_bytes);
    replicas::pack(
        groups,
        max_rows,
        max_bytes,
        approx_row_bytes,
        |group, bytes| {
            if group.len() * 2 > max_rows || bytes * 2 > max_bytes {
                return None;
            }
            group.first().and_then(|m| replicas(m))
        },
    )
}

/// What one [`MessageWriter::write`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Rows written.
    pub rows: usize,
    /// Statements sent (batches and single inserts).
    pub requests: usize,
}

/// Writes messages as UNLOGGED batches with bounded concurrency: a partition's rows together (at
/// most [`BatchLimits::max_rows`] and [`BatchLimits::max_bytes`] a batch), and the small
/// partition groups whose partitions have the same replicas packed together, at most
/// [`MAX_BATCH_PARTITIONS`](replicas::MAX_BATCH_PARTITIONS) partitions a batch (see [`crate::replicas`]: under live load a batch
/// holds a few rows of many sessions, and one request per row is what Cassandra spent most on).
#[derive(Clone)]
pub struct MessageWriter {
    session: Arc<Session>,
    insert: PreparedStatement,
    keyspace: String,
    limits: BatchLimits,
    retention: Retention,
}

impl MessageWriter {
    /// Prepares the insert statement of `keyspace`.
    pub async fn new(session: Arc<Session>, keyspace: &str, limits: BatchLimits) -> Result<Self> {
        let mut insert = session
            .prepare(insert_cql(keyspace))
            .await
            .map_err(|e| Error::cql("prepare messages insert", e))?;
        // Safe to retry: the same row with the same write timestamp.
        insert.set_is_idempotent(true);
        Ok(MessageWriter {
            session,
            insert,
            keyspace: keyspace.to_owned(),
            limits,
            retention: Retention::default(),
        })
    }

    /// Writes rows with the rest of their session type's retention as TTL (default: forever);
    /// rows already past it are skipped.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &BatchLimits {
        &self.limits
    }

    /// Writes every message; returns when all are acknowledged, or the first error.
    pub async fn write(&self, messages: &[ChatMessage]) -> Result<WriteStats> {
        self.write_groups(plan_batches(messages, &self.limits), messages.len())
            .await
    }

    /// [`write`](Self::write) of borrowed messages (the consumer's path: its messages stay
    /// where they were decoded, no copy per row).
    pub async fn write_borrowed(&self, messages: &[&ChatMessage]) -> Result<WriteStats> {
        let groups = plan_batches_of(messages.iter().copied(), &self.limits);
        self.write_groups(groups, messages.len()).await
    }

    async fn write_groups(
        &self,
        groups: Vec<Vec<&ChatMessage>>,
        rows: usize,
    ) -> Result<WriteStats> {
        let batches = self.pack(groups);
        let requests = batches.len();
        futures::stream::iter(batches.into_iter().map(|batch| self.write_group(batch)))
            .buffer_unordered(self.limits.concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        Ok(WriteStats { rows, requests })
    }

    /// [`pack_groups`] by the replicas of each group's partition, as the driver knows them.
    fn pack<'a>(&self, groups: Vec<Vec<&'a ChatMessage>>) -> Vec<Vec<&'a ChatMessage>> {
        let cluster = self.session.get_cluster_state();
        pack_groups(groups, &self.limits, |m| {
            let token = self
                .insert
                .calculate_token(&insert_bind_ttl(m, self.limits.bucket_size, 0))
                .ok()??;
            replicas::of_token(&cluster, &self.keyspace, "messages", token)
        })
    }

    async fn write_group(&self, group: Vec<&ChatMessage>) -> Result<()> {
        let bucket_size = self.limits.bucket_size;
        let now_us = crate::retention::now_us();
        let ttl = |m: &ChatMessage| {
            self.retention
                .expiry(m.session_type, m.server_time_us, now_us)
                .ttl_secs()
        };
        let rows: Vec<_> = group
            .into_iter()
            .filter_map(|m| Some(insert_bind_ttl(m, bucket_size, ttl(m)?)))
            .collect();
        crate::cql::write_unlogged(
            &self.session,
            &self.insert,
            rows,
            "insert message",
            "unlogged batch of messages",
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared test message of `session` and `seq`, with `content_len` bytes of content (the
    /// batch caps count bytes).
    fn msg(session: &str, seq: i64, content_len: usize) -> ChatMessage {
        ChatMessage {
            content: vec![b'x'; content_len],
            ..chatlog_schemas::testing::message(session, seq)
        }
    }

    #[test]
    fn buckets_split_partitions() {
        assert_eq!(bucket_of(0, 1000), 0);
        assert_eq!(bucket_of(999, 1000), 0);
        assert_eq!(bucket_of(1000, 1000), 1);
    }

    #[test]
    fn small_partitions_of_the_same_replicas_share_batches() {
        let limits = BatchLimits {
            bucket_size: 1000,
            max_rows: 10,
            max_bytes: 4000,
            concurrency: 1,
        };
        // Replicas by the session's first letter: `a…` and `b…` sessions live apart.
        let replicas = |m: &ChatMessage| m.session_id.chars().next();
        let mut msgs: Vec<ChatMessage> = Vec::new();
        for i in 0..14 {
            msgs.push(msg(&format!("a{i:02}"), 1, 10));
        }
        for i in 0..3 {
            msgs.push(msg(&format!("b{i:02}"), 1, 10));
        }
        // A partition more than half full stays alone.
        for seq in 1..=6 {
            msgs.push(msg("a-full", seq, 10));
        }
        let batches = pack_groups(plan_batches(&msgs, &limits), &limits, replicas);
        let shapes: Vec<Vec<&str>> = batches
            .iter()
            .map(|b| {
                let mut s: Vec<&str> = b.iter().map(|m| m.session_id.as_str()).collect();
                s.dedup();
                s
            })
            .collect();
        // Every row once.
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), msgs.len());
        // The full partition alone; the 14 `a` singles as 10 + 4 (the partition cap), the
        // 3 `b` singles together; no batch mixes replicas.
        assert!(shapes.contains(&vec!["a-full"]), "{shapes:?}");
        let mut sizes: Vec<usize> = shapes.iter().map(Vec::len).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, [1, 3, 4, 10], "{shapes:?}");
        for s in &shapes {
            let first: Vec<char> = s.iter().map(|id| id.chars().next().unwrap()).collect();
            assert!(
                first.iter().all(|c| *c == first[0]),
                "mixed replicas: {s:?}"
            );
        }
        // Rows and bytes cap a shared batch too: 2 rows per partition, 3 partitions fit 6 rows
        // of max_rows 6; 4 partitions of 2 rows give 6 + 2.
        let limits6 = BatchLimits {
            max_rows: 6,
            ..limits.clone()
        };
        let two_each: Vec<ChatMessage> = (0..4)
            .flat_map(|i| (1..=2).map(move |seq| msg(&format!("c{i}"), seq, 10)))
            .collect();
        let batches = pack_groups(plan_batches(&two_each, &limits6), &limits6, replicas);
        let mut sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, [2, 6]);
        // Unknown replicas: every group alone.
        let alone = pack_groups(plan_batches(&msgs, &limits), &limits, |_| None::<char>);
        assert_eq!(alone.len(), plan_batches(&msgs, &limits).len());
    }

    #[test]
    fn batches_hold_one_partition_and_respect_caps() {
        let limits = BatchLimits {
            bucket_size: 10,
            max_rows: 3,
            max_bytes: 1000,
            concurrency: 1,
        };
        let mut msgs: Vec<_> = (1..=12).map(|s| msg("a", s, 10)).collect();
        msgs.push(msg("b", 1, 10));
        msgs.push(msg("b", 2, 5000)); // larger than max_bytes: alone
        let groups = plan_batches(&msgs, &limits);
        for g in &groups {
            let key = (&g[0].session_id, bucket_of(g[0].seq, 10));
            assert!(
                g.iter()
                    .all(|m| (&m.session_id, bucket_of(m.seq, 10)) == key)
            );
            assert!(g.len() <= 3);
            assert!(g.len() == 1 || g.iter().map(|m| approx_row_bytes(m)).sum::<usize>() <= 1000);
        }
        let total: usize = groups.iter().map(Vec::len).sum();
        assert_eq!(total, msgs.len());
        assert!(
            groups
                .iter()
                .any(|g| g.len() == 1 && g[0].content.len() == 5000)
        );
    }
}
