//! [`CachedConversationRepo`]: the list through the cache, read state updated in place.

#[allow(clippy::wildcard_imports)]
use super::*;
use futures::FutureExt;
use futures::future::BoxFuture;

/// [`ConversationRepo`] with the cache in front of `R`: the list through [`Cache`] (read state
/// updated in place, memberships marked deleted on change), the sessions' latests through Redis.
pub struct CachedConversationRepo<R> {
    inner: Arc<R>,
    cache: Cache,
    latest: LatestReader,
    config: ConversationConfig,
}

impl<R: ConversationRepo> CachedConversationRepo<R> {
    /// Caches `inner` in `cache` (made with repo name `"conversations"`); `latest` reads the
    /// sessions' latests (give it Redis); `config` as `inner`'s.
    pub fn new(
        inner: Arc<R>,
        cache: Cache,
        latest: LatestReader,
        config: ConversationConfig,
    ) -> Result<CachedConversationRepo<R>> {
        config.validate()?;
        Ok(CachedConversationRepo {
            inner,
            cache,
            latest,
            config,
        })
    }

    /// The repository behind the cache.
    pub fn inner(&self) -> &Arc<R> {
        &self.inner
    }

    /// The load of `user_id`'s list for the cache (it may call it twice: see [`Cache::get`]).
    fn load(
        &self,
        user_id: &str,
    ) -> impl Fn() -> BoxFuture<'static, Result<Cached>> + Send + Sync + 'static {
        let (inner, user_id) = (self.inner.clone(), user_id.to_owned());
        move || {
            let (inner, user_id) = (inner.clone(), user_id.clone());
            async move {
                let m = inner.memberships(&user_id).await?;
                serde_json::to_vec(&m)
                    .map(Some)
                    .map_err(|e| Error::Request(format!("encode conversations for the cache: {e}")))
            }
            .boxed()
        }
    }

    async fn raise(&self, user_id: &str, session_id: &str, has_read_seq: i64, min_seq: i64) {
        let value = format!("{has_read_seq}:{min_seq}");
        self.cache
            .update_in_place(
                &keys::conversations(user_id),
                &read_field(session_id),
                &value,
                self.config.max_conversations,
            )
            .await;
    }
}

/// The in-place field of a session's read state in a user's cached list.
fn read_field(session_id: &str) -> String {
    format!("r:{session_id}")
}

/// Applies the in-place fields (`r:<session>` = `has_read:min_seq`, each a maximum) to `list`.
pub(super) fn merge_fields(list: &mut [Membership], fields: &[(Vec<u8>, Vec<u8>)]) {
    for (field, value) in fields {
        let Some(sid) = field.strip_prefix(b"r:") else {
            continue;
        };
        let Ok(i) = list.binary_search_by(|m| m.session_id.as_bytes().cmp(sid)) else {
            continue;
        };
        let Some((read, min)) = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.split_once(':'))
            .and_then(|(r, c)| Some((r.parse::<i64>().ok()?, c.parse::<i64>().ok()?)))
        else {
            continue;
        };
        list[i].has_read_seq = list[i].has_read_seq.max(read);
        list[i].min_seq = list[i].min_seq.max(min);
    }
}

impl<R: ConversationRepo> ConversationRepo for CachedConversationRepo<R> {
    async fn join(&self, user_id: &str, session_id: &str, joined_at_ms: i64) -> Result<()> {
        self.inner.join(user_id, session_id, joined_at_ms).await?;
        self.cache.invalidate(&[keys::conversations(user_id)]).await;
        Ok(())
    }

    async fn leave(&self, user_id: &str, session_id: &str) -> Result<()> {
        self.inner.leave(user_id, session_id).await?;
        self.cache.invalidate(&[keys::conversations(user_id)]).await;
        Ok(())
    }

    async fn set_pinned(&self, user_id: &str, session_id: &str, pinned: bool) -> Result<()> {
        self.inner.set_pinned(user_id, session_id, pinned).await?;
        self.cache.invalidate(&[keys::conversations(user_id)]).await;
        Ok(())
    }

    async fn set_muted(&self, user_id: &str, session_id: &str, muted: bool) -> Result<()> {
        self.inner.set_muted(user_id, session_id, muted).await?;
        self.cache.invalidate(&[keys::conversations(user_id)]).await;
        Ok(())
    }

    async fn mark_read(&self, user_id: &str, session_id: &str, seq: i64) -> Result<()> {
        self.inner.mark_read(user_id, session_id, seq).await?;
        self.raise(user_id, session_id, seq, 0).await;
        Ok(())
    }

    async fn clear_history(&self, user_id: &str, session_id: &str) -> Result<i64> {
        clear_to_latest(self, &self.latest, user_id, session_id).await
    }

    async fn clear_history_to(&self, user_id: &str, session_id: &str, seq: i64) -> Result<()> {
        self.inner
            .clear_history_to(user_id, session_id, seq)
            .await?;
        self.raise(user_id, session_id, 0, seq).await;
        Ok(())
    }

    async fn min_seq(&self, user_id: &str, session_id: &str) -> Result<i64> {
        check_pair(user_id, session_id)?;
        let list = self.memberships(user_id).await?;
        match list
            .list
            .binary_search_by(|m| m.session_id.as_str().cmp(session_id))
        {
            Ok(i) => Ok(list.list[i].min_seq),
            // Not a member (or beyond the bound): the database's word.
            Err(_) => self.inner.min_seq(user_id, session_id).await,
        }
    }

    async fn memberships(&self, user_id: &str) -> Result<Memberships> {
        check_id("user_id", user_id)?;
        let entry = self
            .cache
            .get_entry(keys::conversations(user_id), self.load(user_id))
            .await?;
        let decoded = entry
            .value
            .as_deref()
            .map(serde_json::from_slice::<Memberships>);
        let mut memberships = match decoded {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cached conversations do not decode; reading the database");
                return self.inner.memberships(user_id).await;
            }
            None => Memberships::default(),
        };
        memberships.list.truncate(self.config.max_conversations);
        merge_fields(&mut memberships.list, &entry.fields);
        Ok(memberships)
    }

    fn latest(&self) -> &LatestReader {
        &self.latest
    }

    fn config(&self) -> &ConversationConfig {
        &self.config
    }
}
