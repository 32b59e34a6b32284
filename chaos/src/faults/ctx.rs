//! What the faults act on, and the steps several faults share.

use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use crate::events::Events;
use crate::fleet::Fleet;
use crate::load::Load;
use crate::options::Options;
use crate::proxy::Proxy;
use crate::stack::{Resume, Stack};

/// What the faults act on.
#[derive(Clone)]
pub struct Ctx {
    /// The settings.
    pub opts: Options,
    /// The stack.
    pub stack: Stack,
    /// The consumers.
    pub fleet: Fleet,
    /// The event log.
    pub events: Events,
    /// The load (held back, paired, late sends).
    pub load: Load,
    /// The proxy every Redis client of the run goes through (none on the cluster stack).
    pub proxy: Option<Proxy>,
    /// Kafka topic and group (the poll zombie waits for the lag to be 0).
    pub topic: String,
    /// The consumer group.
    pub group: String,
}

/// A random consumer that has been up for 5 s, for fault `what`.
pub(super) fn pick(fleet: &Fleet, rng: &mut StdRng, what: &str) -> anyhow::Result<usize> {
    let up = fleet.running(Duration::from_secs(5));
    up.choose(rng)
        .copied()
        .with_context(|| format!("{what}: no consumer is running"))
}

/// FLUSHALL on the Redis the clients use, recorded as a Redis data loss.
pub(super) async fn flushall(ctx: &Ctx) -> anyhow::Result<()> {
    let at = ctx.events.now();
    let mut con = ctx.stack.redis().await?;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await?;
    ctx.events.redis_loss(at, ctx.events.now());
    Ok(())
}

/// Keeps a stopped consumer stopped for `consumer_pause` (FLUSHALL 2 s before the end with
/// `flush`), then SIGCONT (dropping `guard`).
pub(super) async fn pause_then_resume(
    ctx: &Ctx,
    guard: Resume,
    flush: bool,
    detail: &mut String,
) -> anyhow::Result<()> {
    let pause = ctx.opts.consumer_pause;
    if flush {
        let before = Duration::from_secs(2).min(pause / 2);
        tokio::time::sleep(pause.saturating_sub(before)).await;
        flushall(ctx).await?;
        detail.push_str(", FLUSHALL while it is stopped");
        tokio::time::sleep(before).await;
    } else {
        tokio::time::sleep(pause).await;
    }
    drop(guard); // SIGCONT
    detail.push_str(&format!(", SIGCONT after {pause:?}"));
    Ok(())
}

/// Waits until the group has committed the end of every partition (its committed offsets, not
/// waiting for transactions still open: a consumer frozen by an earlier fault may hold one).
pub(super) async fn wait_lag_zero(ctx: &Ctx, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (k, t, g, p) = (
            ctx.stack.kafka.clone(),
            ctx.topic.clone(),
            ctx.group.clone(),
            ctx.opts.partitions,
        );
        let lag =
            tokio::task::spawn_blocking(move || crate::drain::stable_lag(&k, &t, &g, p)).await?;
        match lag {
            Ok(0) => return Ok(()),
            Ok(n) if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("{n} records not committed after {limit:?}")
            }
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
