//! The history reader Logic calls: a session's messages from its Redis window first, from the CQL
//! `messages` table for whatever the window cannot answer, merged into one [`Page`].
//!
//! # Requests
//!
//! | call | returns | continue with |
//! |---|---|---|
//! | [`History::latest`]`(s, n)` | the newest `n` messages | [`History::before`]`(s, page.next)` |
//! | [`History::before`]`(s, x, limit)` | up to `limit` messages with `seq < x`, the newest of them (scroll back) | [`History::before`]`(s, page.next)` |
//! | [`History::after`]`(s, x, limit)` | up to `limit` messages with `seq > x`, the oldest of them (client sync) | [`History::after`]`(s, page.next)` |
//! | [`History::get`]`(s, seqs)` | the requested seqs that exist | — |
//!
//! Every page lists its messages in ascending seq. `limit`/`n` are capped at
//! [`HistoryConfig::max_limit`]; a capped page says so through [`Page::next`].
//!
//! # Covered range, `missing` and `pending`: the client contract
//!
//! Seqs are allocated per session before a message is produced and never reused, but not every seq
//! becomes a message: seq recovery after a Redis loss skips the rest of a reserved segment, and a
//! send that fails for good leaves its seq unused. A client that sees a hole must learn whether it
//! is permanent, or it asks again forever. So each page carries [`Page::covered`], a closed seq
//! range for which the page is *complete*: every seq in it is in exactly one of
//! - [`Page::messages`]: the message;
//! - [`Page::missing`]: **final** — the seq does not exist and never will; stop asking for it;
//! - [`Page::pending`]: the seq does not exist *yet*, but it is too recent to call final (a send
//!   still being retried, or one that a newer seq overtook: two Logic processes sending to one
//!   session, a produce retried after later seqs landed). Ask again once
//!   [`HistoryConfig::settle_horizon`] has passed: by then it is a message or `missing`.
//!
//! Gaps are listed as closed ranges, one per run of absent seqs, never seq by seq: a page of
//! `limit` messages has at most `limit + 1` gap ranges (for `get`, at most one per requested
//! seq), however far apart its messages are. A single seq of 10^15 above seq 3 is one range
//! `4..=10^15 - 1` (or the part of it the page covers), not an entry per absent seq.
//!
//! Seqs outside `covered` are not described by the page: above it they may still be written
//! (continue with `next`, or `after` later), below it they belong to the next page. For `get`,
//! `covered` describes the *requested* seqs in it only.
//!
//! A seq is a gap (`missing` or `pending`) only when it is proven absent:
//! - the table does not have it. A hole in the window is never taken for a gap on the window's
//!   word: it is confirmed against the table first (see below). And
//! - a message with a higher seq is known to exist (so the seq lies below the session's head), or
//!   the seq is below 1 (seqs start at 1, always `missing`).
//!
//! The second condition keeps seqs that are merely not written *yet* (allocated, still in Kafka)
//! out of both lists while they are above the newest message known. A gap's **age** is now minus
//! the `server_time_us` of the nearest existing message above it (that message is what proves the
//! gap lies below the head): younger than the settle horizon, the gap is `pending`; older,
//! `missing`. For a gap at the top of `covered` (and for the gaps of `get`) that message lies
//! outside the page: it is the first row above the gap if the table has one within a short look
//! (the bucket of the seq right above it; `K` buckets for `get`), else the nearest message known
//! above (the window's first member above it, or the head) — a later seq, so the gap can look
//! younger, never older.
//!
//! Ranges:
//! - `latest`: `[lo, head]` with `head` = the session's highest seq known (the window's newest
//!   member, else the newest row found in the table) and `lo` = the oldest message returned, or 1
//!   when the whole history was read.
//! - `before(x)`: `[lo, x - 1]` when a message `>= x` is known to exist (in the window, or row `x`
//!   itself, which the table read includes for this purpose), else `[lo, newest returned]`; `lo` as
//!   for `latest`.
//! - `after(x)`: `[x + 1, newest returned]`. Empty (`None`) when nothing newer than `x` exists.
//! - `get`: `[lowest requested, min(highest requested, head)]`; requested seqs above the head are in
//!   neither list (they may still be written).
//!
//! # When the window answers
//!
//! The window ([`crate::window`]) is a ZSET of the newest `W` members of a session, one member per
//! seq. The consumer writes every message of a session into its window, and the only removals are
//! trimming (which drops the *lowest* seqs) and expiry/deletion of the whole key; the window's
//! `max` is taken as the session's head. History reads the window first. The window *covers* a
//! request when it is non-empty and its lowest seq is `<=` the lowest seq the request needs:
//! - `latest(n)`: it holds `n` members, or its lowest member is seq 1;
//! - `before(x, limit)`: it holds `limit` members below `x`, or its lowest member is seq 1;
//! - `after(x, limit)`: its lowest member is `<= x + 1`;
//! - `get`: per seq, those that are members.
//!
//! Otherwise the table is read for the part below the window's lowest member (the window answers
//! the rest), and both are merged: deduplicated by seq, the higher `server_time_us` wins. When the
//! window is empty or unreadable (expired, `FLUSHALL`, Redis down, a member that does not decode)
//! the table answers alone: history degrades to the database, never to an error.
//!
//! **Holes.** The window is *not* trusted to be complete between its members, though the writer
//! keeps it so (an empty window, or one of another Redis epoch, is started only from the table's
//! newest rows; nothing is added below a window's lowest member): a window written before those
//! rules, or by a writer without them, after a Redis rollback (a restart from an old RDB/AOF, a
//! failover to a lagging replica) holds an older state with new messages above the old head:
//! `{1..100}` plus `{151..160}`, while 101..150 are in the table; a late old seq written by such a
//! writer makes `{150}` into `{120, 150}`. So every seq that a page's window
//! part lacks between its lowest member and the top of the request is a *hole*, and holes are read
//! from the table before anything is reported (`fill_holes`); rows found join the page (merge rules
//! as above; the page keeps its newest `limit` for `latest`/`before`, its oldest for `after`), the
//! rest are gaps. A request whose window part has no hole costs no query. The read is sized by the
//! request, never by the hole: per bucket that holds holes, one `seq IN` query for up to 100 hole
//! seqs, else one range read limited to the rows the page still has room for; the walk ends when
//! the page is full, or after `K` consecutive empty buckets ([`HistoryConfig::max_empty_buckets`])
//! — a long recovery gap then ends the page inside the gap, with `next` set there, exactly as a
//! table walk does. `get` reads its holes as it reads any seq the window lacks: one `seq IN` per
//! bucket, bounded by the request.
//!
//! A window whose *head* went back (Redis restarted from a snapshot or failed over to a lagging
//! replica, and the session has had no message since) looks complete and would answer `latest`
//! with an old head. So every window read runs, in the same `MULTI`, the epoch check
//! [`crate::window::TRUSTED_BODY`]: a window written in another epoch of Redis (or with no epoch)
//! is treated as absent and the table answers, until the consumer's next message restarts the
//! window in the current epoch. The check reads `master_replid` only; `run_id` is a literal of a
//! script loaded into that very Redis lifetime ([`crate::epoch::PinnedScript`]).
//!
//! # Reading the table
//!
//! Rows live in partitions `(session_id, bucket = seq / bucket_size)`. Reads walk buckets (newest
//! first for `latest`/`before`, oldest first for `after`) with paged prepared statements, each bucket
//! read limited to the rows still needed. Two walks need a bound:
//! - `latest` without a window must find the head. Its upper bound is the seq allocator's ceiling
//!   `session_seq.max_seq`, which is `>=` every seq ever handed out and at most one reserved segment
//!   above the head. Without a ceiling row (data written without the allocator) the highest
//!   non-empty bucket is probed, [`HistoryConfig::max_empty_buckets`] buckets at a time, in
//!   parallel, from bucket 0 up until a whole group is empty.
//! - Any descending walk stops after [`HistoryConfig::max_empty_buckets`] consecutive empty buckets
//!   (`K`). The page then covers what was scanned and sets [`Page::next`] below it, so the caller
//!   continues where the walk stopped; nothing is claimed about unscanned seqs. Choose
//!   `K > largest segment / bucket_size` so that a walk from the ceiling always reaches the head and
//!   a recovery gap never splits a page (default 16: segments up to 15 000 with buckets of 1000).
//! - An ascending walk without a window stops at the ceiling; without a ceiling row, after `K`
//!   consecutive empty buckets (then `next` is `None`: the walk cannot tell a long gap from the
//!   head, and a cursor must never skip seqs that may still be written).
//!
//! # Single-flight
//!
//! Identical concurrent requests (same session, same call, same arguments) run once: the first
//! registers a shared future, the others await it (counted by [`History::coalesced`]). A hot
//! session with a cold window thus costs one database read however many clients ask at once
//! ([`History::db_reads`]). A joiner may receive a result that started moments before its own call;
//! history is not read-your-writes anyway (writes reach the window through Kafka). The entry is
//! removed when the first waiter finishes, or when the last waiter is dropped.
//!
//! # No refill
//!
//! History never writes the window from the table, for three reasons:
//! 1. Refilling a range that does not reach the head (any `before`, or an old `latest` read racing
//!    with newer writes after a deletion) breaks the invariant above: a window `{1..50}` written
//!    into an empty key while the head is 300 would answer `latest` with 50, and `{100..150}` next to
//!    `{301..305}` would make 151..300 look like gaps. A refill of old seqs into a full window is
//!    merely useless: the Lua trims them again at once (it keeps the newest `W`).
//! 2. The table stores the v1 columns only. A member re-encoded from a row differs from the
//!    consumer's original bytes (written by a newer schema version, or by another encoder) at the
//!    *same* version, and the window Lua replaces a different member of equal version, so a refill
//!    could overwrite richer bytes with poorer ones.
//! 3. The consumer refills the window by itself with every new message, from the head down.
//!
//! # Metrics
//!
//! `chatlog_history_requests_total{op,source}`, `chatlog_history_request_duration_seconds{op}`,
//! `chatlog_history_db_reads_total`, `chatlog_history_db_queries_total`,
//! `chatlog_history_coalesced_total`, `chatlog_history_window_errors_total{reason}`,
//! `chatlog_history_window_hole_rows_total` (rows the table had in a window's holes: non-zero after
//! a Redis rollback or a late old seq, until the window is whole again).
//!
//! # Layout
//!
//! - `mod.rs`: [`History`], its public calls and metrics.
//! - `config`: [`HistoryConfig`].
//! - `page`: [`Page`], [`Source`] and the pure rules that build a page (gap runs, ageing, merge).
//! - `flight`: single-flight — identical concurrent requests run once.
//! - `requests`: the four requests (`latest`, `before`, `after`, `get`) and gap ageing.
//! - `window_reader`: `WindowReader`, the epoch-checked window reads (also the verifier's).
//! - `table_reader`: `TableReader`, the bucket walks and lookups of the table (also the
//!   verifier's).
//! - `holes`: confirming a window's holes against the table.
//! - `tests`: unit tests of the pure parts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chatlog_schemas::Codec;
use futures::FutureExt;
use scylla::client::session::Session;

