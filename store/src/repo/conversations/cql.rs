//! [`CqlConversationRepo`]: the `user_sessions` and `read_state` tables and their statements.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::repo::read_row;

type MembershipRow = (String, Option<CqlTimestamp>, Option<bool>, Option<bool>);

struct Statements {
    join: PreparedStatement,
    leave: PreparedStatement,
    pinned: PreparedStatement,
    muted: PreparedStatement,
    mark_read: PreparedStatement,
    clear: PreparedStatement,
    memberships: PreparedStatement,
    read_states: PreparedStatement,
    read_state: PreparedStatement,
}

impl Statements {
    async fn new(s: &Arc<Session>, ks: &str) -> Result<Statements> {
        Ok(Statements {
            join: prepare(
                s,
                format!(
                    "INSERT INTO {ks}.user_sessions (user_id, session_id, joined_at) \
                     VALUES (?, ?, ?)"
                ),
                "user_sessions join",
            )
            .await?,
            leave: prepare(
                s,
                format!("DELETE FROM {ks}.user_sessions WHERE user_id = ? AND session_id = ?"),
                "user_sessions leave",
            )
            .await?,
            // An UPDATE of a non-member leaves a row without joined_at, which reads as no
            // membership (no LWT needed to refuse it).
            pinned: prepare(
                s,
                format!(
                    "UPDATE {ks}.user_sessions SET pinned = ? WHERE user_id = ? AND session_id = ?"
                ),
                "user_sessions pin",
            )
            .await?,
            muted: prepare(
                s,
                format!(
                    "UPDATE {ks}.user_sessions SET muted = ? WHERE user_id = ? AND session_id = ?"
                ),
                "user_sessions mute",
            )
            .await?,
            mark_read: prepare(
                s,
                format!(
                    "UPDATE {ks}.read_state USING TIMESTAMP ? SET has_read_seq = ? \
                     WHERE user_id = ? AND session_id = ?"
                ),
                "read_state mark read",
            )
            .await?,
            clear: prepare(
                s,
                format!(
                    "UPDATE {ks}.read_state USING TIMESTAMP ? SET min_seq = ? \
                     WHERE user_id = ? AND session_id = ?"
                ),
                "read_state clear",
            )
            .await?,
            memberships: prepare(
                s,
                format!(
                    "SELECT session_id, joined_at, pinned, muted FROM {ks}.user_sessions \
                     WHERE user_id = ?"
                ),
                "user_sessions select",
            )
            .await?,
            read_states: prepare(
                s,
                format!(
                    "SELECT session_id, has_read_seq, min_seq FROM {ks}.read_state \
                     WHERE user_id = ? AND session_id IN ?"
                ),
                "read_state select",
            )
            .await?,
            read_state: prepare(
                s,
                format!("SELECT min_seq FROM {ks}.read_state WHERE user_id = ? AND session_id = ?"),
                "read_state select one",
            )
            .await?,
        })
    }
}

/// [`ConversationRepo`] on the `user_sessions`, `read_state` and `session_latest` tables.
pub struct CqlConversationRepo {
    session: Arc<Session>,
    statements: Statements,
    latest: LatestReader,
    config: ConversationConfig,
    reads: AtomicU64,
}

impl CqlConversationRepo {
    /// Prepares the statements on `keyspace` (migrated: see [`crate::migrate`]).
    pub async fn new(
        session: Arc<Session>,
        keyspace: &str,
        config: ConversationConfig,
    ) -> Result<CqlConversationRepo> {
        config.validate()?;
        Ok(CqlConversationRepo {
            statements: Statements::new(&session, keyspace).await?,
            latest: LatestReader::new(session.clone(), keyspace, None, config.latest_ttl).await?,
            session,
            config,
            reads: AtomicU64::new(0),
        })
    }

    /// Membership lists read from the database so far.
    pub fn db_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    async fn write(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        what: &'static str,
    ) -> Result<()> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| Error::cql(what, e))?;
        Ok(())
    }

    async fn read_states(&self, user_id: &str, list: &mut [Membership]) -> Result<()> {
        let ids: Vec<Vec<String>> = list
            .chunks(READ_STATE_CHUNK)
            .map(|c| c.iter().map(|m| m.session_id.clone()).collect())
            .collect();
        for group in ids.chunks(READ_STATE_CONCURRENCY) {
            let mut reads = Vec::with_capacity(group.len());
            for chunk in group {
                reads.push(self.read_state_chunk(user_id, chunk));
            }
            for (sid, read, min) in futures::future::try_join_all(reads)
                .await?
                .into_iter()
                .flatten()
            {
                if let Ok(i) = list.binary_search_by(|m| m.session_id.as_str().cmp(&sid)) {
                    list[i].has_read_seq = read.unwrap_or(0);
                    list[i].min_seq = min.unwrap_or(0);
                }
            }
        }
        Ok(())
    }

    async fn read_state_chunk(
        &self,
        user_id: &str,
        ids: &[String],
    ) -> Result<Vec<(String, Option<i64>, Option<i64>)>> {
        let what = "read read_state";
        let rows = self
            .session
            .execute_unpaged(&self.statements.read_states, (user_id, ids))
            .await
            .map_err(|e| Error::cql(what, e))?
            .into_rows_result()
            .map_err(|e| Error::cql(what, e))?;
        rows.rows::<(String, Option<i64>, Option<i64>)>()
            .map_err(|e| Error::cql(what, e))?
            .map(|r| r.map_err(|e| Error::cql(what, e)))
            .collect()
    }
}

