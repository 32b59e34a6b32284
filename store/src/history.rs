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
//! **Holes.** The window is *not* trusted to be complete between its members. After a Redis
//! rollback (a restart from an old RDB/AOF, a failover to a lagging replica) the window restarts
//! from an older state and new messages land above the old head: `{1..100}` plus `{151..160}`,
//! while 101..150 are in the table. A late old seq (a DLQ replay, a rewind, a zombie writer) can
//! extend a short window downwards: `{150}` becomes `{120, 150}`. So every seq that a page's window
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

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chatlog_schemas::{ChatMessage, Codec};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use redis::aio::ConnectionManager;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use serde::Deserialize;

use crate::messages::{self, MessageRow};
use crate::window::{self, WindowConfig};
use crate::{CqlConfig, Error, RedisConnections, Result, keys};

/// Settings of the history reader.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// The window settings the consumer writes with (history only reads; `size` is the `W` that
    /// [`crate::verify::verify_window`] compares).
    pub window: WindowConfig,
    /// Rows per partition bucket; must equal the writer's
    /// [`BatchLimits::bucket_size`](crate::messages::BatchLimits::bucket_size).
    pub bucket_size: i64,
    /// `K`: a table walk stops after this many consecutive empty buckets (see the module docs).
    pub max_empty_buckets: u32,
    /// The largest `n`/`limit` served in one page; larger requests are capped (and say so through
    /// [`Page::next`]).
    pub max_limit: usize,
    /// The settle horizon: a gap is reported in [`Page::pending`] while the nearest existing
    /// message above it is younger than this (by its `server_time_us`), in [`Page::missing`]
    /// afterwards. Set it to at least the producer's `message_timeout` (30 s by default,
    /// librdkafka retries included) plus Logic's retry window: a seq whose send is still being
    /// retried must not be reported missing. Ages compare the reader's clock with the
    /// `server_time_us` Logic stamped, so leave a margin for clock skew between hosts. Default
    /// 60 s. Written like `"60s"`, `"2m"`.
    #[serde(with = "humantime_serde")]
    pub settle_horizon: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            window: WindowConfig::default(),
            bucket_size: messages::DEFAULT_BUCKET_SIZE,
            max_empty_buckets: 16,
            max_limit: 1000,
            settle_horizon: Duration::from_secs(60),
        }
    }
}

/// Where a page's messages came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The Redis window alone (no database read).
    Window,
    /// The database; the window contributed no message (empty, unreadable, or not overlapping).
    Database,
    /// Both: the window contributed messages and the database the rest.
    Both,
}

impl Source {
    /// The metric label of this source.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Window => "window",
            Source::Database => "database",
            Source::Both => "both",
        }
    }
}

/// One answer of [`History`]. See the module docs for the exact meaning of `covered`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The messages, ascending seq, one per seq.
    pub messages: Vec<ChatMessage>,
    /// Seqs inside [`covered`](Page::covered) that do not exist and never will (never written,
    /// e.g. gaps left by seq recovery), as closed ranges, ascending, disjoint and never adjacent.
    /// Final: a client can stop asking for them. At most one range per hole between the page's
    /// messages (`limit + 1`), whatever the holes' lengths.
    pub missing: Vec<RangeInclusive<i64>>,
    /// Seqs inside [`covered`](Page::covered) that do not exist *yet*: gaps younger than
    /// [`HistoryConfig::settle_horizon`] (a send still being retried, or overtaken by a newer
    /// seq), as closed ranges like `missing`, disjoint from it. Ask again once the horizon has
    /// passed; each becomes a message or moves to `missing`.
    pub pending: Vec<RangeInclusive<i64>>,
    /// The closed seq range this page is complete for: each seq in it is in exactly one of
    /// `messages`, `missing` and `pending` (for [`History::get`]: each *requested* seq in it).
    /// `None` when nothing is proven.
    pub covered: Option<RangeInclusive<i64>>,
    /// Where the messages came from.
    pub source: Source,
    /// The cursor of the next page in the same direction, `None` when there is nothing more now:
    /// pass it as `seq` to [`History::before`] (after `latest`/`before`) or [`History::after`]
    /// (after `after`). Always `None` for `get`.
    pub next: Option<i64>,
}

impl Page {
    fn empty(source: Source) -> Page {
        Page {
            messages: Vec::new(),
            missing: Vec::new(),
            pending: Vec::new(),
            covered: None,
            source,
            next: None,
        }
    }

    /// Whether another page may follow in the same direction (`next.is_some()`).
    pub fn has_more(&self) -> bool {
        self.next.is_some()
    }

    /// The seqs of the messages, ascending.
    pub fn seqs(&self) -> Vec<i64> {
        self.messages.iter().map(|m| m.seq).collect()
    }

    /// Every seq of [`missing`](Page::missing), one by one. A range may be long (a recovery gap
    /// holds up to a segment of seqs, a foreign seq far above the head many more): for tools and
    /// tests that know their sessions; clients should keep the ranges.
    pub fn missing_seqs(&self) -> impl Iterator<Item = i64> + '_ {
        self.missing.iter().flat_map(|r| r.clone())
    }

    /// Every seq of [`pending`](Page::pending), one by one (see [`missing_seqs`](Page::missing_seqs)).
    pub fn pending_seqs(&self) -> impl Iterator<Item = i64> + '_ {
        self.pending.iter().flat_map(|r| r.clone())
    }
}

/// Ascending seqs as closed ranges, consecutive seqs joined (for `get`, whose gaps are the
/// requested seqs themselves).
fn ranges_of(seqs: impl IntoIterator<Item = i64>) -> Vec<RangeInclusive<i64>> {
    let mut out: Vec<RangeInclusive<i64>> = Vec::new();
    for s in seqs {
        match out.last_mut() {
            Some(r) if r.end().checked_add(1) == Some(s) => *r = *r.start()..=s,
            _ => out.push(s..=s),
        }
    }
    out
}

/// A page before its gaps are sorted into `missing` and `pending` ([`History::finish`]).
struct Draft {
    /// Ascending, one per seq.
    messages: Vec<ChatMessage>,
    /// The range the page is complete for, if any (`lo > hi`: none).
    covered: Option<(i64, i64)>,
    source: Source,
    next: Option<i64>,
    /// The nearest message known above the top of `covered` as (seq, `server_time_us`), when
    /// that top is not a message of the page (e.g. `before(x)`: the message at or above `x`). A
    /// gap at the top is aged by the first row between the two, or by this one.
    above: Option<(i64, i64)>,
}

impl Draft {
    fn new(
        messages: Vec<ChatMessage>,
        covered: (i64, i64),
        source: Source,
        next: Option<i64>,
    ) -> Draft {
        Draft {
            messages,
            covered: Some(covered),
            source,
            next,
            above: None,
        }
    }
}

/// The maximal runs `(a, b)` of seqs of `lo..=hi` that no message in `messages` (ascending) has,
/// ascending. At most `messages.len() + 1` runs, whatever their lengths.
fn runs_in(messages: &[ChatMessage], lo: i64, hi: i64) -> Vec<(i64, i64)> {
    let mut runs = Vec::new();
    let mut next = lo;
    for m in messages {
        if m.seq < next {
            continue;
        }
        if m.seq > hi {
            break;
        }
        if m.seq > next {
            runs.push((next, m.seq - 1));
        }
        match m.seq.checked_add(1) {
            Some(n) => next = n,
            None => return runs,
        }
    }
    if next <= hi {
        runs.push((next, hi));
    }
    runs
}

/// Whether a gap whose nearest message above was stored at `above_us` is still young at `now_us`.
/// Unknown (`None`): young, since nothing proves it old.
fn young(above_us: Option<i64>, now_us: i64, horizon_us: i64) -> bool {
    above_us.is_none_or(|t| now_us.saturating_sub(t) < horizon_us)
}

