//! The faults, injected one after another at random times spread over the load (each starts at
//! its planned time or when the previous one is over, whichever is later):
//!
//! | kind | what the harness does |
//! |---|---|
//! | `kill` | SIGKILL to a random consumer (up ≥ 5 s if any), restarted at once with the same ordinal |
//! | `rebalance` | a new consumer joins; 8 s later a random member gets SIGTERM and is not restarted |
//! | `kafka_restart` | `dev/stack.sh down kafka; dev/stack.sh up kafka` (the only broker) |
//! | `redis_flushall` | `dev/stack.sh down redis; dev/stack.sh up redis` (no persistence), then `FLUSHALL` |
//! | `rollback` | `dev/stack.sh redis-snapshot` (BGSAVE, the RDB kept aside); `rollback_after` later `dev/stack.sh redis-rollback`: kill -9 of Redis, restarted from that RDB — Redis goes back in time by `rollback_after` |
//! | `failover` | a real second `redis-server` replicates the stack's Redis through a link proxy; the link is cut, writes go on for `failover_lag`, then `REPLICAOF NO ONE` on the replica and the client proxy switches every client to it (dropping their connections); `failover_serve` later a lossless switch back (see `faults/failover.rs`) |
//! | `cassandra_pause` | SIGSTOP to Cassandra, SIGCONT after the pause (10 s) |
//! | `consumer_pause` | SIGSTOP to a random consumer for `consumer_pause` (longer than the session timeout): its partitions move on and it resumes as a zombie; with `pause_flush`, FLUSHALL 2 s before it resumes |
//! | `zombie` | Cassandra SIGSTOP; 3 s later SIGSTOP to a random consumer (blocked in its CQL stage); Cassandra SIGCONT; 13 s later FLUSHALL; 2 s later the consumer SIGCONT |
//! | `poll_zombie` | the load holds new sends until the group's lag is 0 (every consumer is then inside poll, waiting for records); SIGSTOP to a random consumer; the load resumes; FLUSHALL 2 s before SIGCONT, `consumer_pause` later: it resumes inside the poll that returns its first stale records |
//! | `two_producers` | for `two_producers_for`, a share of the sessions is sent to by two independent `Producer` instances at once (see [`crate::load`]) |
//! | `wrongtype` | a fresh session's window key is SET to a string and its epoch key made a list (a key clash: Redis answers WRONGTYPE to every window write); [`WRONGTYPE_MESSAGES`] messages sent to it must each reach the DLQ once as `write_failed` while the other sessions go on; the key is deleted once the group committed past them |
//! | `scale_up` | `scale_up_by` consumers join the fleet at once (on the cluster: 1 → 3) |
//! | `scale_down` | a random consumer gets SIGTERM (must exit 0) and is not restarted (3 → 2); always after the scale-ups |
//! | `broker_kill` | cluster: kill -9 of the broker that leads a random partition of the topic; once every partition has a leader again and `broker_down` later, `dev/cluster.sh up kafka` starts it again, and the fault waits until it is back in the ISR of every partition of the topic |
//! | `redis_master_kill` | cluster: kill -9 of a random Redis master; its replica takes over after the cluster node timeout (5 s), then `dev/cluster.sh start-node redis N` starts the old node again, which rejoins as a replica of the new master (empty, no persistence: a full sync) |
//! | `late_send` | one message is sent through a producer whose Kafka is unreachable (its seq is allocated, the produce fails), and `late_send_hold` later again through the working one with the same client_msg_id, after later seqs of the session landed |
//!
//! Each is logged with its start time and duration and counted once in "faults injected".

mod cluster;
mod ctx;
mod failover;
mod kind;
mod redis_state;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

pub use ctx::Ctx;
use ctx::{flushall, pause_then_resume, pick, wait_lag_zero};
pub use kind::{Kind, WRONGTYPE_MESSAGES, check_plan, per_kind, planned_total, schedule};

use crate::events::Events;
use crate::stack::{self, Resume};

/// How long a scale-up lets the grown fleet work before it is over.
const SCALE_HOLD: Duration = Duration::from_secs(10);

/// Whether a kind runs beside the others rather than one after another: a two-producer period
/// and a late send last while other faults go on.
fn concurrent(kind: Kind) -> bool {
    matches!(kind, Kind::TwoProducers | Kind::LateSend)
}

