//! Per-session seq allocation: strictly increasing, and never repeated even if Redis loses every
//! key (seed §4.3 `IncrSeqID`, used by Logic through the producer).
//!
//! # Layout
//!
//! - Redis hash [`keys::seq`](crate::keys::seq) of a session: `cur` (last seq handed out), `max` (ceiling of the
//!   segment installed in Redis), `step` (size of that segment), `at` (when it was installed, ms).
//! - Redis string [`keys::client_msg`](crate::keys::client_msg) per `(session, sender, client_msg_id)`:
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
//!   Leaf style, sized by rate): when the previous segment lasted less than
//!   [`SeqConfig::segment_target_lifetime`], the next is as large as would last that long at the
//!   rate it was used (×2 at least, ×[`GROWTH_MAX`] at most — doubling took a busy new session
//!   one LWT per doubling to reach its size); halved when it lasted more than twice that.
//! - **Recover**: the hash is missing, or was written in another epoch of Redis (see
//!   [`crate::epoch`]: a restart from an RDB snapshot or an AOF, a failover to a lagging replica,
//!   a restored backup — its `cur` may be below seqs already handed out), but the CQL ceiling
//!   exists (or the hash expired after [`SeqConfig::idle_ttl`]). The hash is recreated as
//!   `cur = max = ceiling` — zero capacity — in the current epoch, so the next seq comes from a
//!   fresh segment above the ceiling: a gap, never a repeat (WeChat seqsvr does the same).
//!
//! # Why seqs never repeat
//!
//! No segment reaches above [`MAX_SEQ`](chatlog_schemas::MAX_SEQ) (2^53): a session that used every seq up to it gets
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
//!
//! # Layout
//!
//! - `mod.rs`: [`SeqAllocator`] and its public calls (the allocation loop over the paths).
//! - [`config`]: [`SeqConfig`], [`SerialMode`], the adaptive segment step.
//! - `fast`: the fast path — [`FAST_BODY`], lanes and group commit.
//! - `segment`: the segment path — the ceiling LWTs, [`INSTALL_LUA`], recovery's install.
//! - `tests`: unit tests of the pure parts.
//!

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::connection::RedisConnection;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::queues::SessionQueues;
use crate::{CqlConfig, Error, Result, epoch};

pub mod config;
mod fast;
mod segment;
#[cfg(test)]
mod tests;

pub use config::{GROWTH_MAX, SeqConfig, SerialMode};
pub use fast::{FAST_BATCH, FAST_BODY, FAST_LANES};
pub(crate) use segment::read_ceiling;
pub use segment::{INSTALL_LUA, insert_ceiling_cql, select_ceiling_cql, update_ceiling_cql};

use config::now_ms;
use fast::{Fast, Request};
use segment::{Ceiling, Reserve, SEGMENT_LOCKS, lock_index};

/// The counter of allocations by path (`fast`, `segment`, `recover`).
pub const ALLOCATIONS_METRIC: &str = crate::telemetry::SEQ_ALLOCATIONS;

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

/// Most rounds one allocation waits for other callers' segment reservations before giving up.
const WAIT_ROUNDS: u32 = 1024;

/// Allocates seqs: Redis fast path, CQL LWT segments, recovery after Redis loss. Cheap to clone
/// (clones share connections, statements and locks).
#[derive(Clone)]
pub struct SeqAllocator {
    inner: Arc<Inner>,
}

struct Inner {
    session: Arc<Session>,
    redis: RedisConnection,
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
    /// Segments reserved (LWTs applied).
    reservations: AtomicU64,
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
        redis: RedisConnection,
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
                reservations: AtomicU64::new(0),
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

    /// Segments reserved so far (CQL LWTs applied) by this allocator and its clones. Not the
    /// number of allocations on [`AllocPath::Segment`]: when several processes share a session, a
    /// segment one of them reserved can be used up by the others before its reserver asks again,
    /// and the reserver then reserves once more for the same allocation.
    pub fn reservations(&self) -> u64 {
        self.inner.reservations.load(Ordering::Relaxed)
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
                Fast::Missing => Slow::Missing,
                Fast::Exhausted { max, step, at_ms } => Slow::Exhausted { max, step, at_ms },
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
                Slow::Missing => match self
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
                Slow::Exhausted { max, step, at_ms } => {
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
    /// `requests`; duplicates get their first allocation back): through the session's fast-path
    /// lane, [`FAST_BATCH`] requests at a time — a call then also serves the turns of other
    /// sessions that queued meanwhile (one `EVALSHA` for many sessions) — and the
    /// single-request path for any that the fast path could not serve (segment used up, hash
    /// missing). Result `i` belongs to request `i`.
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
            let results = self.lane_call(session_id, chunk.to_vec()).await;
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
        segment::read_ceiling(&self.inner.session, &self.inner.select, session_id).await
    }
}

/// A session's seq hash as Redis holds it, read outside the scripts (a snapshot for operators:
/// `chatlog inspect session`; the allocator never trusts a value read this way).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashSnapshot {
    /// `cur`: the last seq handed out.
    pub cur: Option<i64>,
    /// `max`: the top of the segment installed (the fast path serves while `cur < max`).
    pub max: Option<i64>,
    /// `step`: the size of that segment.
    pub step: Option<i64>,
    /// `at`: when it was installed, ms since the Unix epoch.
    pub at_ms: Option<i64>,
    /// `ep`: the Redis epoch ([`crate::epoch`]) it was written in; the fast path serves only in
    /// that epoch.
    pub epoch: Option<String>,
    /// Milliseconds until the hash expires (idle TTL); `None` without one.
    pub ttl_ms: Option<i64>,
}

/// The seq hash of `session_id` ([`keys::seq`](crate::keys::seq)); `None` if Redis has none.
pub async fn read_hash<C: redis::aio::ConnectionLike + Send>(
    con: &mut C,
    session_id: &str,
) -> Result<Option<HashSnapshot>> {
    let key = crate::keys::seq(session_id);
    type Fields = (
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<String>,
    );
    let ((cur, max, step, at_ms, epoch), ttl): (Fields, i64) = redis::pipe()
        .cmd("HMGET")
        .arg(&key)
        .arg(&["cur", "max", "step", "at", epoch::SEQ_FIELD])
        .cmd("PTTL")
        .arg(&key)
        .query_async(con)
        .await
        .map_err(Error::redis("read the seq hash"))?;
    if ttl == -2 {
        return Ok(None);
    }
    Ok(Some(HashSnapshot {
        cur,
        max,
        step,
        at_ms,
        epoch,
        ttl_ms: (ttl >= 0).then_some(ttl),
    }))
}

/// What the slow path of an allocation acts on: the fast script's answers that are no seq.
enum Slow {
    /// No seq hash of this Redis lifetime: reserve a segment (first one or recovery).
    Missing,
    /// The hash's segment is used up: reserve the next one.
    Exhausted { max: i64, step: i64, at_ms: i64 },
}