impl ConversationRepo for CqlConversationRepo {
    async fn join(&self, user_id: &str, session_id: &str, joined_at_ms: i64) -> Result<()> {
        check_pair(user_id, session_id)?;
        self.write(
            &self.statements.join,
            (user_id, session_id, CqlTimestamp(joined_at_ms)),
            "join user_sessions",
        )
        .await
    }

    async fn leave(&self, user_id: &str, session_id: &str) -> Result<()> {
        check_pair(user_id, session_id)?;
        self.write(
            &self.statements.leave,
            (user_id, session_id),
            "leave user_sessions",
        )
        .await
    }

    async fn set_pinned(&self, user_id: &str, session_id: &str, pinned: bool) -> Result<()> {
        check_pair(user_id, session_id)?;
        self.write(
            &self.statements.pinned,
            (pinned, user_id, session_id),
            "pin user_sessions",
        )
        .await
    }

    async fn set_muted(&self, user_id: &str, session_id: &str, muted: bool) -> Result<()> {
        check_pair(user_id, session_id)?;
        self.write(
            &self.statements.muted,
            (muted, user_id, session_id),
            "mute user_sessions",
        )
        .await
    }

    async fn mark_read(&self, user_id: &str, session_id: &str, seq: i64) -> Result<()> {
        check_pair(user_id, session_id)?;
        check_seq(seq)?;
        self.write(
            &self.statements.mark_read,
            (seq, seq, user_id, session_id),
            "mark read_state",
        )
        .await
    }

    async fn clear_history(&self, user_id: &str, session_id: &str) -> Result<i64> {
        clear_to_latest(self, &self.latest, user_id, session_id).await
    }

    async fn clear_history_to(&self, user_id: &str, session_id: &str, seq: i64) -> Result<()> {
        check_pair(user_id, session_id)?;
        check_seq(seq)?;
        self.write(
            &self.statements.clear,
            (seq, seq, user_id, session_id),
            "clear read_state",
        )
        .await
    }

    async fn min_seq(&self, user_id: &str, session_id: &str) -> Result<i64> {
        check_pair(user_id, session_id)?;
        let row: Option<(Option<i64>,)> = read_row(
            &self.session,
            &self.statements.read_state,
            (user_id, session_id),
            "read read_state",
        )
        .await?;
        Ok(row.and_then(|(m,)| m).unwrap_or(0))
    }

    async fn memberships(&self, user_id: &str) -> Result<Memberships> {
        check_id("user_id", user_id)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        let what = "read user_sessions";
        let max = self.config.max_conversations;
        let mut statement = self.statements.memberships.clone();
        statement.set_page_size(1000);
        let rows: Vec<MembershipRow> = self
            .session
            .execute_iter(statement, (user_id,))
            .await
            .map_err(|e| Error::cql(what, e))?
            .rows_stream::<MembershipRow>()
            .map_err(|e| Error::cql(what, e))?
            // Rows without joined_at are pins or mutes of a non-member: skipped, and not counted
            // against the bound.
            .try_filter(|(_, joined, _, _)| futures::future::ready(joined.is_some()))
            .take(max + 1)
            .try_collect()
            .await
            .map_err(|e| Error::cql(what, e))?;
        let truncated = rows.len() > max;
        let mut list: Vec<Membership> = rows
            .into_iter()
            .take(max)
            .map(|(session_id, joined, pinned, muted)| Membership {
                session_id,
                joined_at_ms: joined.map_or(0, |t| t.0),
                pinned: pinned.unwrap_or(false),
                muted: muted.unwrap_or(false),
                has_read_seq: 0,
                min_seq: 0,
            })
            .collect();
        if truncated {
            metrics::counter!(telemetry::CONVERSATIONS_TRUNCATED).increment(1);
            tracing::warn!(
                max,
                "a user has more conversations than dal.max_conversations; the list is truncated"
            );
        }
        self.read_states(user_id, &mut list).await?;
        Ok(Memberships { list, truncated })
    }

    fn latest(&self) -> &LatestReader {
        &self.latest
    }

    fn config(&self) -> &ConversationConfig {
        &self.config
    }
}