/// Sorts the gaps of `lo..=hi` in `messages` (ascending) into (missing, pending), one range per
/// run. A run of absent seqs is aged by the message right above it; the top run (ending at `hi`)
/// by `top_us`.
fn classify(
    messages: &[ChatMessage],
    runs: &[(i64, i64)],
    top_us: Option<i64>,
    now_us: i64,
    horizon_us: i64,
) -> (Vec<RangeInclusive<i64>>, Vec<RangeInclusive<i64>>) {
    let (mut missing, mut pending) = (Vec::new(), Vec::new());
    for &(a, b) in runs {
        let i = messages.partition_point(|m| m.seq <= b);
        let above = match messages.get(i) {
            Some(m) => Some(m.server_time_us),
            None => top_us,
        };
        let list = if young(above, now_us, horizon_us) {
            &mut pending
        } else {
            &mut missing
        };
        list.push(a..=b);
    }
    (missing, pending)
}

/// Now as microseconds since the Unix epoch (the unit of `server_time_us`).
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Merges window messages and table rows: one message per seq, ascending; when both have a seq
/// the higher `server_time_us` wins (the window on a tie).
fn merge(
    window: impl IntoIterator<Item = ChatMessage>,
    rows: impl IntoIterator<Item = ChatMessage>,
) -> Vec<ChatMessage> {
    let mut by_seq: BTreeMap<i64, ChatMessage> = BTreeMap::new();
    for m in rows {
        keep_newer(&mut by_seq, m);
    }
    for m in window {
        if by_seq
            .get(&m.seq)
            .is_none_or(|old| m.server_time_us >= old.server_time_us)
        {
            by_seq.insert(m.seq, m);
        }
    }
    by_seq.into_values().collect()
}

fn keep_newer(by_seq: &mut BTreeMap<i64, ChatMessage>, m: ChatMessage) {
    if by_seq
        .get(&m.seq)
        .is_none_or(|old| m.server_time_us > old.server_time_us)
    {
        by_seq.insert(m.seq, m);
    }
}

/// One request as the single-flight map keys it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Request {
    Latest(usize),
    Before(i64, usize),
    After(i64, usize),
    Get(Vec<i64>),
}

impl Request {
    fn op(&self) -> &'static str {
        match self {
            Request::Latest(_) => "latest",
            Request::Before(..) => "before",
            Request::After(..) => "after",
            Request::Get(_) => "get",
        }
    }
}

/// A request in flight. The page is behind an `Arc` so that waking a waiter clones a pointer, not
/// the page: `Shared` clones its output for every waiter while another handle (the map's) exists,
/// which for a 50-message page was ~10 % of a window read's CPU.
type Flight = Shared<BoxFuture<'static, Result<Arc<Page>>>>;

/// A message decoded from a window member.
#[derive(Debug, Clone)]
pub(crate) struct WindowMember {
    /// The score.
    pub(crate) seq: i64,
    /// The member's version prefix.
    pub(crate) version: i64,
    /// The decoded message, or why it does not decode.
    pub(crate) message: std::result::Result<ChatMessage, String>,
}

/// A consistent snapshot of the part of a window a request needs.
struct WindowView {
    /// Lowest seq in the window (for `latest(n)`: the lowest seq read, which is the window's
    /// lowest whenever the window holds fewer than `n` members — the only case `latest` uses it).
    min: i64,
    /// Highest seq in the window (the session's head).
    max: i64,
    /// The `server_time_us` of the member at `min` (its version prefix).
    min_time: i64,
    /// The `server_time_us` of the member at `max`.
    max_time: i64,
    /// The members the request asked for, ascending.
    members: Vec<ChatMessage>,
}

/// What a window read asks for, besides the window's bounds.
enum WindowQuery<'a> {
    Latest(usize),
    Before(i64, usize),
    After(i64, usize),
    Get(&'a [i64]),
}

/// A descending table walk.
#[derive(Debug, Default)]
pub(crate) struct DescScan {
    /// Rows found, descending seq.
    pub(crate) rows: Vec<ChatMessage>,
    /// The walk stopped because it found `limit` rows.
    pub(crate) limited: bool,
    /// The walk read everything down to seq 1.
    pub(crate) complete: bool,
    /// The lowest seq the walk has covered (rows below it are unknown unless `complete`).
    pub(crate) bottom: i64,
}

impl DescScan {
    /// The lower end of what this walk proves, and the `before` cursor below it.
    fn lower(&self) -> (i64, Option<i64>) {
        let lo = if self.limited {
            self.rows.last().map_or(self.bottom, |m| m.seq)
        } else if self.complete {
            1
        } else {
            self.bottom
        };
        let next = (!self.complete || self.limited)
            .then_some(lo)
            .filter(|&s| s > 1);
        (lo, next)
    }
}

/// An ascending table walk.
#[derive(Debug, Default)]
pub(crate) struct AscScan {
    /// Rows found, ascending seq.
    pub(crate) rows: Vec<ChatMessage>,
    /// The walk stopped because it found `limit` rows.
    pub(crate) limited: bool,
}

/// Hole seqs of one bucket up to which [`History::fill_holes`] reads them with one `seq IN` query
/// (exactly those seqs); more are read with one range query across them.
const HOLE_IN_MAX: i64 = 100;

/// A window's members with their holes confirmed against the table ([`History::fill_holes`]).
struct Filled {
    /// Members and the rows found in their holes, ascending, at most the request's `limit`.
    messages: Vec<ChatMessage>,
    /// Where the proven range ends on the walked side: the lowest proven seq for `Desc`, the
    /// highest for `Asc`. The request's own end unless `stopped`.
    bound: i64,
    /// The page is full (`limit` messages) or the walk stopped early: the page ends at `bound`.
    stopped: bool,
    /// Whether the table was read.
    read: bool,
    /// For an ascending walk that stopped inside a hole: the member right above the hole, which
    /// ages the gap at the top of the page ([`Draft::above`]).
    above: Option<(i64, i64)>,
}

impl Filled {
    /// Keeps the first `limit` messages in walk order (the newest for `Desc`); a page cut that
    /// way, or one holding exactly `limit`, ends at its last kept message.
    fn cap(
        mut messages: Vec<ChatMessage>,
        mut bound: i64,
        mut stopped: bool,
        limit: usize,
        order: Order,
    ) -> Filled {
        if limit > 0 && messages.len() >= limit {
            let edge = match order {
                Order::Desc => {
                    messages.drain(..messages.len() - limit);
                    messages.first()
                }
                Order::Asc => {
                    messages.truncate(limit);
                    messages.last()
                }
            };
            if let Some(m) = edge {
                bound = m.seq;
                stopped = true;
            }
        }
        Filled {
            messages,
            bound,
            stopped,
            read: false,
            above: None,
        }
    }
}

#[derive(Clone, Copy)]
enum Order {
    Asc,
    Desc,
}

struct Statements {
    range_desc: PreparedStatement,
    range_asc: PreparedStatement,
    seqs: PreparedStatement,
    bucket_max: PreparedStatement,
    session_max: PreparedStatement,
}

