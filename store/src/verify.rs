//! Checks one session's Redis window against the CQL `messages` table: the operators' tool behind
//! `cargo run -p chatlog-store --example verify_window -- <session_id>`.
//!
//! History takes the window's highest member to be the head and reads the window's holes from the
//! table before reporting a gap (see [`crate::history`]). [`verify_window`] reads the whole window
//! and the newest `W` rows of the table (`W` =
//! [`WindowConfig::size`](crate::window::WindowConfig::size)), plus every row down to the window's
//! lowest member, and reports:
//! - `missing_in_window`: rows at or above the window's lowest member that the window lacks (a hole
//!   left by a Redis rollback or a late old seq, which history reads from the table at a cost, or a
//!   window behind the table);
//! - `older_than_window`: rows among the newest `W` below the window's lowest member (the window
//!   holds fewer than `W`: normal after expiry or a flush, until new messages refill it);
//! - `extra_in_window`: members with no row;
//! - `differing`: both have the seq but the version ([`ChatMessage::version`]) or the content differs;
//! - `undecodable`: members that are not `version prefix + single-object Avro` of their seq.
//!
//! A window written in another Redis epoch (Redis restarted from a snapshot or failed over since)
//! is reported as such (`window_epoch_current`): history never serves it, whatever it holds.
//!
//! Content is compared decoded (as [`ChatMessage`]), not as bytes: a member written by a newer
//! schema version or another encoder has different bytes for the same message, and the table only
//! holds the v1 columns.
//!
//! Messages in flight (in the table and not yet in the window, or the reverse, for the moment
//! between the consumer's two writes) show up too; run it again before acting on a near-head
//! finding.
//!
//! For `chatlog inspect session` and `chatlog verify windows` (the `chatlog-admin` crate):
//! [`inspect_session`] puts the newest seqs of the window and the table side by side;
//! [`repair_window`] rebuilds a damaged window from the table (its docs argue why it is safe with
//! a consumer writing); [`delete_window`] drops one (a window of another epoch).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::connection::RedisLike;
use chatlog_schemas::{ChatMessage, Codec, MessageState};

use crate::history::History;
use crate::history::window_reader::WindowMember;
use crate::window::WindowWriter;
use crate::{Error, Result, keys};

/// A seq present in both the window and the table with different contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The seq.
    pub seq: i64,
    /// The member's version prefix.
    pub window_version: i64,
    /// The row's `server_time`.
    pub db_version: i64,
    /// Whether the decoded messages differ (apart from the version).
    pub content_differs: bool,
}

/// What [`verify_window`] found. [`Report::is_consistent`] says whether history can trust the
/// window; `Display` prints it for operators.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// The session checked.
    pub session_id: String,
    /// `W`, the configured window size.
    pub window_size: usize,
    /// Whether the window was written in the serving Redis's epoch. A window of another epoch (left
    /// by a restart from a snapshot or a failover) is never served: history reads the table, and
    /// the consumer's next write for the session starts the window over. Its members are still
    /// compared below, for the operator's information.
    pub window_epoch_current: bool,
    /// Members in the window.
    pub window_members: usize,
    /// Lowest and highest seq of the window.
    pub window_range: Option<(i64, i64)>,
    /// Rows read from the table.
    pub db_rows: usize,
    /// Lowest and highest seq of those rows.
    pub db_range: Option<(i64, i64)>,
    /// Rows at or above the window's lowest member that the window lacks.
    pub missing_in_window: Vec<i64>,
    /// Rows among the newest `W` below the window's lowest member (window shorter than `W`).
    pub older_than_window: Vec<i64>,
    /// Members without a row.
    pub extra_in_window: Vec<i64>,
    /// Seqs whose member and row differ.
    pub differing: Vec<Difference>,
    /// Members that do not parse or decode, or hold another seq than their score.
    pub undecodable: Vec<i64>,
}

