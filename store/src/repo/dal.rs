//! [`Dal`]: the cached repositories Logic builds once at startup, and the calls that keep two of
//! them consistent (a member joins the session's member list and the user's conversation list).

use std::sync::Arc;

use scylla::client::session::Session;
use serde::Deserialize;

use super::conversations::{
    CachedConversationRepo, ConversationConfig, ConversationRepo, CqlConversationRepo,
};
use super::latest::LatestReader;
use super::sessions::{CachedSessionRepo, CqlSessionRepo, Member, SessionRepo, SessionsConfig};
use super::users::{CachedUserRepo, CqlUserRepo};
use crate::cache::{Cache, CacheConfig};
use crate::{RedisConnections, Result};

/// The settings of the repositories (the `[dal]` section of Logic's configuration).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DalConfig {
    /// The cache in front of every repository.
    pub cache: CacheConfig,
    /// Sessions and members.
    pub sessions: SessionsConfig,
    /// Conversation lists and read state.
    pub conversations: ConversationConfig,
}

/// The cached users repository.
pub type Users = CachedUserRepo<CqlUserRepo>;
/// The cached sessions repository.
pub type Sessions = CachedSessionRepo<CqlSessionRepo>;
/// The cached conversations repository.
pub type Conversations = CachedConversationRepo<CqlConversationRepo>;

/// Every repository, cached, over one CQL session and one Redis. Cheap to share (`Arc` inside).
pub struct Dal {
    /// Users: looked up on every authentication.
    pub users: Arc<Users>,
    /// Sessions and their members.
    pub sessions: Arc<Sessions>,
    /// Each user's conversation list and read state.
    pub conversations: Arc<Conversations>,
}

impl Dal {
    /// The repositories on `keyspace` (migrated: see [`crate::migrate`]) and `redis`.
    pub async fn new(
        session: Arc<Session>,
        keyspace: &str,
        redis: RedisConnections,
        config: DalConfig,
    ) -> Result<Dal> {
        crate::telemetry::describe();
        let cache = |repo| Cache::new(redis.clone(), config.cache.clone(), repo);
        let users = CqlUserRepo::new(session.clone(), keyspace).await?;
        let sessions = CqlSessionRepo::new(session.clone(), keyspace, &config.sessions).await?;
        let conversations =
            CqlConversationRepo::new(session.clone(), keyspace, config.conversations.clone())
                .await?;
        let latest = LatestReader::new(
            session,
            keyspace,
            Some(redis.clone()),
            config.conversations.latest_ttl,
        )
        .await?;
        Ok(Dal {
            users: Arc::new(CachedUserRepo::new(Arc::new(users), cache("users")?)),
            sessions: Arc::new(CachedSessionRepo::new(
                Arc::new(sessions),
                cache("sessions")?,
                &config.sessions,
            )),
            conversations: Arc::new(CachedConversationRepo::new(
                Arc::new(conversations),
                cache("conversations")?,
                latest,
                config.conversations,
            )?),
        })
    }

    /// `member` joins session `session_id` (which must exist): the session's member list and
    /// count, then the member's conversation list. Idempotent — after an error, call it again:
    /// each step converges (the member row is inserted once, the membership is an upsert).
    /// Returns whether the member was new to the session.
    pub async fn join(&self, session_id: &str, member: &Member) -> Result<bool> {
        let added = self.sessions.add_member(session_id, member).await?;
        self.conversations
            .join(&member.user_id, session_id, member.joined_at_ms)
            .await?;
        Ok(added)
    }

    /// `user_id` leaves session `session_id`: the conversation list first (it stops showing at
    /// once), then the member list and count. Idempotent like [`join`](Dal::join). Returns
    /// whether the user was a member.
    pub async fn leave(&self, session_id: &str, user_id: &str) -> Result<bool> {
        self.conversations.leave(user_id, session_id).await?;
        self.sessions.remove_member(session_id, user_id).await
    }
}