pub mod config;
mod flight;
mod holes;
mod latest_batch;
mod page;
mod requests;
pub(crate) mod table_reader;
#[cfg(test)]
mod tests;
mod viewer;
pub(crate) mod window_reader;

pub use config::HistoryConfig;
pub use page::{Page, Source};
pub use viewer::Viewer;

use flight::{Flights, Request};
use table_reader::TableReader;
use window_reader::WindowReader;

use crate::hidden::HiddenMessages;
use crate::{CqlConfig, Error, RedisConnections, Result};

struct Inner {
    config: HistoryConfig,
    window: WindowReader,
    table: TableReader,
    hidden: HiddenMessages,
    flights: Flights,
    db_reads: AtomicU64,
}

/// The history reader: window first, CQL for the rest, identical concurrent requests coalesced.
/// Cheap to clone (one shared state).
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("config", &self.inner.config)
            .field("db_reads", &self.db_reads())
            .finish_non_exhaustive()
    }
}

impl History {
    /// Prepares the statements of `keyspace` and returns the reader. `redis` is the connection (or
    /// [`RedisConnections`], used in turn) the windows are read through; `codec` decodes window
    /// members.
    pub async fn new(
        session: Arc<Session>,
        keyspace: &str,
        redis: impl Into<RedisConnections>,
        codec: Codec,
        config: HistoryConfig,
    ) -> Result<History> {
        crate::telemetry::describe();
        CqlConfig {
            keyspace: keyspace.to_owned(),
            ..CqlConfig::default()
        }
        .validate()?;
        if config.bucket_size < 1 || config.max_limit < 1 || config.max_empty_buckets < 1 {
            return Err(Error::Config(
                "history: bucket_size, max_limit and max_empty_buckets must be >= 1".into(),
            ));
        }
        let table = TableReader::new(
            session.clone(),
            keyspace,
            config.bucket_size,
            config.max_empty_buckets,
        )
        .await?;
        let hidden = HiddenMessages::new(session.clone(), keyspace).await?;
        Ok(History {
            inner: Arc::new(Inner {
                window: WindowReader::new(redis.into(), codec),
                table,
                hidden,
                config,
                flights: Flights::new(crate::telemetry::HISTORY_COALESCED),
                db_reads: AtomicU64::new(0),
            }),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &HistoryConfig {
        &self.inner.config
    }

    /// Database reads so far: requests (after coalescing) that needed the table, each possibly
    /// several CQL statements. Also `chatlog_history_db_reads_total`.
    pub fn db_reads(&self) -> u64 {
        self.inner.db_reads.load(Ordering::Relaxed)
    }

    /// CQL statements executed so far (one per bucket read, probe or ceiling lookup). Also
    /// `chatlog_history_db_queries_total`.
    pub fn db_queries(&self) -> u64 {
        self.inner.table.db_queries()
    }

    /// Requests that joined an identical request already in flight instead of running. Also
    /// `chatlog_history_coalesced_total`.
    pub fn coalesced(&self) -> u64 {
        self.inner.flights.coalesced()
    }

    /// The newest `n` messages of `session_id` (capped at [`HistoryConfig::max_limit`]).
    /// Covered range `[lo, head]`; `next` continues with [`History::before`].
    pub async fn latest(&self, session_id: &str, n: usize) -> Result<Page> {
        self.run(
            session_id,
            Request::Latest(n.min(self.inner.config.max_limit)),
        )
        .await
    }

    /// Up to `limit` messages with `seq < before`, the newest of them (scroll back). Covered range
    /// `[lo, before - 1]` when a message `>= before` exists; `next` continues further back.
    pub async fn before(&self, session_id: &str, before: i64, limit: usize) -> Result<Page> {
        let limit = limit.min(self.inner.config.max_limit);
        self.run(session_id, Request::Before(before, limit)).await
    }

    /// Up to `limit` messages with `seq > after`, the oldest of them (client sync from its last
    /// seq; 0 = from the start). Covered range `[after + 1, newest returned]`; `next` continues.
    pub async fn after(&self, session_id: &str, after: i64, limit: usize) -> Result<Page> {
        let limit = limit.min(self.inner.config.max_limit);
        self.run(session_id, Request::After(after.max(0), limit))
            .await
    }

    /// The messages with the given seqs (any order, duplicates ignored). Requested seqs proven not
    /// to exist are in `missing` (or `pending` while younger than the settle horizon); those above
    /// the newest message known are in neither list. More
    /// than [`HistoryConfig::max_limit`] distinct seqs is an [`Error::Request`]: a page never holds
    /// more, and quietly answering part of the request would read as "the rest do not exist".
    pub async fn get(&self, session_id: &str, seqs: &[i64]) -> Result<Page> {
        let mut seqs = seqs.to_vec();
        seqs.sort_unstable();
        seqs.dedup();
        let max = self.inner.config.max_limit;
        if seqs.len() > max {
            return Err(Error::Request(format!(
                "history get: {} seqs asked, at most {max} (history.max_limit) per call",
                seqs.len()
            )));
        }
        self.run(session_id, Request::Get(seqs)).await
    }

    /// Runs `request`, or joins an identical one in flight.
    async fn run(&self, session_id: &str, request: Request) -> Result<Page> {
        let this = self.clone();
        let start = move |(sid, req): (String, Request)| {
            async move { this.execute(&sid, &req).await }.boxed()
        };
        self.inner
            .flights
            .run((session_id.to_owned(), request), start)
            .await
    }

    async fn execute(&self, session_id: &str, request: &Request) -> Result<Page> {
        let started = Instant::now();
        let page = match request {
            Request::Latest(n) => self.exec_latest(session_id, *n).await,
            Request::Before(x, limit) => self.exec_before(session_id, *x, *limit).await,
            Request::After(x, limit) => self.exec_after(session_id, *x, *limit).await,
            Request::Get(seqs) => self.exec_get(session_id, seqs).await,
        }?;
        let op = request.op();
        metrics::counter!(crate::telemetry::HISTORY_REQUESTS, "op" => op, "source" => page.source.as_str())
            .increment(1);
        metrics::histogram!(crate::telemetry::HISTORY_REQUEST_DURATION, "op" => op)
            .record(started.elapsed().as_secs_f64());
        Ok(page)
    }

    fn count_db_read(&self) {
        self.inner.db_reads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::HISTORY_DB_READS).increment(1);
    }

    /// The delete-for-me rows ([`viewer`](History::viewer) reads them).
    pub(crate) fn hidden(&self) -> &HiddenMessages {
        &self.inner.hidden
    }

    /// The window reader (the verifier reads the whole window through it).
    pub(crate) fn window_reader(&self) -> &WindowReader {
        &self.inner.window
    }

    /// The table reader (the verifier walks the table through it).
    pub(crate) fn table_reader(&self) -> &TableReader {
        &self.inner.table
    }
}
