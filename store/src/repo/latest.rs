//! Each session's latest message: the highest seq, its server time and the message, kept by the
//! consumer as part of its batch — one write per session per batch, never one per member — and
//! read by the conversation list ([`super::conversations`]).
//!
//! **CQL** (`session_latest`, [`LatestWriter`]): every cell is written `USING TIMESTAMP <seq>`, so
//! the highest seq wins without a read and a replay writes identical cells. The `message` column
//! holds the window member ([`crate::window::member`]: 16 hex digits of the message's version,
//! then the Avro bytes), so that two versions of one seq (an edit or a recall, see
//! [`chatlog_schemas::ChatMessage::version`]), written with the same timestamp, are
//! settled by Cassandra's and ScyllaDB's tie rule (the greater value wins) in favour of the newer
//! version — for `server_time` (a larger number) and `message` (a larger prefix) alike.
//!
//! **Redis** ([`keys::latest`], a hash: `s` seq, `t` version, `m` member, `e` epoch, `p` partial):
//! written through by the consumer's window script (`store/lua/window_append.lua`, max wins, in
//! the same call as the window), so a hot session's latest is never invalidated. An entry of
//! another epoch, absent, or partial (created by the consumer, which knew only its batch) is not
//! trusted: [`LatestReader`] loads the row from CQL and fills max-wins (`store/lua/latest_fill.lua`),
//! so a fill never lowers what the consumer wrote meanwhile, and whatever order the consumer's
//! CQL write, its Redis write, the reader's CQL read and its fill take, the entry ends at the max.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{FutureExt, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{prepare, read_row};
use crate::epoch::PinnedScript;
use crate::flight::Flights;
use crate::replicas::{self, MAX_BATCH_PARTITIONS};
use crate::{RedisConnections, Result, keys, telemetry, window};

/// CQL reads (misses) and writes a reader or writer runs at once.
const CONCURRENCY: usize = 32;

/// A session's latest message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    /// The highest seq the consumer persisted (0: none yet).
    pub seq: i64,
    /// Its [`version`](chatlog_schemas::ChatMessage::version): the server time as sent (µs since
    /// the Unix epoch), its last mutation's time once mutated, with bit 62 set for a recall or
    /// deletion ([`Latest::activity_us`] clears it).
    pub version: i64,
    /// Its Avro single-object bytes (empty when read without messages, or none yet).
    pub avro: Vec<u8>,
}

impl Latest {
    /// When the session last saw activity through this message: the time of its send or of its
    /// last mutation (a recall of the latest message is news too), µs since the Unix epoch.
    pub fn activity_us(&self) -> i64 {
        self.version & !chatlog_schemas::FINAL_VERSION_BIT
    }
}

/// One session's latest of a batch, for [`LatestWriter::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestRow {
    /// The session.
    pub session_id: String,
    /// The highest seq of the batch.
    pub seq: i64,
    /// Its [`version`](chatlog_schemas::ChatMessage::version).
    pub version: i64,
    /// The window member of the message ([`window::member`]).
    pub member: Vec<u8>,
}

/// The latest of each session among `messages` — `(session, seq, version, avro)` — by
/// (seq, version): one row per session, whatever the order.
pub fn latest_of<'a>(
    messages: impl IntoIterator<Item = (&'a str, i64, i64, &'a [u8])>,
) -> Vec<LatestRow> {
    let mut best: BTreeMap<&str, (i64, i64, &[u8])> = BTreeMap::new();
    for (session, seq, time, avro) in messages {
        let slot = best.entry(session).or_insert((seq, time, avro));
        if (seq, time) > (slot.0, slot.1) {
            *slot = (seq, time, avro);
        }
    }
    best.into_iter()
        .map(|(session, (seq, time, avro))| LatestRow {
            session_id: session.to_owned(),
            seq,
            version: time,
            member: window::member(time, avro),
        })
        .collect()
}

fn upsert_cql(keyspace: &str) -> String {
    format!(
        "UPDATE {keyspace}.session_latest USING TIMESTAMP ? SET max_seq = ?, server_time = ?, \
         message = ? WHERE session_id = ?"
    )
}

