//! Per-session seq allocation: strictly increasing, and never repeated even if Redis loses every
//! key (seed §4.3 `IncrSeqID`, used by Logic through the producer).
//!
//! # Layout
//!
//! - Redis hash [`keys::seq`] of a session: `cur` (last seq handed out), `max` (ceiling of the
//!   segment installed in Redis), `step` (size of that segment), `at` (when it was installed, ms).
//! - Redis string [`keys::client_msg`] per `(session, sender, client_msg_id)`:
//!   `"<seq>:<server_time_us>:#<fingerprint>:<msg_id>"` of the first allocation, kept for
//!   [`SeqConfig::dedup_ttl`]. The same key with another fingerprint (another message) is refused
//!   with [`Error::IdempotencyConflict`]: a conflicting retry is never acknowledged as the first.
//! - CQL row `session_seq(session_id, max_seq)`: the ceiling of every segment ever reserved, moved
//!   only by lightweight transactions (Paxos).
//!
//! # Paths
//!
//! - **Fast** ([`FAST_BODY`], one `EVALSHA`): an existing idempotency record is returned as a
//!   duplicate; else if the hash belongs to the serving Redis's epoch and `cur < max`, then
//!   `cur + 1` is handed out and the record written with a TTL. Calls are coalesced (group
//!   commit): sessions are spread over [`FAST_LANES`] lanes; while a lane's call is in flight, the
//!   requests that arrive for any of its sessions queue, and the lane's next call serves all of
//!   them (up to [`FAST_BATCH`]), each session's in arrival order. An idle lane pays one call per
//!   request as before; a busy one pays one call — one round trip, one epoch check, one script
//!   run — per batch instead of per message.
//! - **Segment**: `cur == max`. The next segment `[ceiling + 1, ceiling + step]` is reserved with
//!   `UPDATE … SET max_seq = ? IF max_seq = ?` (a brand-new session: `INSERT … IF NOT EXISTS`) and
//!   installed with [`INSTALL_LUA`], which only ever moves `cur` and `max` **up**. A lost race
//!   returns the current ceiling in the LWT's own result row, so no separate SERIAL read is needed.
//!   The step adapts between [`SeqConfig::min_segment`] and [`SeqConfig::max_segment`] (Meituan
//!   Leaf style): doubled when the previous segment lasted less than
//!   [`SeqConfig::segment_target_lifetime`], halved when it lasted more than twice that.
//! - **Recover**: the hash is missing, or was written in another epoch of Redis (see
//!   [`crate::epoch`]: a restart from an RDB snapshot or an AOF, a failover to a lagging replica,
//!   a restored backup — its `cur` may be below seqs already handed out), but the CQL ceiling
//!   exists (or the hash expired after [`SeqConfig::idle_ttl`]). The hash is recreated as
//!   `cur = max = ceiling` — zero capacity — in the current epoch, so the next seq comes from a
//!   fresh segment above the ceiling: a gap, never a repeat (WeChat seqsvr does the same).
//!
//! # Why seqs never repeat
//!
//! No segment reaches above [`MAX_SEQ`] (2^53): a session that used every seq up to it gets
//! [`Error::Request`], never a seq a JavaScript client would misread.
//!
//! Every seq handed out is `<= max` in Redis, and `max` is only ever set to the top of a segment
//! that a successful LWT reserved, so `max <=` the CQL ceiling at all times. A segment is installed
//! at most once (an install is never retried after an ambiguous failure) and an install sets
//! `cur >= low - 1`, where `low - 1` was the ceiling when the segment was reserved — above every seq
//! handed out before. An install that finds the hash **missing** is refused (the segment is dropped
//! as a gap): it may be stale, i.e. reserved before Redis lost a newer, larger segment's progress,
//! and recreating the hash from it would hand out seqs below ones already handed out. Only the
//! zero-capacity recovery hash (from the ceiling read by the LWT itself) and the very first segment
//! of a new session (nothing can have been handed out before it) may create the hash.
//!
//! In-process, the segment path of one session is single-flight (a sharded async mutex), so N
//! concurrent callers that find the segment used up cause one LWT, not N contended Paxos rounds;
//! several processes race through the LWT, and the loser re-reads the ceiling from the LWT's reply.
//!
//! A hash is trusted only in the epoch it was written in (its `ep` field against the serving
//! instance's `run_id:master_replid`, read inside the script): whatever Redis lost by going back in
//! time, the `cur` it now holds is never used, and the CQL ceiling — which only Paxos moves, and
//! which is above every seq ever handed out — is where the session starts again.
//!
//! # Known limits
//!
//! - **Idempotency records** live in Redis. A record that survives a rollback still names the
//!   seq its message got (seqs never repeat), so it is honoured in any epoch. A record that the
//!   rollback lost cannot be honoured: a retry of that `client_msg_id` is allocated a new seq, and
//!   if the first send had reached Kafka the message is stored twice, under two seqs (never one
//!   seq with two messages). Readers may deduplicate by `client_msg_id`. [`SeqConfig::wait_replicas`]
//!   narrows this for failovers: with it, records are on a replica before their seq is handed out.
//! - A double failure — Redis losing its data *twice* while one allocator is paused between the
//!   first LWT of a brand-new session and its install — can hand out a seq lower than one already
//!   handed out (still never a repeat).
//! - Gaps are normal: after recovery, after a lost LWT race, and at every idle expiry; and once
//!   per session when a Redis master gets its first replica (its `master_replid` changes).
//!
//! # Metrics
//!
//! `chatlog_seq_allocations_total{path=fast|segment|recover}`, once per new allocation (a
//! duplicate allocates nothing and is not counted).

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chatlog_schemas::MAX_SEQ;
use redis::aio::ConnectionManager;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use serde::Deserialize;

