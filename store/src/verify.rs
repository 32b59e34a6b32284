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

use std::collections::BTreeMap;
use std::fmt;

use chatlog_schemas::ChatMessage;

use crate::Result;
use crate::history::History;

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
            if self.is_consistent() {
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
    let table = history.table_reader();
    let (members, window_epoch_current) = history.window_reader().all_members(session_id).await?;
    let window_min = members.iter().map(|m| m.seq).min();
    let window_max = members.iter().map(|m| m.seq).max();

    // The newest W rows, from the head bound (the window's head if higher), ...
    let bound = match (table.head_bound(session_id).await?, window_max) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let mut rows: BTreeMap<i64, ChatMessage> = BTreeMap::new();
    let mut newest: Vec<i64> = Vec::new();
    if let Some(bound) = bound {
        let scan = table.scan_desc(session_id, bound, w.max(1)).await?;
        newest = scan.rows.iter().map(|m| m.seq).collect();
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

    let mut report = Report {
        session_id: session_id.to_owned(),
        window_size: w,
        window_epoch_current,
        window_members: members.len(),
        window_range: window_min.zip(window_max),
        db_rows: rows.len(),
        db_range: rows
            .first_key_value()
            .map(|(k, _)| *k)
            .zip(rows.last_key_value().map(|(k, _)| *k)),
        ..Report::default()
    };
    let mut in_window = std::collections::BTreeSet::new();
    for m in &members {
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
                let content_differs = ChatMessage {
                    server_time_us: row.server_time_us,
                    state: row.state.clone(),
                    ..message.clone()
                } != *row;
                if content_differs || m.version != row.version() {
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
    let newest: std::collections::BTreeSet<i64> = newest.into_iter().collect();
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
    Ok(report)
}
