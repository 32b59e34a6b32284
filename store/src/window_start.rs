//! Starting a window from the table: the one way an empty window gets its first members.
//!
//! The window script leaves an empty window empty when the records of a batch come alone
//! ([`crate::window::APPEND_LUA`], step 2): they do not prove they are the session's newest
//! messages in their newest state. The writer then calls [`WindowStarter::start`] for those
//! sessions once its batch's rows are written: it reads each session's head (`session_latest`,
//! which the consumer raises in the same stage as the rows), the newest rows below it (at most
//! the window's size: a complete run of the stored seqs ending at the head), encodes them, and
//! appends them in proven mode ([`WindowWriter::append_proven`]). Rows hold the state every
//! record of a seq converged to (last writer wins on the version), so a mutation stored in an
//! earlier batch is in the window as stored, and a late record of an old seq lands below the
//! head where it belongs.
//!
//! The cost is one read of `session_latest` and one of the newest bucket(s) per session whose
//! window is empty: once for a new session, once per session after Redis lost its windows
//! (expiry, FLUSHALL, a restart from a snapshot, a failover to a lagging replica). The operator's
//! repair (`chatlog verify windows --repair`, [`crate::verify::repair_window`]) reads the same
//! rows.

use std::collections::BTreeMap;
use std::sync::Arc;

use chatlog_schemas::{ChatMessage, Codec};
use futures::{StreamExt, TryStreamExt};
use redis::aio::ConnectionLike;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::cql::prepare;
use crate::history::HistoryConfig;
use crate::history::table_reader::TableReader;
use crate::window::{self, WindowConfig, WindowEntry, WindowWriter};
use crate::{Error, Result};

/// Sessions read from the table at once.
const CONCURRENCY: usize = 16;

/// Starts windows from the table's newest rows (see the module docs).
pub struct WindowStarter {
    session: Arc<Session>,
    head: PreparedStatement,
    table: TableReader,
    codec: Codec,
    writer: WindowWriter,
}

impl WindowStarter {
    /// A starter reading `keyspace` (rows in buckets of `bucket_size` seqs, as written) and
    /// writing windows of `window`'s size, members encoded with `codec`.
    pub async fn new(
        session: Arc<Session>,
        keyspace: &str,
        bucket_size: i64,
        window: WindowConfig,
        codec: Codec,
    ) -> Result<WindowStarter> {
        let head = prepare(
            &session,
            crate::repo::latest::select_head_cql(keyspace),
            "session_latest head",
        )
        .await?;
        let table = TableReader::new(
            session.clone(),
            keyspace,
            bucket_size,
            HistoryConfig::default().max_empty_buckets,
        )
        .await?
        .unmetered();
        Ok(WindowStarter {
            session,
            head,
            table,
            codec,
            writer: WindowWriter::new(window),
        })
    }

    /// Starts the windows of `sessions` (rows already written) from the table. A session whose
    /// rows do not encode (they passed validation when written, so only an older codec's
    /// limits can refuse one) is left without a window, with a warning: history reads the
    /// table, which is correct, only slower. Returns how many members were appended.
    pub async fn start<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        sessions: &[&str],
    ) -> Result<usize> {
        let read: Vec<(&str, Vec<ChatMessage>)> = futures::stream::iter(sessions)
            .map(|sid| async move { Ok::<_, Error>((*sid, self.newest_rows(sid).await?)) })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut windows = BTreeMap::new();
        let mut members = 0;
        for (sid, rows) in read {
            match self.entries(&rows) {
                Ok(entries) if !entries.is_empty() => {
                    members += entries.len();
                    windows.insert(sid.to_owned(), entries);
                }
                Ok(_) => {}
                Err(why) => {
                    tracing::warn!(session = sid, %why, "window left empty; history reads the table")
                }
            }
        }
        self.writer.append_proven(con, &windows).await?;
        Ok(members)
    }

    /// The newest rows of `session_id` (at most the window's size), newest first: every stored
    /// seq from the last one returned up to the session's head.
    pub async fn newest_rows(&self, session_id: &str) -> Result<Vec<ChatMessage>> {
        let what = "read the head in session_latest";
        let head = self
            .session
            .execute_unpaged(&self.head, (session_id,))
            .await
            .map_err(|e| Error::cql(what, e))?
            .into_rows_result()
            .map_err(|e| Error::cql(what, e))?
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| Error::cql(what, e))?
            .and_then(|(seq,)| seq);
        // No row there (rows written before session_latest existed): the allocator's ceiling,
        // else a probe, as history's walks do.
        let head = match head {
            Some(h) => Some(h),
            None => self.table.head_bound(session_id).await?,
        };
        let Some(head) = head else {
            return Ok(Vec::new());
        };
        let size = self.writer.config().size.max(1);
        Ok(self.table.scan_desc(session_id, head, size).await?.rows)
    }

    /// The window entries of `rows` (newest first), oldest first; see [`entries_of`].
    pub fn entries(&self, rows: &[ChatMessage]) -> std::result::Result<Vec<WindowEntry>, String> {
        entries_of(&self.codec, rows)
    }

    /// The writer it appends with.
    pub fn writer(&self) -> &WindowWriter {
        &self.writer
    }
}

/// The window entries of table rows given newest first, oldest first (members encoded with
/// `codec`, versioned by the row's state); `Err` names the row that does not encode.
pub(crate) fn entries_of(
    codec: &Codec,
    rows: &[ChatMessage],
) -> std::result::Result<Vec<WindowEntry>, String> {
    rows.iter()
        .rev()
        .map(|row| {
            let avro = codec
                .encode(row)
                .map_err(|e| format!("seq {}: the table's row does not encode ({e})", row.seq))?;
            Ok(WindowEntry {
                seq: row.seq,
                member: window::member(row.version(), &avro),
            })
        })
        .collect()
}