use crate::queues::SessionQueues;
use crate::{CqlConfig, Error, Result, epoch, keys};

/// The fast path for up to [`FAST_BATCH`] requests of one or more sessions. KEYS: per session,
/// its seq hash followed by one idempotency record per request. ARGV: record TTL ms, hash idle TTL
/// ms (0 = none), the number of sessions `G`, then `G` request counts, then per request (in KEYS
/// order) its candidate msg_id and server_time_us.
///
/// Returns one `{status, record, a, b, c}` per request, in order: `0` allocated (`a` = seq); `1`
/// duplicate (`record` = `"<seq>:<server_time_us>:<msg_id>"`, also when an earlier request of
/// the same call had the same id); `2` hash missing or written in another epoch (see
/// [`crate::epoch`]: Redis went back in time, so its `cur` may be below seqs already handed out);
/// `3` segment used up (`a` = max, `b` = step, `c` = installed-at ms); `4` conflict (`record` =
/// the record of another message under the same key: its fingerprint differs). A session's
/// requests are served in order, so its seqs follow the order of KEYS. ARGV per request: candidate
/// msg_id, server_time_us, fingerprint (hex, may be empty). A record is
/// `"<seq>:<server_time_us>:#<fingerprint>:<msg_id>"` (`"<seq>:<server_time_us>:<msg_id>"` before
/// fingerprints; such a record is never a conflict).
///
/// An idempotency record is honoured whatever the epoch: it names an allocation that was made, and
/// a seq is never handed out twice, so it is still that message's seq.
///
/// It runs after the `server_epoch()` of an [`epoch::PinnedScript`] (the serving Redis's `run_id`
/// as a literal, `master_replid` read per call).
pub const FAST_BODY: &str = include_str!("../lua/seq_fast.lua");

/// Most requests served by one fast-path call.
pub const FAST_BATCH: usize = 128;

/// Fast-path calls of one allocator that may be in flight at once. Sessions are spread over the
/// lanes by hash; each lane has one call in flight, and the requests that arrive meanwhile, of any
/// of its sessions, are served together by its next call. Fewer lanes mean larger calls (the epoch
/// check and the round trip paid once per call); more lanes, more calls in flight. One call then
/// touches keys of several sessions (several hash tags): right for the one Redis node chatlog
/// supports today; Redis Cluster support must make lanes per hash slot (`CROSSSLOT` otherwise).
pub const FAST_LANES: usize = 4;

/// Installs a reserved segment, moving values only up. KEYS: seq hash. ARGV: `low - 1`, `high`,
/// step, now ms, hash idle TTL ms (0 = none), create (`1` = may create a missing hash).
///
/// `cur = max(cur, low - 1)`, `max = max(max, high)`. A hash that is missing, or was written in
/// another epoch (see [`crate::epoch`]), is (re)created from the arguments only when `create` is
/// `1`; otherwise the install is refused. Returns 1 if installed, 0 if refused.
pub const INSTALL_LUA: &str = concat!(
    include_str!("../lua/epoch.lua"),
    include_str!("../lua/seq_install.lua")
);

/// `INSERT` of a new session's first ceiling (LWT).
pub fn insert_ceiling_cql(keyspace: &str) -> String {
    format!("INSERT INTO {keyspace}.session_seq (session_id, max_seq) VALUES (?, ?) IF NOT EXISTS")
}

/// `UPDATE` of a session's ceiling from an expected value (LWT). Binds: new, session, expected.
pub fn update_ceiling_cql(keyspace: &str) -> String {
    format!("UPDATE {keyspace}.session_seq SET max_seq = ? WHERE session_id = ? IF max_seq = ?")
}

/// `SELECT` of a session's ceiling (run at SERIAL consistency: sees every committed LWT).
pub fn select_ceiling_cql(keyspace: &str) -> String {
    format!("SELECT max_seq FROM {keyspace}.session_seq WHERE session_id = ?")
}

/// The serial consistency of the Paxos phase of the ceiling LWTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialMode {
    /// `SERIAL`: linearizable across every datacenter. Required if more than one datacenter may
    /// allocate seqs of the same session.
    #[default]
    Serial,
    /// `LOCAL_SERIAL`: linearizable within the local datacenter only (faster; safe only when a
    /// session's seqs are allocated from one datacenter).
    LocalSerial,
}

impl SerialMode {
    fn serial(self) -> SerialConsistency {
        match self {
            SerialMode::Serial => SerialConsistency::Serial,
            SerialMode::LocalSerial => SerialConsistency::LocalSerial,
        }
    }

    fn read(self) -> Consistency {
        match self {
            SerialMode::Serial => Consistency::Serial,
            SerialMode::LocalSerial => Consistency::LocalSerial,
        }
    }

    fn commit(self) -> Consistency {
        match self {
            SerialMode::Serial => Consistency::Quorum,
            SerialMode::LocalSerial => Consistency::LocalQuorum,
        }
    }
}

/// The counter of allocations by path (`fast`, `segment`, `recover`).
pub const ALLOCATIONS_METRIC: &str = "chatlog_seq_allocations_total";

