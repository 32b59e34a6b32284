//! Sessions and their members: [`SessionRepo`], on CQL ([`CqlSessionRepo`]: the `sessions` and
//! `session_members` tables) and cached ([`CachedSessionRepo`]). A group's member list is read on
//! every group message (fan-out), so it is cached whole for groups up to
//! [`SessionsConfig::members_cache_max`] members and paged from the cached list; a larger group is
//! paged from CQL (its pages are bounded by the request).
//!
//! `member_count` is exact: a member row is inserted or deleted by a lightweight transaction, and
//! only the call whose transaction applied moves the count, by compare-and-set. A process that dies
//! between the two leaves the count off by one until [`CqlSessionRepo::recount`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chatlog_schemas::SessionType;
use scylla::DeserializeRow;
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue, Row};
use serde::{Deserialize, Serialize};

use super::{check_id, decode_cached, encode_cached, prepare};
use crate::cache::{Cache, Cached};
use crate::seq::SerialMode;
use crate::{Error, Result, keys, telemetry};

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

/// The CQL statements of `sessions` and `session_members`.
struct Statements {
    select: PreparedStatement,
    upsert: PreparedStatement,
    count: PreparedStatement,
    count_cas: PreparedStatement,
    count_set: PreparedStatement,
    member_insert: PreparedStatement,
    member_import: PreparedStatement,
    member_delete: PreparedStatement,
    member_page: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Arc<Session>, ks: &str, serial: SerialMode) -> Result<Statements> {
        let lwt = |mut s: PreparedStatement| {
            s.set_consistency(serial.commit());
            s.set_serial_consistency(Some(serial.serial()));
            s
        };
        let mut count = prepare(
            session,
            format!("SELECT member_count FROM {ks}.sessions WHERE session_id = ?"),
            "sessions count",
        )
        .await?;
        count.set_consistency(serial.read());
        let members = format!("{ks}.session_members");
        Ok(Statements {
            select: prepare(
                session,
                format!(
                    "SELECT session_id, session_type, name, owner_id, member_count, created_at, \
                     updated_at FROM {ks}.sessions WHERE session_id = ?"
                ),
                "sessions select",
            )
            .await?,
            upsert: prepare(
                session,
                format!(
                    "UPDATE {ks}.sessions SET session_type = ?, name = ?, owner_id = ?, \
                     created_at = ?, updated_at = ? WHERE session_id = ?"
                ),
                "sessions upsert",
            )
            .await?,
            count,
            count_cas: lwt(prepare(
                session,
                format!(
                    "UPDATE {ks}.sessions SET member_count = ? WHERE session_id = ? \
                     IF member_count = ?"
                ),
                "sessions count cas",
            )
            .await?),
            count_set: lwt(prepare(
                session,
                format!("UPDATE {ks}.sessions SET member_count = ? WHERE session_id = ? IF EXISTS"),
                "sessions count set",
            )
            .await?),
            member_insert: lwt(prepare(
                session,
                format!(
                    "INSERT INTO {members} (session_id, user_id, role, joined_at) \
                     VALUES (?, ?, ?, ?) IF NOT EXISTS"
                ),
                "members insert",
            )
            .await?),
            member_import: prepare(
                session,
                format!(
                    "INSERT INTO {members} (session_id, user_id, role, joined_at) \
                     VALUES (?, ?, ?, ?)"
                ),
                "members import",
            )
            .await?,
            member_delete: lwt(prepare(
                session,
                format!("DELETE FROM {members} WHERE session_id = ? AND user_id = ? IF EXISTS"),
                "members delete",
            )
            .await?),
            member_page: prepare(
                session,
                format!(
                    "SELECT user_id, role, joined_at FROM {members} \
                     WHERE session_id = ? AND user_id > ? LIMIT ?"
                ),
                "members page",
            )
            .await?,
        })
    }
}

#[derive(DeserializeRow)]
struct SessionRow {
    session_id: String,
    session_type: Option<i8>,
    name: Option<String>,
    owner_id: Option<String>,
    member_count: Option<i64>,
    created_at: Option<CqlTimestamp>,
    updated_at: Option<CqlTimestamp>,
}

impl From<SessionRow> for SessionInfo {
    fn from(row: SessionRow) -> SessionInfo {
        SessionInfo {
            session_id: row.session_id,
            session_type: row
                .session_type
                .and_then(|t| SessionType::from_index(t as u32))
                .unwrap_or(SessionType::Single),
            name: row.name.unwrap_or_default(),
            owner_id: row.owner_id.unwrap_or_default(),
            member_count: row.member_count.unwrap_or(0),
            created_at_ms: row.created_at.map_or(0, |t| t.0),
            updated_at_ms: row.updated_at.map_or(0, |t| t.0),
        }
    }
}

