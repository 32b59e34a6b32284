//! Sessions and their members: [`SessionRepo`], on CQL ([`CqlSessionRepo`]: the `sessions` and
//! `session_members` tables) and cached ([`CachedSessionRepo`]). A group's member list is read on
//! every group message (fan-out), so it is cached whole for groups up to
//! [`SessionsConfig::members_cache_max`] members and paged from the cached list; a larger group is
//! paged from CQL (its pages are bounded by the request).
//!
//! `member_count` is exact: a member row is inserted or deleted by a lightweight transaction, and
//! only the call whose transaction applied moves the count, by compare-and-set. A process that dies
//! between the two leaves the count off by one until [`CqlSessionRepo::recount`].
//!
//! # Layout
//! - this file: the types, the trait, the settings;
//! - `cql.rs`: the statements and [`CqlSessionRepo`];
//! - `cached.rs`: the decorator [`CachedSessionRepo`].

mod cached;
mod cql;

use std::future::Future;

use chatlog_schemas::SessionType;
use serde::{Deserialize, Serialize};

pub use cached::CachedSessionRepo;
pub use cql::CqlSessionRepo;

use super::check_id;
use crate::seq::SerialMode;
use crate::{Error, Result};

/// Most members one page holds; larger limits are capped.
pub const MAX_PAGE: usize = 1000;
/// Most sessions one `get_many` call takes.
pub const MAX_BATCH: usize = 1000;
/// Longest session name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Rows per batch of [`CqlSessionRepo::import_members`] (one partition per batch).
const IMPORT_BATCH: usize = 100;
/// Compare-and-set attempts on `member_count` before giving up (each loses only to another
/// member change of the same session).
const COUNT_ATTEMPTS: usize = 64;

/// Settings of the session repositories.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Groups with at most this many members have their whole member list cached (one entry,
    /// about 60 bytes per member); larger groups are paged from CQL. Default 10,000.
    pub members_cache_max: usize,
    /// Serial consistency of the member and count transactions (as the seq allocator's).
    pub serial: SerialMode,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            members_cache_max: 10_000,
            serial: SerialMode::default(),
        }
    }
}

/// A session (conversation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session's id (the messages' `session_id`).
    pub session_id: String,
    /// Kind of conversation.
    pub session_type: SessionType,
    /// Display name (groups).
    pub name: String,
    /// The owner's user id (empty for none).
    pub owner_id: String,
    /// Members now (kept by add/remove; ignored by [`SessionRepo::upsert`]).
    pub member_count: i64,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Last change of name, owner or type, ms since the Unix epoch.
    pub updated_at_ms: i64,
}

/// A member's role (stored as a `tinyint`; an unknown value reads as `Member`, the least).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    /// A member (0).
    Member,
    /// An administrator (1).
    Admin,
    /// The owner (2).
    Owner,
}

impl MemberRole {
    fn code(self) -> i8 {
        match self {
            MemberRole::Member => 0,
            MemberRole::Admin => 1,
            MemberRole::Owner => 2,
        }
    }

    fn from_code(code: Option<i8>) -> MemberRole {
        match code {
            Some(1) => MemberRole::Admin,
            Some(2) => MemberRole::Owner,
            _ => MemberRole::Member,
        }
    }
}

/// One member of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's user id.
    pub user_id: String,
    /// Role in the session.
    pub role: MemberRole,
    /// When the member joined, ms since the Unix epoch.
    pub joined_at_ms: i64,
}

/// One page of members, in `user_id` order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberPage {
    /// The members.
    pub members: Vec<Member>,
    /// The cursor of the next page (the last `user_id` of this one), `None` after the last page.
    pub next: Option<String>,
}

/// Sessions and their members.
pub trait SessionRepo: Send + Sync + 'static {
    /// The session, `None` if there is none.
    fn get(&self, session_id: &str) -> impl Future<Output = Result<Option<SessionInfo>>> + Send;

    /// The sessions of `ids` (result `i` is id `i`'s); at most [`MAX_BATCH`].
    fn get_many(
        &self,
        session_ids: &[String],
    ) -> impl Future<Output = Result<Vec<Option<SessionInfo>>>> + Send;

    /// Creates the session or changes its type, name, owner and times (never `member_count`).
    fn upsert(&self, session: &SessionInfo) -> impl Future<Output = Result<()>> + Send;

    /// Adds `member` to an existing session; `false` if the user was a member already.
    fn add_member(
        &self,
        session_id: &str,
        member: &Member,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Removes a member; `false` if the user was not a member.
    fn remove_member(
        &self,
        session_id: &str,
        user_id: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// The members after `cursor` (`None`: from the first), at most `limit` (capped at
    /// [`MAX_PAGE`]), in `user_id` order.
    fn members(
        &self,
        session_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<MemberPage>> + Send;

    /// Every member if the session has at most `at_most`, else `None` (what the cache holds).
    fn all_members(
        &self,
        session_id: &str,
        at_most: usize,
    ) -> impl Future<Output = Result<Option<Vec<Member>>>> + Send;
}

fn check_session(session: &SessionInfo) -> Result<()> {
    check_id("session_id", &session.session_id)?;
    if !session.owner_id.is_empty() {
        check_id("owner_id", &session.owner_id)?;
    }
    if session.name.len() > MAX_NAME_BYTES {
        return Err(Error::Request(format!(
            "session {:?}: name over {MAX_NAME_BYTES} bytes",
            session.session_id
        )));
    }
    Ok(())
}

fn check_batch(session_ids: &[String]) -> Result<()> {
    if session_ids.len() > MAX_BATCH {
        return Err(Error::Request(format!(
            "{} sessions asked in one call, at most {MAX_BATCH}",
            session_ids.len()
        )));
    }
    session_ids
        .iter()
        .try_for_each(|id| check_id("session_id", id))
}

/// The first `limit` of `members` (which holds at most one more) as a page.
fn page_of(members: &mut Vec<Member>, limit: usize) -> MemberPage {
    let more = members.len() > limit;
    members.truncate(limit);
    MemberPage {
        next: more
            .then(|| members.last().map(|m| m.user_id.clone()))
            .flatten(),
        members: std::mem::take(members),
    }
}