struct Inner {
    session: Arc<Session>,
    redis: RedisConnections,
    codec: Codec,
    config: HistoryConfig,
    statements: Statements,
    inflight: Mutex<HashMap<(String, Request), (u64, Flight)>>,
    flight_ids: AtomicU64,
    db_reads: AtomicU64,
    db_queries: AtomicU64,
    coalesced: AtomicU64,
    /// The window-epoch check ([`window::TRUSTED_BODY`]), pinned to the Redis lifetime last seen.
    trusted: crate::epoch::PinnedScript,
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

/// Removes a single-flight entry when its first waiter finishes or its last waiter goes away.
struct FlightGuard<'a> {
    inner: &'a Inner,
    key: Option<(String, Request)>,
    id: u64,
    /// This waiter's clone of the flight: awaited through the guard, so it lives exactly as long.
    flight: Flight,
    finished: bool,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut map = lock(&self.inner.inflight);
        let Some((id, flight)) = map.get(&key) else {
            return;
        };
        // The map holds one clone and this waiter another (`self.flight`, dropped after this
        // body), so 2 means nobody else waits.
        if *id == self.id && (self.finished || flight.strong_count().is_none_or(|n| n <= 2)) {
            map.remove(&key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn prepare_err(what: &'static str) -> impl FnOnce(scylla::errors::PrepareError) -> Error {
    move |e| Error::cql(format!("prepare {what}"), e)
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
        let prepare = |cql: String, what: &'static str| {
            let session = session.clone();
            async move {
                let mut s = session.prepare(cql).await.map_err(prepare_err(what))?;
                s.set_is_idempotent(true);
                Ok::<_, Error>(s)
            }
        };
        let statements = Statements {
            range_desc: prepare(messages::select_range_desc_cql(keyspace), "range desc").await?,
            range_asc: prepare(messages::select_range_asc_cql(keyspace), "range asc").await?,
            seqs: prepare(messages::select_seqs_cql(keyspace), "seqs").await?,
            bucket_max: prepare(messages::select_bucket_max_seq_cql(keyspace), "bucket max")
                .await?,
            session_max: prepare(messages::select_session_max_seq_cql(keyspace), "ceiling").await?,
        };
        Ok(History {
            inner: Arc::new(Inner {
                session,
                redis: redis.into(),
                codec,
                config,
                statements,
                inflight: Mutex::new(HashMap::new()),
                flight_ids: AtomicU64::new(0),
                db_reads: AtomicU64::new(0),
                db_queries: AtomicU64::new(0),
                coalesced: AtomicU64::new(0),
                trusted: crate::epoch::PinnedScript::new(
                    window::TRUSTED_BODY,
                    "window epoch check",
                ),
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
        self.inner.db_queries.load(Ordering::Relaxed)
    }

    /// Requests that joined an identical request already in flight instead of running. Also
    /// `chatlog_history_coalesced_total`.
    pub fn coalesced(&self) -> u64 {
        self.inner.coalesced.load(Ordering::Relaxed)
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
        let key = (session_id.to_owned(), request);
        let (id, flight, joined) = {
            let mut map = lock(&self.inner.inflight);
            match map.get(&key) {
                Some((id, flight)) => (*id, flight.clone(), true),
                None => {
                    let id = self.inner.flight_ids.fetch_add(1, Ordering::Relaxed);
                    let this = self.clone();
                    let (sid, req) = key.clone();
                    let flight: Flight =
                        async move { this.execute(&sid, &req).await.map(Arc::new) }
                            .boxed()
                            .shared();
                    map.insert(key.clone(), (id, flight.clone()));
                    (id, flight, false)
                }
            }
        };
        if joined {
            self.inner.coalesced.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("chatlog_history_coalesced_total").increment(1);
        }
        let mut guard = FlightGuard {
            inner: &self.inner,
            key: Some(key),
            id,
            flight,
            finished: false,
        };
        let out = (&mut guard.flight).await;
        guard.finished = true;
        // Dropping the guard drops the map's handle and ours, and with them the flight's copy of
        // the page: a lone waiter then owns the page and takes it without a copy.
        drop(guard);
        // Every waiter gets the same error (`Error` is `Clone`).
        out.map(|page| Arc::try_unwrap(page).unwrap_or_else(|shared| (*shared).clone()))
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
        metrics::counter!("chatlog_history_requests_total", "op" => op, "source" => page.source.as_str())
            .increment(1);
        metrics::histogram!("chatlog_history_request_duration_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
        Ok(page)
    }

    fn count_db_read(&self) {
        self.inner.db_reads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("chatlog_history_db_reads_total").increment(1);
    }

    async fn exec_latest(&self, sid: &str, n: usize) -> Result<Page> {
        if n == 0 {
            return Ok(Page::empty(Source::Window));
        }
        let draft = match self.read_window(sid, WindowQuery::Latest(n)).await {
            // The window's newest n (or all of it, when it holds fewer), trusted up to its head.
            Some(w) => {
                self.desc_from_window(sid, w.members, w.min, w.max, n)
                    .await?
            }
            None => {
                self.count_db_read();
                let Some(bound) = self.head_bound(sid).await? else {
                    return Ok(Page::empty(Source::Database));
                };
                let scan = self.scan_desc(sid, bound, n).await?;
                desc_page(scan, None)
            }
        };
        self.finish(sid, draft).await
    }

    async fn exec_before(&self, sid: &str, x: i64, limit: usize) -> Result<Page> {
        if x <= 1 || limit == 0 {
            return Ok(Page::empty(Source::Window));
        }
        let draft = match self.read_window(sid, WindowQuery::Before(x, limit)).await {
            Some(w) if w.min < x => {
                // The window has members below x (at least its lowest one).
                let hi = if w.max >= x { x - 1 } else { w.max };
                let mut draft = self
                    .desc_from_window(sid, w.members, w.min, hi, limit)
                    .await?;
                // x - 1 is a gap (rare: a cursor is the lowest seq of a page): its age is that of
                // the nearest message above it, the window's first member at or above x unless the
                // table has a nearer one.
                if w.max >= x && draft.messages.last().is_none_or(|m| m.seq < hi) {
                    draft.above = Some(
                        self.window_member_from(sid, x)
                            .await
                            .unwrap_or((w.max, w.max_time)),
                    );
                }
                draft
            }
            Some(w) => {
                // The whole window is at or above x: it proves that x - 1 is below the head.
                self.count_db_read();
                let scan = self.scan_desc(sid, x - 1, limit).await?;
                let mut draft = desc_page(scan, Some(x - 1));
                draft.above = Some((w.min, w.min_time));
                draft
            }
            None => {
                self.count_db_read();
                // Include x itself: if it exists, everything below it is below the head.
                let mut scan = self.scan_desc(sid, x, limit + 1).await?;
                let x_exists = scan.rows.first().is_some_and(|m| m.seq == x);
                let above = if x_exists {
                    let row_x = scan.rows.remove(0);
                    Some((x, row_x.server_time_us))
                } else {
                    scan.rows.truncate(limit);
                    None
                };
                let mut draft = desc_page(scan, x_exists.then_some(x - 1));
                draft.above = above;
                draft
            }
        };
        self.finish(sid, draft).await
    }

    /// The descending page (`latest`, `before`) of a window read: `members` are the window's
    /// newest members at or below `hi` (at most `limit`; all of them when fewer), `wmin` the
    /// window's lowest member. The window's holes between the lowest member and `hi` are confirmed
    /// against the table first; when that leaves room and the window does not start at seq 1, the
    /// table continues below `wmin`.
    async fn desc_from_window(
        &self,
        sid: &str,
        members: Vec<ChatMessage>,
        wmin: i64,
        hi: i64,
        limit: usize,
    ) -> Result<Draft> {
        let first = members.first().map_or(wmin, |m| m.seq);
        let filled = self
            .fill_holes(sid, members, first, hi, limit, Order::Desc)
            .await?;
        let source = if filled.read {
            Source::Both
        } else {
            Source::Window
        };
        if filled.stopped || wmin <= 1 {
            if filled.read {
                self.count_db_read();
            }
            // Stopped: the page ends at the bound. Otherwise the window, holes confirmed, holds the
            // whole history up to `hi` (it starts at seq 1).
            let lo = if filled.stopped { filled.bound } else { 1 };
            let next = Some(lo).filter(|&s| s > 1);
            return Ok(Draft::new(filled.messages, (lo, hi), source, next));
        }
        self.count_db_read();
        let scan = self
            .scan_desc(sid, wmin - 1, limit - filled.messages.len())
            .await?;
        let (lo, next) = scan.lower();
        let messages = merge(filled.messages, scan.rows);
        Ok(Draft::new(messages, (lo, hi), Source::Both, next))
    }

    async fn exec_after(&self, sid: &str, x: i64, limit: usize) -> Result<Page> {
        if limit == 0 {
            return Ok(Page::empty(Source::Window));
        }
        let lo = x.saturating_add(1);
        let draft = match self.read_window(sid, WindowQuery::After(x, limit)).await {
            Some(w) if w.min <= lo => {
                let Some(hi) = w.members.last().map(|m| m.seq) else {
                    return Ok(Page::empty(Source::Window));
                };
                let filled = self
                    .fill_holes(sid, w.members, lo, hi, limit, Order::Asc)
                    .await?;
                let source = if filled.read {
                    self.count_db_read();
                    Source::Both
                } else {
                    Source::Window
                };
                let next = Some(filled.bound).filter(|&h| h < w.max);
                let mut draft = Draft::new(filled.messages, (lo, filled.bound), source, next);
                draft.above = filled.above;
                draft
            }
            Some(w) => {
                self.count_db_read();
                let scan = self.scan_asc(sid, lo, Some(w.min - 1), limit).await?;
                if scan.limited {
                    let hi = scan.rows.last().map_or(lo, |m| m.seq);
                    Draft::new(scan.rows, (lo, hi), Source::Database, Some(hi))
                } else {
                    let take = limit - scan.rows.len();
                    let from_window: Vec<ChatMessage> = w.members.into_iter().take(take).collect();
                    let (source, hi, from_window, above) = match from_window.last().map(|m| m.seq) {
                        Some(top) => {
                            let filled = self
                                .fill_holes(sid, from_window, w.min, top, take, Order::Asc)
                                .await?;
                            (
                                Source::Both,
                                Some(filled.bound),
                                filled.messages,
                                filled.above,
                            )
                        }
                        None => (
                            Source::Database,
                            scan.rows.last().map(|m| m.seq),
                            Vec::new(),
                            None,
                        ),
                    };
                    let Some(hi) = hi else {
                        return Ok(Page::empty(source));
                    };
                    let messages = merge(from_window, scan.rows);
                    let next = Some(hi).filter(|&h| h < w.max);
                    let mut draft = Draft::new(messages, (lo, hi), source, next);
                    draft.above = above;
                    draft
                }
            }
            None => {
                self.count_db_read();
                let ceiling = self.ceiling(sid).await?;
                if ceiling.is_some_and(|c| c < lo) {
                    return Ok(Page::empty(Source::Database));
                }
                let scan = self.scan_asc(sid, lo, ceiling, limit).await?;
                let Some(hi) = scan.rows.last().map(|m| m.seq) else {
                    return Ok(Page::empty(Source::Database));
                };
                let next = scan.limited.then_some(hi);
                Draft::new(scan.rows, (lo, hi), Source::Database, next)
            }
        };
        self.finish(sid, draft).await
    }

    async fn exec_get(&self, sid: &str, seqs: &[i64]) -> Result<Page> {
        let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
            return Ok(Page::empty(Source::Window));
        };
        let valid: Vec<i64> = seqs.iter().copied().filter(|&s| s >= 1).collect();
        let mut found: BTreeMap<i64, ChatMessage> = BTreeMap::new();
        // Seqs below 1 never exist, whatever their age.
        let mut missing: Vec<i64> = seqs.iter().copied().filter(|&s| s < 1).collect();
        // The newest message known, (seq, server_time_us).
        let mut head: Option<(i64, i64)> = None;
        let mut to_db = Vec::new();
        let mut from_window = false;
        let window = if valid.is_empty() {
            None
        } else {
            self.read_window(sid, WindowQuery::Get(&valid)).await
        };
        match window {
            Some(w) => {
                head = Some((w.max, w.max_time));
                let mut members: BTreeMap<i64, ChatMessage> =
                    w.members.into_iter().map(|m| (m.seq, m)).collect();
                for &s in &valid {
                    match members.remove(&s) {
                        Some(m) => {
                            found.insert(s, m);
                            from_window = true;
                        }
                        // Below the window, above it, or a hole in it: the table decides.
                        None => to_db.push(s),
                    }
                }
            }
            None => to_db = valid,
        }
        let window_known = head.is_some();
        let mut gaps = Vec::new();
        let source = if to_db.is_empty() {
            Source::Window
        } else {
            self.count_db_read();
            for m in self.lookup(sid, &to_db).await? {
                keep_newer(&mut found, m);
            }
            if let Some((&s, m)) = found.last_key_value()
                && head.is_none_or(|(h, _)| s > h)
            {
                head = Some((s, m.server_time_us));
            }
            // Without a window, the head decides which unfound seqs are gaps: look it up only
            // when some unfound seq lies above every row found.
            let head_seq = head.map_or(0, |(h, _)| h);
            if !window_known
                && to_db
                    .iter()
                    .any(|s| *s > head_seq && !found.contains_key(s))
                && let Some(h) = self.find_head(sid).await?
                && h.0 > head_seq
            {
                head = Some(h);
            }
            let head_seq = head.map_or(0, |(h, _)| h);
            gaps.extend(
                to_db
                    .iter()
                    .copied()
                    .filter(|s| *s < head_seq && !found.contains_key(s)),
            );
            if from_window {
                Source::Both
            } else {
                Source::Database
            }
        };
        let (gap_missing, pending) = self
            .age_gaps(sid, &gaps, &found, head, window_known)
            .await?;
        missing.extend(gap_missing);
        missing.sort_unstable();
        let hi = last.min(head.map_or(0, |(h, _)| h));
        Ok(Page {
            messages: found.into_values().collect(),
            missing: ranges_of(missing),
            pending: ranges_of(pending),
            covered: (first <= hi).then_some(first..=hi),
            source,
            next: None,
        })
    }

    /// Sorts the gaps of a `get` (ascending, each below `head`) into (missing, pending), each
    /// aged by the nearest existing message above it: the nearest of `found`, `head` and the
    /// first row the table has between the gap and them (looked for in `K` buckets). When that
    /// look finds nothing and there is a window, its first member above the gap stands in for the
    /// head: a fixed message, where the head moves on with every new one and would keep an old
    /// gap of a busy session pending.
    async fn age_gaps(
        &self,
        sid: &str,
        gaps: &[i64],
        found: &BTreeMap<i64, ChatMessage>,
        head: Option<(i64, i64)>,
        window: bool,
    ) -> Result<(Vec<i64>, Vec<i64>)> {
        let (mut missing, mut pending) = (Vec::new(), Vec::new());
        if gaps.is_empty() {
            return Ok((missing, pending));
        }
        let (now, horizon) = (now_us(), self.horizon_us());
        // Walking down: the nearest message known above the current gap, and the lowest seq from
        // which up to it the table is known to hold nothing.
        let k = self.inner.config.max_empty_buckets;
        let mut nearest = head;
        let mut clear_from = head.map_or(i64::MAX, |(h, _)| h);
        for &s in gaps.iter().rev() {
            if let Some((&k, m)) = found.range(s.saturating_add(1)..).next()
                && nearest.is_none_or(|(n, _)| k < n)
            {
                nearest = Some((k, m.server_time_us));
                clear_from = k;
            }
            let top = clear_from.min(nearest.map_or(i64::MAX, |(n, _)| n)) - 1;
            if s < top {
                match self.first_row(sid, s + 1, top, k).await? {
                    Some(row) => nearest = Some(row),
                    None if window => {
                        if let Some(member) = self.window_member_from(sid, s + 1).await
                            && nearest.is_none_or(|(n, _)| member.0 < n)
                        {
                            nearest = Some(member);
                        }
                    }
                    None => {}
                }
            }
            clear_from = s;
            if young(nearest.map(|(_, t)| t), now, horizon) {
                pending.push(s);
            } else {
                missing.push(s);
            }
        }
        missing.reverse();
        pending.reverse();
        Ok((missing, pending))
    }

    fn horizon_us(&self) -> i64 {
        i64::try_from(self.inner.config.settle_horizon.as_micros()).unwrap_or(i64::MAX)
    }

    /// Turns a draft into the page: its gaps, aged against the settle horizon, become `missing`
    /// or `pending`. A gap at the top of the covered range is aged by the first row above it
    /// (looked up in the next bucket only, below `draft.above`), else by `draft.above`.
    async fn finish(&self, sid: &str, draft: Draft) -> Result<Page> {
        let Draft {
            messages,
            covered,
            source,
            next,
            above,
        } = draft;
        let Some((lo, hi)) = covered.filter(|(lo, hi)| lo <= hi) else {
            return Ok(Page {
                messages,
                next,
                ..Page::empty(source)
            });
        };
        let runs = runs_in(&messages, lo, hi);
        let top_us = match runs.last() {
            Some(&(_, b)) if b == hi => match above {
                Some((k, t)) if k == hi + 1 => Some(t),
                Some((k, t)) => Some(
                    self.first_row(sid, hi.saturating_add(1), k - 1, 1)
                        .await?
                        .map_or(t, |(_, found)| found),
                ),
                None => None,
            },
            _ => None,
        };
        let (missing, pending) = classify(&messages, &runs, top_us, now_us(), self.horizon_us());
        Ok(Page {
            messages,
            missing,
            pending,
            covered: Some(lo..=hi),
            source,
            next,
        })
    }

    /// Confirms the holes a window read left between `lo` and `hi` against the table and adds
    /// the rows found to `members` (ascending, from the window, at most `limit`).
    ///
    /// The walk goes in `order` (`Desc` from `hi` for `latest`/`before`, `Asc` from `lo` for
    /// `after`) and reads only buckets that hold a hole: one `seq IN` query for the hole seqs of
    /// a bucket when they are at most [`HOLE_IN_MAX`], else one range read across them limited
    /// to the rows the page still has room for. It stops as soon as the page holds `limit`
    /// messages on the walked side, or after `K` consecutive bucket reads that found nothing in
    /// buckets without a member (a hole longer than the walk may go: the page ends there, as a
    /// table walk's does). No hole: no query.
    async fn fill_holes(
        &self,
        sid: &str,
        members: Vec<ChatMessage>,
        lo: i64,
        hi: i64,
        limit: usize,
        order: Order,
    ) -> Result<Filled> {
        let desc = matches!(order, Order::Desc);
        let mut runs = runs_in(&members, lo, hi);
        let bound = if desc { lo } else { hi };
        if runs.is_empty() || limit == 0 {
            return Ok(Filled::cap(members, bound, false, limit, order));
        }
        if desc {
            runs.reverse();
        }
        let bs = self.inner.config.bucket_size;
        let k = self.inner.config.max_empty_buckets;
        let is_member = |s: i64| members.binary_search_by_key(&s, |m| m.seq).is_ok();
        let count_in = |a: i64, b: i64| {
            members.partition_point(|m| m.seq <= b) - members.partition_point(|m| m.seq < a)
        };
        let mut found: Vec<ChatMessage> = Vec::new();
        let mut found_new = 0usize;
        let mut empties = 0u32;
        let mut cut = None;
        // The part of run `i` still to read, in walk order.
        let mut cursor = runs.first().map(|&(a, b)| (0usize, a, b));
        while let Some((ri, ra, rb)) = cursor.take() {
            let bucket = messages::bucket_of(if desc { rb } else { ra }, bs);
            let start = bucket.saturating_mul(bs);
            let end = start.saturating_add(bs - 1);
            // The holes of this bucket, in walk order.
            let mut segs: Vec<(i64, i64)> = Vec::new();
            let mut holes = 0i64;
            let (mut i, mut a, mut b) = (ri, ra, rb);
            loop {
                let (sa, sb) = (a.max(start), b.min(end));
                if sa > sb {
                    cursor = Some((i, a, b));
                    break;
                }
                segs.push((sa, sb));
                holes = holes.saturating_add(sb - sa + 1);
                if desc && a < start {
                    cursor = Some((i, a, start - 1));
                    break;
                }
                if !desc && b > end {
                    cursor = Some((i, end + 1, b));
                    break;
                }
                i += 1;
                match runs.get(i) {
                    Some(&(na, nb)) => (a, b) = (na, nb),
                    None => break,
                }
            }
            let (span_lo, span_hi) = match (segs.first(), segs.last()) {
                (Some(&(fa, fb)), Some(&(la, lb))) => {
                    if desc {
                        (la, fb)
                    } else {
                        (fa, lb)
                    }
                }
                _ => break,
            };
            // Messages the page already holds on the walked side of this bucket's holes.
            let passed = if desc {
                count_in(span_hi.saturating_add(1), i64::MAX)
            } else {
                count_in(i64::MIN, span_lo - 1)
            } + found_new;
            if passed >= limit {
                break;
            }
            let want = limit - passed;
            let rows = if holes <= HOLE_IN_MAX {
                let seqs: Vec<i64> = segs.iter().flat_map(|&(a, b)| a..=b).collect();
                self.lookup_bucket(sid, bucket, seqs).await?
            } else {
                let room = want.saturating_add(count_in(span_lo, span_hi));
                self.range(order, sid, bucket, span_lo, span_hi, room)
                    .await?
            };
            empties = if rows.is_empty() && count_in(start, end) == 0 {
                empties + 1
            } else {
                0
            };
            found_new += rows.iter().filter(|m| !is_member(m.seq)).count();
            found.extend(rows);
            if empties >= k && cursor.is_some() {
                cut = Some(if desc { start.max(lo) } else { end.min(hi) });
                break;
            }
        }
        if found_new > 0 {
            metrics::counter!("chatlog_history_window_hole_rows_total").increment(found_new as u64);
        }
        // An ascending cut ends the page inside a hole: the member closing the hole ages it.
        let above = cut
            .filter(|_| !desc)
            .and_then(|c| members.get(members.partition_point(|m| m.seq <= c)))
            .map(stamp);
        let mut messages = merge(members, found);
        let (bound, stopped) = match cut {
            Some(c) => {
                messages.retain(|m| if desc { m.seq >= c } else { m.seq <= c });
                (c, true)
            }
            None => (bound, false),
        };
        let mut filled = Filled::cap(messages, bound, stopped, limit, order);
        filled.read = true;
        if filled.bound == bound {
            filled.above = above;
        }
        Ok(filled)
    }

    // ------------------------------------------------------------------------------- the window

    /// Reads what `query` needs from the window, with the window's bounds, in one atomic round
    /// trip. `None` when the window is empty or cannot be used (Redis error, undecodable member):
    /// the caller then reads the table.
    async fn read_window(&self, sid: &str, query: WindowQuery<'_>) -> Option<WindowView> {
        if let WindowQuery::Latest(n) = query {
            return self.read_window_latest(sid, n).await;
        }
        let key = keys::window(sid);
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGE").arg(&key).arg(0).arg(0).arg("WITHSCORES");
        pipe.cmd("ZRANGE")
            .arg(&key)
            .arg(-1)
            .arg(-1)
            .arg("WITHSCORES");
        match query {
            WindowQuery::Latest(_) => unreachable!("answered by read_window_latest"),
            WindowQuery::Before(x, limit) => {
                pipe.cmd("ZREVRANGEBYSCORE")
                    .arg(&key)
                    .arg(format!("({x}"))
                    .arg("-inf")
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit);
            }
            WindowQuery::After(x, limit) => {
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(format!("({x}"))
                    .arg("+inf")
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit);
            }
            WindowQuery::Get(seqs) => {
                for s in seqs {
                    pipe.cmd("ZRANGEBYSCORE")
                        .arg(&key)
                        .arg(s)
                        .arg(s)
                        .arg("WITHSCORES");
                }
            }
        }
        let replies: Vec<Vec<(Vec<u8>, f64)>> = self.read_trusted(sid, &pipe).await?;
        let mut replies = replies.into_iter();
        // A bound's time is its version prefix (no decoding); one that does not parse counts as
        // "now or later", which keeps the gaps it ages pending rather than calling them missing.
        let bound = |reply: Option<Vec<(Vec<u8>, f64)>>| {
            reply?.first().map(|(member, score)| {
                let time = window::parse_member(member).map_or(i64::MAX, |(v, _)| v);
                (*score as i64, time)
            })
        };
        let (min, min_time) = bound(replies.next())?;
        let (max, max_time) = bound(replies.next())?;
        let members = self.decode_members(sid, replies.flatten())?;
        Some(WindowView {
            min,
            max,
            min_time,
            max_time,
            members,
        })
    }

    /// The window's lowest member at or above `seq` as (seq, version = `server_time_us`); `None`
    /// if there is none or Redis fails (the caller has a fallback).
    async fn window_member_from(&self, sid: &str, seq: i64) -> Option<(i64, i64)> {
        let mut con = self.inner.redis.get();
        let reply: Vec<(Vec<u8>, f64)> = match redis::cmd("ZRANGEBYSCORE")
            .arg(keys::window(sid))
            .arg(seq)
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(1)
            .query_async(&mut con)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                window_unreadable(sid, &e);
                return None;
            }
        };
        let (member, score) = reply.first()?;
        let (version, _) = window::parse_member(member)?;
        Some((*score as i64, version))
    }

    /// The window read of `latest(n)`: the epoch check and one `ZREVRANGE key 0 n-1` instead of
    /// the general transaction (two ZRANGEs for the bounds, the query WITH SCORES).
    ///
    /// - Bounds: `latest` needs the window's lowest seq only when the window holds fewer than `n`
    ///   members, and then this reply holds all of them; so `min` is the lowest seq read (the
    ///   window's lowest whenever fewer than `n` came back) and `max` the highest.
    /// - No scores: a member's score is the seq the consumer decoded from those very bytes, so the
    ///   decoded seq stands for it. What the score check guarded against — a member under a wrong
    ///   score, or two members for one seq — shows as seqs that do not strictly descend in the
    ///   reply's (score) order, and makes the window unusable just the same.
    ///
    /// Profiled with `dev/bench.sh` (P5): per call this halves the RESP elements the client parses
    /// (redis-rs builds a value per element) and drops Redis' formatting of 50 scores; client CPU
    /// went from ~90 to ~50 µs and Redis CPU from ~28 to ~13 µs per `latest(50)`.
    /// Runs the window reads of `reads` in one `MULTI` after the window-epoch check
    /// ([`window::TRUSTED_BODY`]): their replies if the window was written in the serving Redis's
    /// epoch, `None` otherwise or on a Redis error (the table answers). A window from before Redis
    /// went back in time may have lost its newest members, head included, and nothing but the
    /// epoch says so until the consumer writes the session again.
    async fn read_trusted<T: redis::FromRedisValue>(
        &self,
        sid: &str,
        reads: &redis::Pipeline,
    ) -> Option<T> {
        let mut con = self.inner.redis.get();
        let epoch_key = keys::window_epoch(sid);
        for _ in 0..2 {
            let script = match self.inner.trusted.get(&mut con).await {
                Ok(script) => script,
                Err(e) => {
                    window_unreadable(sid, &e);
                    return None;
                }
            };
            let mut check = script.prepare_invoke();
            check.key(&epoch_key);
            let mut pipe = redis::pipe();
            pipe.atomic().invoke_script(&check);
            for cmd in reads.cmd_iter() {
                pipe.add_command(cmd.clone());
            }
            let mut replies: Vec<redis::Value> = match pipe.query_async(&mut con).await {
                Ok(r) => r,
                Err(e) if crate::epoch::is_noscript(&e) => {
                    self.inner.trusted.forget(&script);
                    continue;
                }
                Err(e) => {
                    window_unreadable(sid, &e);
                    return None;
                }
            };
            if replies.is_empty() {
                return None;
            }
            let trusted = redis::from_redis_value::<i64>(replies.remove(0));
            if !matches!(trusted, Ok(1)) {
                window_untrusted(sid);
                return None;
            }
            return match redis::from_redis_value::<T>(redis::Value::Array(replies)) {
                Ok(t) => Some(t),
                Err(e) => {
                    window_unreadable(sid, &e.into());
                    None
                }
            };
        }
        None
    }

    async fn read_window_latest(&self, sid: &str, n: usize) -> Option<WindowView> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZREVRANGE")
            .arg(keys::window(sid))
            .arg(0)
            .arg(n.max(1) - 1);
        let (reply,): (Vec<Vec<u8>>,) = self.read_trusted(sid, &pipe).await?;
        let mut members: Vec<ChatMessage> = Vec::with_capacity(reply.len());
        for member in &reply {
            let decoded = match window::parse_member(member) {
                None => Err("no version prefix".to_owned()),
                Some((_, avro)) => self
                    .inner
                    .codec
                    .decode(avro)
                    .map_err(|e| format!("does not decode: {e}")),
            };
            let problem = match decoded {
                Ok(m) if m.session_id != sid => Some((m.seq, "member of another session".into())),
                Ok(m) => match members.last() {
                    Some(above) if m.seq >= above.seq => Some((
                        m.seq,
                        format!("seq {} follows seq {} in score order", m.seq, above.seq),
                    )),
                    _ => {
                        members.push(m);
                        None
                    }
                },
                Err(why) => Some((members.last().map_or(0, |m| m.seq), why)),
            };
            if let Some((seq, why)) = problem {
                self.window_unusable(sid, seq, why);
                return None;
            }
        }
        members.reverse();
        let (min, min_time) = members.first().map(|m| (m.seq, m.server_time_us))?;
        let (max, max_time) = members.last().map(|m| (m.seq, m.server_time_us))?;
        Some(WindowView {
            min,
            max,
            min_time,
            max_time,
            members,
        })
    }