#[derive(DeserializeRow)]
struct MemberRow {
    user_id: String,
    role: Option<i8>,
    joined_at: Option<CqlTimestamp>,
}

impl From<MemberRow> for Member {
    fn from(row: MemberRow) -> Member {
        Member {
            user_id: row.user_id,
            role: MemberRole::from_code(row.role),
            joined_at_ms: row.joined_at.map_or(0, |t| t.0),
        }
    }
}

/// Whether an LWT applied, and the row's current `member_count` when it did not.
fn lwt_outcome(row: &Row, count_column: Option<usize>) -> (bool, Option<i64>) {
    let applied = matches!(row.columns.first(), Some(Some(CqlValue::Boolean(true))));
    let current = count_column.and_then(|i| match row.columns.get(i) {
        Some(Some(CqlValue::BigInt(v))) => Some(*v),
        _ => None,
    });
    (applied, current)
}

/// [`SessionRepo`] on the `sessions` and `session_members` tables.
pub struct CqlSessionRepo {
    session: Arc<Session>,
    statements: Statements,
    reads: AtomicU64,
}

impl CqlSessionRepo {
    /// Prepares the statements on `keyspace` (migrated: see [`crate::migrate`]).
    pub async fn new(
        session: Arc<Session>,
        keyspace: &str,
        config: &SessionsConfig,
    ) -> Result<CqlSessionRepo> {
        Ok(CqlSessionRepo {
            statements: Statements::prepare(&session, keyspace, config.serial).await?,
            session,
            reads: AtomicU64::new(0),
        })
    }

    /// Queries that read rows so far (a session lookup, a member page).
    pub fn db_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Runs an LWT; whether it applied, and `member_count` as the row holds it when it did not.
    async fn lwt(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        what: &'static str,
    ) -> Result<(bool, Option<i64>)> {
        let rows = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| Error::cql(what, e))?
            .into_rows_result()
            .map_err(|e| Error::cql(what, e))?;
        let count_column = rows
            .column_specs()
            .get_by_name("member_count")
            .map(|(i, _)| i);
        let row: Row = rows.first_row().map_err(|e| Error::cql(what, e))?;
        Ok(lwt_outcome(&row, count_column))
    }

    /// Moves `member_count` by `delta` (compare-and-set from the value read at serial
    /// consistency; a lost race retries from the value the transaction saw).
    async fn adjust_count(&self, session_id: &str, delta: i64) -> Result<()> {
        let what = "read sessions.member_count";
        let mut current = self
            .session
            .execute_unpaged(&self.statements.count, (session_id,))
            .await
            .map_err(|e| Error::cql(what, e))?
            .into_rows_result()
            .map_err(|e| Error::cql(what, e))?
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| Error::cql(what, e))?
            .and_then(|(c,)| c);
        for _ in 0..COUNT_ATTEMPTS {
            let next = (current.unwrap_or(0) + delta).max(0);
            let (applied, seen) = self
                .lwt(
                    &self.statements.count_cas,
                    (next, session_id, current),
                    "update sessions.member_count",
                )
                .await?;
            if applied {
                return Ok(());
            }
            current = seen;
        }
        Err(Error::Request(format!(
            "session {session_id:?}: member_count kept changing under {COUNT_ATTEMPTS} attempts"
        )))
    }

    /// Adds members in bulk (imports, migrations): plain inserts in single-partition batches,
    /// then [`recount`](Self::recount). Not for use while members are being added or removed
    /// one by one (the count would be recomputed under them).
    pub async fn import_members(&self, session_id: &str, members: &[Member]) -> Result<()> {
        check_id("session_id", session_id)?;
        for chunk in members.chunks(IMPORT_BATCH) {
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values = Vec::with_capacity(chunk.len());
            for m in chunk {
                check_id("user_id", &m.user_id)?;
                batch.append_statement(self.statements.member_import.clone());
                values.push((
                    session_id,
                    m.user_id.as_str(),
                    m.role.code(),
                    CqlTimestamp(m.joined_at_ms),
                ));
            }
            self.session
                .batch(&batch, values)
                .await
                .map_err(|e| Error::cql("import session_members", e))?;
        }
        self.recount(session_id).await.map(drop)
    }

    /// Counts the session's members (paged) and sets `member_count` to it; returns the count.
    pub async fn recount(&self, session_id: &str) -> Result<i64> {
        let mut count = 0i64;
        let mut cursor = String::new();
        loop {
            let page = self.page(session_id, &cursor, MAX_PAGE).await?;
            count += page.len() as i64;
            match page.last() {
                Some(last) if page.len() == MAX_PAGE => cursor.clone_from(&last.user_id),
                _ => break,
            }
        }
        self.lwt(
            &self.statements.count_set,
            (count, session_id),
            "set sessions.member_count",
        )
        .await?;
        Ok(count)
    }

    async fn page(&self, session_id: &str, after: &str, limit: usize) -> Result<Vec<Member>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let what = "read session_members";
        let rows = self
            .session
            .execute_unpaged(
                &self.statements.member_page,
                (session_id, after, limit as i32),
            )
            .await
            .map_err(|e| Error::cql(what, e))?
            .into_rows_result()
            .map_err(|e| Error::cql(what, e))?;
        let mut members = Vec::with_capacity(limit.min(rows.rows_num()));
        for row in rows.rows::<MemberRow>().map_err(|e| Error::cql(what, e))? {
            members.push(Member::from(row.map_err(|e| Error::cql(what, e))?));
        }
        Ok(members)
    }
}

