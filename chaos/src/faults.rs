//! The faults, injected one after another at random times spread over the load:
//!
//! | kind | what the harness does |
//! |---|---|
//! | `kill9` | SIGKILL to a random consumer (up ≥ 5 s if any), restarted at once with the same ordinal |
//! | `rebalance` | a new consumer joins; 8 s later a random member gets SIGTERM and is not restarted |
//! | `kafka_restart` | `dev/stack.sh down kafka; dev/stack.sh up kafka` (the only broker) |
//! | `redis_restart_flushall` | `dev/stack.sh down redis; dev/stack.sh up redis`, then `FLUSHALL` |
//! | `cassandra_pause` | SIGSTOP to Cassandra, SIGCONT after the pause (10 s) |
//! | `zombie` | (optional, composed) Cassandra SIGSTOP; 3 s later SIGSTOP to a random consumer (blocked in its CQL stage); Cassandra SIGCONT; 13 s later (its partitions have moved on) FLUSHALL; 2 s later the consumer SIGCONT: it is still within its retry budget, finishes the stale batch's CQL and Redis writes, and only its commit is fenced |
//! | `consumer_pause` | (optional) SIGSTOP to a random consumer for 20 s, longer than the session timeout: its partitions move on and it resumes as a zombie; with `pause_flush`, FLUSHALL 2 s before it resumes |
//!
//! Each is logged with its start time and duration and counted once in "faults injected".

use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::events::Events;
use crate::fleet::Fleet;
use crate::options::Options;
use crate::stack::{self, ResumeGuard, Stack};

/// One planned fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// kill -9 of a consumer.
    Kill9,
    /// Join + leave.
    Rebalance,
    /// Broker restart.
    KafkaRestart,
    /// Redis restart and FLUSHALL.
    RedisRestart,
    /// Cassandra SIGSTOP/SIGCONT.
    CassandraPause,
    /// A consumer SIGSTOP/SIGCONT (a zombie), optionally with FLUSHALL meanwhile.
    ConsumerPause,
    /// The composed zombie-writer fault.
    Zombie,
}

/// The faults of a run in a random order, each with its planned start (seconds after the load
/// began), spread over 5 %…85 % of the load.
pub fn schedule(opts: &Options) -> Vec<(f64, Kind)> {
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0xFA_0175);
    let mut kinds = Vec::new();
    kinds.extend(std::iter::repeat_n(Kind::Kill9, opts.kills));
    kinds.extend(std::iter::repeat_n(Kind::Rebalance, opts.rebalances));
    kinds.extend(std::iter::repeat_n(Kind::KafkaRestart, opts.kafka_restarts));
    kinds.extend(std::iter::repeat_n(Kind::RedisRestart, opts.redis_restarts));
    kinds.extend(std::iter::repeat_n(
        Kind::CassandraPause,
        opts.cassandra_pauses,
    ));
    kinds.extend(std::iter::repeat_n(
        Kind::ConsumerPause,
        opts.consumer_pauses,
    ));
    kinds.extend(std::iter::repeat_n(Kind::Zombie, opts.zombies));
    kinds.shuffle(&mut rng);
    let load = opts.load_duration().as_secs_f64();
    let n = kinds.len().max(1) as f64;
    let slot = load * 0.8 / n;
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let at = load * 0.05 + slot * i as f64 + rng.random_range(0.0..slot * 0.5);
            (at, k)
        })
        .collect()
}