    /// Decodes window members (member, score) into messages of `sid`, ascending seq; `None` if any
    /// member is unusable (the window is then not used at all).
    fn decode_members(
        &self,
        sid: &str,
        reply: impl IntoIterator<Item = (Vec<u8>, f64)>,
    ) -> Option<Vec<ChatMessage>> {
        let reply = reply.into_iter();
        let mut members = Vec::with_capacity(reply.size_hint().0);
        for (member, score) in reply {
            let m = self.decode_member(&member, score);
            match m.message {
                Ok(message) if message.session_id == sid => members.push(message),
                Ok(_) => {
                    self.window_unusable(sid, m.seq, "member of another session".into());
                    return None;
                }
                Err(why) => {
                    self.window_unusable(sid, m.seq, why);
                    return None;
                }
            }
        }
        members.sort_by_key(|m| m.seq);
        Some(members)
    }

    fn window_unusable(&self, sid: &str, seq: i64, why: String) {
        tracing::warn!(
            session_id = sid,
            seq,
            why,
            "history: window member unusable, reading the database"
        );
        metrics::counter!("chatlog_history_window_errors_total", "reason" => "member").increment(1);
    }

    /// Decodes one window member (`score` = its seq) and checks that it holds that seq.
    pub(crate) fn decode_member(&self, member: &[u8], score: f64) -> WindowMember {
        let seq = score as i64;
        let Some((version, avro)) = window::parse_member(member) else {
            return WindowMember {
                seq,
                version: -1,
                message: Err("no version prefix".into()),
            };
        };
        let message = match self.inner.codec.decode(avro) {
            Ok(m) if m.seq == seq => Ok(m),
            Ok(m) => Err(format!("holds seq {} under score {seq}", m.seq)),
            Err(e) => Err(format!("does not decode: {e}")),
        };
        WindowMember {
            seq,
            version,
            message,
        }
    }