impl Report {
    /// True when history may trust the window: no hole, no extra member, no difference, nothing
    /// undecodable (`older_than_window` alone is fine).
    pub fn is_consistent(&self) -> bool {
        self.missing_in_window.is_empty()
            && self.extra_in_window.is_empty()
            && self.differing.is_empty()
            && self.undecodable.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |r: Option<(i64, i64)>| r.map_or("-".to_owned(), |(a, b)| format!("{a}..={b}"));
        writeln!(
            f,
            "session {}: window {} members (W = {}) seqs {}; table {} rows seqs {}",
            self.session_id,
            self.window_members,
            self.window_size,
            range(self.window_range),
            self.db_rows,
            range(self.db_range)
        )?;
        if !self.window_epoch_current && self.window_members > 0 {
            writeln!(
                f,
                "  window epoch:       another Redis epoch (not served: history reads the table \
                 until the next message starts the window over)"
            )?;
        }
        writeln!(f, "  missing in window:  {:?}", self.missing_in_window)?;
        writeln!(f, "  older than window:  {:?}", self.older_than_window)?;
        writeln!(f, "  extra in window:    {:?}", self.extra_in_window)?;
        writeln!(f, "  undecodable:        {:?}", self.undecodable)?;
        writeln!(f, "  differing:          {}", self.differing.len())?;
        for d in &self.differing {
            writeln!(
                f,
                "    seq {}: window version {} / table {}{}",
                d.seq,
                d.window_version,
                d.db_version,
                if d.content_differs {
                    ", content differs"
                } else {
                    ""
                }
            )?;
        }
        write!(
            f,
            "  verdict: {}",
            if !self.window_epoch_current && self.window_members > 0 {
                "other epoch (never served, whatever it holds)"
            } else if self.is_consistent() {
                "consistent"
            } else {
                "INCONSISTENT"
            }
        )
    }
}

/// Compares the window of `session_id` with the table, through `history`'s connections and
/// settings (codec, bucket size, `W`). Read-only.
pub async fn verify_window(history: &History, session_id: &str) -> Result<Report> {
    let w = history.config().window.size;
    let snapshot = snapshot(history, session_id, w).await?;
    Ok(compare(session_id, w, &snapshot))
}

/// The window and the table as one check reads them.
struct Snapshot {
    members: Vec<WindowMember>,
    window_epoch_current: bool,
    /// The rows read: the newest `limit` from the head bound, and every row down to the window's
    /// lowest member.
    rows: BTreeMap<i64, ChatMessage>,
    /// The seqs of the newest `W` rows.
    newest: BTreeSet<i64>,
    /// The head bound the walk started from (the allocator's ceiling, or the highest bucket's
    /// newest row; the window's head if higher).
    bound: Option<i64>,
}

async fn snapshot(history: &History, session_id: &str, limit: usize) -> Result<Snapshot> {
    let w = history.config().window.size;
    let table = history.table_reader();
    let (members, window_epoch_current) = history.window_reader().all_members(session_id).await?;
    let window_min = members.iter().map(|m| m.seq).min();
    let window_max = members.iter().map(|m| m.seq).max();

    // The newest rows, from the head bound (the window's head if higher), ...
    let bound = match (table.head_bound(session_id).await?, window_max) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let mut rows: BTreeMap<i64, ChatMessage> = BTreeMap::new();
    let mut newest = BTreeSet::new();
    if let Some(bound) = bound {
        let scan = table
            .scan_desc(session_id, bound, limit.max(w).max(1))
            .await?;
        newest = scan.rows.iter().take(w.max(1)).map(|m| m.seq).collect();
        let lowest = scan.rows.last().map(|m| m.seq);
        rows.extend(scan.rows.into_iter().map(|m| (m.seq, m)));
        // ... and every row down to the window's lowest member.
        if let (Some(wmin), Some(low)) = (window_min, lowest)
            && wmin < low
        {
            let more = table
                .scan_asc(session_id, wmin, Some(low - 1), usize::MAX)
                .await?;
            rows.extend(more.rows.into_iter().map(|m| (m.seq, m)));
        }
    }
    Ok(Snapshot {
        members,
        window_epoch_current,
        rows,
        newest,
        bound,
    })
}

/// Whether the member `message` (at the row's seq, of version `version`) and `row` differ:
/// `(content differs, versions differ)`.
fn differs(message: &ChatMessage, version: i64, row: &ChatMessage) -> (bool, bool) {
    let content_differs = ChatMessage {
        server_time_us: row.server_time_us,
        state: row.state.clone(),
        ..message.clone()
    } != *row;
    (content_differs, version != row.version())
}

