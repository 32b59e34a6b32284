//! The checker: the recorded history (every acknowledged send, every resend, every poison record,
//! every fault, and what the online oracle's reads said) against what CQL, Redis and the DLQ hold
//! once the pipeline has drained.
//!
//! Definitions (docs/RELIABILITY.md explains them at length):
//!
//! - **lost**: acknowledged messages with no row at their (session, seq), or whose row is the same
//!   message (msg_id) but differs in some field (client_msg_id, content, sender, types, times,
//!   ext; for a mutated message: in a field no mutation changes) or whose `writetime()` is not its
//!   version (the server time as sent; a mutated message's: its state's version); plus poison
//!   records missing from the DLQ.
//! - **duplicated**: acknowledged messages stored a second time (another row of the session holds
//!   their client_msg_id, or a resend with the same client_msg_id got another seq or msg_id); a
//!   (session, seq) acknowledged for two different messages; rows no send explains; DLQ records
//!   present more than once (same source partition and offset) or not poison at all. A second copy
//!   caused by Redis losing the idempotency records between the two sends is the documented limit
//!   of the seq allocator and is reported apart (`known_limit_duplicates`), not here.
//! - **reordered**: real-time order. An ack `b` is reordered if some message acknowledged before
//!   `b`'s first attempt began has a seq not below `b`'s, or (in the session's partition) an
//!   offset not below `b`'s, or `b` went to another partition than the session's. Sequential
//!   sends, two producers at once and late sends are all held to it (see [`order_violations`]).
//! - **window mismatches**: sessions whose Redis window is not exactly the newest k rows of CQL for
//!   the session (k ≤ W, contiguous from the newest row down, each member byte-identical to
//!   `version prefix + Avro` of that row), or that `chatlog_store::verify::verify_window` does not
//!   call consistent. An empty or shorter window (after FLUSHALL) is fine; a wrong one is not.
//! - **overwritten**: acknowledged messages whose (session, seq) row holds another message (another
//!   msg_id) after the drain, or that an oracle read saw replaced by another message at their seq
//!   after their ack (each message once); plus (session, seq) that a read returned with another
//!   message's content. Not counted again in *lost*.
//! - **false missing**: see [`crate::oracle`]: (session, seq) holding an acknowledged message that
//!   a read reported `missing` after the message's ack or within the settle horizon of its
//!   allocation. Acknowledged seqs the final sweep did not return are counted apart
//!   (`not_returned`).
//! - **mutation mismatches**: messages with a recorded mutation whose CQL row, window member
//!   (when the window holds it) or copy returned by the final sweep is not in the state expected
//!   (see [`mutations`]: the acknowledged mutation with the highest version, or what an uncertain
//!   attempt above it could have left; a recalled or deleted message without content and ext),
//!   plus acknowledged mutations that do not carry what was asked; each message once.

mod cql;
mod dlq;
mod expected;
mod inputs;
pub mod mutations;
mod online;
mod order;
mod resends;
mod session;
mod state;

use chatlog_schemas::Codec;
use chatlog_store::history::History;

pub use cql::{Cql, wait_stable};
pub use inputs::{Inputs, history_config};
pub use order::order_violations;
use state::Check;
pub use state::{Counts, Details, Findings};

/// Runs every check.
pub async fn check(inp: Inputs<'_>) -> anyhow::Result<Findings> {
    let mut c = Check::default();
    let codec = Codec::default();
    let history = History::new(
        inp.cql.session.clone(),
        inp.cql.keyspace(),
        inp.redis.clone(),
        Codec::default(),
        history_config(inp.window_size, inp.horizon),
    )
    .await?;
    // What each mutated message may be at the end, before the rows are judged.
    c.expected = mutations::expected(&mut c, &inp);
    // Resends first: they decide which extra rows are explained.
    resends::resends(&mut c, &inp);
    resends::conflicting(&mut c, &inp);
    // Per session: CQL rows and the Redis window, checked against the acks.
    for state in session::fetch(&inp, &history).await? {
        session::check_session(&mut c, &inp, &codec, state)?;
    }
    c.f.details.duplicated_messages = c.dup_messages.len();
    c.f.details.known_limit_duplicates = c.known_limit.difference(&c.dup_messages).count();
    // (d)/(f) the DLQ under read_committed: exactly the poison records, each once.
    dlq::dlq(&mut c, &inp).await?;
    // (g) what the online oracle and the final sweep saw.
    online::online(&mut c, &inp);
    // The final sweep's copies of the mutated messages.
    mutations::history(&mut c, &inp);
    Ok(c.finish())
}