/// Runs the schedule; returns how many faults of each kind were injected. Faults run one after
/// another (each at its time or when the previous one is over), except two-producer periods and
/// late sends, which run at their own times beside them.
pub async fn inject(plan: Vec<(f64, Kind)>, ctx: Ctx) -> anyhow::Result<BTreeMap<String, usize>> {
    let start = tokio::time::Instant::now();
    let (side, main): (Vec<_>, Vec<_>) = plan.into_iter().partition(|(_, k)| concurrent(*k));
    let run = |plan: Vec<(f64, Kind)>, salt: u64, ctx: Ctx| async move {
        let mut rng = StdRng::seed_from_u64(ctx.opts.seed ^ salt);
        let mut injected: BTreeMap<String, usize> = BTreeMap::new();
        let mut tasks = Vec::new();
        for (at, kind) in plan {
            tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
            let n = injected.get(kind.name()).copied().unwrap_or(0) + 1;
            let began = ctx.events.now();
            if concurrent(kind) {
                // Each on its own: a two-producer period lasts, a late send holds its retry.
                let (ctx, mut rng) = (ctx.clone(), StdRng::seed_from_u64(rng.random()));
                tasks.push(tokio::spawn(async move {
                    let detail = one(kind, n, &ctx, &mut rng, began)
                        .await
                        .inspect_err(|e| failed(&ctx.events, kind, e))?;
                    ctx.events.fault(kind.name(), began, detail);
                    Ok::<_, anyhow::Error>(())
                }));
            } else {
                let detail = one(kind, n, &ctx, &mut rng, began)
                    .await
                    .inspect_err(|e| failed(&ctx.events, kind, e))?;
                ctx.events.fault(kind.name(), began, detail);
            }
            *injected.entry(kind.name().to_owned()).or_default() += 1;
        }
        for t in tasks {
            t.await??;
        }
        Ok::<_, anyhow::Error>(injected)
    };
    let (a, b) = tokio::join!(
        run(main, 0x051C_71A5, ctx.clone()),
        run(side, 0x51DE_5EED, ctx.clone())
    );
    let mut injected = a?;
    for (k, n) in b? {
        *injected.entry(k).or_default() += n;
    }
    Ok(injected)
}

/// Logs a fault that could not be carried out (the run then ends with it).
fn failed(events: &Events, kind: Kind, e: &anyhow::Error) {
    events.log(format!("FAULT {} FAILED: {e:#}", kind.name()));
}

