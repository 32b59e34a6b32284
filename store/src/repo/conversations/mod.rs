//! Conversation lists and read state: [`ConversationRepo`], on CQL ([`CqlConversationRepo`], the
//! `user_sessions` and `read_state` tables) and cached ([`CachedConversationRepo`]).
//!
//! **Read state is monotonic without a read.** `has_read_seq` and `min_seq` are written only
//! `USING TIMESTAMP <the seq written>`: the highest seq wins in the database whatever the order of
//! concurrent calls, a repeated call changes nothing, and no LWT is needed. `read_state` rows are
//! never deleted (a wall-clock tombstone would shadow every later seq-timestamped cell), so a user
//! who leaves and re-joins keeps them.
//!
//! **Unread** = `max(0, max_seq − max(has_read_seq, min_seq))`, with `max_seq` the session's latest
//! seq ([`super::latest`], kept by the consumer: one write per session per batch, none per member).
//!
//! **Clear history.** [`ConversationRepo::clear_history`] raises `min_seq` to the session's latest
//! persisted seq. Logic applies it to history reads of that user: read `after(min_seq)` (and never
//! show a seq ≤ `min_seq`: `before` pages stop at it). It is in every [`Conversation`] and read
//! alone with [`ConversationRepo::min_seq`]. A message sent before the clear but not yet persisted
//! by the consumer (its lag) stays visible.
//!
//! **The list** ([`ConversationRepo::conversations`]): every membership (at most
//! [`ConversationConfig::max_conversations`]), each session's latest seq and time (pipelined, no
//! message bytes), sorted by (pinned first, latest activity descending, session id ascending) —
//! activity is the latest message's server time, or the join time for a conversation without
//! messages — then one page after the cursor, with the latest messages of that page only. A
//! cursor is the sort key of the page's last entry: pages walked over a list that does not change
//! meanwhile give every conversation exactly once; a conversation whose latest message changes
//! between two pages moves (to the top) and may be seen twice or not at all during that walk.
//!
//! **The cache** of a user's list is one entry ([`keys::conversations`]): the memberships with
//! their read state as loaded, plus one in-place field per session whose read state changed since
//! (`r:<session>` = `has_read_seq:min_seq`, [`Cache::update_in_place`]): `mark_read` and
//! `clear_history` raise that field (max wins) instead of deleting a 5,000-entry list; joins,
//! leaves, pins and mutes mark the entry deleted. Every race ends at the database's value: an
//! update that finds no fresh value (a loader at work, another epoch) marks the entry deleted and
//! removes the loader's token, so a loader that read the old read state cannot fill.

use std::cmp::Reverse;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use serde::{Deserialize, Serialize};

use super::latest::{Latest, LatestReader};
use super::{check_id, prepare};
use crate::cache::{Cache, Cached};
use crate::{Error, Result, keys, telemetry};

mod cached;
mod cql;

pub use cached::CachedConversationRepo;
pub use cql::CqlConversationRepo;

/// Session ids per `IN` query of `read_state`.
const READ_STATE_CHUNK: usize = 100;
/// `read_state` queries in flight at once.
const READ_STATE_CONCURRENCY: usize = 8;
/// The largest seq (as the producer's bound: JavaScript clients read seqs as doubles).
const MAX_SEQ: i64 = 1 << 53;

/// Settings of the conversation repositories (`dal` section).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConversationConfig {
    /// Most conversations of one user read, sorted and cached. A user with more gets the first
    /// `max_conversations` memberships (by session id) and `truncated`, counted in
    /// `chatlog_repo_conversations_truncated_total`. Nothing is allocated beyond it. Default
    /// 10,000.
    pub max_conversations: usize,
    /// Most conversations one page returns; a larger `limit` is capped to it. Default 500.
    pub max_page: usize,
    /// How long a session's latest filled by a reader lives in Redis (the consumer refreshes it
    /// with its `window.ttl`; keep them equal). Default 7 days.
    #[serde(with = "humantime_serde")]
    pub latest_ttl: Duration,
}

