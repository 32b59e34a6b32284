//! Recall, edit, delete for everyone (through Kafka, like a send) and delete for me (per-user
//! state in CQL). See the crate docs for the flow and [`Actor`] for who may do what.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatlog_schemas::{
    ChatMessage, Codec, DEFAULT_MAX_ENCODED_BYTES, FINAL_VERSION_BIT, Limits, MAX_SEQ,
    MessageState, ValidationError,
};
use chatlog_store::RedisConnection;
use chatlog_store::hidden::{HiddenMessages, MAX_HIDE};
use chatlog_store::history::{History, HistoryConfig};
use chatlog_store::repo::sessions::MemberRole;
use scylla::client::session::Session;

use crate::{Error, Producer, ProducerConfig, Result};

/// Who asks for a mutation, as Logic checked it (the library trusts the identity, and applies
/// the policy: see [`Producer::recall`], [`Producer::edit`], [`Producer::delete_for_everyone`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A user acting on their own message (the library checks that they sent it).
    Sender(String),
    /// A member of the session with the role the session members repo
    /// ([`chatlog_store::repo::sessions`]) gives them.
    Member {
        /// The member's user id.
        user_id: String,
        /// Their role in the session.
        role: MemberRole,
    },
}

impl Actor {
    /// The acting user's id.
    pub fn user_id(&self) -> &str {
        match self {
            Actor::Sender(u) | Actor::Member { user_id: u, .. } => u,
        }
    }
}

/// What a mutation stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutated {
    /// The message's seq.
    pub seq: i64,
    /// The message's version now ([`ChatMessage::version`]): the CQL write timestamp of its
    /// row and the window member's prefix once the consumer applied it. The highest version of a
    /// seq is its final state, whatever order records arrive in.
    pub version: i64,
    /// The message in its new state, as produced (when `unchanged`: as it already was).
    pub message: ChatMessage,
    /// The Kafka partition of the mutation record (-1 when `unchanged`).
    pub partition: i32,
    /// Its offset in that partition (-1 when `unchanged`).
    pub offset: i64,
    /// The message was already in that final state (recalled or deleted): nothing was sent.
    pub unchanged: bool,
}

/// The three mutations that travel through Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Recall,
    Edit,
    Delete,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Recall => "recall",
            Action::Edit => "edit",
            Action::Delete => "delete_for_everyone",
        }
    }
}

/// Serialization stripes: mutations of one message in this process take turns (two edits at
/// once would both count `n + 1`).
const STRIPES: usize = 1024;

/// Mutations this process produced, remembered so the next one of the same message builds on it
/// before the consumer has stored it (an edit right after an edit counts 2; an edit right after
/// a recall is refused). Bounded: the oldest entries go first.
const RECENT: usize = 4096;

/// First and largest pause between two reads of a target not stored yet.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(250));

/// What recall, edit and delete read and write besides Kafka.
pub(crate) struct Mutations {
    history: History,
    hidden: HiddenMessages,
    wait_for_target: Duration,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    recent: Mutex<Recent>,
}

/// The state and version of the messages this process mutated last.
#[derive(Default)]
struct Recent {
    state: HashMap<(String, i64), MessageState>,
    order: VecDeque<(String, i64)>,
}

impl Recent {
    fn get(&self, session_id: &str, seq: i64) -> Option<&MessageState> {
        self.state.get(&(session_id.to_owned(), seq))
    }

    fn put(&mut self, session_id: &str, seq: i64, state: MessageState) {
        let key = (session_id.to_owned(), seq);
        if self.state.insert(key.clone(), state).is_none() {
            self.order.push_back(key);
            if self.order.len() > RECENT
                && let Some(old) = self.order.pop_front()
            {
                self.state.remove(&old);
            }
        }
    }
}

