//! The segment path: the next segment of a session is reserved in CQL with a lightweight
//! transaction on `session_seq.max_seq` and installed in Redis with [`INSTALL_LUA`], which only
//! ever moves `cur` and `max` up (see "Why seqs never repeat" in [`super`]).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;

use chatlog_schemas::MAX_SEQ;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use super::SeqAllocator;
use super::config::{duration_ms, now_ms};
use crate::{Error, Result, keys};

/// Installs a reserved segment, moving values only up. KEYS: seq hash. ARGV: `low - 1`, `high`,
/// step, now ms, hash idle TTL ms (0 = none), create (`1` = may create a missing hash).
///
/// `cur = max(cur, low - 1)`, `max = max(max, high)`. A hash that is missing, or was written in
/// another epoch (see [`crate::epoch`]), is (re)created from the arguments only when `create` is
/// `1`; otherwise the install is refused. Returns 1 if installed, 0 if refused.
pub const INSTALL_LUA: &str = concat!(
    include_str!("../../lua/epoch.lua"),
    include_str!("../../lua/seq_install.lua")
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

/// Reads a session's ceiling with `select` (prepared from [`select_ceiling_cql`]); `None` for a
/// session never seen. The allocator reads it at SERIAL consistency, history at the session's.
pub(crate) async fn read_ceiling(
    session: &Session,
    select: &PreparedStatement,
    session_id: &str,
) -> Result<Option<i64>> {
    let row: Option<(Option<i64>,)> =
        crate::cql::read_row(session, select, (session_id,), "read session_seq ceiling").await?;
    Ok(row.and_then(|(max,)| max))
}

/// What is known about the CQL row after an LWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ceiling {
    /// Not known: expect the Redis `max` to be the ceiling.
    Unknown,
    /// The row does not exist.
    Absent,
    /// The row holds this value.
    At(i64),
}

/// The outcome of one LWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reserve {
    /// Reserved `[low, high]`.
    Won { low: i64, high: i64 },
    /// Someone else moved the ceiling first; here is what it is now.
    Lost(Ceiling),
}

/// Number of in-process single-flight locks of the segment path (sessions share them by hash).
pub(super) const SEGMENT_LOCKS: usize = 64;

impl SeqAllocator {
    /// Reserves the `size` seqs above `max(ceiling, floor)` (floor = Redis `max`): an LWT `UPDATE`
    /// from the expected ceiling, or `INSERT IF NOT EXISTS` when the row is not expected to exist.
    pub(super) async fn reserve(
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
            inner.reservations.fetch_add(1, Ordering::Relaxed);
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
    pub(super) async fn install(
        &self,
        session_id: &str,
        cur: i64,
        high: i64,
        create: bool,
    ) -> Result<bool> {
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
            .map_err(Error::redis("install seq segment"))?;
        Ok(installed == 1)
    }
}

pub(super) fn lock_index(session_id: &str) -> usize {
    let mut h = DefaultHasher::new();
    session_id.hash(&mut h);
    (h.finish() % SEGMENT_LOCKS as u64) as usize
}
