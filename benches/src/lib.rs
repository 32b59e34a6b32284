//! chatlog's benchmark harness (`dev/bench.sh`): every figure of issues 8 and 16 measured side by
//! side with its reference in one run, against the local stack, reported as ratios.
//!
//! | | ours | reference | goal |
//! |---|---|---|---|
//! | P1 | end-to-end persisted msgs/s (producer library → Kafka → `chatlog-consumer` → CQL + Redis) | a raw CQL loader writing the same rows (tuned UNLOGGED batches, high concurrency) | ≥ 0.8× |
//! | P2 | the same end-to-end rate | a naive consumer: one INSERT and one synchronous offset commit per record | ≥ 5× |
//! | P3 | producer library msgs/s (seq allocation included) | Kafka's Java producer fed like ours (`benches/java/KeyedProducerPerf.java`: session-id keys, our encoded records, acks=all, idempotence, lz4, linger 5 ms; CPU over its send window only) | ≥ 1.0× |
//! | P3′ | the produce path with pre-assigned seqs (the producer's steps after allocation, repeated by the harness: [`produce::Preassigned`]) | the same Java producer | ≥ 1.2× |
//! | P4 | acknowledgement → Redis window visibility at 50 % of the machine's CPU capacity (calibrated), p99 | — | ≤ 100 ms |
//! | P5 | history `latest(50)` reads/s | `redis-benchmark ZREVRANGE <window> 0 49`, same concurrency | ≥ 0.5× |
//! | P6 | seq allocations/s | `redis-benchmark INCR`, same concurrency | ≥ 0.5× |
//! | P7 | consumer peak RSS (VmHWM) at max rate | — | ≤ 200 MiB |
//! | P8 | cached `get_user` reads/s (`CachedUserRepo<CqlUserRepo>`, warm) | `redis-benchmark GET` of a value of the same size, same concurrency | ≥ 0.5× |
//! | P8-cql | the same cached reads/s | the uncached read (`CqlUserRepo::get`), same callers | ≥ 10× |
//! | P9 | conversation lists/s (200 conversations, warm, first page of 200), with p99 | `redis-benchmark MGET` of 200 keys, same concurrency | ≥ 0.3× |
//! | P10 | `chatlog-consumer` draining mutations (edits, recalls, deletes for everyone of stored messages; v3 records) msgs/s | the same consumer draining as many new messages of the same sessions' shape, same run, alternating | ≥ 0.8× |
//!
//! Order of a run: P5 and P6 (reads, on windows of their own), P8 and P9 (the cached
//! repositories, on users and sessions of their own), then the producer library sends `messages` records (after one warm-up record per
//! session) to a fresh topic (P3, ours), the keyed Java producer as many to another (P3's and
//! P3′'s reference), the pre-assigned path as many to a third (P3′), `ProducerPerformance` as
//! many to a fourth (supplementary); the loader writes the stored rows into a fresh keyspace (P1 reference); the real
//! `chatlog-consumer` then drains the pre-produced topic into another keyspace (P1 drain: committed
//! offsets sampled every 50 ms, rate from the first commit to the last, start-up excluded), and
//! keeps running while the producer sends `live_messages` more at full speed (P1 live, P7) and then
//! paces at the rate where the stack uses half the CPUs (P4), then at half that (supplementary); the consumer is stopped; the naive consumer reads the same
//! topic with its own group (P2); last, P10 alternates appends and mutations, each pre-produced
//! to a fresh topic and drained by a fresh consumer ([`mutations`] builds both loads). Everything the run created (topics, keyspaces, Redis keys, groups) is deleted at the end.
#![forbid(unsafe_code)]

pub mod child;
pub mod cpu;
pub mod kafka;
pub mod latency;
pub mod loader;
pub mod mutations;
pub mod naive;
pub mod plan;
pub mod produce;
pub mod quiesce;
pub mod reads;
pub mod report;
mod scenarios;
pub mod series;
pub mod workload;

use std::path::Path;

use anyhow::{Context, Result};

pub use plan::{Only, Options, Plan};
pub use scenarios::run;

use crate::report::Results;

/// Writes `results` as pretty JSON to `path`.
pub fn write_json(results: &Results, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(results)?;
    std::fs::write(path, text).with_context(|| format!("write {path:?}"))
}