/// Settings of the seq allocator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeqConfig {
    /// Smallest segment reserved per LWT (also the first segment of a session). Default 100.
    pub min_segment: i64,
    /// Largest segment reserved per LWT; also the largest gap a Redis loss can cause. Default
    /// 10 000.
    pub max_segment: i64,
    /// A segment used up faster than this makes the next one twice as large; one that lasted more
    /// than twice this makes the next one half as large. Default 1 minute.
    #[serde(with = "humantime_serde")]
    pub segment_target_lifetime: Duration,
    /// How long an idempotency record `(session, sender, client_msg_id) → allocation` is kept: a retried
    /// send within this time gets the first allocation back. Default 24 hours.
    #[serde(with = "humantime_serde")]
    pub dedup_ttl: Duration,
    /// A session's Redis seq hash expires after this long without an allocation (memory of idle
    /// sessions); the next allocation then takes the recover path, leaving a gap. `0s` = never.
    /// Default 30 days.
    #[serde(with = "humantime_serde")]
    pub idle_ttl: Duration,
    /// Serial consistency of the ceiling LWTs (`serial` or `local_serial`). Default `serial`.
    pub serial_consistency: SerialMode,
    /// Rounds (fast path, reservation) one allocation may take before giving up under contention.
    /// Default 16.
    pub max_attempts: u32,
    /// Redis replicas that must hold an allocation before its seq is handed out (Redis `WAIT`,
    /// sent in the same pipeline as the fast-path call). Seqs never repeat without it (a failover
    /// is a new epoch, see the module docs); with it, a failover to one of those replicas also
    /// keeps the idempotency records and the session's segment (no recovery gap). `0` (default):
    /// no wait. With replicas, `1` costs one replica round trip per fast-path call (one call
    /// serves a batch of concurrent requests, see the module docs).
    pub wait_replicas: u32,
    /// How long `WAIT` may take to gather [`wait_replicas`](Self::wait_replicas) acknowledgements;
    /// fewer by then fails the allocation with [`Error::NotReplicated`] (retriable). While it waits,
    /// later commands on the allocator's Redis connection queue behind it; keep it well below the
    /// Redis `response_timeout` (2 s by default). Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
}

impl Default for SeqConfig {
    fn default() -> Self {
        SeqConfig {
            min_segment: 100,
            max_segment: 10_000,
            segment_target_lifetime: Duration::from_secs(60),
            dedup_ttl: Duration::from_secs(24 * 3600),
            idle_ttl: Duration::from_secs(30 * 24 * 3600),
            serial_consistency: SerialMode::Serial,
            max_attempts: 16,
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(100),
        }
    }
}

impl SeqConfig {
    /// Checks the values that serde cannot.
    pub fn validate(&self) -> Result<()> {
        if self.min_segment < 1 {
            return Err(Error::Config("seq.min_segment must be >= 1".into()));
        }
        if self.max_segment < self.min_segment {
            return Err(Error::Config(
                "seq.max_segment must be >= seq.min_segment".into(),
            ));
        }
        if self.dedup_ttl.as_millis() < 1 {
            return Err(Error::Config("seq.dedup_ttl must be at least 1ms".into()));
        }
        if self.max_attempts < 2 {
            return Err(Error::Config("seq.max_attempts must be >= 2".into()));
        }
        if self.wait_replicas > 0 && self.wait_timeout.as_millis() < 1 {
            return Err(Error::Config(
                "seq.wait_timeout must be at least 1ms when seq.wait_replicas > 0 (0 would make \
                 Redis WAIT block forever)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The size of the next segment, given the previous one's size and how long it lasted.
    pub fn next_step(&self, prev_step: i64, installed_at_ms: i64, now_ms: i64) -> i64 {
        let (min, max) = (self.min_segment, self.max_segment.max(self.min_segment));
        if prev_step <= 0 {
            return min;
        }
        let prev = prev_step.clamp(min, max);
        if installed_at_ms <= 0 {
            return prev;
        }
        let lived = now_ms.saturating_sub(installed_at_ms).max(0);
        let target = duration_ms(self.segment_target_lifetime).max(1);
        let next = if lived < target {
            prev.saturating_mul(2)
        } else if lived > target.saturating_mul(2) {
            prev / 2
        } else {
            prev
        };
        next.clamp(min, max)
    }
}

fn duration_ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or(0)
}

/// Which path an allocation took (the `path` label of `chatlog_seq_allocations_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AllocPath {
    /// One Redis script call.
    Fast,
    /// A new segment was reserved in CQL first.
    Segment,
    /// The Redis hash was missing while the CQL ceiling existed: restarted above the ceiling.
    Recover,
}

impl AllocPath {
    /// The metric label: `fast`, `segment` or `recover`.
    pub fn as_str(self) -> &'static str {
        match self {
            AllocPath::Fast => "fast",
            AllocPath::Segment => "segment",
            AllocPath::Recover => "recover",
        }
    }
}

/// What [`SeqAllocator::allocate`] handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The message's seq in its session (>= 1).
    pub seq: i64,
    /// The message id: the caller's candidate, or the first call's id for a duplicate.
    pub msg_id: String,
    /// Server time in µs: the caller's, or the first call's for a duplicate.
    pub server_time_us: i64,
    /// `true` if this `(session, client_msg_id)` was allocated before (within the dedup TTL): the
    /// values are the first allocation's, so a retried send re-produces identical bytes.
    pub duplicate: bool,
    /// The path this call took.
    pub path: AllocPath,
}

