//! What a request returns: [`Page`] and its [`Source`], and the pure rules that build one — gap
//! runs, ageing against the settle horizon ([`classify`]), merging window members with table rows
//! ([`merge`]). No I/O here.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::{SystemTime, UNIX_EPOCH};

use chatlog_schemas::ChatMessage;

use super::table_reader::DescScan;

/// Where a page's messages came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The Redis window alone (no database read).
    Window,
    /// The database; the window contributed no message (empty, unreadable, or not overlapping).
    Database,
    /// Both: the window contributed messages and the database the rest.
    Both,
}

impl Source {
    /// The metric label of this source.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Window => "window",
            Source::Database => "database",
            Source::Both => "both",
        }
    }
}

/// One answer of [`History`](super::History). See the module docs for the exact meaning of `covered`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The messages, ascending seq, one per seq.
    pub messages: Vec<ChatMessage>,
    /// Seqs inside [`covered`](Page::covered) that do not exist and never will (never written,
    /// e.g. gaps left by seq recovery), as closed ranges, ascending, disjoint and never adjacent.
    /// Final: a client can stop asking for them. At most one range per hole between the page's
    /// messages (`limit + 1`), whatever the holes' lengths.
    pub missing: Vec<RangeInclusive<i64>>,
    /// Seqs inside [`covered`](Page::covered) that do not exist *yet*: gaps younger than
    /// [`HistoryConfig::settle_horizon`](super::HistoryConfig::settle_horizon) (a send still being retried, or overtaken by a newer
    /// seq), as closed ranges like `missing`, disjoint from it. Ask again once the horizon has
    /// passed; each becomes a message or moves to `missing`.
    pub pending: Vec<RangeInclusive<i64>>,
    /// Seqs of messages this page's viewer deleted for themselves (delete for me), ascending:
    /// they exist but are not shown to this user, and are no gap. Empty unless read through
    /// [`History::viewer`](super::History::viewer).
    pub hidden: Vec<i64>,
    /// The closed seq range this page is complete for: each seq in it is in exactly one of
    /// `messages`, `missing`, `pending` and `hidden` (for [`History::get`](super::History::get): each *requested* seq in it).
    /// `None` when nothing is proven.
    pub covered: Option<RangeInclusive<i64>>,
    /// Where the messages came from.
    pub source: Source,
    /// The cursor of the next page in the same direction, `None` when there is nothing more now:
    /// pass it as `seq` to [`History::before`](super::History::before) (after `latest`/`before`) or [`History::after`](super::History::after)
    /// (after `after`). Always `None` for `get`.
    pub next: Option<i64>,
}

impl Page {
    pub(super) fn empty(source: Source) -> Page {
        Page {
            messages: Vec::new(),
            missing: Vec::new(),
            pending: Vec::new(),
            hidden: Vec::new(),
            covered: None,
            source,
            next: None,
        }
    }

    /// Whether another page may follow in the same direction (`next.is_some()`).
    pub fn has_more(&self) -> bool {
        self.next.is_some()
    }

    /// The seqs of the messages, ascending.
    pub fn seqs(&self) -> Vec<i64> {
        self.messages.iter().map(|m| m.seq).collect()
    }

    /// Every seq of [`missing`](Page::missing), one by one. A range may be long (a recovery gap
    /// holds up to a segment of seqs, a foreign seq far above the head many more): for tools and
    /// tests that know their sessions; clients should keep the ranges.
    pub fn missing_seqs(&self) -> impl Iterator<Item = i64> + '_ {
        self.missing.iter().flat_map(|r| r.clone())
    }

    /// Every seq of [`pending`](Page::pending), one by one (see [`missing_seqs`](Page::missing_seqs)).
    pub fn pending_seqs(&self) -> impl Iterator<Item = i64> + '_ {
        self.pending.iter().flat_map(|r| r.clone())
    }
}

/// Ascending seqs as closed ranges, consecutive seqs joined (for `get`, whose gaps are the
/// requested seqs themselves).
pub(super) fn ranges_of(seqs: impl IntoIterator<Item = i64>) -> Vec<RangeInclusive<i64>> {
    let mut out: Vec<RangeInclusive<i64>> = Vec::new();
    for s in seqs {
        match out.last_mut() {
            Some(r) if r.end().checked_add(1) == Some(s) => *r = *r.start()..=s,
            _ => out.push(s..=s),
        }
    }
    out
}