impl SessionRepo for CqlSessionRepo {
    async fn get(&self, session_id: &str) -> Result<Option<SessionInfo>> {
        check_id("session_id", session_id)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        let what = "read sessions";
        let row = self
            .session
            .execute_unpaged(&self.statements.select, (session_id,))
            .await
            .map_err(|e| Error::cql(what, e))?
            .into_rows_result()
            .map_err(|e| Error::cql(what, e))?
            .maybe_first_row::<SessionRow>()
            .map_err(|e| Error::cql(what, e))?;
        Ok(row.map(SessionInfo::from))
    }

    async fn get_many(&self, session_ids: &[String]) -> Result<Vec<Option<SessionInfo>>> {
        check_batch(session_ids)?;
        // Chunks of concurrent reads, built without closures (a closure returning this trait's
        // futures trips the compiler's `Send` check).
        let mut sessions = Vec::with_capacity(session_ids.len());
        for chunk in session_ids.chunks(32) {
            let mut reads = Vec::with_capacity(chunk.len());
            for id in chunk {
                reads.push(self.get(id));
            }
            sessions.extend(futures::future::try_join_all(reads).await?);
        }
        Ok(sessions)
    }

    async fn upsert(&self, s: &SessionInfo) -> Result<()> {
        check_session(s)?;
        self.session
            .execute_unpaged(
                &self.statements.upsert,
                (
                    s.session_type.index() as i8,
                    &s.name,
                    &s.owner_id,
                    CqlTimestamp(s.created_at_ms),
                    CqlTimestamp(s.updated_at_ms),
                    &s.session_id,
                ),
            )
            .await
            .map_err(|e| Error::cql("write sessions", e))?;
        Ok(())
    }

    async fn add_member(&self, session_id: &str, member: &Member) -> Result<bool> {
        check_id("session_id", session_id)?;
        check_id("user_id", &member.user_id)?;
        if self.get(session_id).await?.is_none() {
            return Err(Error::Request(format!(
                "session {session_id:?} does not exist: upsert it before adding members"
            )));
        }
        let (applied, _) = self
            .lwt(
                &self.statements.member_insert,
                (
                    session_id,
                    member.user_id.as_str(),
                    member.role.code(),
                    CqlTimestamp(member.joined_at_ms),
                ),
                "insert session_members",
            )
            .await?;
        if applied {
            self.adjust_count(session_id, 1).await?;
        }
        Ok(applied)
    }

    async fn remove_member(&self, session_id: &str, user_id: &str) -> Result<bool> {
        check_id("session_id", session_id)?;
        check_id("user_id", user_id)?;
        let (applied, _) = self
            .lwt(
                &self.statements.member_delete,
                (session_id, user_id),
                "delete session_members",
            )
            .await?;
        if applied {
            self.adjust_count(session_id, -1).await?;
        }
        Ok(applied)
    }

    async fn members(
        &self,
        session_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage> {
        check_id("session_id", session_id)?;
        let limit = limit.clamp(1, MAX_PAGE);
        // One row more than asked tells whether another page follows.
        let mut members = self
            .page(session_id, cursor.unwrap_or(""), limit + 1)
            .await?;
        Ok(page_of(&mut members, limit))
    }

    async fn all_members(&self, session_id: &str, at_most: usize) -> Result<Option<Vec<Member>>> {
        check_id("session_id", session_id)?;
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self.page(session_id, &cursor, MAX_PAGE).await?;
            if all.len() + page.len() > at_most {
                return Ok(None);
            }
            let full = page.len() == MAX_PAGE;
            all.extend(page);
            match all.last() {
                Some(last) if full => cursor.clone_from(&last.user_id),
                _ => return Ok(Some(all)),
            }
        }
    }
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

/// What the members entry caches: the whole list, or the fact that it is too long to cache.
#[derive(Serialize, Deserialize)]
enum CachedMembers {
    All(Vec<Member>),
    TooMany,
}

/// [`SessionRepo`] with the cache in front of `R`: sessions and (up to
/// [`SessionsConfig::members_cache_max`]) whole member lists read through [`Cache`]; writes go
/// to `R` first, then mark the session's entries deleted.
pub struct CachedSessionRepo<R> {
    inner: Arc<R>,
    cache: Cache,
    members_cache_max: usize,
}

impl<R: SessionRepo> CachedSessionRepo<R> {
    /// Caches `inner` in `cache` (made with repo name `"sessions"`).
    pub fn new(inner: Arc<R>, cache: Cache, config: &SessionsConfig) -> CachedSessionRepo<R> {
        CachedSessionRepo {
            inner,
            cache,
            members_cache_max: config.members_cache_max,
        }
    }