fn compare(session_id: &str, w: usize, snapshot: &Snapshot) -> Report {
    let Snapshot {
        members,
        window_epoch_current,
        rows,
        newest,
        ..
    } = snapshot;
    let window_min = members.iter().map(|m| m.seq).min();
    let window_max = members.iter().map(|m| m.seq).max();
    let mut report = Report {
        session_id: session_id.to_owned(),
        window_size: w,
        window_epoch_current: *window_epoch_current,
        window_members: members.len(),
        window_range: window_min.zip(window_max),
        db_rows: rows.len(),
        db_range: rows
            .first_key_value()
            .map(|(k, _)| *k)
            .zip(rows.last_key_value().map(|(k, _)| *k)),
        ..Report::default()
    };
    let mut in_window = BTreeSet::new();
    for m in members {
        in_window.insert(m.seq);
        let message = match &m.message {
            Ok(msg) if msg.session_id == session_id => msg,
            _ => {
                report.undecodable.push(m.seq);
                continue;
            }
        };
        match rows.get(&m.seq) {
            None => report.extra_in_window.push(m.seq),
            Some(row) => {
                let (content_differs, version_differs) = differs(message, m.version, row);
                if content_differs || version_differs {
                    report.differing.push(Difference {
                        seq: m.seq,
                        window_version: m.version,
                        db_version: row.version(),
                        content_differs,
                    });
                }
            }
        }
    }
    for &seq in rows.keys() {
        if in_window.contains(&seq) {
            continue;
        }
        match window_min {
            Some(wmin) if seq >= wmin => report.missing_in_window.push(seq),
            _ if newest.contains(&seq) => report.older_than_window.push(seq),
            _ => {}
        }
    }
    report.undecodable.sort_unstable();
    report.extra_in_window.sort_unstable();
    report
}

/// One side of a seq in [`inspect_session`]: a window member or a table row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    /// The member's version prefix, or the row's [`ChatMessage::version`].
    pub version: i64,
    /// The message's state, or why the member does not decode (a row always decodes).
    pub state: std::result::Result<MessageState, String>,
}

/// How a seq's window member and table row compare ([`inspect_session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Both hold the same version of the same message.
    Same,
    /// Both hold the seq, with another version or other content.
    Differs {
        /// The decoded messages differ (apart from the version).
        content: bool,
    },
    /// A row at or above the window's lowest member that the window lacks (a hole: history
    /// reads it from the table at a cost; near the head, maybe a message in flight).
    MissingInWindow,
    /// A row below the window's lowest member, or with no window (usable) at all: history
    /// reads it from the table, as designed.
    TableOnly,
    /// A member with no row (near the head, maybe a message in flight; else a row lost or never
    /// written).
    WindowOnly,
    /// A member that does not decode, or holds another seq or session.
    Undecodable,
}

impl Verdict {
    /// Whether the verdict is one [`Report::is_consistent`] counts against the window.
    pub fn is_problem(self) -> bool {
        !matches!(self, Verdict::Same | Verdict::TableOnly)
    }

    /// The verdict in words, for operators (problems in capitals).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Same => "same",
            Verdict::Differs { content: true } => "DIFFERS (content)",
            Verdict::Differs { content: false } => "DIFFERS (version)",
            Verdict::MissingInWindow => "MISSING IN WINDOW",
            Verdict::TableOnly => "table only",
            Verdict::WindowOnly => "WINDOW ONLY",
            Verdict::Undecodable => "UNDECODABLE",
        }
    }
}

/// One seq side by side ([`inspect_session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqView {
    /// The seq.
    pub seq: i64,
    /// The window's member, if it holds one.
    pub window: Option<Side>,
    /// The table's row, if it has one.
    pub table: Option<Side>,
    /// How they compare.
    pub verdict: Verdict,
}

