//! [`CqlSessionRepo`]: the `sessions` and `session_members` tables and their statements.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chatlog_schemas::SessionType;
use scylla::DeserializeRow;
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue, Row};

use super::{
    COUNT_ATTEMPTS, IMPORT_BATCH, MAX_PAGE, Member, MemberPage, MemberRole, SessionInfo,
    SessionRepo, SessionsConfig, check_batch, check_session, page_of,
};
use crate::repo::{check_id, prepare, read_each, read_row};
use crate::seq::SerialMode;
use crate::{Error, Result};

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
        let mut current = read_row::<(Option<i64>,)>(
            &self.session,
            &self.statements.count,
            (session_id,),
            "read sessions.member_count",
        )
        .await?
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
        let row: Option<SessionRow> = read_row(
            &self.session,
            &self.statements.select,
            (session_id,),
            "read sessions",
        )
        .await?;
        Ok(row.map(SessionInfo::from))
    }

    async fn get_many(&self, session_ids: &[String]) -> Result<Vec<Option<SessionInfo>>> {
        check_batch(session_ids)?;
        read_each(session_ids, |id| self.get(id)).await
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