/// Why the allocator gave up (the source inside [`Error::Cql`] / [`Error::Redis`]).
#[derive(Debug, thiserror::Error)]
pub enum SeqError {
    /// Every attempt lost a race (another allocator kept moving the ceiling, or Redis kept losing
    /// the hash).
    #[error("no seq after {0} attempts (contention on the session's ceiling)")]
    Contention(u32),
    /// Other callers of this process kept reserving segments that were used up before this
    /// request was served.
    #[error("no seq after waiting for {0} segment reservations of other callers")]
    Waited(u32),
}

/// What the fast script said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fast {
    Allocated(i64),
    Duplicate(Allocation),
    Missing,
    Exhausted { max: i64, step: i64, at_ms: i64 },
}

/// What is known about the CQL row after an LWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ceiling {
    /// Not known: expect the Redis `max` to be the ceiling.
    Unknown,
    /// The row does not exist.
    Absent,
    /// The row holds this value.
    At(i64),
}

/// The outcome of one LWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reserve {
    /// Reserved `[low, high]`.
    Won { low: i64, high: i64 },
    /// Someone else moved the ceiling first; here is what it is now.
    Lost(Ceiling),
}

/// Parses an idempotency record `"<seq>:<server_time_us>:#<fingerprint>:<msg_id>"` (or, written
/// before fingerprints, `"<seq>:<server_time_us>:<msg_id>"`).
fn parse_record(record: &[u8]) -> Option<(i64, i64, String)> {
    let text = std::str::from_utf8(record).ok()?;
    let mut parts = text.splitn(3, ':');
    let seq = parts.next()?.parse().ok()?;
    let time = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    // `#<fingerprint>:<msg_id>` since fingerprints; `<msg_id>` in records written before.
    let msg_id = match rest.strip_prefix('#') {
        Some(tagged) => tagged.split_once(':')?.1,
        None => rest,
    };
    Some((seq, time, msg_id.to_owned()))
}

/// Most rounds one allocation waits for other callers' segment reservations before giving up.
const WAIT_ROUNDS: u32 = 1024;

/// Number of in-process single-flight locks of the segment path (sessions share them by hash).
const SEGMENT_LOCKS: usize = 64;

/// Allocates seqs: Redis fast path, CQL LWT segments, recovery after Redis loss. Cheap to clone
/// (clones share connections, statements and locks).
#[derive(Clone)]
pub struct SeqAllocator {
    inner: Arc<Inner>,
}

struct Inner {
    session: Arc<Session>,
    redis: ConnectionManager,
    config: SeqConfig,
    insert: PreparedStatement,
    update: PreparedStatement,
    select: PreparedStatement,
    /// The fast-path script, pinned to the Redis lifetime last seen ([`epoch::PinnedScript`]).
    fast: epoch::PinnedScript,
    install: redis::Script,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Per lane (see [`FAST_LANES`]) with a fast-path call in flight: the requests waiting for
    /// its next call.
    queues: Arc<SessionQueues<Request>>,
    /// Fast-path calls made (each serves one or more requests).
    fast_calls: AtomicU64,
}

/// One allocation asked of [`SeqAllocator::allocate_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocRequest {
    /// The client's idempotency key (with [`sender_id`](Self::sender_id): a key per sender).
    pub client_msg_id: String,
    /// The sender: idempotency records are kept per `(session, sender, client_msg_id)`, so one
    /// client's id can never name another sender's message. Empty for callers without senders.
    pub sender_id: String,
    /// A hash of what the message says (hex; empty = not checked). A repeated key whose record
    /// holds another fingerprint is refused with [`Error::IdempotencyConflict`]: a retry must
    /// resend the same message.
    pub fingerprint: String,
    /// The msg_id to store unless this is a duplicate.
    pub candidate_msg_id: String,
    /// The server time to store unless this is a duplicate, µs.
    pub server_time_us: i64,
}

/// A fast-path request waiting for its lane's next call.
struct Request {
    session_id: String,
    args: AllocRequest,
    reply: tokio::sync::oneshot::Sender<Result<Fast>>,
}

