//! P6: seq allocations per second next to `redis-benchmark INCR` at the same concurrency.

use std::time::Duration;

use anyhow::Result;
use chatlog_store::seq::{SeqAllocator, SeqConfig};
use serde_json::json;

use crate::reads;

use super::versus::{self, Sides};
use super::world::{Collect, Reads};

/// Runs P6; `rpid` is Redis's pid (its CPU time is counted).
pub(super) async fn run(cx: Reads<'_>, out: &mut Collect<'_>) -> Result<()> {
    let session = cx.world.session.clone();
    let redis = cx.world.redis.clone();
    let callers = cx.plan.callers;
    eprintln!("[bench] P6: seq allocations, {callers} callers");
    let alloc = SeqAllocator::new(
        session.clone(),
        cx.e2e_ks,
        redis.clone(),
        SeqConfig {
            min_segment: 10_000_000,
            max_segment: 10_000_000,
            dedup_ttl: Duration::from_secs(60),
            idle_ttl: Duration::from_secs(120),
            ..SeqConfig::default()
        },
    )
    .await?;
    let seq_sessions: Vec<String> = (0..callers)
        .map(|i| format!("{}_q{i}", cx.world.run))
        .collect();
    for sid in &seq_sessions {
        alloc.allocate(sid, "warm", "m", 1).await?;
    }
    let incr_key = format!("chatlog:{{{}_incr}}:n", cx.world.run);
    let incr = ["INCR", incr_key.as_str()];
    let loops = reads::Loops::of(cx.plan, cx.rpid, &seq_sessions);
    let measured = versus::measure(&loops, callers, 1, &incr, |c| {
        loops.seq_allocations(&alloc, c)
    })
    .await?;
    measured.record(
        &Sides {
            id: "P6",
            what: "seq allocations/s",
            ours: "allocate",
            reference: "redis-benchmark INCR",
            unit: "op/s",
            goal: 0.8,
        },
        json!({}),
        out,
    );
    Ok(())
}