    /// The repository behind the cache.
    pub fn inner(&self) -> &Arc<R> {
        &self.inner
    }

    fn load(&self, session_id: &str) -> impl Future<Output = Result<Cached>> + Send + 'static {
        let (inner, id) = (self.inner.clone(), session_id.to_owned());
        async move { encode_cached(inner.get(&id).await?.as_ref()) }
    }

    async fn cached_members(&self, session_id: &str) -> Result<Option<CachedMembers>> {
        let (inner, id, max) = (
            self.inner.clone(),
            session_id.to_owned(),
            self.members_cache_max,
        );
        let load = async move {
            let all = inner.all_members(&id, max).await?;
            encode_cached(Some(
                &all.map_or(CachedMembers::TooMany, CachedMembers::All),
            ))
        };
        let cached = self
            .cache
            .get(keys::members(session_id), move || load)
            .await?;
        Ok(cached.and_then(|bytes| decode_cached(&bytes)))
    }
}

impl<R: SessionRepo> SessionRepo for CachedSessionRepo<R> {
    async fn get(&self, session_id: &str) -> Result<Option<SessionInfo>> {
        check_id("session_id", session_id)?;
        let load = self.load(session_id);
        match self
            .cache
            .get(keys::session(session_id), move || load)
            .await?
        {
            None => Ok(None),
            Some(bytes) => match decode_cached(&bytes) {
                Some(session) => Ok(Some(session)),
                None => self.inner.get(session_id).await,
            },
        }
    }

    async fn get_many(&self, session_ids: &[String]) -> Result<Vec<Option<SessionInfo>>> {
        check_batch(session_ids)?;
        let (inner, ids) = (self.inner.clone(), Arc::new(session_ids.to_vec()));
        let load = move |i: usize| {
            let (inner, ids) = (inner.clone(), ids.clone());
            async move { encode_cached(inner.get(&ids[i]).await?.as_ref()) }
        };
        let keys = session_ids.iter().map(|id| keys::session(id)).collect();
        let cached = self.cache.get_many(keys, load).await?;
        let mut sessions = Vec::with_capacity(cached.len());
        for (id, c) in session_ids.iter().zip(cached) {
            sessions.push(match c {
                None => None,
                Some(bytes) => match decode_cached(&bytes) {
                    Some(session) => Some(session),
                    None => self.inner.get(id).await?,
                },
            });
        }
        Ok(sessions)
    }

    async fn upsert(&self, session: &SessionInfo) -> Result<()> {
        self.inner.upsert(session).await?;
        self.cache
            .invalidate(&[keys::session(&session.session_id)])
            .await;
        Ok(())
    }

    async fn add_member(&self, session_id: &str, member: &Member) -> Result<bool> {
        let added = self.inner.add_member(session_id, member).await;
        // Marked even after an error: the transaction may have applied before the error.
        self.cache
            .invalidate(&[keys::session(session_id), keys::members(session_id)])
            .await;
        added
    }

    async fn remove_member(&self, session_id: &str, user_id: &str) -> Result<bool> {
        let removed = self.inner.remove_member(session_id, user_id).await;
        self.cache
            .invalidate(&[keys::session(session_id), keys::members(session_id)])
            .await;
        removed
    }

    async fn members(
        &self,
        session_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage> {
        check_id("session_id", session_id)?;
        let Some(CachedMembers::All(all)) = self.cached_members(session_id).await? else {
            metrics::counter!(telemetry::REPO_MEMBERS_UNCACHED_PAGES).increment(1);
            return self.inner.members(session_id, cursor, limit).await;
        };
        let limit = limit.clamp(1, MAX_PAGE);
        let start = cursor.map_or(0, |c| all.partition_point(|m| m.user_id.as_str() <= c));
        let end = all.len().min(start.saturating_add(limit + 1));
        let mut members = all[start..end].to_vec();
        Ok(page_of(&mut members, limit))
    }

    async fn all_members(&self, session_id: &str, at_most: usize) -> Result<Option<Vec<Member>>> {
        check_id("session_id", session_id)?;
        match self.cached_members(session_id).await? {
            Some(CachedMembers::All(all)) if all.len() <= at_most => Ok(Some(all)),
            Some(CachedMembers::All(_)) => Ok(None),
            _ => self.inner.all_members(session_id, at_most).await,
        }
    }
}