impl std::fmt::Debug for SeqAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqAllocator")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl SeqAllocator {
    /// Prepares the ceiling statements of `keyspace` (which must already hold `session_seq`).
    pub async fn new(
        session: Arc<Session>,
        keyspace: &str,
        redis: ConnectionManager,
        config: SeqConfig,
    ) -> Result<Self> {
        config.validate()?;
        CqlConfig {
            keyspace: keyspace.to_owned(),
            ..CqlConfig::default()
        }
        .validate()?;
        let mode = config.serial_consistency;
        let prepare = |cql: String, what: &'static str| {
            let session = session.clone();
            async move {
                session
                    .prepare(cql)
                    .await
                    .map_err(|e| Error::cql(format!("prepare {what}"), e))
            }
        };
        let mut insert = prepare(insert_ceiling_cql(keyspace), "session_seq insert").await?;
        let mut update = prepare(update_ceiling_cql(keyspace), "session_seq update").await?;
        let mut select = prepare(select_ceiling_cql(keyspace), "session_seq select").await?;
        for lwt in [&mut insert, &mut update] {
            // Not idempotent: a driver retry of an applied LWT would report "not applied".
            lwt.set_is_idempotent(false);
            lwt.set_consistency(mode.commit());
            lwt.set_serial_consistency(Some(mode.serial()));
        }
        select.set_consistency(mode.read());
        select.set_is_idempotent(true);
        Ok(SeqAllocator {
            inner: Arc::new(Inner {
                session,
                redis,
                config,
                insert,
                update,
                select,
                fast: epoch::PinnedScript::new(FAST_BODY, "seq fast path"),
                install: redis::Script::new(INSTALL_LUA),
                locks: (0..SEGMENT_LOCKS)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                queues: Arc::new(SessionQueues::new(FAST_LANES)),
                fast_calls: AtomicU64::new(0),
            }),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &SeqConfig {
        &self.inner.config
    }

    /// Fast-path Redis calls made so far by this allocator and its clones; below the number of
    /// allocations when concurrent requests of a session were coalesced.
    pub fn fast_calls(&self) -> u64 {
        self.inner.fast_calls.load(Ordering::Relaxed)
    }

    /// Allocates the next seq of `session_id` for `client_msg_id`, or returns the first allocation
    /// of that `client_msg_id` (marked duplicate) if it is still remembered.
    ///
    /// `candidate_msg_id` and `server_time_us` are stored and returned unless this is a duplicate.
    pub async fn allocate(
        &self,
        session_id: &str,
        client_msg_id: &str,
        candidate_msg_id: &str,
        server_time_us: i64,
    ) -> Result<Allocation> {
        let request = AllocRequest {
            client_msg_id: client_msg_id.to_owned(),
            sender_id: String::new(),
            fingerprint: String::new(),
            candidate_msg_id: candidate_msg_id.to_owned(),
            server_time_us,
        };
        self.allocate_request(session_id, &request).await
    }

    /// [`allocate`](Self::allocate) for one full request (sender and fingerprint included).
    pub async fn allocate_request(
        &self,
        session_id: &str,
        request: &AllocRequest,
    ) -> Result<Allocation> {
        let inner = &*self.inner;
        let candidate_msg_id = request.candidate_msg_id.as_str();
        let server_time_us = request.server_time_us;
        let mut path = AllocPath::Fast;
        let mut ceiling = Ceiling::Unknown;
        let mut guard = None;
        // Rounds that reserved (or tried to) count against `max_attempts`; rounds that only waited
        // for another caller's reservation have their own, larger bound: each of those means
        // somebody else made progress.
        let mut attempts = 0;
        let mut waits = 0;
        while attempts < inner.config.max_attempts && waits < WAIT_ROUNDS {
            let step = match self.fast(session_id, request).await? {
                Fast::Allocated(seq) => {
                    metrics::counter!(ALLOCATIONS_METRIC, "path" => path.as_str()).increment(1);
                    return Ok(Allocation {
                        seq,
                        msg_id: candidate_msg_id.to_owned(),
                        server_time_us,
                        duplicate: false,
                        path,
                    });
                }
                Fast::Duplicate(first) => return Ok(Allocation { path, ..first }),
                step => step,
            };
            if guard.is_none() {
                // Single-flight per session in this process. A free lock: take it and look again
                // before reserving. A taken one: another caller is reserving; wait for it, then
                // look again without the lock, so that the callers who waited are served together
                // by the (coalesced) fast path, not one at a time under the lock.
                let lock = &inner.locks[lock_index(session_id)];
                match lock.try_lock() {
                    Ok(taken) => guard = Some(taken),
                    Err(_) => {
                        drop(lock.lock().await);
                        waits += 1;
                    }
                }
                continue;
            }
            attempts += 1;
            match step {
                Fast::Missing => match self
                    .reserve(session_id, 0, Ceiling::Absent, inner.config.min_segment)
                    .await?
                {
                    Reserve::Won { low, high } => {
                        // The session's first segment: nothing was handed out before it.
                        self.install(session_id, low - 1, high, true).await?;
                        path = path.max(AllocPath::Segment);
                    }
                    Reserve::Lost(found) => {
                        // Redis lost the hash (or it expired): restart from the ceiling with zero
                        // capacity, so the next seq comes from a new segment above it.
                        let top = match found {
                            Ceiling::At(c) => c,
                            Ceiling::Absent | Ceiling::Unknown => 0,
                        };
                        self.install(session_id, top, top, true).await?;
                        ceiling = found;
                        path = AllocPath::Recover;
                        tracing::info!(
                            session_id,
                            ceiling = top,
                            "seq hash missing in Redis; recovered above the CQL ceiling"
                        );
                    }
                },
                Fast::Exhausted { max, step, at_ms } => {
                    let size = inner.config.next_step(step, at_ms, now_ms());
                    match self.reserve(session_id, max, ceiling, size).await? {
                        Reserve::Won { low, high } => {
                            // Refused only if the hash vanished meanwhile: the segment becomes
                            // a gap and the next round recovers.
                            self.install(session_id, low - 1, high, false).await?;
                            ceiling = Ceiling::At(high);
                            path = path.max(AllocPath::Segment);
                        }
                        Reserve::Lost(found) => ceiling = found,
                    }
                }
                Fast::Allocated(_) | Fast::Duplicate(_) => unreachable!("returned above"),
            }
        }
        Err(Error::cql(
            format!("allocate a seq for session {session_id:?}"),
            if waits >= WAIT_ROUNDS {
                SeqError::Waited(waits)
            } else {
                SeqError::Contention(attempts)
            },
        ))
    }

    /// Allocates one seq per request of `session_id`, in request order (seqs increase along
    /// `requests`; duplicates get their first allocation back): one fast-path call per
    /// [`FAST_BATCH`] requests, and the single-request path for any that the fast path could not
    /// serve (segment used up, hash missing). Result `i` belongs to request `i`.
    ///
    /// For callers that must keep an order of their own, like the producer, which hands a
    /// session's records to Kafka in seq order.
    pub async fn allocate_many(
        &self,
        session_id: &str,
        requests: &[AllocRequest],
    ) -> Vec<Result<Allocation>> {
        let mut out = Vec::with_capacity(requests.len());
        while out.len() < requests.len() {
            let rest = &requests[out.len()..];
            let chunk = &rest[..rest.len().min(FAST_BATCH)];
            let results = self.call_fast(&[(session_id, chunk)]).await;
            for (r, result) in chunk.iter().zip(results) {
                match result {
                    Ok(Fast::Allocated(seq)) => {
                        metrics::counter!(ALLOCATIONS_METRIC, "path" => AllocPath::Fast.as_str())
                            .increment(1);
                        out.push(Ok(Allocation {
                            seq,
                            msg_id: r.candidate_msg_id.clone(),
                            server_time_us: r.server_time_us,
                            duplicate: false,
                            path: AllocPath::Fast,
                        }));
                    }
                    Ok(Fast::Duplicate(first)) => out.push(Ok(first)),
                    Err(e) => out.push(Err(e)),
                    // No capacity left: this one takes the full path (a new segment), and the
                    // rest go through the fast path again, in order, with the new segment.
                    Ok(Fast::Missing | Fast::Exhausted { .. }) => {
                        let alloc = self.allocate_request(session_id, r).await;
                        out.push(alloc);
                        break;
                    }
                }
            }
        }
        out
    }

    /// The session's CQL ceiling, read at SERIAL consistency (`None` for a session never seen).
    pub async fn ceiling(&self, session_id: &str) -> Result<Option<i64>> {
        let rows = self
            .inner
            .session
            .execute_unpaged(&self.inner.select, (session_id,))
            .await
            .map_err(|e| Error::cql("read session_seq", e))?
            .into_rows_result()
            .map_err(|e| Error::cql("read session_seq", e))?;
        let row = rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| Error::cql("read session_seq", e))?;
        Ok(row.and_then(|(v,)| v))
    }

    /// One fast-path request. The first request of an idle lane calls Redis at once; requests
    /// arriving while that call is in flight queue, whatever their session, and are served
    /// together by the lane's next call.
    async fn fast(&self, session_id: &str, args: &AllocRequest) -> Result<Fast> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = Request {
            session_id: session_id.to_owned(),
            args: args.clone(),
            reply,
        };
        let lane = lane_of(session_id);
        // The lane stays busy until `NextCall` drops.
        let Some(request) = self.inner.queues.queue_or_lead(lane, request) else {
            return answer.await.unwrap_or_else(|_| {
                Err(Error::Redis {
                    what: "seq fast path",
                    source: redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "the call serving this request ended without an answer",
                        "its task panicked or the runtime shut down".to_owned(),
                    )),
                })
            });
        };
        let _next = NextCall {
            allocator: self.clone(),
            lane,
        };
        let mut results = self
            .call_fast(&[(session_id, std::slice::from_ref(&request.args))])
            .await;
        results.pop().expect("one result per request")
    }

    /// One `EVALSHA` of the fast-path script for the requests of `sessions` (each session once,
    /// with its requests in order): one result per request, in the same order.
    async fn call_fast(&self, sessions: &[(&str, &[AllocRequest])]) -> Vec<Result<Fast>> {
        let inner = &*self.inner;
        inner.fast_calls.fetch_add(1, Ordering::Relaxed);
        let total: usize = sessions.iter().map(|(_, r)| r.len()).sum();
        let mut con = inner.redis.clone();
        let mut result = Err(fast_path_error(redis::RedisError::from((
            redis::ErrorKind::Client,
            "seq fast path not attempted",
        ))));
        // Twice at most: a `NOSCRIPT` means another Redis lifetime, whose script is loaded anew.
        for _ in 0..2 {
            let script = match inner.fast.get(&mut con).await {
                Ok(script) => script,
                Err(e) => {
                    result = Err(fast_path_error(e));
                    break;
                }
            };
            let mut call = script.prepare_invoke();
            call.arg(duration_ms(inner.config.dedup_ttl).max(1))
                .arg(duration_ms(inner.config.idle_ttl))
                .arg(sessions.len());
            for (session_id, requests) in sessions {
                call.key(keys::seq(session_id)).arg(requests.len());
                for r in *requests {
                    call.key(keys::client_msg(session_id, &r.sender_id, &r.client_msg_id));
                }
            }
            for (_, requests) in sessions {
                for r in *requests {
                    call.arg(&r.candidate_msg_id)
                        .arg(r.server_time_us)
                        .arg(&r.fingerprint);
                }
            }
            result = self.invoke_fast(&mut con, &call).await;
            match &result {
                Err(Error::Redis { source: e, .. })
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    inner.fast.forget(&script);
                }
                _ => break,
            }
        }
        let replies = match result {
            Ok(replies) => replies,
            Err(e) => {
                return (0..total).map(|_| Err(e.clone())).collect();
            }
        };
        if replies.len() != total {
            let got = format!("{} results for {total} requests", replies.len());
            return (0..total)
                .map(|_| Err(bad_reply("fast path result count", got.as_bytes())))
                .collect();
        }
        replies.into_iter().map(fast_result).collect()
    }

    /// Runs one fast-path invocation (`EVALSHA` only; `NOSCRIPT` is the caller's). With
    /// [`SeqConfig::wait_replicas`], the script and `WAIT` go out as one pipeline on one
    /// connection — `WAIT` covers exactly the writes before it on that connection — and the
    /// replies count only if enough replicas acknowledged.
    async fn invoke_fast(
        &self,
        con: &mut ConnectionManager,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<Vec<FastReply>> {
        let config = &self.inner.config;
        let redis_err = fast_path_error;
        let mut pipe = redis::pipe();
        pipe.invoke_script(call);
        if config.wait_replicas == 0 {
            let (replies,): (Vec<FastReply>,) = pipe.query_async(con).await.map_err(redis_err)?;
            return Ok(replies);
        }
        let timeout_ms = duration_ms(config.wait_timeout).max(1);
        pipe.cmd("WAIT").arg(config.wait_replicas).arg(timeout_ms);
        let (replies, acked): (Vec<FastReply>, i64) =
            pipe.query_async(con).await.map_err(redis_err)?;
        if acked < i64::from(config.wait_replicas) {
            return Err(Error::NotReplicated {
                wanted: config.wait_replicas,
                acked,
                timeout: config.wait_timeout,
            });
        }
        Ok(replies)
    }

    /// Reserves the `size` seqs above `max(ceiling, floor)` (floor = Redis `max`): an LWT `UPDATE`
    /// from the expected ceiling, or `INSERT IF NOT EXISTS` when the row is not expected to exist.
    async fn reserve(
        &self,
        session_id: &str,
        floor: i64,
        ceiling: Ceiling,
        size: i64,
    ) -> Result<Reserve> {
        let inner = &*self.inner;
        let expected = match ceiling {
            Ceiling::Unknown if floor > 0 => Some(floor),
            Ceiling::Unknown | Ceiling::Absent => None,
            Ceiling::At(c) => Some(c),
        };
        let base = expected.unwrap_or(0).max(floor);
        // No segment reaches above MAX_SEQ (2^53, what a JavaScript client reads exactly), so
        // no seq above it is ever handed out; a session that used them all gets an error.
        if base >= MAX_SEQ {
            return Err(Error::Request(format!(
                "session {session_id:?} has used every seq up to 2^53 ({MAX_SEQ}): no seq left"
            )));
        }
        let size = size.min(MAX_SEQ - base);
        let high = base + size;
        let (result, what) = match expected {
            None => (
                inner
                    .session
                    .execute_unpaged(&inner.insert, (session_id, high))
                    .await,
                "insert session_seq",
            ),
            Some(c) => (
                inner
                    .session
                    .execute_unpaged(&inner.update, (high, session_id, c))
                    .await,
                "update session_seq",
            ),
        };
        let rows = result
            .map_err(|e| Error::cql(what, e))?
            .into_rows_result()
            .map_err(|e| Error::cql(what, e))?;
        let max_col = rows.column_specs().get_by_name("max_seq").map(|(i, _)| i);
        let row: Row = rows
            .first_row()
            .map_err(|e| Error::cql(format!("{what}: LWT result"), e))?;
        let applied = matches!(row.columns.first(), Some(Some(CqlValue::Boolean(true))));
        if applied {
            return Ok(Reserve::Won {
                low: base + 1,
                high: base + size,
            });
        }
        let current = max_col.and_then(|i| match row.columns.get(i) {
            Some(Some(CqlValue::BigInt(v))) => Some(*v),
            _ => None,
        });
        Ok(Reserve::Lost(match current {
            Some(v) => Ceiling::At(v),
            None => Ceiling::Absent,
        }))
    }

    /// Installs `[low, high]`; `false` if refused (hash missing and `create` not allowed).
    async fn install(&self, session_id: &str, cur: i64, high: i64, create: bool) -> Result<bool> {
        let inner = &*self.inner;
        let mut con = inner.redis.clone();
        let installed: i64 = inner
            .install
            .key(keys::seq(session_id))
            .arg(cur)
            .arg(high)
            .arg(high - cur)
            .arg(now_ms())
            .arg(duration_ms(inner.config.idle_ttl))
            .arg(if create { "1" } else { "0" })
            .invoke_async(&mut con)
            .await
            .map_err(|e| Error::Redis {
                what: "install seq segment",
                source: e,
            })?;
        Ok(installed == 1)
    }
}