impl Mutations {
    pub(crate) async fn new(
        config: &ProducerConfig,
        session: Arc<Session>,
        keyspace: &str,
        redis: RedisConnection,
    ) -> Result<Mutations> {
        // Window members were written by consumers, whose limits may be above this producer's:
        // decode anything up to the record size bound (a member beyond it makes history read the
        // table instead, never fail).
        let max = DEFAULT_MAX_ENCODED_BYTES.max(crate::max_encoded_len(&config.limits));
        let codec = Codec::builder()
            .max_encoded_bytes(max)
            .limits(Limits {
                max_content_bytes: max,
                max_id_bytes: max,
                max_ext_entries: max,
                max_ext_bytes: max,
                max_skew: config.limits.max_skew,
            })
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        let history = History::new(
            session.clone(),
            keyspace,
            redis,
            codec,
            HistoryConfig {
                settle_horizon: config.settle_horizon,
                ..HistoryConfig::default()
            },
        )
        .await
        .map_err(Error::Store)?;
        let hidden = HiddenMessages::new(session, keyspace)
            .await
            .map_err(Error::Store)?;
        Ok(Mutations {
            history,
            hidden,
            wait_for_target: config.mutations.wait_for_target,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            recent: Mutex::new(Recent::default()),
        })
    }

    fn stripe(&self, session_id: &str, seq: i64) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (session_id, seq).hash(&mut h);
        &self.stripes[(h.finish() % STRIPES as u64) as usize]
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored message `seq` of `session_id`, read again with backoff while it is not stored
    /// yet (pending, or above the newest message known), up to `wait_for_target`.
    async fn target(&self, session_id: &str, seq: i64) -> Result<ChatMessage> {
        let deadline = Instant::now() + self.wait_for_target;
        let mut pause = BACKOFF.0;
        loop {
            let mut page = self
                .history
                .get(session_id, &[seq])
                .await
                .map_err(Error::Store)?;
            if let Some(i) = page.messages.iter().position(|m| m.seq == seq) {
                return Ok(page.messages.swap_remove(i));
            }
            let settled = page.missing.iter().any(|r| r.contains(&seq));
            let left = deadline.saturating_duration_since(Instant::now());
            if settled || left.is_zero() {
                return Err(Error::TargetNotFound {
                    session_id: session_id.to_owned(),
                    seq,
                    settled,
                });
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(BACKOFF.1);
        }
    }
}

impl Producer {
    /// Recalls message `seq` of `session_id`: only its sender may ([`Actor::Sender`] with the
    /// message's `sender_id`). Its content and ext are removed from CQL and the window once the
    /// consumer applies the record; history shows it
    /// [`Recalled`](chatlog_schemas::MessageState::Recalled). A message already recalled or
    /// deleted is left as it is (`unchanged`).
    pub async fn recall(&self, session_id: &str, seq: i64, by: &Actor) -> Result<Mutated> {
        self.mutate(Action::Recall, session_id, seq, by, Vec::new())
            .await
    }

    /// Replaces the content of message `seq` of `session_id`: only its sender may. Every other
    /// field stays; history shows it [`Edited`](chatlog_schemas::MessageState::Edited) with the
    /// number of edits. A recalled or deleted message cannot be edited ([`Error::Final`]);
    /// content above `limits.max_content_bytes` is [`Error::Invalid`].
    pub async fn edit(
        &self,
        session_id: &str,
        seq: i64,
        new_content: Vec<u8>,
        by: &Actor,
    ) -> Result<Mutated> {
        self.mutate(Action::Edit, session_id, seq, by, new_content)
            .await
    }

    /// Deletes message `seq` of `session_id` for everyone: its sender, or an admin or the owner
    /// of the session, may. Like a recall, its content and ext are removed; history shows it
    /// [`Deleted`](chatlog_schemas::MessageState::Deleted). A message already recalled or deleted
    /// is left as it is (`unchanged`).
    pub async fn delete_for_everyone(
        &self,
        session_id: &str,
        seq: i64,
        by: &Actor,
    ) -> Result<Mutated> {
        self.mutate(Action::Delete, session_id, seq, by, Vec::new())
            .await
    }

    /// Hides `seqs` of `session_id` from `user_id` only (at most
    /// [`MAX_HIDE`](chatlog_store::hidden::MAX_HIDE) per call; no Kafka record: per-user state in
    /// CQL, idempotent, and a seq hidden before its message is stored applies when it arrives).
    pub async fn delete_for_me(&self, user_id: &str, session_id: &str, seqs: &[i64]) -> Result<()> {
        let result = self.hide(user_id, session_id, seqs).await;
        observe("delete_for_me", result.as_ref().map(|()| false));
        result
    }

