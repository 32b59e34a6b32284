//! The Redis window of each session: a ZSET of its newest messages, written by the consumer and read
//! by history.
//!
//! Key [`crate::keys::window`]; score = seq; member = 16 lowercase hex digits of the message's
//! [`version`](chatlog_schemas::ChatMessage::version) (its `server_time_us` as sent, its mutation's
//! time once recalled, edited or deleted) followed by the message's Avro single-object bytes. The version
//! prefix lets the Lua script keep one member per seq and never replace a newer version with an older
//! one, without decoding Avro in Lua. Re-adding an identical member is a no-op, so replays are harmless.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};

use crate::connection::{RedisLike, by_slot};
use crate::{Error, Result, keys};

/// Bytes of the version prefix of a member.
pub const VERSION_LEN: usize = 16;

/// The window member of a message: version prefix ([`ChatMessage::version`](chatlog_schemas::ChatMessage::version)) + its Avro bytes.
pub fn member(version: i64, avro: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(VERSION_LEN + avro.len());
    m.extend_from_slice(&version_prefix(version));
    m.extend_from_slice(avro);
    m
}

/// The 16 lowercase hex digits of `version` (negative as 0) that start a member. Written by hand:
/// the consumer builds one per message, and `format!` would allocate each time.
pub fn version_prefix(version: i64) -> [u8; VERSION_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let v = version.max(0) as u64;
    let mut out = [0u8; VERSION_LEN];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = HEX[((v >> (4 * (VERSION_LEN - 1 - i))) & 0xf) as usize];
    }
    out
}

/// A window member written straight into a Redis command (one argument: prefix + Avro bytes),
/// without building the member in a buffer of its own first.
#[derive(Debug, Clone, Copy)]
struct MemberArg<'a> {
    version: i64,
    avro: &'a [u8],
}

impl redis::ToRedisArgs for MemberArg<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        let mut w = out.writer_for_next_arg();
        // Writing into the command's buffer cannot fail.
        let _ = w.write_all(&version_prefix(self.version));
        let _ = w.write_all(self.avro);
    }
}

impl redis::ToSingleRedisArg for MemberArg<'_> {}

/// Splits a member into its version and Avro bytes; `None` if it is not one of ours.
pub fn parse_member(member: &[u8]) -> Option<(i64, &[u8])> {
    if member.len() < VERSION_LEN {
        return None;
    }
    let (prefix, avro) = member.split_at(VERSION_LEN);
    let version = i64::from_str_radix(std::str::from_utf8(prefix).ok()?, 16).ok()?;
    Some((version, avro))
}

/// Appends messages to one window. `KEYS[1]` = window, `KEYS[2]` = its epoch ([`keys::window_epoch`]),
/// optional `KEYS[3]` = the session's latest ([`keys::latest`], see [`crate::repo::latest`]);
/// `ARGV` = size, ttl_ms, mode, then (seq, member) pairs. Returns the window's cardinality, or -1
/// when it declined to start an empty window (step 2).
///
/// 1. **Epoch.** A window written in another epoch of Redis (see [`crate::epoch`]: a restart from
///    a snapshot, a failover to a lagging replica) may have lost its newest members: new members
///    above them would leave a hole that readers take for a gap. Such a window is deleted and
///    is started again from the table (step 2).
/// 2. **An empty window starts only from proof.** A window is complete for `[lowest, highest]` of
///    its members and its highest is taken for the session's newest message, so the records of
///    one batch may start it only if they are the session's newest rows in their newest state.
///    Nothing in the records proves that: a late or replayed record of an old seq would make
///    that seq the head (hiding everything above it from "latest"), and a record whose mutation
///    was stored in an earlier batch (while the window was empty) would show the unmutated
///    content. So an append (mode other than `p`) to an empty window writes nothing there and
///    returns -1, and the writer starts the window from the table instead: the newest rows,
///    read after its batch's rows are written, in one call with mode `p` (proven), see
///    [`crate::window_start`]. A new session pays one such read, once.
/// 3. **Never below the lowest member.** A seq below a non-empty window's lowest member (a late
///    send, a DLQ replay, a rewind after the window was trimmed or expired) is not added: the
///    window is complete for `[lowest, highest]` of its members, and a member below that range
///    would claim every seq between it and the old lowest, which the window does not hold. Its
///    row is in the table, where history finds it.
/// 4. Per seq: drop older versions, keep a newer one, add ours — a mutation as any other
///    record: its member is the whole message in its new state, and a seq above the head or
///    missing inside the range is one whose original is still to come. Then trim to the newest
///    `size` seqs and refresh the TTL of both keys.
/// 5. **The session's latest** (`KEYS[3]`): raised to the call's highest (seq, version) — max wins,
///    so replays and late batches never lower it — in the same call, once per session per batch:
///    a hot session's latest is written through, never invalidated per message. Of another epoch
///    (or absent) it is started afresh from this call and flagged partial (`p`): readers complete
///    it from CQL, max wins ([`crate::repo::latest`]). It is written for every seq of the call,
///    also those below the window's lowest member and when the window is not started (step 2).
///    Its TTL follows the window's.
///
/// The common case is a seq above the window's highest one (a new message): it has no member to
/// compare with, so such seqs — when each appears once in the call — are added by one variadic
/// ZADD instead of a ZRANGEBYSCORE and a ZADD each. Only seqs at or below the head (replays, late
/// arrivals, edits) and seqs given twice take the per-seq path, in their order. Profiled with
/// `dev/bench.sh` (P1/P4): the window stage took about a third of the consumer's batch time, spent
/// in these per-seq calls.
pub const APPEND_LUA: &str = concat!(
    include_str!("../lua/epoch.lua"),
    include_str!("../lua/window_append.lua")
);