/// When the call of a lane's first request ends (or its caller goes away), the requests queued
/// meanwhile are served by a task of their own, so no waiter depends on a caller that may be
/// cancelled.
struct NextCall {
    allocator: SeqAllocator,
    lane: &'static str,
}

impl Drop for NextCall {
    fn drop(&mut self) {
        let queues = &self.allocator.inner.queues;
        if queues.release(self.lane) {
            return;
        }
        let allocator = self.allocator.clone();
        // Built before the spawn: if the task never runs (no runtime here, or one shutting
        // down), dropping it still releases the lane and its waiters.
        let drain = queues.clone().drain(
            self.lane.to_owned(),
            Vec::new(),
            FAST_BATCH,
            move |batch: Vec<Request>| {
                let allocator = allocator.clone();
                async move { allocator.serve(batch).await }
            },
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain);
        }
    }
}

impl SeqAllocator {
    /// Serves queued requests of one lane with one call: grouped by session (a session's
    /// requests keep their arrival order), each answer sent to its waiter.
    async fn serve(&self, batch: Vec<Request>) {
        let mut order: Vec<String> = Vec::new();
        let mut by_session: HashMap<String, Vec<Request>> = HashMap::new();
        for r in batch {
            by_session
                .entry(r.session_id.clone())
                .or_insert_with(|| {
                    order.push(r.session_id.clone());
                    Vec::new()
                })
                .push(r);
        }
        let mut args: Vec<(String, Vec<AllocRequest>)> = Vec::with_capacity(order.len());
        let mut replies = Vec::new();
        for session_id in order {
            let requests = by_session.remove(&session_id).unwrap_or_default();
            let mut session_args = Vec::with_capacity(requests.len());
            for r in requests {
                session_args.push(r.args);
                replies.push(r.reply);
            }
            args.push((session_id, session_args));
        }
        let groups: Vec<(&str, &[AllocRequest])> = args
            .iter()
            .map(|(s, r)| (s.as_str(), r.as_slice()))
            .collect();
        let results = self.call_fast(&groups).await;
        for (reply, result) in replies.into_iter().zip(results) {
            // A waiter that went away does not need its answer (its seq becomes a gap).
            let _ = reply.send(result);
        }
    }
}

