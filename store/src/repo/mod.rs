//! The Smart DAL's repositories beyond messages: users, sessions and their members, each user's
//! conversation list and read state (ARCHITECTURE.md, "The Smart DAL").
//!
//! Each repository is a trait with two implementations callers cannot tell apart: one on CQL
//! (`CqlUserRepo`, …) and a cached decorator around it (`CachedUserRepo<CqlUserRepo>`, …) that
//! reads through [`crate::cache`] and, on a write, writes the database first and then marks the
//! cache entry deleted.
//!
//! # Layout
//! - [`dal`]: [`Dal`], every repository cached, built once by Logic, and the calls that keep
//!   two of them consistent (join, leave).
//! - [`users`]: the `users` table — profile and status, looked up on every authentication.
//! - [`sessions`]: the `sessions` and `session_members` tables — a session, its members (paged),
//!   an exact member count.
//! - [`conversations`]: the `user_sessions` and `read_state` tables — a user's conversation
//!   list with pinned/muted, read state and unread counts, sorted and paged.
//! - [`latest`]: the `session_latest` table — each session's latest message, written by the
//!   consumer (CQL and Redis, max seq wins), read by the conversation list.
//!
//! Every CQL statement of a table lives in its repository's file; every Redis key in
//! [`crate::keys`].

mod by_id;
pub mod conversations;
pub mod dal;
pub mod latest;
pub mod sessions;
pub mod users;

pub use dal::{Dal, DalConfig};

use crate::{Error, Result};

/// The longest id (user or session) a repository accepts, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Checks an id a caller passed: not empty, at most [`MAX_ID_BYTES`], no `}` (it would end a Redis
/// Cluster hash tag early and move the key to another slot).
pub fn check_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.contains('}') {
        return Err(Error::Request(format!(
            "{what} must be 1 to {MAX_ID_BYTES} bytes without '}}' (got {} bytes)",
            id.len()
        )));
    }
    Ok(())
}

/// A cached entity as the cache stores it (JSON: readable with `redis-cli`, and a field added by
/// a newer version does not break an older reader).
pub(crate) fn encode_cached<T: serde::Serialize>(value: Option<&T>) -> Result<Option<Vec<u8>>> {
    value
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| Error::Request(format!("encode for the cache: {e}")))
}

/// A cached entity, `None` when it does not decode (written by another version, damaged): the
/// caller then reads the database.
pub(crate) fn decode_cached<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(error = %e, "a cached value does not decode; reading the database");
            None
        }
    }
}

/// Database reads one `get_many` runs at once.
const READ_CONCURRENCY: usize = 32;

/// `read(id)` for each of `ids`, [`READ_CONCURRENCY`] at a time; result `i` is id `i`'s.
pub(crate) async fn read_each<'a, T, F>(
    ids: &'a [String],
    read: impl Fn(&'a str) -> F,
) -> Result<Vec<T>>
where
    F: std::future::Future<Output = Result<T>> + 'a,
{
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(READ_CONCURRENCY) {
        out.extend(futures::future::try_join_all(chunk.iter().map(|id| read(id))).await?);
    }
    Ok(out)
}

pub(crate) use crate::cql::{prepare, read_row};