/// The lowest seq a window keeps of one [`APPEND_LUA`] call given `seqs` (any order, repeats
/// allowed): the script keeps the newest `size` distinct seqs and trims the rest at once, so
/// `Some(lowest kept)` when the append holds more than `size` distinct seqs, else `None` (the
/// append trims none of its own). A writer that adds rows and windows at the same time writes
/// the rows of the seqs below it first: for them the window never holds a copy, and a reader
/// looking below the window must find the row.
pub fn lowest_kept(seqs: impl IntoIterator<Item = i64>, size: usize) -> Option<i64> {
    let mut seqs: Vec<i64> = seqs.into_iter().collect();
    seqs.sort_unstable();
    seqs.dedup();
    let first_kept = seqs.len().checked_sub(size.max(1)).filter(|&i| i > 0)?;
    Some(seqs[first_kept])
}

/// The readers' check that a window was written in the serving Redis's epoch (run as an
/// [`crate::epoch::PinnedScript`], inside the same `MULTI` as the reads). `KEYS[1]` = the window's
/// epoch key ([`keys::window_epoch`]). Returns 1 if the window may be trusted, 0 if it was written
/// in another epoch — Redis went back in time and nobody has written the window since, so its
/// head may be behind the table's — or carries no epoch (written before epochs existed).
pub const TRUSTED_BODY: &str = include_str!("../lua/window_trusted.lua");

/// Window settings shared by writer and reader.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Newest messages kept per session.
    pub size: usize,
    /// Idle time after which a session's window expires (refreshed by every write).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            size: 200,
            ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// One message to put in a window.
#[derive(Debug, Clone)]
pub struct WindowEntry {
    /// The message's seq (the score).
    pub seq: i64,
    /// The member: see [`member`].
    pub member: Vec<u8>,
}

impl WindowEntry {
    /// The entry of a message: `member` its window member.
    pub fn of(message: &chatlog_schemas::ChatMessage, avro: &[u8]) -> WindowEntry {
        WindowEntry {
            seq: message.seq,
            member: member(message.version(), avro),
        }
    }
}

/// One message to put in a window, borrowing the record's Avro bytes (see [`WindowEntry`]): the
/// member is written straight into the Redis command, so a batch builds no member buffers.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    /// The message's seq (the score).
    pub seq: i64,
    /// The member's version prefix ([`ChatMessage::version`](chatlog_schemas::ChatMessage::version)).
    pub version: i64,
    /// The record's Avro bytes, as read.
    pub avro: &'a [u8],
}

impl<'a> EntryRef<'a> {
    /// The entry of a message whose record bytes are `avro`.
    pub fn of(message: &chatlog_schemas::ChatMessage, avro: &'a [u8]) -> EntryRef<'a> {
        EntryRef {
            seq: message.seq,
            version: message.version(),
            avro,
        }
    }

    /// The member it writes (see [`member`]).
    pub fn member(&self) -> Vec<u8> {
        member(self.version, self.avro)
    }
}

/// What [`WindowWriter`] needs of an entry: its seq argument and its member argument.
trait Entry {
    fn seq(&self) -> i64;
    fn push_member(&self, pipe: &mut redis::Pipeline);
}

impl Entry for WindowEntry {
    fn seq(&self) -> i64 {
        self.seq
    }
    fn push_member(&self, pipe: &mut redis::Pipeline) {
        pipe.arg(&self.member);
    }
}

impl Entry for EntryRef<'_> {
    fn seq(&self) -> i64 {
        self.seq
    }
    fn push_member(&self, pipe: &mut redis::Pipeline) {
        pipe.arg(MemberArg {
            version: self.version,
            avro: self.avro,
        });
    }
}