/// A Redis error of the fast path (every request a failed call served gets a clone).
fn fast_path_error(source: redis::RedisError) -> Error {
    Error::Redis {
        what: "seq fast path",
        source,
    }
}

/// One request's reply of [`FAST_BODY`]: `{status, record, a, b, c}`.
type FastReply = (i64, Vec<u8>, i64, i64, i64);

fn fast_result((status, record, a, b, c): FastReply) -> Result<Fast> {
    match status {
        0 => Ok(Fast::Allocated(a)),
        1 => {
            let (seq, server_time_us, msg_id) =
                parse_record(&record).ok_or_else(|| bad_reply("idempotency record", &record))?;
            Ok(Fast::Duplicate(Allocation {
                seq,
                msg_id,
                server_time_us,
                duplicate: true,
                path: AllocPath::Fast,
            }))
        }
        2 => Ok(Fast::Missing),
        4 => {
            let (seq, _, msg_id) =
                parse_record(&record).ok_or_else(|| bad_reply("idempotency record", &record))?;
            Err(Error::IdempotencyConflict { seq, msg_id })
        }
        3 => Ok(Fast::Exhausted {
            max: a,
            step: b,
            at_ms: c,
        }),
        other => Err(bad_reply("fast path status", other.to_string().as_bytes())),
    }
}

