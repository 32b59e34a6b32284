//! chatlog's chaos harness: the whole pipeline (producer library → Kafka → a fleet of real
//! `chatlog-consumer` processes → CQL + Redis windows + DLQ) under faults, checked against the
//! recorded history of acknowledged sends.
//!
//! One run ([`run`]):
//! 1. **Setup**: a fresh keyspace (migrations applied), a fresh topic (8 partitions) and DLQ topic,
//!    a fresh consumer group; the stack is the one the `CHATLOG_*` variables name
//!    ([`stack::Stack::from_env`] refuses a mismatch between the addresses and the stack
//!    `dev/stack.sh` would restart).
//! 2. **Fleet**: `consumers` real `chatlog-consumer` processes supervised by the harness
//!    ([`fleet`]): stable ordinals and transactional ids, restarted when they exit by themselves.
//!    Every Redis client of the run (producers, oracle, checker, consumers) goes through a
//!    switchable TCP proxy ([`proxy`]) that a failover moves to the promoted replica.
//! 3. **Load** ([`load`]): messages through `chatlog_producer::Producer` over many sessions,
//!    retried with the same client_msg_id on failure, some resent after their ack (half of those
//!    with another content: must be refused), ~10 % mutated 1–3 times after their ack (edit,
//!    recall, delete for everyone); ~1 % poison records produced raw, every 50th a 2 MiB
//!    lz4-compressed one. Every ack, every mutation and every poison record is recorded.
//! 4. **Faults** ([`faults`]) spread over the load: kill -9 of consumers, rebalances, a Kafka
//!    broker restart, a Redis restart + FLUSHALL, a Redis rollback to an earlier snapshot, a
//!    failover to a lagging replica, Cassandra paused with SIGSTOP, consumers frozen (in a CQL
//!    stage, inside poll, anywhere), two producers on the same sessions, late sends, a session
//!    whose window keys have the wrong Redis type. On the cluster stack (`--size cluster|cluster-ci`,
//!    [`Options::cluster`]): the fleet scaled 1 → 3 → 2, kill -9 of a partition leader broker and of
//!    a Redis master, beside the faults that mean the same there.
//! 5. **Oracle** ([`oracle`]): history read during the run, and every session once after it.
//! 6. **Drain** ([`drain`]): the group's committed offsets reach the end of every partition; the
//!    fleet stops; the CQL row count is stable.
//! 7. **Check** ([`check`]): lost, duplicated, reordered, window mismatches, overwritten, false
//!    missing, mutation mismatches (definitions there and in docs/RELIABILITY.md), summed up in
//!    one line: `chaos: N acked, 0 lost, 0 duplicated, 0 reordered, 0 window mismatches, 0
//!    overwritten, 0 false missing, 0 mutation mismatches (M mutations), K faults injected
//!    (kill=5, rebalance=1, …)`.
//! 8. **Replay** ([`replay`]): the topic consumed again from offset 0 into the same stores by a
//!    new group (one kill -9 part-way), then the same checks again, on a second line:
//!    `chaos: after a replay from offset 0 (R records, kill=1, Ts): 0 lost, …`.
#![forbid(unsafe_code)]

pub mod check;
pub mod drain;
pub mod events;
pub mod faults;
pub mod fleet;
pub mod load;
pub mod options;
pub mod oracle;
pub mod poison;
pub mod proxy;
pub mod record;
pub mod replay;
pub mod report;
mod run;
pub mod sabotage;
pub mod stack;

pub use check::Findings;
pub use options::{Options, Size};
pub use report::{Phases, Report, RunInfo};
pub use run::run;