fn select_cql(keyspace: &str) -> String {
    format!("SELECT max_seq, message FROM {keyspace}.session_latest WHERE session_id = ?")
}

/// The session's highest persisted seq alone (the head a window is started below, see
/// [`crate::window_start`]).
pub(crate) fn select_head_cql(keyspace: &str) -> String {
    format!("SELECT max_seq FROM {keyspace}.session_latest WHERE session_id = ?")
}

/// Estimated bytes of one such batch at most (its members and ids); kept well below Cassandra's
/// `batch_size_fail_threshold` (50 KiB). A larger row goes alone.
const LATEST_BATCH_BYTES: usize = 32 * 1024;

/// Writes `session_latest` (the consumer's CQL stage).
///
/// # Why rows of several sessions share a batch
///
/// One row per session per batch was one CQL request per session, each paying Cassandra's
/// per-request cost for one small row. So the rows whose partitions have the same replicas go
/// together in UNLOGGED batches of at most [`MAX_BATCH_PARTITIONS`] (see [`crate::replicas`]).
/// Each statement keeps its own `USING TIMESTAMP <seq>`, so a batch writes exactly the cells the
/// single writes did (unlogged: no atomicity is promised or needed; a failed batch fails the
/// stage, which is retried as before).
#[derive(Clone)]
pub struct LatestWriter {
    session: Arc<Session>,
    upsert: PreparedStatement,
    keyspace: String,
}

impl LatestWriter {
    /// Prepares the statement on `keyspace`.
    pub async fn new(session: Arc<Session>, keyspace: &str) -> Result<LatestWriter> {
        Ok(LatestWriter {
            upsert: prepare(&session, upsert_cql(keyspace), "session_latest upsert").await?,
            session,
            keyspace: keyspace.to_owned(),
        })
    }

    /// Writes each row `USING TIMESTAMP <seq>` (idempotent, monotonic): rows of the same replicas
    /// in batches (see the type's docs), 32 requests at a time.
    pub async fn write(&self, rows: &[LatestRow]) -> Result<()> {
        let cluster = self.session.get_cluster_state();
        let batches = pack_rows(rows, |row| {
            let token = self.upsert.calculate_token(&upsert_values(row)).ok()??;
            replicas::of_token(&cluster, &self.keyspace, "session_latest", token)
        });
        futures::stream::iter(batches.into_iter().map(|batch| {
            crate::cql::write_unlogged(
                &self.session,
                &self.upsert,
                batch.into_iter().map(upsert_values).collect(),
                "write session_latest",
                "unlogged batch of session_latest",
            )
        }))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }
}

/// The bound values of [`upsert_cql`] for `r`.
fn upsert_values(r: &LatestRow) -> (i64, i64, i64, &[u8], &str) {
    (
        r.seq,
        r.seq,
        r.version,
        r.member.as_slice(),
        r.session_id.as_str(),
    )
}

/// `rows` packed by their `replicas` ([`replicas::pack`]: each row is its session's partition) in
/// batches of at most [`MAX_BATCH_PARTITIONS`] rows and [`LATEST_BATCH_BYTES`] (estimated: member
/// and id); a row over the bytes goes alone, and a row whose replicas the driver does not know
/// (no token map yet) too.
fn pack_rows<K: Ord>(
    rows: &[LatestRow],
    mut replicas: impl FnMut(&LatestRow) -> Option<K>,
) -> Vec<Vec<&LatestRow>> {
    let groups = rows.iter().map(|row| vec![row]).collect();
    replicas::pack(
        groups,
        MAX_BATCH_PARTITIONS,
        LATEST_BATCH_BYTES,
        |row: &LatestRow| row.member.len() + row.session_id.len() + 32,
        |group, _| group.first().and_then(|row| replicas(row)),
    )
}

const FILL_BODY: &str = include_str!("../../lua/latest_fill.lua");