/// Injects one fault (the `n`-th of its kind); returns what was done.
async fn one(
    kind: Kind,
    n: usize,
    ctx: &Ctx,
    rng: &mut StdRng,
    began: f64,
) -> anyhow::Result<String> {
    let events = &ctx.events;
    Ok(match kind {
        Kind::Kill => {
            let victim = pick(&ctx.fleet, rng, "kill")?;
            ctx.fleet.kill9_and_restart(victim)?
        }
        Kind::Rebalance => {
            let joined = ctx.fleet.add()?;
            events.log(format!("rebalance: consumer-{joined} joined"));
            tokio::time::sleep(Duration::from_secs(8)).await;
            let up = ctx.fleet.running(Duration::ZERO);
            let Some(&leaver) = up.choose(rng) else {
                anyhow::bail!("rebalance: no consumer is running");
            };
            let status = ctx.fleet.retire(leaver, Duration::from_secs(45)).await?;
            format!("consumer-{joined} joined; consumer-{leaver} left with SIGTERM ({status})")
        }
        Kind::KafkaRestart => {
            ctx.stack.script(&["down", "kafka"]).await?;
            let down = events.now() - began;
            ctx.stack.script(&["up", "kafka"]).await?;
            format!("dev/stack.sh down kafka ({down:.1}s) + up kafka: broker back")
        }
        Kind::RedisFlushall => {
            ctx.stack.script(&["down", "redis"]).await?;
            ctx.stack.script(&["up", "redis"]).await?;
            let mut con = ctx.stack.redis().await?;
            let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await?;
            events.redis_loss(began, events.now());
            "dev/stack.sh down redis + up redis (no persistence: all keys lost), then FLUSHALL"
                .to_owned()
        }
        Kind::ScaleUp => {
            let mut joined = Vec::new();
            for _ in 0..ctx.opts.scale_up_by {
                joined.push(ctx.fleet.add()?);
            }
            // Over once the new instances consume and the larger fleet has worked a while: a
            // later scale-down (or any other fault) then acts on a fleet that really grew.
            let consuming = ctx
                .fleet
                .wait_consuming(&joined, Duration::from_secs(90))
                .await?;
            tokio::time::sleep(SCALE_HOLD).await;
            let size = ctx.fleet.running(Duration::ZERO).len();
            format!(
                "{} joined, consuming after {consuming:.1}s; {size} consumers {SCALE_HOLD:?} later",
                joined
                    .iter()
                    .map(|o| format!("consumer-{o}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Kind::ScaleDown => {
            let up = ctx.fleet.running(Duration::ZERO);
            let Some(&leaver) = up.choose(rng) else {
                anyhow::bail!("scale_down: no consumer is running");
            };
            let status = ctx.fleet.retire(leaver, Duration::from_secs(45)).await?;
            let size = ctx.fleet.running(Duration::ZERO).len();
            format!("consumer-{leaver} left with SIGTERM ({status}): {size} consumers")
        }
        Kind::BrokerKill => cluster::broker_kill(ctx, rng).await?,
        Kind::RedisMasterKill => cluster::redis_master_kill(ctx, rng, began).await?,
        Kind::Rollback => redis_state::rollback(ctx, n).await?,
        Kind::WrongType => redis_state::wrongtype(ctx, n).await?,
        Kind::Failover => failover::failover(ctx, n).await?,
        Kind::CassandraPause => {
            let pid = ctx.stack.cassandra_pid()?;
            stack::signal(pid, "-STOP")?;
            let guard = Resume(pid);
            tokio::time::sleep(ctx.opts.cassandra_pause).await;
            drop(guard); // SIGCONT
            format!(
                "SIGSTOP to Cassandra pid {pid}, SIGCONT after {:?}",
                ctx.opts.cassandra_pause
            )
        }
        Kind::ConsumerPause => {
            let victim = pick(&ctx.fleet, rng, "consumer_pause")?;
            let pid = ctx
                .fleet
                .pid(victim)
                .context("consumer_pause: victim gone")?;
            stack::signal(pid, "-STOP")?;
            let guard = Resume(pid);
            let mut detail = format!("SIGSTOP to consumer-{victim} (pid {pid})");
            pause_then_resume(ctx, guard, ctx.opts.pause_flush, &mut detail).await?;
            detail
        }
        Kind::Zombie => {
            let cassandra = ctx.stack.cassandra_pid()?;
            stack::signal(cassandra, "-STOP")?;
            let cassandra_guard = Resume(cassandra);
            tokio::time::sleep(Duration::from_secs(3)).await;
            let victim = pick(&ctx.fleet, rng, "zombie")?;
            let pid = ctx.fleet.pid(victim).context("zombie: victim gone")?;
            stack::signal(pid, "-STOP")?;
            let consumer_guard = Resume(pid);
            drop(cassandra_guard); // SIGCONT Cassandra
            tokio::time::sleep(Duration::from_secs(13)).await;
            flushall(ctx).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(consumer_guard); // SIGCONT the zombie
            format!(
                "Cassandra (pid {cassandra}) stopped 3 s; consumer-{victim} (pid {pid}) \
                 stopped meanwhile, FLUSHALL 13 s later, resumed 2 s after that"
            )
        }
        Kind::PollZombie => {
            // Every consumer is inside poll once the group has committed everything and
            // nothing new is sent: hold the load, await lag 0, freeze one, let the load go.
            ctx.load.hold();
            let idle = wait_lag_zero(ctx, Duration::from_secs(30)).await;
            let victim = pick(&ctx.fleet, rng, "poll_zombie");
            let stopped = victim.and_then(|v| {
                let pid = ctx.fleet.pid(v).context("poll_zombie: victim gone")?;
                stack::signal(pid, "-STOP")?;
                Ok((v, pid, Resume(pid)))
            });
            ctx.load.resume();
            let (victim, pid, guard) = stopped?;
            let held = events.now() - began;
            let mut detail = format!(
                "load held {held:.1}s until {}; SIGSTOP to consumer-{victim} (pid {pid}) \
                 inside poll",
                match idle {
                    Ok(()) => "the group's lag was 0".to_owned(),
                    Err(e) => format!("the lag stayed above 0 ({e:#}; it may not be idle)"),
                }
            );
            pause_then_resume(ctx, guard, true, &mut detail).await?;
            detail
        }
        Kind::TwoProducers => {
            let mut sessions = ctx.load.sessions_with(20);
            sessions.shuffle(rng);
            let share = (ctx.load.plan().sessions as f64 * ctx.opts.two_producers_share)
                .ceil()
                .max(1.0) as usize;
            sessions.truncate(share);
            anyhow::ensure!(!sessions.is_empty(), "two_producers: no session left");
            ctx.load.pair(&sessions, true);
            let d = ctx.opts.two_producers_for;
            tokio::time::sleep(d).await;
            ctx.load.pair(&sessions, false);
            format!(
                "{} sessions sent to by producer instances A and B at once for {d:?} \
                 (e.g. {})",
                sessions.len(),
                ctx.load.plan().session_id(sessions[0])
            )
        }
        Kind::LateSend => {
            let candidates = ctx.load.sessions_with(3);
            let Some(&s) = candidates.choose(rng) else {
                anyhow::bail!("late_send: no session has 3 messages left");
            };
            let hold = ctx.opts.late_send_hold;
            let j = ctx
                .load
                .late_send(s, hold)
                .context("late_send: the session ran out of messages")?;
            format!(
                "{} {}: produced through the broken instance (seq allocated, produce \
                 fails), re-sent {hold:?} later through instance A",
                ctx.load.plan().session_id(s),
                crate::load::Plan::client_msg_id(j)
            )
        }
    })
}
