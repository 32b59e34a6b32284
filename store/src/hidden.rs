//! Delete for me: the seqs a user hid in a session (`hidden_messages`, migration 0005). The one
//! owner of its statements: the producer library writes ([`HiddenMessages::hide`]), history reads
//! for one viewer ([`HiddenMessages::hidden_among`], through
//! [`History::viewer`](crate::history::History::viewer)).
//!
//! Per-user state, like `read_state`: it changes nothing anyone else sees, so it does not travel
//! through Kafka. A hide is one idempotent CQL write per seq (a retry writes the same row), needs no
//! ordering with the message (a seq hidden before its message is stored applies when it arrives),
//! and no replay of the topic can undo it. A read is sized by the request: one partition slice of
//! the page's seqs (`seq IN ?`), at most as many rows as the page holds.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::cql::prepare;
use crate::{Error, Result};

/// Most seqs one [`HiddenMessages::hide`] call takes (a client's multi-select).
pub const MAX_HIDE: usize = 500;

/// CQL writes one `hide` runs at once.
const CONCURRENCY: usize = 16;

/// The `hidden_messages` statements of one keyspace.
#[derive(Clone)]
pub struct HiddenMessages {
    session: Arc<Session>,
    insert: PreparedStatement,
    select: PreparedStatement,
}

impl std::fmt::Debug for HiddenMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HiddenMessages").finish_non_exhaustive()
    }
}

impl HiddenMessages {
    /// Prepares the statements on `keyspace`.
    pub async fn new(session: Arc<Session>, keyspace: &str) -> Result<HiddenMessages> {
        let insert = prepare(
            &session,
            format!(
                "INSERT INTO {keyspace}.hidden_messages (user_id, session_id, seq) \
                 VALUES (?, ?, ?) USING TTL ?"
            ),
            "hidden_messages insert",
        )
        .await?;
        let select = prepare(
            &session,
            format!(
                "SELECT seq FROM {keyspace}.hidden_messages \
                 WHERE user_id = ? AND session_id = ? AND seq IN ?"
            ),
            "hidden_messages select",
        )
        .await?;
        Ok(HiddenMessages {
            session,
            insert,
            select,
        })
    }

    /// Hides `seqs` of `session_id` from `user_id` (at most [`MAX_HIDE`]; duplicates are
    /// harmless). `ttl_secs` > 0 lets the rows expire with the session type's retention.
    pub async fn hide(
        &self,
        user_id: &str,
        session_id: &str,
        seqs: &[i64],
        ttl_secs: i32,
    ) -> Result<()> {
        if seqs.len() > MAX_HIDE {
            return Err(Error::Request(format!(
                "delete for me: {} seqs in one call, over the limit of {MAX_HIDE}",
                seqs.len()
            )));
        }
        if let Some(bad) = seqs
            .iter()
            .find(|s| !(1..=chatlog_schemas::MAX_SEQ).contains(*s))
        {
            return Err(Error::Request(format!(
                "delete for me: seq {bad} out of 1..=2^53"
            )));
        }
        futures::stream::iter(seqs.iter().map(|&seq| async move {
            self.session
                .execute_unpaged(&self.insert, (user_id, session_id, seq, ttl_secs.max(0)))
                .await
                .map(drop)
                .map_err(|e| Error::cql("hide a message", e))
        }))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }

    /// Which of `seqs` (a page's, so bounded by the request) `user_id` hid in `session_id`,
    /// ascending.
    pub async fn hidden_among(
        &self,
        user_id: &str,
        session_id: &str,
        seqs: &[i64],
    ) -> Result<Vec<i64>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .session
            .execute_unpaged(&self.select, (user_id, session_id, seqs))
            .await
            .map_err(|e| Error::cql("read hidden messages", e))?
            .into_rows_result()
            .map_err(|e| Error::cql("read hidden messages", e))?;
        let mut hidden = rows
            .rows::<(i64,)>()
            .map_err(|e| Error::cql("read hidden messages", e))?
            .map(|r| r.map(|(seq,)| seq))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::cql("read hidden messages", e))?;
        hidden.sort_unstable();
        Ok(hidden)
    }
}