/// Reads sessions' latests: Redis first (one pipelined round trip), CQL for what Redis does not
/// vouch for (then filled, max wins), CQL only while Redis is unreadable.
#[derive(Clone)]
pub struct LatestReader {
    session: Arc<Session>,
    select: PreparedStatement,
    redis: Option<RedisConnections>,
    ttl_ms: u64,
    epoch: Arc<PinnedScript>,
    fill: Arc<PinnedScript>,
    /// One load per (session, with messages) in flight in this process: a hot group's members
    /// opening their lists together after a Redis restart cost one CQL read per process.
    flights: Arc<Flights<(String, bool), Option<Latest>>>,
    reads: Arc<AtomicU64>,
}

impl LatestReader {
    /// A reader of `keyspace`; with `redis`, through the Redis entries (filled with `ttl`; keep
    /// it the consumer's `window.ttl`).
    pub async fn new(
        session: Arc<Session>,
        keyspace: &str,
        redis: Option<RedisConnections>,
        ttl: std::time::Duration,
    ) -> Result<LatestReader> {
        Ok(LatestReader {
            select: prepare(&session, select_cql(keyspace), "session_latest select").await?,
            session,
            redis,
            ttl_ms: ttl.as_millis().min(u64::MAX as u128) as u64,
            epoch: Arc::new(PinnedScript::new(
                crate::epoch::EPOCH_READ_BODY,
                "latest epoch",
            )),
            fill: Arc::new(PinnedScript::new(FILL_BODY, "latest fill")),
            flights: Arc::new(Flights::new(telemetry::LATEST_COALESCED)),
            reads: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Rows read from `session_latest` so far (by this reader and its clones).
    pub fn db_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// The latest of each of `sessions` (result `i` is session `i`'s; `None`: no message yet),
    /// with the message bytes when `messages` (else `avro` is empty and only the seqs and times
    /// are transferred: the conversation list sorts thousands of them).
    pub async fn read(&self, sessions: &[String], messages: bool) -> Result<Vec<Option<Latest>>> {
        let Some(redis) = &self.redis else {
            return self.read_cql(sessions, messages).await;
        };
        let probed = match self.probe(redis, sessions, messages).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "latest unreadable in Redis; reading CQL");
                metrics::counter!(telemetry::LATEST_READS, "result" => "degraded")
                    .increment(sessions.len() as u64);
                return self.read_cql(sessions, messages).await;
            }
        };
        let hits = probed.iter().filter(|p| p.is_some()).count() as u64;
        metrics::counter!(telemetry::LATEST_READS, "result" => "hit").increment(hits);
        metrics::counter!(telemetry::LATEST_READS, "result" => "miss")
            .increment(sessions.len() as u64 - hits);
        // Misses in chunks of concurrent loads, built without closures (a closure returning
        // these futures trips the compiler's `Send` check in the repositories' traits).
        let mut out: Vec<Option<Latest>> = Vec::with_capacity(sessions.len());
        let mut misses: Vec<usize> = Vec::new();
        for (i, hit) in probed.into_iter().enumerate() {
            if hit.is_none() {
                misses.push(i);
            }
            out.push(hit.flatten());
        }
        for chunk in misses.chunks(CONCURRENCY) {
            let mut loads = Vec::with_capacity(chunk.len());
            for &i in chunk {
                loads.push(self.load_shared(redis, &sessions[i], messages));
            }
            for (&i, loaded) in chunk
                .iter()
                .zip(futures::future::try_join_all(loads).await?)
            {
                out[i] = loaded;
            }
        }
        Ok(out)
    }