/// Writes windows: one script call per session, all sessions of a batch pipelined in one round trip.
#[derive(Clone)]
pub struct WindowWriter {
    config: WindowConfig,
    script: redis::Script,
}

impl WindowWriter {
    /// A writer with `config`.
    pub fn new(config: WindowConfig) -> Self {
        WindowWriter {
            config,
            script: redis::Script::new(APPEND_LUA),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &WindowConfig {
        &self.config
    }

    /// Appends each session's entries to its window (sessions keyed by id). Idempotent.
    /// Returns the sessions whose window was empty and so was not started ([`APPEND_LUA`],
    /// step 2): start those from the table, after their rows are written
    /// ([`crate::window_start::WindowStarter`]).
    pub async fn append<C: RedisLike>(
        &self,
        con: &mut C,
        sessions: &BTreeMap<String, Vec<WindowEntry>>,
    ) -> Result<Vec<String>> {
        let refused = self
            .append_any(con, Mode::Append, || {
                sessions.iter().map(|(s, e)| (s.as_str(), e.as_slice()))
            })
            .await?;
        Ok(pick(sessions.keys(), &refused).cloned().collect())
    }

    /// [`append`](Self::append) of entries that borrow the records' bytes (the consumer's path:
    /// no member buffer per message). Idempotent; writes exactly what `append` writes.
    pub async fn append_borrowed<'s, C: RedisLike>(
        &self,
        con: &mut C,
        sessions: &'s BTreeMap<&'s str, Vec<EntryRef<'_>>>,
    ) -> Result<Vec<&'s str>> {
        let refused = self
            .append_any(con, Mode::Append, || {
                sessions.iter().map(|(s, e)| (*s, e.as_slice()))
            })
            .await?;
        Ok(pick(sessions.keys(), &refused).copied().collect())
    }

    /// Appends, to each session's window, entries that are the table's newest rows of that
    /// session — every stored seq from the lowest entry up to the table's head, read after the
    /// rows the caller wrote — so they may start an empty window ([`APPEND_LUA`], step 2).
    /// Into a window that is not empty they go as [`append`](Self::append)'s do. Idempotent.
    pub async fn append_proven<C: RedisLike>(
        &self,
        con: &mut C,
        sessions: &BTreeMap<String, Vec<WindowEntry>>,
    ) -> Result<()> {
        self.append_any(con, Mode::Proven, || {
            sessions.iter().map(|(s, e)| (s.as_str(), e.as_slice()))
        })
        .await
        .map(drop)
    }