/// A run of seqs the table lacks below its newest row ([`inspect_session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Lowest seq of the run.
    pub from: i64,
    /// Highest seq of the run.
    pub to: i64,
    /// Younger than the settle horizon ([`HistoryConfig::settle_horizon`](crate::history::HistoryConfig::settle_horizon),
    /// measured from the `server_time_us` of the row right above the run, as history does):
    /// history reports it `pending` (a send may still land), else `missing` (final).
    pub pending: bool,
}

/// One session's window and table side by side, for operators (`chatlog inspect session`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// [`verify_window`]'s findings for the session.
    pub report: Report,
    /// Where the table walk started: the allocator's ceiling if the session has one (else the
    /// highest bucket's newest row), or the window's head if higher.
    pub head_bound: Option<i64>,
    /// The table's newest row as (seq, `server_time_us`).
    pub table_head: Option<(i64, i64)>,
    /// Rows read from the table.
    pub rows_read: usize,
    /// The partition buckets those rows lie in (lowest, highest).
    pub buckets: Option<(i64, i64)>,
    /// The newest seqs the window or the table holds, newest first.
    pub seqs: Vec<SeqView>,
    /// Seqs the table lacks between the lowest of [`Inspection::seqs`] and its newest row.
    pub gaps: Vec<Gap>,
}

/// The newest `n` seqs of `session_id` side by side — window member and table row, each with
/// its version and state, and a verdict — with [`verify_window`]'s report and the gaps of the
/// table among them. Reads the whole window and the newest `max(n, W)` rows (and every row down
/// to the window's lowest member). Read-only.
pub async fn inspect_session(history: &History, session_id: &str, n: usize) -> Result<Inspection> {
    let config = history.config();
    let w = config.window.size;
    let snapshot = snapshot(history, session_id, n).await?;
    let report = compare(session_id, w, &snapshot);
    let members: BTreeMap<i64, &WindowMember> =
        snapshot.members.iter().map(|m| (m.seq, m)).collect();
    let window_min = members.keys().next().copied();
    let rows = &snapshot.rows;

    let mut all: BTreeSet<i64> = members.keys().copied().collect();
    all.extend(rows.keys().copied());
    let seqs: Vec<SeqView> = all
        .iter()
        .rev()
        .take(n)
        .map(|&seq| {
            let member = members.get(&seq).copied();
            let row = rows.get(&seq);
            let verdict = match (member, row) {
                (Some(m), _) if !matches!(&m.message, Ok(msg) if msg.session_id == session_id) => {
                    Verdict::Undecodable
                }
                (Some(m), Some(row)) => {
                    let Ok(message) = &m.message else {
                        unreachable!("checked above")
                    };
                    match differs(message, m.version, row) {
                        (false, false) => Verdict::Same,
                        (content, _) => Verdict::Differs { content },
                    }
                }
                (Some(_), None) => Verdict::WindowOnly,
                (None, _) => match window_min {
                    Some(wmin) if seq >= wmin => Verdict::MissingInWindow,
                    _ => Verdict::TableOnly,
                },
            };
            SeqView {
                seq,
                window: member.map(|m| Side {
                    version: m.version,
                    state: m
                        .message
                        .as_ref()
                        .map(|msg| msg.state.clone())
                        .map_err(Clone::clone),
                }),
                table: row.map(|r| Side {
                    version: r.version(),
                    state: Ok(r.state.clone()),
                }),
                verdict,
            }
        })
        .collect();

    // Gaps: every seq from the lowest shown up to the table's head that the table lacks, one
    // run at a time. The rows read are complete over that range (the walk read at least `n`
    // rows down from the head, and every row down to the window's lowest member).
    let horizon_us = i64::try_from(config.settle_horizon.as_micros()).unwrap_or(i64::MAX);
    let now = now_us();
    let mut gaps = Vec::new();
    if let (Some(lowest), Some((&head, _))) = (seqs.last().map(|v| v.seq), rows.last_key_value()) {
        let mut expect = lowest;
        for (&seq, row) in rows.range(lowest..=head) {
            if seq > expect {
                gaps.push(Gap {
                    from: expect,
                    to: seq - 1,
                    pending: now.saturating_sub(row.server_time_us) < horizon_us,
                });
            }
            expect = seq + 1;
        }
    }
    gaps.reverse();

    let bucket = |seq: i64| crate::messages::bucket_of(seq, config.bucket_size);
    Ok(Inspection {
        head_bound: snapshot.bound,
        table_head: rows.last_key_value().map(|(&s, r)| (s, r.server_time_us)),
        rows_read: rows.len(),
        buckets: rows
            .first_key_value()
            .map(|(&s, _)| bucket(s))
            .zip(rows.last_key_value().map(|(&s, _)| bucket(s))),
        seqs,
        gaps,
        report,
    })
}