impl Default for ConversationConfig {
    fn default() -> Self {
        ConversationConfig {
            max_conversations: 10_000,
            max_page: 500,
            latest_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl ConversationConfig {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<()> {
        if self.max_conversations == 0 || self.max_page == 0 {
            return Err(Error::Config(
                "dal.max_conversations and dal.max_page must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// One membership of a user, with its read state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The session.
    #[serde(rename = "s")]
    pub session_id: String,
    /// When the user joined, ms since the Unix epoch.
    #[serde(rename = "j")]
    pub joined_at_ms: i64,
    /// Shown first.
    #[serde(rename = "p")]
    pub pinned: bool,
    /// Notifications off.
    #[serde(rename = "m")]
    pub muted: bool,
    /// The highest seq the user has read (0: none).
    #[serde(rename = "r")]
    pub has_read_seq: i64,
    /// The user's history of the session starts above this seq (0: whole history).
    #[serde(rename = "c")]
    pub min_seq: i64,
}

/// A user's memberships, by session id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memberships {
    /// At most [`ConversationConfig::max_conversations`], ascending session id.
    #[serde(rename = "l")]
    pub list: Vec<Membership>,
    /// The user has more memberships than the bound.
    #[serde(rename = "t")]
    pub truncated: bool,
}

/// One entry of a conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The session.
    pub session_id: String,
    /// Shown first.
    pub pinned: bool,
    /// Notifications off.
    pub muted: bool,
    /// When the user joined (ms).
    pub joined_at_ms: i64,
    /// The session's latest message (seq, server time, Avro bytes: decode with the history
    /// codec), `None` if it has none yet.
    pub latest: Option<Latest>,
    /// The session's latest seq (0: none).
    pub max_seq: i64,
    /// The highest seq the user has read.
    pub has_read_seq: i64,
    /// The user's history starts above this seq (clear history).
    pub min_seq: i64,
    /// `max(0, max_seq − max(has_read_seq, min_seq))`.
    pub unread: i64,
    /// The sort time: the latest message's server time (µs), or the join time without one.
    pub activity_us: i64,
}

/// One page of [`ConversationRepo::conversations`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationPage {
    /// In list order.
    pub conversations: Vec<Conversation>,
    /// The cursor of the next page, `None` after the last one.
    pub next: Option<String>,
    /// Conversations in the whole list (at most `max_conversations`).
    pub total: usize,
    /// The user has more than `max_conversations` conversations; the list holds the first ones
    /// by session id.
    pub truncated: bool,
}

/// Conversation lists and read state.
pub trait ConversationRepo: Send + Sync + 'static {
    /// `user` joins `session` (creates or refreshes the membership; pinned and muted are kept).
    fn join(
        &self,
        user_id: &str,
        session_id: &str,
        joined_at_ms: i64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// `user` leaves `session` (read state is kept: a re-join continues from it).
    fn leave(&self, user_id: &str, session_id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Pins or unpins a conversation (no effect unless `user` is a member).
    fn set_pinned(
        &self,
        user_id: &str,
        session_id: &str,
        pinned: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Mutes or unmutes a conversation (no effect unless `user` is a member).
    fn set_muted(
        &self,
        user_id: &str,
        session_id: &str,
        muted: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// `user` has read `session` up to `seq` (0 ≤ seq ≤ 2^53). Only ever moves forward: a lower
    /// seq than one already marked changes nothing.
    fn mark_read(
        &self,
        user_id: &str,
        session_id: &str,
        seq: i64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Clears `user`'s history of `session`: `min_seq` rises to the session's latest seq as this
    /// repository sees it (the cached one: Redis first, which the consumer writes with the
    /// window, so what the user was shown is cleared). Never lowers. Returns the seq the history
    /// now starts above.
    fn clear_history(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// Clears `user`'s history of `session` up to `seq` (0 ≤ seq ≤ 2^53; a seq Logic has seen,
    /// e.g. the last one the client showed): `min_seq` rises to it, never lowers.
    fn clear_history_to(
        &self,
        user_id: &str,
        session_id: &str,
        seq: i64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The seq `user`'s history of `session` starts above (0: whole history): history reads for
    /// this user go `after(min_seq)`.
    fn min_seq(&self, user_id: &str, session_id: &str) -> impl Future<Output = Result<i64>> + Send;

    /// The memberships of `user`, by session id, with their read state.
    fn memberships(&self, user_id: &str) -> impl Future<Output = Result<Memberships>> + Send;

    /// The reader of the sessions' latests this repository sorts by.
    fn latest(&self) -> &LatestReader;

    /// The settings in force.
    fn config(&self) -> &ConversationConfig;

    /// One page of `user`'s conversation list: `limit` entries (capped at
    /// [`ConversationConfig::max_page`]) after `cursor` (`None`: from the top). Every
    /// implementation lists the same way: its [`memberships`](Self::memberships), sorted by the
    /// sessions' latests.
    fn conversations(
        &self,
        user_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<ConversationPage>> + Send {
        async move {
            let cursor = cursor.map(Cursor::parse).transpose()?;
            let memberships = self.memberships(user_id).await?;
            assemble(self.latest(), self.config(), memberships, limit, cursor).await
        }
    }
}

fn check_pair(user_id: &str, session_id: &str) -> Result<()> {
    check_id("user_id", user_id)?;
    check_id("session_id", session_id)
}

fn check_seq(seq: i64) -> Result<()> {
    if !(0..=MAX_SEQ).contains(&seq) {
        return Err(Error::Request(format!("seq {seq} is outside 0..=2^53")));
    }
    Ok(())
}

/// `session_id, joined_at, pinned, muted` of `user_sessions`.
/// The sort key of a conversation, and a cursor: (pinned first, activity descending, session id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Cursor {
    unpinned: bool,
    activity: Reverse<i64>,
    session_id: String,
}

impl Cursor {
    fn of(pinned: bool, activity_us: i64, session_id: &str) -> Cursor {
        Cursor {
            unpinned: !pinned,
            activity: Reverse(activity_us),
            session_id: session_id.to_owned(),
        }
    }

    fn encode(&self) -> String {
        format!(
            "{}:{}:{}",
            u8::from(!self.unpinned),
            self.activity.0,
            self.session_id
        )
    }

    fn parse(text: &str) -> Result<Cursor> {
        let bad = || Error::Request(format!("not a conversation cursor: {:.64}", text));
        let mut parts = text.splitn(3, ':');
        let pinned = match parts.next() {
            Some("1") => true,
            Some("0") => false,
            _ => return Err(bad()),
        };
        let activity: i64 = parts.next().and_then(|a| a.parse().ok()).ok_or_else(bad)?;
        let session_id = parts.next().ok_or_else(bad)?;
        check_id("cursor session_id", session_id)?;
        Ok(Cursor::of(pinned, activity, session_id))
    }
}

/// Sorts `memberships` by their sessions' latests and cuts the page after `cursor`.
async fn assemble(
    latest: &LatestReader,
    config: &ConversationConfig,
    memberships: Memberships,
    limit: usize,
    cursor: Option<Cursor>,
) -> Result<ConversationPage> {
    let Memberships {
        mut list,
        truncated,
    } = memberships;
    // A value cached by a build with a larger bound is cut here: nothing beyond it is sorted.
    list.truncate(config.max_conversations);
    let limit = limit.min(config.max_page);
    let ids: Vec<String> = list.iter().map(|m| m.session_id.clone()).collect();
    // A list no longer than a page is read with its messages at once (one round trip less, and
    // still sized by the request); a longer one first without them, to sort.
    let whole = list.len() <= limit;
    let mut summaries = latest.read(&ids, whole).await?;
    let mut keyed: Vec<(Cursor, usize)> = list
        .iter()
        .zip(&summaries)
        .enumerate()
        .map(|(i, (m, l))| {
            let activity = l
                .as_ref()
                .map_or(m.joined_at_ms.saturating_mul(1000), Latest::activity_us);
            (Cursor::of(m.pinned, activity, &m.session_id), i)
        })
        .collect();
    keyed.sort_unstable();
    let start = match &cursor {
        Some(c) => keyed.partition_point(|(k, _)| k <= c),
        None => 0,
    };
    let end = (start + limit).min(keyed.len());
    let page = &keyed[start..end];
    let latests = if whole {
        page.iter().map(|(_, i)| summaries[*i].take()).collect()
    } else {
        let page_ids: Vec<String> = page
            .iter()
            .map(|(_, i)| list[*i].session_id.clone())
            .collect();
        latest.read(&page_ids, true).await?
    };
    let conversations = page
        .iter()
        .zip(latests)
        .map(|((key, i), l)| {
            let m = &list[*i];
            // The sort used the first read; the entry shows the page read (newer, if a message
            // arrived in between).
            let max_seq = l.as_ref().map_or(0, |l| l.seq);
            Conversation {
                session_id: m.session_id.clone(),
                pinned: m.pinned,
                muted: m.muted,
                joined_at_ms: m.joined_at_ms,
                max_seq,
                has_read_seq: m.has_read_seq,
                min_seq: m.min_seq,
                unread: unread(max_seq, m.has_read_seq, m.min_seq),
                activity_us: key.activity.0,
                latest: l,
            }
        })
        .collect();
    let next = (end < keyed.len() && end > start).then(|| keyed[end - 1].0.encode());
    Ok(ConversationPage {
        conversations,
        next,
        total: keyed.len(),
        truncated,
    })
}

/// [`ConversationRepo::clear_history`] of `repo`: `min_seq` rises to the session's latest seq as
/// `latest` reads it; returns what holds after (another clear may have gone higher).
async fn clear_to_latest<R: ConversationRepo>(
    repo: &R,
    latest: &LatestReader,
    user_id: &str,
    session_id: &str,
) -> Result<i64> {
    check_pair(user_id, session_id)?;
    let max_seq = latest_seq(latest, session_id).await?;
    repo.clear_history_to(user_id, session_id, max_seq).await?;
    Ok(repo.min_seq(user_id, session_id).await?.max(max_seq))
}

/// The latest seq of `session_id` as `latest` reads it (0: none).
async fn latest_seq(latest: &LatestReader, session_id: &str) -> Result<i64> {
    let read = latest.read(&[session_id.to_owned()], false).await?;
    Ok(read.into_iter().next().flatten().map_or(0, |l| l.seq))
}

/// `max(0, max_seq − max(has_read_seq, min_seq))`.
pub fn unread(max_seq: i64, has_read_seq: i64, min_seq: i64) -> i64 {
    max_seq.saturating_sub(has_read_seq.max(min_seq)).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unread_is_clamped_at_min_seq_and_zero() {
        assert_eq!(unread(10, 4, 0), 6);
        assert_eq!(unread(10, 4, 7), 3, "cleared above what was read");
        assert_eq!(unread(10, 12, 0), 0, "read beyond the latest");
        assert_eq!(unread(0, 0, 0), 0);
    }

    #[test]
    fn cursors_round_trip_and_order_pinned_then_newest_then_id() {
        let a = Cursor::of(true, 5, "z");
        let b = Cursor::of(false, 9, "a");
        let c = Cursor::of(false, 9, "b");
        let d = Cursor::of(false, 3, "a");
        let mut all = vec![d.clone(), c.clone(), b.clone(), a.clone()];
        all.sort();
        assert_eq!(all, vec![a.clone(), b, c, d]);
        assert_eq!(Cursor::parse(&a.encode()).unwrap(), a);
        let colon = Cursor::of(false, -1, "s:1");
        assert_eq!(Cursor::parse(&colon.encode()).unwrap(), colon);
        assert!(Cursor::parse("2:1:x").is_err());
        assert!(Cursor::parse("1:x:x").is_err());
    }

    #[test]
    fn in_place_fields_only_raise_read_state() {
        let m = |sid: &str, r, c| Membership {
            session_id: sid.into(),
            joined_at_ms: 0,
            pinned: false,
            muted: false,
            has_read_seq: r,
            min_seq: c,
        };
        let mut list = vec![m("a", 5, 0), m("b", 1, 3)];
        let f = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        cached::merge_fields(
            &mut list,
            &[
                f("r:a", "4:2"),
                f("r:b", "9:0"),
                f("r:zz", "100:100"),
                f("r:a", "x:1"),
            ],
        );
        assert_eq!(list, vec![m("a", 5, 2), m("b", 9, 3)]);
    }
}
