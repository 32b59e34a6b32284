//! The write plan of one batch: which rows are written before their session's window, because
//! the window's trim would otherwise drop messages of the batch that have no row yet.

use std::collections::BTreeMap;

use chatlog_schemas::ChatMessage;
use chatlog_store::window::{self, WindowEntry};

use crate::decode::Good;

/// How one batch's good messages are written: rows to CQL and windows to Redis at the same time,
/// which takes the CQL stage out of the ack → window latency.
///
/// A message may then be in its window a few milliseconds before its row exists, which a reader
/// cannot tell from a message that arrives late: history reads the window first and trusts it
/// between its lowest and highest seq. One case could be seen: a session with more messages in
/// the batch than the window keeps. The script trims the older ones at once
/// ([`window::lowest_kept`] says which, next to the script), and a reader looking below the
/// window would find neither copy. So for such a session the rows of those older messages
/// (`trimmed_rows`) are written first, and its window only after them — it gets only the seqs
/// the append keeps, as the older ones would be trimmed anyway.
#[derive(Debug, Default)]
pub(super) struct WritePlan {
    /// Rows written at once.
    pub(super) rows: Vec<ChatMessage>,
    /// Windows written at once.
    pub(super) windows: BTreeMap<String, Vec<WindowEntry>>,
    /// Rows of messages a window append would trim at once.
    pub(super) trimmed_rows: Vec<ChatMessage>,
    /// Windows written once `trimmed_rows` are.
    pub(super) windows_after_trimmed_rows: BTreeMap<String, Vec<WindowEntry>>,
}

impl WritePlan {
    pub(super) fn new(good: &[Good], window_size: usize) -> WritePlan {
        let mut plan = WritePlan::default();
        for (session_id, mut messages) in by_session(good) {
            let entry = |g: &Good| WindowEntry::of(&g.message, &g.avro);
            let Some(lowest_kept) =
                window::lowest_kept(messages.iter().map(|g| g.message.seq), window_size)
            else {
                plan.rows.extend(messages.iter().map(|g| g.message.clone()));
                plan.windows.insert(
                    session_id.to_owned(),
                    messages.iter().map(|g| entry(g)).collect(),
                );
                continue;
            };
            // The window gets every version of the seqs it keeps; the others' rows go first.
            messages.sort_by_key(|g| g.message.seq);
            let split = messages.partition_point(|g| g.message.seq < lowest_kept);
            let (trimmed, kept) = messages.split_at(split);
            plan.trimmed_rows
                .extend(trimmed.iter().map(|g| g.message.clone()));
            plan.rows.extend(kept.iter().map(|g| g.message.clone()));
            plan.windows_after_trimmed_rows.insert(
                session_id.to_owned(),
                kept.iter().map(|g| entry(g)).collect(),
            );
        }
        plan
    }
}

/// The batch's messages grouped by session, in batch order within each.
pub(super) fn by_session(good: &[Good]) -> BTreeMap<&str, Vec<&Good>> {
    let mut by_session: BTreeMap<&str, Vec<&Good>> = BTreeMap::new();
    for g in good {
        by_session
            .entry(g.message.session_id.as_str())
            .or_default()
            .push(g);
    }
    by_session
}