/// A page before its gaps are sorted into `missing` and `pending` ([`History::finish`](super::History::finish)).
pub(super) struct Draft {
    /// Ascending, one per seq.
    pub(super) messages: Vec<ChatMessage>,
    /// The range the page is complete for, if any (`lo > hi`: none).
    pub(super) covered: Option<(i64, i64)>,
    pub(super) source: Source,
    pub(super) next: Option<i64>,
    /// The nearest message known above the top of `covered` as (seq, `server_time_us`), when
    /// that top is not a message of the page (e.g. `before(x)`: the message at or above `x`). A
    /// gap at the top is aged by the first row between the two, or by this one.
    pub(super) above: Option<(i64, i64)>,
}

impl Draft {
    pub(super) fn new(
        messages: Vec<ChatMessage>,
        covered: (i64, i64),
        source: Source,
        next: Option<i64>,
    ) -> Draft {
        Draft {
            messages,
            covered: Some(covered),
            source,
            next,
            above: None,
        }
    }
}

/// The maximal runs `(a, b)` of seqs of `lo..=hi` that no message in `messages` (ascending) has,
/// ascending. At most `messages.len() + 1` runs, whatever their lengths.
pub(super) fn runs_in(messages: &[ChatMessage], lo: i64, hi: i64) -> Vec<(i64, i64)> {
    let mut runs = Vec::new();
    let mut next = lo;
    for m in messages {
        if m.seq < next {
            continue;
        }
        if m.seq > hi {
            break;
        }
        if m.seq > next {
            runs.push((next, m.seq - 1));
        }
        match m.seq.checked_add(1) {
            Some(n) => next = n,
            None => return runs,
        }
    }
    if next <= hi {
        runs.push((next, hi));
    }
    runs
}

/// Whether a gap whose nearest message above was stored at `above_us` is still young at `now_us`.
/// Unknown (`None`): young, since nothing proves it old.
pub(super) fn young(above_us: Option<i64>, now_us: i64, horizon_us: i64) -> bool {
    above_us.is_none_or(|t| now_us.saturating_sub(t) < horizon_us)
}

/// Sorts the gaps of `lo..=hi` in `messages` (ascending) into (missing, pending), one range per
/// run. A run of absent seqs is aged by the message right above it; the top run (ending at `hi`)
/// by `top_us`.
pub(super) fn classify(
    messages: &[ChatMessage],
    runs: &[(i64, i64)],
    top_us: Option<i64>,
    now_us: i64,
    horizon_us: i64,
) -> (Vec<RangeInclusive<i64>>, Vec<RangeInclusive<i64>>) {
    let (mut missing, mut pending) = (Vec::new(), Vec::new());
    for &(a, b) in runs {
        let i = messages.partition_point(|m| m.seq <= b);
        let above = match messages.get(i) {
            Some(m) => Some(m.server_time_us),
            None => top_us,
        };
        let list = if young(above, now_us, horizon_us) {
            &mut pending
        } else {
            &mut missing
        };
        list.push(a..=b);
    }
    (missing, pending)
}

/// Now as microseconds since the Unix epoch (the unit of `server_time_us`).
pub(super) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Merges window messages and table rows: one message per seq, ascending; when both have a seq
/// the higher [`ChatMessage::version`] wins (the window on a tie): an edit, recall or deletion
/// read from either side is never undone by the other side's older copy.
pub(super) fn merge(
    window: impl IntoIterator<Item = ChatMessage>,
    rows: impl IntoIterator<Item = ChatMessage>,
) -> Vec<ChatMessage> {
    let mut by_seq: BTreeMap<i64, ChatMessage> = BTreeMap::new();
    for m in rows {
        keep_newer(&mut by_seq, m);
    }
    for m in window {
        if by_seq
            .get(&m.seq)
            .is_none_or(|old| m.version() >= old.version())
        {
            by_seq.insert(m.seq, m);
        }
    }
    by_seq.into_values().collect()
}

pub(super) fn keep_newer(by_seq: &mut BTreeMap<i64, ChatMessage>, m: ChatMessage) {
    if by_seq
        .get(&m.seq)
        .is_none_or(|old| m.version() > old.version())
    {
        by_seq.insert(m.seq, m);
    }
}

/// The page of a descending walk that answered alone; `proven_hi` is the top of the covered range
/// when a message above it is known to exist, else the newest row found is.
pub(super) fn desc_page(scan: DescScan, proven_hi: Option<i64>) -> Draft {
    let (lo, next) = scan.lower();
    let hi = proven_hi.or_else(|| scan.rows.first().map(|m| m.seq));
    let mut messages = scan.rows;
    messages.reverse();
    Draft {
        messages,
        // Nothing found and nothing known above: no claim, but continue below an early stop.
        covered: hi.map(|hi| (lo, hi)),
        source: Source::Database,
        next,
        above: None,
    }
}
