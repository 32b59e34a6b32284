//! Users: [`UserRepo`], on CQL ([`CqlUserRepo`], the `users` table) and cached
//! ([`CachedUserRepo`]). Logic reads a user on every authentication, so the cached read is the
//! hot path: one Redis round trip on a hit.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use scylla::DeserializeRow;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use serde::{Deserialize, Serialize};

use super::by_id::ById;
use super::{check_id, prepare, read_each, read_row};
use crate::cache::Cache;
use crate::{Error, Result, keys};

/// Most users one `get_many` call takes.
pub const MAX_BATCH: usize = 1000;

/// Bounds of a user's fields, checked on every write (so what is read back is bounded too).
pub const MAX_NICKNAME_BYTES: usize = 256;
/// See [`MAX_NICKNAME_BYTES`].
pub const MAX_AVATAR_URL_BYTES: usize = 2048;
/// Most `ext` entries, and their total bytes.
pub const MAX_EXT_ENTRIES: usize = 32;
/// See [`MAX_EXT_ENTRIES`].
pub const MAX_EXT_BYTES: usize = 4096;

/// A user: profile and status. Never a credential (those stay with the identity service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub user_id: String,
    /// Display name.
    pub nickname: String,
    /// Avatar location.
    pub avatar_url: String,
    /// Whether the user may sign in.
    pub status: UserStatus,
    /// Free-form profile fields.
    pub ext: BTreeMap<String, String>,
    /// When the profile last changed, ms since the Unix epoch (set by the caller).
    pub updated_at_ms: i64,
}

/// Whether a user may sign in (stored as a `tinyint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserStatus {
    /// May sign in (0).
    Active,
    /// Blocked by an operator (1); also what an unknown stored value reads as, so that a status
    /// written by a newer version never lets a user in.
    Disabled,
    /// Deleted account, kept for its messages (2).
    Deleted,
}

impl UserStatus {
    fn code(self) -> i8 {
        match self {
            UserStatus::Active => 0,
            UserStatus::Disabled => 1,
            UserStatus::Deleted => 2,
        }
    }

    fn from_code(code: Option<i8>) -> UserStatus {
        match code {
            Some(0) => UserStatus::Active,
            Some(2) => UserStatus::Deleted,
            _ => UserStatus::Disabled,
        }
    }
}

impl User {
    /// Checks the id and the field bounds.
    pub fn validate(&self) -> Result<()> {
        check_id("user_id", &self.user_id)?;
        let ext_bytes: usize = self.ext.iter().map(|(k, v)| k.len() + v.len()).sum();
        if self.nickname.len() > MAX_NICKNAME_BYTES
            || self.avatar_url.len() > MAX_AVATAR_URL_BYTES
            || self.ext.len() > MAX_EXT_ENTRIES
            || ext_bytes > MAX_EXT_BYTES
        {
            return Err(Error::Request(format!(
                "user {:?}: nickname ≤ {MAX_NICKNAME_BYTES} bytes, avatar_url ≤ \
                 {MAX_AVATAR_URL_BYTES}, ext ≤ {MAX_EXT_ENTRIES} entries and {MAX_EXT_BYTES} bytes",
                self.user_id
            )));
        }
        Ok(())
    }
}

/// Users, by id.
pub trait UserRepo: Send + Sync + 'static {
    /// The user, `None` if there is none.
    fn get(&self, user_id: &str) -> impl Future<Output = Result<Option<User>>> + Send;

    /// The users of `user_ids` (result `i` is id `i`'s); at most [`MAX_BATCH`] ids.
    fn get_many(
        &self,
        user_ids: &[String],
    ) -> impl Future<Output = Result<Vec<Option<User>>>> + Send;

    /// Creates or replaces the user.
    fn upsert(&self, user: &User) -> impl Future<Output = Result<()>> + Send;

    /// Deletes the user (no-op if there is none).
    fn delete(&self, user_id: &str) -> impl Future<Output = Result<()>> + Send;
}

fn check_batch(user_ids: &[String]) -> Result<()> {
    if user_ids.len() > MAX_BATCH {
        return Err(Error::Request(format!(
            "{} users asked in one call, at most {MAX_BATCH}",
            user_ids.len()
        )));
    }
    user_ids.iter().try_for_each(|id| check_id("user_id", id))
}

fn select_cql(keyspace: &str) -> String {
    format!(
        "SELECT user_id, nickname, avatar_url, status, ext, updated_at FROM {keyspace}.users \
         WHERE user_id = ?"
    )
}

fn insert_cql(keyspace: &str) -> String {
    format!(
        "INSERT INTO {keyspace}.users (user_id, nickname, avatar_url, status, ext, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?)"
    )
}