/// The fast-path lane of a session (a name, as [`SessionQueues`] keys by name).
fn lane_of(session_id: &str) -> &'static str {
    const NAMES: [&str; 64] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
        "32", "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46",
        "47", "48", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60", "61",
        "62", "63",
    ];
    const _: () = assert!(FAST_LANES <= NAMES.len());
    let mut h = DefaultHasher::new();
    (session_id, "lane").hash(&mut h);
    NAMES[(h.finish() % FAST_LANES as u64) as usize]
}

fn lock_index(session_id: &str) -> usize {
    let mut h = DefaultHasher::new();
    session_id.hash(&mut h);
    (h.finish() % SEGMENT_LOCKS as u64) as usize
}

fn bad_reply(what: &'static str, got: &[u8]) -> Error {
    Error::Redis {
        what: "seq fast path",
        source: redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            what,
            String::from_utf8_lossy(got).into_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(min: i64, max: i64) -> SeqConfig {
        SeqConfig {
            min_segment: min,
            max_segment: max,
            segment_target_lifetime: Duration::from_secs(60),
            ..SeqConfig::default()
        }
    }

    #[test]
    fn step_doubles_when_fast_halves_when_slow_and_stays_in_bounds() {
        let c = config(100, 1000);
        let now = 10_000_000;
        assert_eq!(c.next_step(0, 0, now), 100, "first segment is the minimum");
        assert_eq!(c.next_step(100, now - 1_000, now), 200);
        assert_eq!(c.next_step(800, now - 1_000, now), 1000, "capped");
        assert_eq!(
            c.next_step(400, now - 90_000, now),
            400,
            "within 1-2x target: same"
        );
        assert_eq!(c.next_step(400, now - 200_000, now), 200);
        assert_eq!(c.next_step(150, now - 200_000, now), 100, "floored");
        assert_eq!(c.next_step(5000, 0, now), 1000, "unknown age: clamped only");
        assert_eq!(
            c.next_step(200, now + 5_000, now),
            400,
            "clock skew counts as fast"
        );
    }

    #[test]
    fn records_parse_and_msg_ids_may_hold_colons() {
        assert_eq!(
            parse_record(b"42:1700000000000000:0190-ab:cd"),
            Some((42, 1_700_000_000_000_000, "0190-ab:cd".to_owned()))
        );
        assert_eq!(
            parse_record(b"42:17:#ab12:0190-ab:cd"),
            Some((42, 17, "0190-ab:cd".to_owned())),
            "with a fingerprint"
        );
        assert_eq!(
            parse_record(b"42:17::m"),
            Some((42, 17, ":m".to_owned())),
            "a legacy msg_id may start with a colon"
        );
        assert_eq!(parse_record(b"x:1:m"), None);
        assert_eq!(parse_record(b"1:2"), None);
    }

    #[test]
    fn config_rejects_bad_bounds() {
        SeqConfig::default().validate().unwrap();
        assert!(config(10, 5).validate().is_err());
        assert!(config(0, 5).validate().is_err());
        let c = SeqConfig {
            dedup_ttl: Duration::ZERO,
            ..SeqConfig::default()
        };
        assert!(c.validate().is_err());
        // WAIT with a zero timeout blocks forever: refused, but only when the wait is on.
        let c = SeqConfig {
            wait_replicas: 1,
            wait_timeout: Duration::ZERO,
            ..SeqConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("wait_timeout")
        );
        let c = SeqConfig {
            wait_timeout: Duration::ZERO,
            ..SeqConfig::default()
        };
        c.validate().unwrap();
    }
}