    pub(crate) fn redis(&self) -> ConnectionManager {
        self.inner.redis.get()
    }

    // -------------------------------------------------------------------------------- the table

    /// An upper bound of the session's head for a walk down: the allocator's ceiling, else the
    /// highest seq found by probing buckets. `None`: the session has no message.
    pub(crate) async fn head_bound(&self, sid: &str) -> Result<Option<i64>> {
        match self.ceiling(sid).await? {
            Some(c) => Ok(Some(c)),
            None => self.probe_head(sid).await,
        }
    }

    /// The session's newest stored message as (seq, `server_time_us`): the newest row below the
    /// ceiling, or the probe's result.
    async fn find_head(&self, sid: &str) -> Result<Option<(i64, i64)>> {
        let head = match self.ceiling(sid).await? {
            Some(c) => return Ok(self.scan_desc(sid, c, 1).await?.rows.first().map(stamp)),
            None => self.probe_head(sid).await?,
        };
        match head {
            Some(h) => Ok(self.lookup(sid, &[h]).await?.first().map(stamp)),
            None => Ok(None),
        }
    }

    /// The first row with `lo <= seq <= hi` as (seq, `server_time_us`), looked for in at most
    /// `buckets` buckets from `lo` up.
    async fn first_row(
        &self,
        sid: &str,
        lo: i64,
        hi: i64,
        buckets: u32,
    ) -> Result<Option<(i64, i64)>> {
        let bs = self.inner.config.bucket_size;
        let first = messages::bucket_of(lo, bs);
        let last = first.saturating_add(i64::from(buckets));
        for bucket in first..last {
            let start = bucket.saturating_mul(bs);
            let end = start.saturating_add(bs - 1);
            let (from, to) = (lo.max(start), hi.min(end));
            if from > to {
                break;
            }
            let rows = self.range(Order::Asc, sid, bucket, from, to, 1).await?;
            if let Some(m) = rows.first() {
                return Ok(Some(stamp(m)));
            }
            if end >= hi {
                break;
            }
        }
        Ok(None)
    }