    /// Epoch + `HMGET` of every session's entry in one atomic round trip (on a Redis Cluster one
    /// per slot, each with its node's epoch); `Some` for an entry of this epoch that is not
    /// partial.
    async fn probe(
        &self,
        redis: &RedisConnections,
        sessions: &[String],
        messages: bool,
    ) -> redis::RedisResult<Vec<Option<Option<Latest>>>> {
        let keys: Vec<String> = sessions.iter().map(|s| keys::latest(s)).collect();
        let reads: Vec<redis::Cmd> = keys
            .iter()
            .map(|k| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(k).arg("s").arg("t").arg("e").arg("p");
                if messages {
                    cmd.arg("m");
                }
                cmd
            })
            .collect();
        let replies = self
            .epoch
            .before_by_slot(&redis.get(), &reads, |i| keys::slot(&keys[i]))
            .await?;
        let mut probed = Vec::with_capacity(sessions.len());
        for (epoch, reply) in replies {
            let mut fields: Vec<Option<Vec<u8>>> = redis::from_redis_value(reply)?;
            fields.resize(5, None);
            let member = fields.pop().flatten();
            let partial = fields.pop().flatten().is_some();
            let filled_in = fields.pop().flatten();
            let (s, t) = (fields.remove(0), fields.remove(0));
            probed.push(
                if partial || filled_in.as_deref() != Some(epoch.as_bytes()) {
                    None
                } else {
                    parse_entry(s.as_deref(), t.as_deref(), member.as_deref(), messages)
                },
            );
        }
        Ok(probed)
    }

    /// [`load_and_fill`](Self::load_and_fill), one in flight per session in this process.
    async fn load_shared(
        &self,
        redis: &RedisConnections,
        session_id: &str,
        messages: bool,
    ) -> Result<Option<Latest>> {
        let (this, redis) = (self.clone(), redis.clone());
        self.flights
            .run((session_id.to_owned(), messages), move |(sid, messages)| {
                async move {
                    // A flight of this session may have filled Redis between our probe and this
                    // flight: look again before reading CQL (one load per session, not two).
                    let again = this
                        .probe(&redis, std::slice::from_ref(&sid), messages)
                        .await;
                    if let Some(hit) = again.ok().and_then(|mut p| p.pop()).flatten() {
                        return Ok(hit);
                    }
                    this.load_and_fill(&redis, &sid, messages).await
                }
                .boxed()
            })
            .await
    }

    /// A miss: the CQL row, filled into Redis max-wins; the result is what Redis holds after the
    /// fill (it may be above the row: the consumer wrote meanwhile).
    async fn load_and_fill(
        &self,
        redis: &RedisConnections,
        session_id: &str,
        messages: bool,
    ) -> Result<Option<Latest>> {
        let row = self.select_one(session_id).await?;
        let (seq, member) = row.clone().unwrap_or((0, Vec::new()));
        let (seq_arg, ttl) = (seq.to_string(), self.ttl_ms.to_string());
        let key = keys::latest(session_id);
        let args: [&[u8]; 3] = [seq_arg.as_bytes(), &member, ttl.as_bytes()];
        let filled: redis::RedisResult<(String, Vec<u8>)> =
            self.fill.run(&mut redis.get(), &key, &args).await;
        let from_row = row_to_latest(row, messages);
        match filled {
            Ok((s, t)) => match parse_entry(Some(s.as_bytes()), Some(&t), None, false).flatten() {
                // The consumer wrote a newer one meanwhile: report it (with its message, read
                // again, when asked for).
                Some(newer) if newer.seq > seq => {
                    if !messages {
                        return Ok(Some(newer));
                    }
                    let again = self.probe(redis, &[session_id.to_owned()], true).await;
                    Ok(match again.ok().and_then(|mut p| p.pop().flatten()) {
                        Some(found) => found,
                        None => from_row,
                    })
                }
                _ => Ok(from_row),
            },
            Err(e) => {
                tracing::warn!(error = %e, "latest fill failed");
                Ok(from_row)
            }
        }
    }

    async fn select_one(&self, session_id: &str) -> Result<Option<(i64, Vec<u8>)>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let row = read_row::<(Option<i64>, Option<Vec<u8>>)>(
            &self.session,
            &self.select,
            (session_id,),
            "read session_latest",
        )
        .await?;
        Ok(row.and_then(|(seq, member)| Some((seq?, member.unwrap_or_default()))))
    }

    async fn read_cql(&self, sessions: &[String], messages: bool) -> Result<Vec<Option<Latest>>> {
        let mut out = Vec::with_capacity(sessions.len());
        for chunk in sessions.chunks(CONCURRENCY) {
            let mut reads = Vec::with_capacity(chunk.len());
            for sid in chunk {
                reads.push(self.select_one(sid));
            }
            for row in futures::future::try_join_all(reads).await? {
                out.push(row_to_latest(row, messages));
            }
        }
        Ok(out)
    }
}

