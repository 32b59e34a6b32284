//! [`CachedSessionRepo`]: sessions and whole member lists through the cache.

use std::sync::Arc;

use futures::FutureExt;

use serde::{Deserialize, Serialize};

use super::{
    MAX_PAGE, Member, MemberPage, SessionInfo, SessionRepo, SessionsConfig, check_batch, page_of,
};
use crate::cache::Cache;
use crate::repo::by_id::ById;
use crate::repo::{check_id, decode_cached, encode_cached};
use crate::{Result, keys, telemetry};

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
    by_id: ById<SessionInfo>,
    cache: Cache,
    members_cache_max: usize,
}

impl<R: SessionRepo> CachedSessionRepo<R> {
    /// Caches `inner` in `cache` (made with repo name `"sessions"`).
    pub fn new(inner: Arc<R>, cache: Cache, config: &SessionsConfig) -> CachedSessionRepo<R> {
        let db = inner.clone();
        let read = move |id: String| {
            let db = db.clone();
            async move { db.get(&id).await }
        };
        CachedSessionRepo {
            inner,
            by_id: ById::new(cache.clone(), keys::session, read),
            cache,
            members_cache_max: config.members_cache_max,
        }
    }

    /// The repository behind the cache.
    pub fn inner(&self) -> &Arc<R> {
        &self.inner
    }

    /// Marks the session (its count) and its member list deleted after a member change — even
    /// after an error: the transaction may have applied before the error.
    async fn members_changed(&self, session_id: &str) {
        let keys = [keys::session(session_id), keys::members(session_id)];
        self.cache.invalidate(&keys).await;
    }

    async fn cached_members(&self, session_id: &str) -> Result<Option<CachedMembers>> {
        check_id("session_id", session_id)?;
        let (inner, id, max) = (
            self.inner.clone(),
            session_id.to_owned(),
            self.members_cache_max,
        );
        // The cache may call it twice (see `Cache::get`).
        let load = move || {
            let (inner, id) = (inner.clone(), id.clone());
            async move {
                let all = inner.all_members(&id, max).await?;
                encode_cached(Some(
                    &all.map_or(CachedMembers::TooMany, CachedMembers::All),
                ))
            }
            .boxed()
        };
        let cached = self.cache.get(keys::members(session_id), load).await?;
        Ok(cached.and_then(|bytes| decode_cached(&bytes)))
    }
}

impl<R: SessionRepo> SessionRepo for CachedSessionRepo<R> {
    async fn get(&self, session_id: &str) -> Result<Option<SessionInfo>> {
        check_id("session_id", session_id)?;
        self.by_id.get(session_id).await
    }

    async fn get_many(&self, session_ids: &[String]) -> Result<Vec<Option<SessionInfo>>> {
        check_batch(session_ids)?;
        self.by_id.get_many(session_ids).await
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
        self.members_changed(session_id).await;
        added
    }

    async fn remove_member(&self, session_id: &str, user_id: &str) -> Result<bool> {
        let removed = self.inner.remove_member(session_id, user_id).await;
        self.members_changed(session_id).await;
        removed
    }

    async fn members(
        &self,
        session_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage> {
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
        match self.cached_members(session_id).await? {
            Some(CachedMembers::All(all)) if all.len() <= at_most => Ok(Some(all)),
            Some(CachedMembers::All(_)) => Ok(None),
            _ => self.inner.all_members(session_id, at_most).await,
        }
    }
}