/// Runs the schedule (each fault starts at its time or when the previous one is over, whichever is
/// later); returns how many faults were injected.
pub async fn inject(
    plan: Vec<(f64, Kind)>,
    opts: Options,
    stack: Stack,
    fleet: Fleet,
    events: Events,
) -> anyhow::Result<usize> {
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x051C_71A5);
    let start = tokio::time::Instant::now();
    let mut injected = 0;
    for (at, kind) in plan {
        tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
        let began = events.now();
        match kind {
            Kind::Kill9 => {
                let up = fleet.running(Duration::from_secs(5));
                let Some(&victim) = up.get(rng.random_range(0..up.len().max(1))) else {
                    anyhow::bail!("kill9: no consumer is running");
                };
                let detail = fleet.kill9_and_restart(victim)?;
                events.fault("kill9", began, detail);
            }
            Kind::Rebalance => {
                let joined = fleet.add()?;
                events.log(format!("rebalance: consumer-{joined} joined"));
                tokio::time::sleep(Duration::from_secs(8)).await;
                let up = fleet.running(Duration::ZERO);
                let Some(&leaver) = up.get(rng.random_range(0..up.len().max(1))) else {
                    anyhow::bail!("rebalance: no consumer is running");
                };
                let status = fleet.retire(leaver, Duration::from_secs(45)).await?;
                events.fault(
                    "rebalance",
                    began,
                    format!(
                        "consumer-{joined} joined; consumer-{leaver} left with SIGTERM ({status})"
                    ),
                );
            }
            Kind::KafkaRestart => {
                stack.script(&["down", "kafka"]).await?;
                let down = events.now() - began;
                stack.script(&["up", "kafka"]).await?;
                events.fault(
                    "kafka_restart",
                    began,
                    format!("dev/stack.sh down kafka ({down:.1}s) + up kafka: broker back"),
                );
            }
            Kind::RedisRestart => {
                stack.script(&["down", "redis"]).await?;
                stack.script(&["up", "redis"]).await?;
                let mut con = stack.redis().await?;
                let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await?;
                events.redis_loss(began, events.now());
                events.fault(
                    "redis_restart_flushall",
                    began,
                    "dev/stack.sh down redis + up redis (no persistence: all keys lost), then FLUSHALL",
                );
            }
            Kind::CassandraPause => {
                let pid = stack.cassandra_pid()?;
                stack::signal(pid, "-STOP")?;
                let guard = ResumeGuard(pid);
                tokio::time::sleep(opts.cassandra_pause).await;
                drop(guard); // SIGCONT
                events.fault(
                    "cassandra_pause",
                    began,
                    format!(
                        "SIGSTOP to Cassandra pid {pid}, SIGCONT after {:?}",
                        opts.cassandra_pause
                    ),
                );
            }
            Kind::ConsumerPause => {
                let up = fleet.running(Duration::from_secs(5));
                let Some(&victim) = up.get(rng.random_range(0..up.len().max(1))) else {
                    anyhow::bail!("consumer_pause: no consumer is running");
                };
                let pid = fleet.pid(victim).context("consumer_pause: victim gone")?;
                stack::signal(pid, "-STOP")?;
                let guard = ResumeGuard(pid);
                let mut detail = format!("SIGSTOP to consumer-{victim} (pid {pid})");
                if opts.pause_flush {
                    let before = Duration::from_secs(2).min(opts.consumer_pause / 2);
                    tokio::time::sleep(opts.consumer_pause.saturating_sub(before)).await;
                    let flushed_at = events.now();
                    let mut con = stack.redis().await?;
                    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await?;
                    events.redis_loss(flushed_at, events.now());
                    detail.push_str(", FLUSHALL while it is stopped");
                    tokio::time::sleep(before).await;
                } else {
                    tokio::time::sleep(opts.consumer_pause).await;
                }
                drop(guard); // SIGCONT
                detail.push_str(&format!(", SIGCONT after {:?}", opts.consumer_pause));
                events.fault("consumer_pause", began, detail);
            }
            Kind::Zombie => {
                let cassandra = stack.cassandra_pid()?;
                stack::signal(cassandra, "-STOP")?;
                let cassandra_guard = ResumeGuard(cassandra);
                tokio::time::sleep(Duration::from_secs(3)).await;
                let up = fleet.running(Duration::from_secs(5));
                let Some(&victim) = up.get(rng.random_range(0..up.len().max(1))) else {
                    anyhow::bail!("zombie: no consumer is running");
                };
                let pid = fleet.pid(victim).context("zombie: victim gone")?;
                stack::signal(pid, "-STOP")?;
                let consumer_guard = ResumeGuard(pid);
                drop(cassandra_guard); // SIGCONT Cassandra
                tokio::time::sleep(Duration::from_secs(13)).await;
                let flushed_at = events.now();
                let mut con = stack.redis().await?;
                let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await?;
                events.redis_loss(flushed_at, events.now());
                tokio::time::sleep(Duration::from_secs(2)).await;
                drop(consumer_guard); // SIGCONT the zombie
                events.fault(
                    "zombie",
                    began,
                    format!(
                        "Cassandra (pid {cassandra}) stopped 3 s; consumer-{victim} (pid {pid}) \
                         stopped meanwhile, FLUSHALL 13 s later, resumed 2 s after that"
                    ),
                );
            }
        }
        injected += 1;
    }
    Ok(injected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Size;

    #[test]
    fn schedules_every_fault_once_within_the_load() {
        for size in [Size::Ci, Size::Full] {
            let opts = Options::preset(size);
            let plan = schedule(&opts);
            assert_eq!(plan.len(), opts.planned_faults());
            let load = opts.load_duration().as_secs_f64();
            assert!(plan.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
            assert!(plan.iter().all(|(t, _)| *t > 0.0 && *t < load * 0.9));
            let kills = plan.iter().filter(|(_, k)| *k == Kind::Kill9).count();
            assert_eq!(kills, opts.kills);
        }
        assert_eq!(Options::preset(Size::Ci).planned_faults(), 9);
        assert_eq!(Options::preset(Size::Full).planned_faults(), 26);
    }
}