    async fn hide(&self, user_id: &str, session_id: &str, seqs: &[i64]) -> Result<()> {
        let limits = &self.inner.limits;
        check_id("user_id", user_id, limits)?;
        check_session(session_id, limits)?;
        if seqs.len() > MAX_HIDE {
            return Err(Error::TooManySeqs {
                count: seqs.len(),
                max: MAX_HIDE,
            });
        }
        for &seq in seqs {
            check_seq(seq)?;
        }
        if seqs.is_empty() {
            return Ok(());
        }
        self.inner
            .mutations
            .hidden
            .hide(user_id, session_id, seqs, 0)
            .await
            .map_err(Error::Store)
    }

    async fn mutate(
        &self,
        action: Action,
        session_id: &str,
        seq: i64,
        by: &Actor,
        content: Vec<u8>,
    ) -> Result<Mutated> {
        let result = self.try_mutate(action, session_id, seq, by, content).await;
        observe(action.name(), result.as_ref().map(|m| m.unchanged));
        result
    }

    async fn try_mutate(
        &self,
        action: Action,
        session_id: &str,
        seq: i64,
        by: &Actor,
        content: Vec<u8>,
    ) -> Result<Mutated> {
        let inner = &*self.inner;
        let limits = &inner.limits;
        check_session(session_id, limits)?;
        check_seq(seq)?;
        check_id("mutated_by", by.user_id(), limits)?;
        if content.len() > limits.max_content_bytes {
            return Err(ValidationError::ContentTooLarge {
                len: content.len(),
                max: limits.max_content_bytes,
            }
            .into());
        }
        if action != Action::Delete && matches!(by, Actor::Member { .. }) {
            return Err(not_allowed(action));
        }
        inner.clock.check()?;
        let mutations = &inner.mutations;
        let mut current = mutations.target(session_id, seq).await?;
        let _turn = mutations.stripe(session_id, seq).lock().await;
        // This process's own last mutation, if the consumer has not stored it yet.
        if let Some(state) = mutations.recent().get(session_id, seq)
            && with_state(&current, state.clone()).version() > current.version()
        {
            current = with_state(&current, state.clone());
        }
        let allowed = match by {
            Actor::Sender(user) => *user == current.sender_id,
            Actor::Member { role, .. } => {
                action == Action::Delete && matches!(role, MemberRole::Admin | MemberRole::Owner)
            }
        };
        if !allowed {
            return Err(not_allowed(action));
        }
        if current.state.is_final() {
            if action == Action::Edit {
                return Err(Error::Final {
                    state: current.state.symbol(),
                });
            }
            return Ok(Mutated {
                seq,
                version: current.version(),
                message: current,
                partition: -1,
                offset: -1,
                unchanged: true,
            });
        }
        inner.clock.check()?;
        let at_us = inner
            .clock
            .clock()
            .now_us()
            .max((current.version() & !FINAL_VERSION_BIT) + 1)
            .max(current.server_time_us + 1);
        let by = by.user_id().to_owned();
        let state = match action {
            Action::Edit => MessageState::Edited {
                at_us,
                count: current.state.edit_count().saturating_add(1),
                by,
            },
            Action::Recall => MessageState::Recalled { at_us, by },
            Action::Delete => MessageState::Deleted { at_us, by },
        };
        let mut message = with_state(&current, state);
        if action == Action::Edit {
            message.content = content;
        }
        message.validate(limits)?;
        let permit = self.permit().await?;
        let (partition, offset) = self.hand_over(&message, permit)?.delivered().await?;
        mutations
            .recent()
            .put(session_id, seq, message.state.clone());
        Ok(Mutated {
            seq,
            version: message.version(),
            message,
            partition,
            offset,
            unchanged: false,
        })
    }
}

/// `message` in `state`; a final state keeps no content and no ext.
fn with_state(message: &ChatMessage, state: MessageState) -> ChatMessage {
    let fin = state.is_final();
    ChatMessage {
        content: if fin {
            Vec::new()
        } else {
            message.content.clone()
        },
        ext: if fin {
            Default::default()
        } else {
            message.ext.clone()
        },
        state,
        ..message.clone()
    }
}

fn not_allowed(action: Action) -> Error {
    Error::NotAllowed {
        action: action.name(),
        reason: match action {
            Action::Recall => "only the sender may recall a message".into(),
            Action::Edit => "only the sender may edit a message".into(),
            Action::Delete => {
                "only the sender, an admin or the owner may delete a message for everyone".into()
            }
        },
    }
}

fn check_id(field: &'static str, value: &str, limits: &Limits) -> Result<()> {
    if value.is_empty() {
        return Err(ValidationError::EmptyId { field }.into());
    }
    if value.len() > limits.max_id_bytes {
        return Err(ValidationError::IdTooLong {
            field,
            len: value.len(),
            max: limits.max_id_bytes,
        }
        .into());
    }
    Ok(())
}

fn check_session(session_id: &str, limits: &Limits) -> Result<()> {
    check_id("session_id", session_id, limits)?;
    if session_id.contains('}') {
        return Err(ValidationError::HashTagBreaker {
            field: "session_id",
        }
        .into());
    }
    Ok(())
}

fn check_seq(seq: i64) -> Result<()> {
    if seq < 1 {
        return Err(ValidationError::SeqNotPositive { seq }.into());
    }
    if seq > MAX_SEQ {
        return Err(ValidationError::SeqOutOfRange {
            field: "seq",
            seq,
            max: MAX_SEQ,
        }
        .into());
    }
    Ok(())
}

/// Counts one mutation by action and result (`Ok(unchanged)` or the error).
fn observe(action: &'static str, result: std::result::Result<bool, &Error>) {
    let label = match result {
        Ok(false) => "ok",
        Ok(true) => "unchanged",
        Err(Error::Invalid(_) | Error::TooManySeqs { .. }) => "invalid",
        Err(Error::NotAllowed { .. }) => "not_allowed",
        Err(Error::Final { .. }) => "final",
        Err(Error::TargetNotFound { .. }) => "not_found",
        Err(_) => "error",
    };
    metrics::counter!(crate::metrics::MUTATIONS, "action" => action, "result" => label)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_mutations_are_bounded_oldest_first() {
        let mut r = Recent::default();
        let state = |at_us| MessageState::Recalled {
            at_us,
            by: "u".into(),
        };
        for seq in 1..=(RECENT as i64 + 10) {
            r.put("s", seq, state(seq));
        }
        assert_eq!(r.state.len(), RECENT);
        assert!(r.get("s", 10).is_none());
        assert_eq!(r.get("s", 11), Some(&state(11)));
        r.put("s", 11, state(99));
        assert_eq!(r.state.len(), RECENT, "an update adds no entry");
        assert_eq!(r.get("s", 11), Some(&state(99)));
    }

    #[test]
    fn a_final_state_keeps_no_content() {
        let m = ChatMessage {
            msg_id: "0190a6b2-7c3e-7d4f-8a9b-0c1d2e3f4a5b".into(),
            client_msg_id: "c-1".into(),
            session_id: "s".into(),
            session_type: chatlog_schemas::SessionType::Group,
            seq: 3,
            sender_id: "u".into(),
            content_type: chatlog_schemas::ContentType::Text,
            content: b"hi".to_vec(),
            send_time_ms: 1,
            server_time_us: 1_700_000_000_000_000,
            ext: [("k".to_owned(), "v".to_owned())].into(),
            state: MessageState::Normal,
        };
        let at_us = m.server_time_us + 1;
        let recalled = with_state(
            &m,
            MessageState::Recalled {
                at_us,
                by: "u".into(),
            },
        );
        assert!(recalled.content.is_empty() && recalled.ext.is_empty());
        recalled.validate(&Limits::default()).unwrap();
        let edited = with_state(
            &m,
            MessageState::Edited {
                at_us,
                count: 1,
                by: "u".into(),
            },
        );
        assert_eq!((edited.content, edited.ext), (m.content, m.ext));
    }
}
