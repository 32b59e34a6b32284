//! Starting a window from the table: the one way an empty window gets its first members.
//!
//! The window script leaves an empty window empty when the records of a batch come alone
//! ([`crate::window::APPEND_LUA`], step 2): they do not prove they are the session's newest
//! messages in their newest state. The writer then calls [`WindowStarter::read`] for those
//! sessions once its batch's rows are written, and appends what it returns with its own fence
//! ([`WindowStarter::start`] does both, for tools and tests): it reads each session's head (`session_latest`,
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

use crate::connection::RedisLike;
use chatlog_schemas::{ChatMessage, Codec};
use futures::StreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::Result;
use crate::cql::{prepare, read_row};
use crate::history::HistoryConfig;
use crate::history::table_reader::TableReader;
use crate::window::{self, WindowConfig, WindowEntry, WindowWriter};

/// Sessions read from the table at once.
const CONCURRENCY: usize = 16;

/// Sessions one [`WindowStarter::read`] starts at most: after Redis lost its windows a batch may
/// touch thousands of sessions, and each start holds up to a window's rows; the rest start with
/// their next message (bounded memory and time per batch: at W = 200 and ~300-byte members,
/// ~30 MB and 2 × 512 reads at [`CONCURRENCY`]).
pub const STARTS_PER_CALL: usize = 512;

/// What [`WindowStarter::read`] found.
#[derive(Debug, Default)]
pub struct Started {
    /// Each started session's entries, oldest first (sessions with no rows are absent).
    pub windows: BTreeMap<String, Vec<WindowEntry>>,
    /// Sessions left for later ([`STARTS_PER_CALL`]).
    pub deferred: usize,
    /// Sessions whose read failed (left empty).
    pub failed: usize,
    /// The first read error.
    pub first_error: Option<String>,
}

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

    /// Reads, for each of `sessions` (their rows already written), the entries its window starts
    /// from: the newest rows, re-encoded. Best effort and bounded: at most
    /// [`STARTS_PER_CALL`] sessions (the others stay empty until their next message asks
    /// again — an empty window is always safe, history reads the table); a session whose read
    /// fails stays empty too (counted in [`Started::failed`], first error kept). Rows that do
    /// not encode (they passed validation when written, so only an older codec's limits can
    /// refuse one) end the run there: the rows above the newest such row are still a complete
    /// run ending at the head.
    pub async fn read<S: AsRef<str>>(&self, sessions: &[S]) -> Started {
        let mut started = Started::default();
        let take = sessions.len().min(STARTS_PER_CALL);
        started.deferred = sessions.len() - take;
        let read: Vec<(&str, Result<Vec<ChatMessage>>)> = futures::stream::iter(&sessions[..take])
            .map(|sid| async move { (sid.as_ref(), self.newest_rows(sid.as_ref()).await) })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (sid, rows) in read {
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    started.failed += 1;
                    started.first_error.get_or_insert_with(|| e.to_string());
                    continue;
                }
            };
            let (entries, refused) = entries_of(&self.codec, &rows);
            if let Some(why) = refused {
                tracing::warn!(session = sid, %why, "the window starts above that row");
            }
            if !entries.is_empty() {
                started.windows.insert(sid.to_owned(), entries);
            }
        }
        started
    }

    /// [`read`](Self::read), then the windows appended in proven mode (no fence: for tools and
    /// tests; the consumer appends with its own fence between the two). Returns what was read.
    pub async fn start<C: RedisLike, S: AsRef<str>>(
        &self,
        con: &mut C,
        sessions: &[S],
    ) -> Result<Started> {
        let started = self.read(sessions).await;
        self.writer.append_proven(con, &started.windows).await?;
        Ok(started)
    }

    /// The newest rows of `session_id` (at most the window's size), newest first: every stored
    /// seq from the last one returned up to the session's head. The walk starts at the higher of
    /// `session_latest` (the consumer raised it with this batch's rows) and the allocator's
    /// ceiling (above every seq handed out, so also above rows `session_latest` never counted:
    /// rows from before it existed); with neither, a probe finds the head, as history's walks
    /// do.
    pub async fn newest_rows(&self, session_id: &str) -> Result<Vec<ChatMessage>> {
        let latest = read_row::<(Option<i64>,)>(
            &self.session,
            &self.head,
            (session_id,),
            "read the head in session_latest",
        )
        .await?
        .and_then(|(seq,)| seq);
        let ceiling = self.table.ceiling(session_id).await?;
        let head = match latest.max(ceiling) {
            Some(h) => Some(h),
            None => self.table.head_bound(session_id).await?,
        };
        let Some(head) = head else {
            return Ok(Vec::new());
        };
        let size = self.writer.config().size.max(1);
        Ok(self.table.scan_desc(session_id, head, size).await?.rows)
    }
}

/// The window entries of table rows given newest first, oldest first (members encoded with
/// `codec`, versioned by the row's state), down to the newest row that does not encode — still a
/// complete run ending at the head — and that row's seq and error, if any (rows passed
/// validation when written, so only an older codec's limits can refuse one).
pub(crate) fn entries_of(
    codec: &Codec,
    rows: &[ChatMessage],
) -> (Vec<WindowEntry>, Option<String>) {
    let mut entries = Vec::with_capacity(rows.len());
    let mut refused = None;
    for row in rows {
        match codec.encode(row) {
            Ok(avro) => entries.push(WindowEntry {
                seq: row.seq,
                member: window::member(row.version(), &avro),
            }),
            Err(e) => {
                refused = Some(format!(
                    "seq {}: the table's row does not encode ({e})",
                    row.seq
                ));
                break;
            }
        }
    }
    entries.reverse();
    (entries, refused)
}