    /// `session_seq.max_seq` of the session, if it has a row.
    async fn ceiling(&self, sid: &str) -> Result<Option<i64>> {
        self.count_query();
        let rows = self
            .inner
            .session
            .execute_unpaged(&self.inner.statements.session_max, (sid,))
            .await
            .map_err(|e| Error::cql("read session_seq ceiling", e))?
            .into_rows_result()
            .map_err(|e| Error::cql("read session_seq ceiling", e))?;
        let row = rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| Error::cql("read session_seq ceiling", e))?;
        Ok(row.and_then(|(max,)| max))
    }

    /// The highest seq of the highest non-empty bucket, probing `K` buckets at a time from bucket 0
    /// up until a whole group is empty.
    async fn probe_head(&self, sid: &str) -> Result<Option<i64>> {
        let k = i64::from(self.inner.config.max_empty_buckets);
        let mut head = None;
        let mut base = 0i64;
        loop {
            let maxima =
                futures::future::try_join_all((base..base + k).map(|b| self.bucket_max(sid, b)))
                    .await?;
            match maxima.into_iter().flatten().max() {
                Some(m) => head = Some(m),
                None => return Ok(head),
            }
            base += k;
        }
    }

    async fn bucket_max(&self, sid: &str, bucket: i64) -> Result<Option<i64>> {
        self.count_query();
        let rows = self
            .inner
            .session
            .execute_unpaged(&self.inner.statements.bucket_max, (sid, bucket))
            .await
            .map_err(|e| Error::cql("probe bucket", e))?
            .into_rows_result()
            .map_err(|e| Error::cql("probe bucket", e))?;
        let row = rows
            .maybe_first_row::<(i64,)>()
            .map_err(|e| Error::cql("probe bucket", e))?;
        Ok(row.map(|(seq,)| seq))
    }

    fn count_query(&self) {
        self.inner.db_queries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("chatlog_history_db_queries_total").increment(1);
    }

    /// Rows with `seq <= hi`, newest first, until `limit` rows, seq 1, or `K` consecutive empty
    /// buckets.
    pub(crate) async fn scan_desc(&self, sid: &str, hi: i64, limit: usize) -> Result<DescScan> {
        let bs = self.inner.config.bucket_size;
        let k = self.inner.config.max_empty_buckets;
        let mut scan = DescScan::default();
        if hi < 1 {
            scan.complete = true;
            scan.bottom = 1;
            return Ok(scan);
        }
        let mut bucket = messages::bucket_of(hi, bs);
        let mut empties = 0;
        loop {
            let lo_b = bucket * bs;
            let hi_b = hi.min(lo_b.saturating_add(bs - 1));
            let want = limit - scan.rows.len();
            let rows = self
                .range(Order::Desc, sid, bucket, lo_b, hi_b, want)
                .await?;
            empties = if rows.is_empty() { empties + 1 } else { 0 };
            scan.rows.extend(rows);
            if scan.rows.len() >= limit {
                scan.limited = true;
                scan.bottom = scan.rows.last().map_or(lo_b, |m| m.seq);
                return Ok(scan);
            }
            if bucket == 0 {
                scan.complete = true;
                scan.bottom = 1;
                return Ok(scan);
            }
            if empties >= k {
                scan.bottom = lo_b.max(1);
                return Ok(scan);
            }
            bucket -= 1;
        }
    }

    /// Rows with `lo <= seq (<= hi)`, oldest first, until `limit` rows or `hi`; without `hi`,
    /// until `K` consecutive empty buckets.
    pub(crate) async fn scan_asc(
        &self,
        sid: &str,
        lo: i64,
        hi: Option<i64>,
        limit: usize,
    ) -> Result<AscScan> {
        let bs = self.inner.config.bucket_size;
        let k = self.inner.config.max_empty_buckets;
        let lo = lo.max(1);
        let mut scan = AscScan::default();
        if hi.is_some_and(|h| h < lo) || limit == 0 {
            return Ok(scan);
        }
        let mut bucket = messages::bucket_of(lo, bs);
        let mut empties = 0;
        loop {
            let start = bucket.saturating_mul(bs);
            let end = start.saturating_add(bs - 1);
            let hi_b = hi.map_or(end, |h| h.min(end));
            let want = limit - scan.rows.len();
            let rows = self
                .range(Order::Asc, sid, bucket, lo.max(start), hi_b, want)
                .await?;
            empties = if rows.is_empty() { empties + 1 } else { 0 };
            scan.rows.extend(rows);
            if scan.rows.len() >= limit {
                scan.limited = true;
                return Ok(scan);
            }
            match hi {
                Some(h) if hi_b >= h => return Ok(scan),
                None if empties >= k => return Ok(scan),
                _ => {}
            }
            bucket += 1;
        }
    }

    /// Up to `limit` rows of one bucket with `lo <= seq <= hi`, paged.
    async fn range(
        &self,
        order: Order,
        sid: &str,
        bucket: i64,
        lo: i64,
        hi: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>> {
        let mut statement = match order {
            Order::Asc => self.inner.statements.range_asc.clone(),
            Order::Desc => self.inner.statements.range_desc.clone(),
        };
        statement.set_page_size(limit.clamp(1, 1000) as i32);
        self.count_query();
        let pager = self
            .inner
            .session
            .execute_iter(statement, (sid, bucket, lo, hi))
            .await
            .map_err(|e| Error::cql("history range read", e))?;
        let rows: Vec<MessageRow> = pager
            .rows_stream::<MessageRow>()
            .map_err(|e| Error::cql("history range read", e))?
            .take(limit)
            .try_collect()
            .await
            .map_err(|e| Error::cql("history range read", e))?;
        Ok(rows.into_iter().map(messages::row_to_message).collect())
    }

    /// The rows of the given seqs (ascending input), one `IN` query per bucket, 8 at a time.
    async fn lookup(&self, sid: &str, seqs: &[i64]) -> Result<Vec<ChatMessage>> {
        let bs = self.inner.config.bucket_size;
        let mut by_bucket: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for &s in seqs {
            by_bucket
                .entry(messages::bucket_of(s, bs))
                .or_default()
                .push(s);
        }
        let per_bucket = futures::stream::iter(
            by_bucket
                .into_iter()
                .map(|(bucket, seqs)| self.lookup_bucket(sid, bucket, seqs)),
        )
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
        Ok(per_bucket.into_iter().flatten().collect())
    }

    /// The rows of `seqs` (all in `bucket`), one `seq IN` query.
    async fn lookup_bucket(
        &self,
        sid: &str,
        bucket: i64,
        seqs: Vec<i64>,
    ) -> Result<Vec<ChatMessage>> {
        self.count_query();
        let statement = self.inner.statements.seqs.clone();
        let pager = self
            .inner
            .session
            .execute_iter(statement, (sid, bucket, seqs))
            .await
            .map_err(|e| Error::cql("history seq lookup", e))?;
        pager
            .rows_stream::<MessageRow>()
            .map_err(|e| Error::cql("history seq lookup", e))?
            .map_ok(messages::row_to_message)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| Error::cql("history seq lookup", e))
    }
}