/// Deletes the window of `session_id` and its epoch key, in one command: history then reads the
/// table, and the consumer's next batch of the session starts the window again from the table's
/// newest rows. Safe at any moment.
pub async fn delete_window<C: RedisLike>(con: &mut C, session_id: &str) -> Result<()> {
    redis::cmd("DEL")
        .arg(keys::window(session_id))
        .arg(keys::window_epoch(session_id))
        .query_async::<()>(con)
        .await
        .map_err(Error::redis("delete a window"))
}

/// Rebuilds the window of `session_id` from the table so that history sees exactly the newest
/// `W` rows, in this Redis epoch, and returns the rows appended. Run [`verify_window`] after it:
/// with a consumer writing the session at the same time, a message in flight can still show (see
/// below); repeating the repair is safe.
///
/// Written through the consumer's own [`WindowWriter`] (members [`crate::window::member`] of each row's
/// version and Avro bytes), in this order:
/// 1. **`DEL` the window and its epoch key** (one command).
/// 2. **Read the newest `W` rows** (from the head bound down).
/// 3. **Append them** as proven entries (the table's newest rows may start a window).
///
/// Why this order is safe with a consumer writing the same session concurrently (it writes a
/// batch's rows and its window at the same time; every append runs atomically in Redis):
/// - **A consumer append after the `DEL`** finds no window and leaves it empty (its records
///   prove nothing about the head), then starts it from the table after its rows are written,
///   as this repair does — or it lands on ours: newer seqs above our head, equal seqs by the
///   version rule (a mutation included, so whichever of its row and our read comes first, the
///   window ends at its version). Our rows never go below a non-empty window's lowest member
///   (the script drops them: history reads them from the table), so no interleaving leaves a
///   member that claims seqs the window does not hold.
/// - **A consumer append before the `DEL`** is wiped; its rows, written at the same time, are
///   in our read unless they land after it. Then the window ends below those newer messages:
///   the re-verify sees them missing in the window if they have landed by then (a repeat takes
///   them); if not, the window lacks them until the session's next message, whose append leaves
///   a hole that history reads from the table (until then `latest` stops below them). The
///   race is one batch's skew between its row and window writes (milliseconds).
/// - **The other order** (read, then `DEL`, then append) would wipe every consumer append made
///   between the read and the `DEL`, whole batches whose rows the read missed, and publish a
///   head below them: the `DEL` comes first so that only that skew is exposed.
///
/// A table row that does not encode (it passed validation when written, so only an older
/// codec's limits can refuse it) stops the repair with an error, the window deleted: history
/// then reads the table, which is correct, only slower.
pub async fn repair_window<C: RedisLike>(
    history: &History,
    con: &mut C,
    codec: &Codec,
    session_id: &str,
) -> Result<usize> {
    let window_config = history.config().window.clone();
    let w = window_config.size.max(1);
    delete_window(con, session_id).await?;
    let table = history.table_reader();
    let rows = match table.head_bound(session_id).await? {
        Some(bound) => table.scan_desc(session_id, bound, w).await?.rows,
        None => Vec::new(),
    };
    if rows.is_empty() {
        return Ok(0);
    }
    let (entries, refused) = crate::window_start::entries_of(codec, &rows);
    if let Some(why) = refused {
        return Err(Error::Request(format!(
            "session {session_id:?} {why}; the window was deleted and history reads the table"
        )));
    }
    let appended = entries.len();
    WindowWriter::new(window_config)
        .append_proven(con, &BTreeMap::from([(session_id.to_owned(), entries)]))
        .await?;
    Ok(appended)
}

/// Now as microseconds since the Unix epoch (the unit of `server_time_us`).
fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