    /// Runs the script once per session; returns the positions (in `sessions()` order) of the
    /// sessions whose window was not started.
    async fn append_any<'s, C, E, I>(
        &self,
        con: &mut C,
        mode: Mode,
        sessions: impl Fn() -> I,
    ) -> Result<Vec<usize>>
    where
        C: RedisLike,
        E: Entry + 's,
        I: Iterator<Item = (&'s str, &'s [E])>,
    {
        if sessions().next().is_none() {
            return Ok(Vec::new());
        }
        let cards = match self.append_once(con, mode, sessions()).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // The server lost its script cache (restart, SCRIPT FLUSH): load and go again.
                self.script
                    .prepare_invoke()
                    .load_async(con)
                    .await
                    .map_err(Error::redis("load window script"))?;
                self.append_once(con, mode, sessions()).await
            }
            other => other,
        }
        .map_err(Error::redis("append to windows"))?;
        Ok(cards
            .iter()
            .enumerate()
            .filter(|(_, n)| **n < 0)
            .map(|(i, _)| i)
            .collect())
    }

    /// Removes exact `members` from a session's window. For messages whose rows can never be
    /// written: their entries may have been appended beside the failed row write, and no window
    /// may show a message the table will never hold (history trusts a window between its lowest
    /// and highest seq, and the message would vanish once trimmed). Idempotent.
    pub async fn remove<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        session_id: &str,
        members: &[&[u8]],
    ) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        redis::cmd("ZREM")
            .arg(keys::window(session_id))
            .arg(members)
            .query_async::<()>(con)
            .await
            .map_err(Error::redis("remove from a window"))
    }

    /// One pipeline of one script call per session (on a Redis Cluster one per slot,
    /// concurrently): each session's window size after the call, `-1` when not started.
    async fn append_once<'s, C, E: Entry + 's>(
        &self,
        con: &mut C,
        mode: Mode,
        sessions: impl Iterator<Item = (&'s str, &'s [E])>,
    ) -> redis::RedisResult<Vec<i64>>
    where
        C: RedisLike,
    {
        let ttl_ms = self.config.ttl.as_millis().min(i64::MAX as u128) as i64;
        let sessions: Vec<(&str, &[E])> = sessions.collect();
        let sessions = &sessions;
        let slot_of = |i: usize| keys::slot(&keys::window(sessions[i].0));
        by_slot(&*con, sessions.len(), slot_of, |mut con, at| async move {
            let mut pipe = redis::pipe();
            for &i in &at {
                let (session_id, entries) = sessions[i];
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(self.script.get_hash())
                    .arg(3)
                    .arg(keys::window(session_id))
                    .arg(keys::window_epoch(session_id))
                    .arg(keys::latest(session_id))
                    .arg(self.config.size)
                    .arg(ttl_ms)
                    .arg(mode.arg());
                for e in entries {
                    cmd.arg(e.seq());
                    e.push_member(cmd);
                }
            }
            pipe.query_async::<Vec<i64>>(&mut con).await
        })
        .await
    }
}

/// How [`APPEND_LUA`] may treat an empty window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Leave it empty (the entries prove nothing about the session's head).
    Append,
    /// Start it: the entries are the table's newest rows.
    Proven,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Append => "a",
            Mode::Proven => "p",
        }
    }
}

/// The items of `all` at the (ascending) positions `at`.
fn pick<'a, T: 'a>(all: impl Iterator<Item = &'a T>, at: &[usize]) -> impl Iterator<Item = &'a T> {
    all.enumerate()
        .filter(move |(i, _)| at.binary_search(i).is_ok())
        .map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_round_trips_and_orders_by_version() {
        let a = member(5, b"avro");
        let b = member(300, b"avro");
        assert_eq!(parse_member(&a), Some((5, &b"avro"[..])));
        assert!(a[..VERSION_LEN] < b[..VERSION_LEN]);
        assert_eq!(parse_member(b"short"), None);
        assert_eq!(
            &member(0x0123_4567_89ab_cdef, b"")[..],
            format!("{:016x}", 0x0123_4567_89ab_cdef_u64).as_bytes()
        );
        assert_eq!(&version_prefix(-5), b"0000000000000000");
        assert_eq!(
            &version_prefix((1 << 62) | 1_700_000_000_000_000),
            format!("{:016x}", (1u64 << 62) | 1_700_000_000_000_000).as_bytes()
        );
    }

    /// The borrowed path sends byte for byte the command of the owned one.
    #[test]
    fn borrowed_entries_make_the_same_command() {
        let avro = b"\xc3\x01avro bytes";
        let owned = WindowEntry {
            seq: 7,
            member: member(0x5eed, avro),
        };
        let borrowed = EntryRef {
            seq: 7,
            version: 0x5eed,
            avro,
        };
        assert_eq!(borrowed.member(), owned.member);
        let packed = |e: &dyn Fn(&mut redis::Pipeline)| {
            let mut pipe = redis::pipe();
            pipe.cmd("EVALSHA").arg("x");
            e(&mut pipe);
            pipe.get_packed_pipeline()
        };
        assert_eq!(
            packed(&|p| owned.push_member(p)),
            packed(&|p| borrowed.push_member(p))
        );
    }

    #[test]
    fn an_append_keeps_the_newest_size_distinct_seqs() {
        assert_eq!(lowest_kept([], 3), None);
        assert_eq!(
            lowest_kept([3, 1, 2], 3),
            None,
            "exactly size: nothing trimmed"
        );
        assert_eq!(lowest_kept([5, 1, 4, 2, 3], 3), Some(3));
        // Two versions of one seq are one seq: four distinct, the newest three kept.
        assert_eq!(lowest_kept([1, 2, 2, 3, 4, 4], 3), Some(2));
        assert_eq!(lowest_kept([7, 7, 7, 7], 1), None);
        assert_eq!(lowest_kept([7, 9, 8], 1), Some(9));
    }
}