/// Logs and counts a window that Redis could not serve; the caller reads the table instead.
fn window_unreadable(sid: &str, e: &redis::RedisError) {
    tracing::warn!(session_id = sid, error = %e, "history: window unreadable, reading the database");
    metrics::counter!("chatlog_history_window_errors_total", "reason" => "redis").increment(1);
}

/// Logs and counts a window written in another Redis epoch (the table answers instead).
fn window_untrusted(sid: &str) {
    tracing::debug!(
        session_id = sid,
        "history: window written in another Redis epoch (or none), reading the database"
    );
    metrics::counter!("chatlog_history_window_errors_total", "reason" => "epoch").increment(1);
}

/// A message's (seq, `server_time_us`).
fn stamp(m: &ChatMessage) -> (i64, i64) {
    (m.seq, m.server_time_us)
}

/// The page of a descending walk that answered alone; `proven_hi` is the top of the covered range
/// when a message above it is known to exist, else the newest row found is.
fn desc_page(scan: DescScan, proven_hi: Option<i64>) -> Draft {
    let (lo, next) = scan.lower();
    let hi = proven_hi.or_else(|| scan.rows.first().map(|m| m.seq));
    let mut messages = scan.rows;
    messages.reverse();
    Draft {
        messages,
        // Nothing found and nothing known above: no claim, but continue below an early stop.
        covered: hi.map(|hi| (lo, hi)),
        source: Source::Database,
        next,
        above: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatlog_schemas::{ContentType, SessionType};

    fn msg(seq: i64, server_time_us: i64) -> ChatMessage {
        ChatMessage {
            msg_id: format!("m{seq}"),
            client_msg_id: format!("c{seq}"),
            session_id: "s".into(),
            session_type: SessionType::Single,
            seq,
            sender_id: "u".into(),
            content_type: ContentType::Text,
            content: vec![],
            send_time_ms: 1,
            server_time_us,
            ext: BTreeMap::new(),
        }
    }

    #[test]
    fn merge_dedupes_and_newer_version_wins() {
        let window = vec![msg(3, 10), msg(4, 5), msg(5, 7)];
        let rows = vec![msg(4, 9), msg(1, 1), msg(3, 10), msg(2, 1)];
        let merged = merge(window, rows);
        let got: Vec<(i64, i64)> = merged.iter().map(|m| (m.seq, m.server_time_us)).collect();
        assert_eq!(got, vec![(1, 1), (2, 1), (3, 10), (4, 9), (5, 7)]);
    }

    #[test]
    fn gaps_are_the_holes_of_the_covered_range() {
        let ms: Vec<_> = [2, 3, 5, 8].iter().map(|&s| msg(s, 1)).collect();
        assert_eq!(runs_in(&ms, 1, 9), vec![(1, 1), (4, 4), (6, 7), (9, 9)]);
        assert_eq!(runs_in(&ms, 3, 5), vec![(4, 4)]);
        assert_eq!(runs_in(&ms, 2, 3), vec![]);
        assert_eq!(runs_in(&[], 4, 6), vec![(4, 6)]);
        // A recovery gap is one run, however long.
        let far: Vec<_> = [1, 10_002].iter().map(|&s| msg(s, 1)).collect();
        assert_eq!(runs_in(&far, 1, 10_002), vec![(2, 10_001)]);
    }

    #[test]
    fn young_gaps_are_pending_old_ones_missing() {
        // 4 is aged by 5 (time 100), 6..7 by 8 (time 900), 9 by the top time.
        let ms = vec![msg(2, 10), msg(3, 10), msg(5, 100), msg(8, 900)];
        let runs = runs_in(&ms, 2, 9);
        let now = 1000;
        // Horizon 500: 5 is 900 old (settled), 8 is 100 old (young), the top unknown (young).
        let (missing, pending) = classify(&ms, &runs, None, now, 500);
        assert_eq!((missing, pending), (vec![4..=4], vec![6..=7, 9..=9]));
        let (missing, pending) = classify(&ms, &runs, Some(0), now, 500);
        assert_eq!((missing, pending), (vec![4..=4, 9..=9], vec![6..=7]));
        // Horizon 0: everything is settled, unless nothing is known above.
        let (missing, pending) = classify(&ms, &runs, Some(now), now, 0);
        assert_eq!((missing, pending), (vec![4..=4, 6..=7, 9..=9], vec![]));
        // A gap of 10^15 seqs is one range.
        let far = vec![msg(1, 0), msg(1_000_000_000_000_000, 0)];
        let runs = runs_in(&far, 1, 1_000_000_000_000_000);
        let (missing, pending) = classify(&far, &runs, None, now, 0);
        assert_eq!((missing, pending), (vec![2..=999_999_999_999_999], vec![]));
        assert!(young(None, now, 0));
    }

    #[test]
    fn get_gaps_join_consecutive_seqs_into_ranges() {
        assert_eq!(ranges_of([]), Vec::<RangeInclusive<i64>>::new());
        assert_eq!(
            ranges_of([-3, 0, 1, 2, 5, 7, 8]),
            vec![-3..=-3, 0..=2, 5..=5, 7..=8]
        );
        assert_eq!(
            ranges_of([i64::MAX - 1, i64::MAX]),
            vec![i64::MAX - 1..=i64::MAX]
        );
    }

    #[test]
    fn filled_pages_keep_the_walks_first_limit() {
        let ms = || (1..=5).map(|s| msg(s, 1)).collect::<Vec<_>>();
        let f = Filled::cap(ms(), 1, false, 3, Order::Desc);
        assert_eq!((f.messages.len(), f.bound, f.stopped), (3, 3, true));
        assert_eq!(f.messages[0].seq, 3);
        let f = Filled::cap(ms(), 5, false, 2, Order::Asc);
        assert_eq!((f.messages.len(), f.bound, f.stopped), (2, 2, true));
        let f = Filled::cap(ms(), 1, false, 10, Order::Desc);
        assert_eq!((f.messages.len(), f.bound, f.stopped), (5, 1, false));
    }

    #[test]
    fn desc_scan_bounds() {
        let limited = DescScan {
            rows: vec![msg(9, 1), msg(7, 1)],
            limited: true,
            complete: false,
            bottom: 7,
        };
        assert_eq!(limited.lower(), (7, Some(7)));
        let complete = DescScan {
            rows: vec![msg(9, 1)],
            limited: false,
            complete: true,
            bottom: 1,
        };
        assert_eq!(complete.lower(), (1, None));
        let stopped = DescScan {
            rows: vec![],
            limited: false,
            complete: false,
            bottom: 40,
        };
        assert_eq!(stopped.lower(), (40, Some(40)));
        // Nothing found, nothing known above: no covered range, but a cursor below the stop.
        let draft = desc_page(stopped, None);
        assert_eq!((draft.covered, draft.next), (None, Some(40)));
    }
}