fn row_to_latest(row: Option<(i64, Vec<u8>)>, messages: bool) -> Option<Latest> {
    let (seq, member) = row?;
    if seq <= 0 {
        return None;
    }
    let (time, avro) = window::parse_member(&member).unwrap_or((0, &[]));
    Some(Latest {
        seq,
        version: time,
        avro: if messages { avro.to_vec() } else { Vec::new() },
    })
}

/// `Some(None)`: an entry saying "no message yet"; `None`: not an entry this reader understands
/// (treated as a miss).
fn parse_entry(
    s: Option<&[u8]>,
    t: Option<&[u8]>,
    member: Option<&[u8]>,
    messages: bool,
) -> Option<Option<Latest>> {
    let seq: i64 = std::str::from_utf8(s?).ok()?.parse().ok()?;
    if seq <= 0 {
        return Some(None);
    }
    let time = i64::from_str_radix(std::str::from_utf8(t?).ok()?, 16).ok()?;
    let avro = if messages {
        let (_, avro) = window::parse_member(member?)?;
        avro.to_vec()
    } else {
        Vec::new()
    };
    Some(Some(Latest {
        seq,
        version: time,
        avro,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_of_a_batch_is_its_highest_seq_then_version() {
        let rows = latest_of([
            ("a", 5, 100, &b"a5"[..]),
            ("b", 1, 50, &b"b1"[..]),
            ("a", 7, 90, &b"a7"[..]),
            ("a", 7, 95, &b"a7-edit"[..]),
            ("a", 6, 200, &b"a6"[..]),
        ]);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].seq, rows[0].version),
            (7, 95),
            "seq first, then the newer version"
        );
        assert_eq!(rows[0].member, window::member(95, b"a7-edit"));
        assert_eq!((rows[1].session_id.as_str(), rows[1].seq), ("b", 1));
    }

    #[test]
    fn latest_batches_respect_rows_and_bytes() {
        let row = |i: usize, bytes: usize| LatestRow {
            session_id: format!("s{i}"),
            seq: 1,
            version: 1,
            member: vec![b'm'; bytes],
        };
        let rows: Vec<LatestRow> = (0..25).map(|i| row(i, 100)).collect();
        let sizes: Vec<usize> = pack_rows(&rows, |_| Some(()))
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [MAX_BATCH_PARTITIONS, MAX_BATCH_PARTITIONS, 5]);
        // A row over the byte bound goes alone; the bound also cuts a batch short of the rows.
        let rows = [
            row(0, 100),
            row(1, 40 * 1024),
            row(2, 20 * 1024),
            row(3, 20 * 1024),
        ];
        let batches = pack_rows(&rows, |_| Some(()));
        let ids: Vec<Vec<&str>> = batches
            .iter()
            .map(|b| b.iter().map(|r| r.session_id.as_str()).collect())
            .collect();
        assert_eq!(ids, [vec!["s0"], vec!["s1"], vec!["s2"], vec!["s3"]]);
        // Every row once, in order.
        let rows: Vec<LatestRow> = (0..33).map(|i| row(i, 3000)).collect();
        let flat: Vec<&str> = pack_rows(&rows, |_| Some(()))
            .into_iter()
            .flatten()
            .map(|r| r.session_id.as_str())
            .collect();
        let want: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
        assert_eq!(flat, want.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn entries_parse_or_miss() {
        let m = window::member(0x1234, b"avro");
        let got = parse_entry(Some(b"9"), Some(&m[..16]), Some(&m), true);
        assert_eq!(
            got,
            Some(Some(Latest {
                seq: 9,
                version: 0x1234,
                avro: b"avro".to_vec()
            }))
        );
        assert_eq!(parse_entry(Some(b"0"), Some(b""), None, false), Some(None));
        assert_eq!(parse_entry(Some(b"x"), Some(&m[..16]), None, false), None);
        assert_eq!(parse_entry(Some(b"3"), Some(&m[..16]), None, true), None);
    }
}