fn delete_cql(keyspace: &str) -> String {
    format!("DELETE FROM {keyspace}.users WHERE user_id = ?")
}

#[derive(DeserializeRow)]
struct UserRow {
    user_id: String,
    nickname: Option<String>,
    avatar_url: Option<String>,
    status: Option<i8>,
    ext: Option<BTreeMap<String, String>>,
    updated_at: Option<CqlTimestamp>,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> User {
        User {
            user_id: row.user_id,
            nickname: row.nickname.unwrap_or_default(),
            avatar_url: row.avatar_url.unwrap_or_default(),
            status: UserStatus::from_code(row.status),
            ext: row.ext.unwrap_or_default(),
            updated_at_ms: row.updated_at.map_or(0, |t| t.0),
        }
    }
}

/// [`UserRepo`] on the `users` table.
pub struct CqlUserRepo {
    session: Arc<Session>,
    select: PreparedStatement,
    insert: PreparedStatement,
    delete: PreparedStatement,
    reads: AtomicU64,
}

impl CqlUserRepo {
    /// Prepares the statements on `keyspace` (migrated: see [`crate::migrate`]).
    pub async fn new(session: Arc<Session>, keyspace: &str) -> Result<CqlUserRepo> {
        Ok(CqlUserRepo {
            select: prepare(&session, select_cql(keyspace), "users select").await?,
            insert: prepare(&session, insert_cql(keyspace), "users insert").await?,
            delete: prepare(&session, delete_cql(keyspace), "users delete").await?,
            session,
            reads: AtomicU64::new(0),
        })
    }

    /// Rows read so far (one per user looked up).
    pub fn db_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

impl UserRepo for CqlUserRepo {
    async fn get(&self, user_id: &str) -> Result<Option<User>> {
        check_id("user_id", user_id)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        let row: Option<UserRow> =
            read_row(&self.session, &self.select, (user_id,), "read users").await?;
        Ok(row.map(User::from))
    }

    async fn get_many(&self, user_ids: &[String]) -> Result<Vec<Option<User>>> {
        check_batch(user_ids)?;
        read_each(user_ids, |id| self.get(id)).await
    }

    async fn upsert(&self, user: &User) -> Result<()> {
        user.validate()?;
        self.session
            .execute_unpaged(
                &self.insert,
                (
                    &user.user_id,
                    &user.nickname,
                    &user.avatar_url,
                    user.status.code(),
                    &user.ext,
                    CqlTimestamp(user.updated_at_ms),
                ),
            )
            .await
            .map_err(|e| Error::cql("write users", e))?;
        Ok(())
    }

    async fn delete(&self, user_id: &str) -> Result<()> {
        check_id("user_id", user_id)?;
        self.session
            .execute_unpaged(&self.delete, (user_id,))
            .await
            .map_err(|e| Error::cql("delete users", e))?;
        Ok(())
    }
}

/// [`UserRepo`] with the cache in front of `R`: reads through [`Cache`], writes `R` first and
/// then mark the user's entry deleted.
pub struct CachedUserRepo<R> {
    inner: Arc<R>,
    by_id: ById<User>,
}

impl<R: UserRepo> CachedUserRepo<R> {
    /// Caches `inner` in `cache` (made with repo name `"users"`).
    pub fn new(inner: Arc<R>, cache: Cache) -> CachedUserRepo<R> {
        let db = inner.clone();
        let read = move |id: String| {
            let db = db.clone();
            async move { db.get(&id).await }
        };
        CachedUserRepo {
            inner,
            by_id: ById::new(cache, keys::user, read),
        }
    }

    /// The repository behind the cache.
    pub fn inner(&self) -> &Arc<R> {
        &self.inner
    }
}

impl<R: UserRepo> UserRepo for CachedUserRepo<R> {
    async fn get(&self, user_id: &str) -> Result<Option<User>> {
        check_id("user_id", user_id)?;
        self.by_id.get(user_id).await
    }

    async fn get_many(&self, user_ids: &[String]) -> Result<Vec<Option<User>>> {
        check_batch(user_ids)?;
        self.by_id.get_many(user_ids).await
    }

    async fn upsert(&self, user: &User) -> Result<()> {
        self.inner.upsert(user).await?;
        self.by_id
            .cache()
            .invalidate(&[keys::user(&user.user_id)])
            .await;
        Ok(())
    }

    async fn delete(&self, user_id: &str) -> Result<()> {
        self.inner.delete(user_id).await?;
        self.by_id.cache().invalidate(&[keys::user(user_id)]).await;
        Ok(())
    }
}
