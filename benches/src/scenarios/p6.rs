//! P6: seq allocations per second next to `redis-benchmark INCR` at the same concurrency.

use std::time::Duration;

use anyhow::Result;
use chatlog_store::seq::{SeqAllocator, SeqConfig};
use serde_json::json;

use crate::plan::Plan;
use crate::reads;
use crate::report::{Figure, Goal};

use super::p5::n_for;
use super::world::{Collect, World};

/// Runs P6; `rpid` is Redis's pid (its CPU time is counted).
pub(super) async fn run(
    plan: &Plan,
    world: &World,
    e2e_ks: &str,
    rpid: Option<u32>,
    out: &mut Collect<'_>,
) -> Result<()> {
    let session = world.session.clone();
    let redis = world.redis.clone();
    let figures = &mut *out.figures;
    let details = &mut *out.details;
    let callers = plan.callers;
    let secs = plan.loop_seconds;
    eprintln!("[bench] P6: seq allocations, {callers} callers");
    let alloc = SeqAllocator::new(
        session.clone(),
        e2e_ks,
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
        .map(|i| format!("{}_q{i}", world.run))
        .collect();
    for sid in &seq_sessions {
        alloc.allocate(sid, "warm", "m", 1).await?;
    }
    let incr_key = format!("chatlog:{{{}_incr}}:n", world.run);
    let incr = ["INCR", incr_key.as_str()];
    let allocs_many = reads::seq_allocations(&alloc, rpid, &seq_sessions, callers, secs).await?;
    let rb_incr_many = reads::redis_benchmark(rpid, callers, n_for(&allocs_many, secs), &incr)?;
    let allocs_one = reads::seq_allocations(&alloc, rpid, &seq_sessions, 1, secs).await?;
    let rb_incr_one = reads::redis_benchmark(rpid, 1, n_for(&allocs_one, secs), &incr)?;
    eprintln!(
        "[bench]   allocate {:.0}/s vs INCR {:.0}/s ({callers}); {:.0}/s vs {:.0}/s (1)",
        allocs_many.rate, rb_incr_many.rate, allocs_one.rate, rb_incr_one.rate
    );
    eprintln!(
        "[bench]   CPU µs/op client+redis: allocate {:.1}+{:.1}, redis-benchmark {:.1}+{:.1}",
        allocs_many.client_cpu_us,
        allocs_many.redis_cpu_us,
        rb_incr_many.client_cpu_us,
        rb_incr_many.redis_cpu_us
    );
    figures.insert(
        "P6".to_owned(),
        Figure::ratio(
            &format!("seq allocations/s, {callers} callers"),
            allocs_many.rate,
            rb_incr_many.rate,
            "redis-benchmark INCR",
            "op/s",
            Goal::AtLeast(0.5),
        ),
    );
    details.insert(
        "P6".into(),
        json!({"callers": callers, "allocate": allocs_many, "redis_benchmark": rb_incr_many,
               "one_caller": {"allocate": allocs_one, "redis_benchmark": rb_incr_one,
                              "ratio": allocs_one.rate / rb_incr_one.rate.max(1e-9)}}),
    );
    Ok(())
}
