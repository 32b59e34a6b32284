//! The write plan of one batch: which rows are written before their session's window, because
//! the window's trim would otherwise drop messages of the batch that have no row yet.

use std::collections::BTreeMap;

use chatlog_schemas::ChatMessage;
use chatlog_store::window::{self, EntryRef};

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
///
/// Everything borrows the batch's decoded messages and record bytes: no row or member is copied.
#[derive(Debug, Default)]
pub(super) struct WritePlan<'a> {
    /// Rows written at once.
    pub(super) rows: Vec<&'a ChatMessage>,
    /// Windows written at once.
    pub(super) windows: BTreeMap<&'a str, Vec<EntryRef<'a>>>,
    /// Rows of messages a window append would trim at once.
    pub(super) trimmed_rows: Vec<&'a ChatMessage>,
    /// Windows written once `trimmed_rows` are.
    pub(super) windows_after_trimmed_rows: BTreeMap<&'a str, Vec<EntryRef<'a>>>,
}

impl<'a> WritePlan<'a> {
    pub(super) fn new(
        good: impl IntoIterator<Item = &'a Good>,
        window_size: usize,
    ) -> WritePlan<'a> {
        let mut plan = WritePlan::default();
        for (session_id, mut messages) in by_session(good) {
            let entry = |g: &&'a Good| EntryRef::of(&g.message, &g.avro);
            let Some(lowest_kept) =
                window::lowest_kept(messages.iter().map(|g| g.message.seq), window_size)
            else {
                plan.rows.extend(messages.iter().map(|g| &g.message));
                plan.windows
                    .insert(session_id, messages.iter().map(entry).collect());
                continue;
            };
            // The window gets every version of the seqs it keeps; the others' rows go first.
            messages.sort_by_key(|g| g.message.seq);
            let split = messages.partition_point(|g| g.message.seq < lowest_kept);
            let (trimmed, kept) = messages.split_at(split);
            plan.trimmed_rows.extend(trimmed.iter().map(|g| &g.message));
            plan.rows.extend(kept.iter().map(|g| &g.message));
            plan.windows_after_trimmed_rows
                .insert(session_id, kept.iter().map(entry).collect());
        }
        plan
    }
}

/// The batch's messages grouped by session, in batch order within each.
pub(super) fn by_session<'a>(
    good: impl IntoIterator<Item = &'a Good>,
) -> BTreeMap<&'a str, Vec<&'a Good>> {
    let mut by_session: BTreeMap<&str, Vec<&Good>> = BTreeMap::new();
    for g in good {
        by_session
            .entry(g.message.session_id.as_str())
            .or_default()
            .push(g);
    }
    by_session
}
