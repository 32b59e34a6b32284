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
//! | `failover` | a real second `redis-server` replicates the stack's Redis through a link proxy; the link is cut, writes go on for `failover_lag`, then `REPLICAOF NO ONE` on the replica and the client proxy switches every client to it (dropping their connections); `failover_serve` later a lossless switch back (see [`failover`]) |
//! | `cassandra_pause` | SIGSTOP to Cassandra, SIGCONT after the pause (10 s) |
//! | `consumer_pause` | SIGSTOP to a random consumer for `consumer_pause` (longer than the session timeout): its partitions move on and it resumes as a zombie; with `pause_flush`, FLUSHALL 2 s before it resumes |
//! | `zombie` | Cassandra SIGSTOP; 3 s later SIGSTOP to a random consumer (blocked in its CQL stage); Cassandra SIGCONT; 13 s later FLUSHALL; 2 s later the consumer SIGCONT |
//! | `poll_zombie` | the load holds new sends until the group's lag is 0 (every consumer is then inside poll, waiting for records); SIGSTOP to a random consumer; the load resumes; FLUSHALL 2 s before SIGCONT, `consumer_pause` later: it resumes inside the poll that returns its first stale records |
//! | `two_producers` | for `two_producers_for`, a share of the sessions is sent to by two independent `Producer` instances at once (see [`crate::load`]) |
//! | `wrongtype` | a fresh session's window key is SET to a string and its epoch key made a list (a key clash: Redis answers WRONGTYPE to every window write); [`WRONGTYPE_MESSAGES`] messages sent to it must each reach the DLQ once as `write_failed` while the other sessions go on; the key is deleted once the group committed past them |
//! | `late_send` | one message is sent through a producer whose Kafka is unreachable (its seq is allocated, the produce fails), and `late_send_hold` later again through the working one with the same client_msg_id, after later seqs of the session landed |
//!
//! Each is logged with its start time and duration and counted once in "faults injected".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use crate::events::Events;
use crate::fleet::Fleet;
use crate::load::Load;
use crate::options::Options;
use crate::proxy::Proxy;
use crate::stack::{self, ResumeGuard, Stack};

/// One planned fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// kill -9 of a consumer.
    Kill,
    /// Join + leave.
    Rebalance,
    /// Broker restart.
    KafkaRestart,
    /// Redis restart and FLUSHALL.
    RedisFlushall,
    /// Redis restarted from an earlier snapshot.
    Rollback,
    /// Failover to a lagging replica.
    Failover,
    /// Cassandra SIGSTOP/SIGCONT.
    CassandraPause,
    /// A consumer SIGSTOP/SIGCONT (a zombie), optionally with FLUSHALL meanwhile.
    ConsumerPause,
    /// The composed zombie-writer fault (frozen in its CQL stage).
    Zombie,
    /// A consumer frozen inside poll past its session timeout.
    PollZombie,
    /// Two producer instances sending to the same sessions.
    TwoProducers,
    /// A send whose produce fails, retried after later seqs landed.
    LateSend,
    /// A session whose window keys have the wrong Redis type.
    WrongType,
}

/// Messages a `wrongtype` fault sends to its session.
pub const WRONGTYPE_MESSAGES: usize = 3;

impl Kind {
    /// Every kind, in the order of the summary line.
    pub const ALL: [Kind; 13] = [
        Kind::Kill,
        Kind::Rebalance,
        Kind::KafkaRestart,
        Kind::RedisFlushall,
        Kind::Rollback,
        Kind::Failover,
        Kind::CassandraPause,
        Kind::ConsumerPause,
        Kind::Zombie,
        Kind::PollZombie,
        Kind::TwoProducers,
        Kind::LateSend,
        Kind::WrongType,
    ];

    /// The name in the event log, the report and the summary line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Rebalance => "rebalance",
            Kind::KafkaRestart => "kafka_restart",
            Kind::RedisFlushall => "redis_flushall",
            Kind::Rollback => "rollback",
            Kind::Failover => "failover",
            Kind::CassandraPause => "cassandra_pause",
            Kind::ConsumerPause => "consumer_pause",
            Kind::Zombie => "zombie",
            Kind::PollZombie => "poll_zombie",
            Kind::TwoProducers => "two_producers",
            Kind::LateSend => "late_send",
            Kind::WrongType => "wrongtype",
        }
    }

    /// How many of this kind `opts` plans.
    pub fn planned(self, opts: &Options) -> usize {
        match self {
            Kind::Kill => opts.kills,
            Kind::Rebalance => opts.rebalances,
            Kind::KafkaRestart => opts.kafka_restarts,
            Kind::RedisFlushall => opts.redis_restarts,
            Kind::Rollback => opts.rollbacks,
            Kind::Failover => opts.failovers,
            Kind::CassandraPause => opts.cassandra_pauses,
            Kind::ConsumerPause => opts.consumer_pauses,
            Kind::Zombie => opts.zombies,
            Kind::PollZombie => opts.poll_zombies,
            Kind::TwoProducers => opts.two_producers,
            Kind::LateSend => opts.late_sends,
            Kind::WrongType => opts.wrongtypes,
        }
    }
}

/// `(kill=5, rebalance=1, …)`: the kinds planned or injected, in the order of [`Kind::ALL`];
/// `(none)` when there are none.
pub fn per_kind(opts: &Options, injected: &BTreeMap<String, usize>) -> String {
    let parts: Vec<String> = Kind::ALL
        .iter()
        .filter_map(|k| {
            let n = injected.get(k.name()).copied().unwrap_or(0);
            (n > 0 || k.planned(opts) > 0).then(|| format!("{}={n}", k.name()))
        })
        .collect();
    if parts.is_empty() {
        "(none)".to_owned()
    } else {
        format!("({})", parts.join(", "))
    }
}

/// The faults of a run in a random order, each with its planned start (seconds after the load
/// began), spread over 5 %…85 % of the load.
pub fn schedule(opts: &Options) -> Vec<(f64, Kind)> {
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0xFA_0175);
    let mut kinds = Vec::new();
    for k in Kind::ALL {
        kinds.extend(std::iter::repeat_n(k, k.planned(opts)));
    }
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
    /// The proxy every Redis client of the run goes through.
    pub proxy: Proxy,
    /// Kafka topic and group (the poll zombie waits for the lag to be 0).
    pub topic: String,
    /// The consumer group.
    pub group: String,
}

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
        Kind::Rollback => rollback(ctx, n).await?,
        Kind::WrongType => wrongtype(ctx, n).await?,
        Kind::Failover => failover(ctx, n).await?,
        Kind::CassandraPause => {
            let pid = ctx.stack.cassandra_pid()?;
            stack::signal(pid, "-STOP")?;
            let guard = ResumeGuard(pid);
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
            let guard = ResumeGuard(pid);
            let mut detail = format!("SIGSTOP to consumer-{victim} (pid {pid})");
            pause_then_resume(ctx, guard, ctx.opts.pause_flush, &mut detail).await?;
            detail
        }
        Kind::Zombie => {
            let cassandra = ctx.stack.cassandra_pid()?;
            stack::signal(cassandra, "-STOP")?;
            let cassandra_guard = ResumeGuard(cassandra);
            tokio::time::sleep(Duration::from_secs(3)).await;
            let victim = pick(&ctx.fleet, rng, "zombie")?;
            let pid = ctx.fleet.pid(victim).context("zombie: victim gone")?;
            stack::signal(pid, "-STOP")?;
            let consumer_guard = ResumeGuard(pid);
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
                Ok((v, pid, ResumeGuard(pid)))
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

fn pick(fleet: &Fleet, rng: &mut StdRng, what: &str) -> anyhow::Result<usize> {
    let up = fleet.running(Duration::from_secs(5));
    up.choose(rng)
        .copied()
        .with_context(|| format!("{what}: no consumer is running"))
}

/// FLUSHALL on the Redis the clients use, recorded as a Redis data loss.
async fn flushall(ctx: &Ctx) -> anyhow::Result<()> {
    let at = ctx.events.now();
    let mut con = ctx.stack.redis().await?;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await?;
    ctx.events.redis_loss(at, ctx.events.now());
    Ok(())
}

/// Keeps a stopped consumer stopped for `consumer_pause` (FLUSHALL 2 s before the end with
/// `flush`), then SIGCONT (dropping `guard`).
async fn pause_then_resume(
    ctx: &Ctx,
    guard: ResumeGuard,
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
async fn wait_lag_zero(ctx: &Ctx, limit: Duration) -> anyhow::Result<()> {
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

/// `wrongtype`: a session whose window key is a Redis string. Runs between the other sequential
/// faults, so no FLUSHALL or rollback removes the key while its messages are consumed.
async fn wrongtype(ctx: &Ctx, n: usize) -> anyhow::Result<String> {
    let session_id = format!("{}-wrongtype-{n}", ctx.load.plan().run);
    // Both keys of the window: the script reads the epoch key first (a string) and resets a
    // window whose epoch is absent or foreign, so a clash on the window key alone would be
    // repaired; a list at the epoch key makes every append answer WRONGTYPE.
    let keys = [
        chatlog_store::keys::window(&session_id),
        chatlog_store::keys::window_epoch(&session_id),
    ];
    let mut con = ctx.stack.redis().await?;
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(&keys[0])
        .arg("chaos: a string where a window belongs")
        .ignore()
        .cmd("RPUSH")
        .arg(&keys[1])
        .arg("chaos: a list where an epoch belongs")
        .ignore()
        .query_async(&mut con)
        .await?;
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for j in 0..WRONGTYPE_MESSAGES {
        let (partition, offset) = ctx.load.send_poisoned(&session_id, j).await?;
        let o = last.entry(partition).or_default();
        *o = (*o).max(offset);
    }
    // The group commits past a record once it is persisted or in the DLQ.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    for (&partition, &offset) in &last {
        loop {
            let (k, t, g) = (
                ctx.stack.kafka.clone(),
                ctx.topic.clone(),
                ctx.group.clone(),
            );
            let committed = tokio::task::spawn_blocking(move || {
                crate::drain::committed_offset(&k, &t, &g, partition)
            })
            .await?;
            if matches!(committed, Ok(c) if c > offset) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut con).await?;
                anyhow::bail!(
                    "wrongtype: the group did not commit past partition {partition} offset \
                     {offset} within 180 s (last answer: {committed:?}): the partition stalls \
                     on a permanent write error"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut con).await?;
    Ok(format!(
        "{session_id}: window key SET to a string and its epoch key made a list, {WRONGTYPE_MESSAGES} messages sent; the group \
         committed past them (partition → last offset {last:?}); keys deleted"
    ))
}

/// `rollback`: a snapshot now, Redis restarted from it `rollback_after` later.
async fn rollback(ctx: &Ctx, n: usize) -> anyhow::Result<String> {
    let file = ctx.opts.run_dir.join(format!("redis-snapshot-{n}.rdb"));
    let file_arg = file.to_string_lossy().into_owned();
    let taken = ctx.events.now();
    ctx.stack.script(&["redis-snapshot", &file_arg]).await?;
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    tokio::time::sleep(ctx.opts.rollback_after).await;
    let killed = ctx.events.now();
    ctx.stack.script(&["redis-rollback", &file_arg]).await?;
    let back = ctx.events.now();
    // Everything written after the snapshot is gone.
    ctx.events.redis_loss(taken, back);
    Ok(format!(
        "BGSAVE at {taken:.1}s ({bytes} bytes, kept as {}); kill -9 of Redis at {killed:.1}s, \
         restarted from that snapshot, serving again {:.1}s later: {:.1}s of writes lost",
        file.display(),
        back - killed,
        killed - taken
    ))
}

/// A `redis-server` replica started by the harness, killed on drop.
struct Replica {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Replica {
    fn start(
        port: u16,
        of: SocketAddr,
        dir: &std::path::Path,
        n: usize,
    ) -> anyhow::Result<Replica> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        anyhow::ensure!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
            "failover: port {port} (CHATLOG_REDIS_REPLICA_PORT) is taken"
        );
        let data: PathBuf = dir.join(format!("redis-replica-{n}"));
        std::fs::create_dir_all(&data)?;
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--replicaof", &of.ip().to_string(), &of.port().to_string()])
            .arg("--dir")
            .arg(&data)
            .arg("--logfile")
            .arg(data.join("redis.log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("start redis-server (the replica)")?;
        Ok(Replica { child, addr })
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `REPLICAOF NO ONE` to the stack's Redis when dropped armed: it is never left a replica of
/// a replica that is gone (the harness failed during the switch back).
struct PrimaryGuard {
    addr: SocketAddr,
    armed: bool,
}

impl Drop for PrimaryGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // It may be loading the replica's dataset (LOADING errors) for a while: keep asking.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let done = redis::Client::open(format!("redis://{}/", self.addr))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
                .and_then(|mut con| {
                    redis::cmd("REPLICAOF")
                        .arg("NO")
                        .arg("ONE")
                        .query::<()>(&mut con)
                });
            if done.is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Switches the client proxy back to the stack's Redis when dropped armed: clients are never
/// left on a replica the harness is about to kill (the failover failed half-way).
struct ProxyBack {
    proxy: Proxy,
    primary: SocketAddr,
    armed: bool,
}

impl Drop for ProxyBack {
    fn drop(&mut self) {
        if self.armed {
            self.proxy.switch(self.primary);
        }
    }
}

async fn direct(addr: SocketAddr) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    Ok(tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .with_context(|| format!("connect to {addr}: timed out"))??)
}

/// `INFO <section>` as a map.
async fn info(
    con: &mut redis::aio::MultiplexedConnection,
    section: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let text: String = redis::cmd("INFO").arg(section).query_async(con).await?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

/// Waits until `con` is a replica whose link is up and whose initial sync is done.
async fn wait_synced(
    con: &mut redis::aio::MultiplexedConnection,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // While it loads the dataset it may answer with errors: not synced yet.
        let last = match info(con, "replication").await {
            Ok(i)
                if i.get("master_link_status").map(String::as_str) == Some("up")
                    && i.get("master_sync_in_progress").map(String::as_str) == Some("0") =>
            {
                return Ok(());
            }
            Ok(i) => format!("{i:?}"),
            Err(e) => format!("{e:#}"),
        };
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the replica did not sync within {limit:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn offset(i: &BTreeMap<String, String>, key: &str) -> i64 {
    i.get(key).and_then(|v| v.parse().ok()).unwrap_or(-1)
}

/// `failover`:
/// 1. a replica (`redis-server` on `CHATLOG_REDIS_REPLICA_PORT`) of the stack's Redis,
///    replicating through a link proxy; wait until its initial sync is done, then
///    `failover_sync` of replication under load;
/// 2. the link is cut (the replica's reconnects are refused) and the primary takes writes for
///    `failover_lag` that the replica never sees;
/// 3. `REPLICAOF NO ONE` on the replica, and the client proxy switches to it: every client's
///    connection is dropped and reconnects to the promoted replica, which is `failover_lag` behind
///    (seq counters, idempotency records, windows);
/// 4. `failover_serve` later, the stack's Redis is put back as the primary without losing
///    anything: it becomes a replica of the promoted one (full sync), writes are paused there
///    (`CLIENT PAUSE WRITE`) until both have the same replication offset, the stack's Redis is
///    promoted, the client proxy switches back and the replica is killed.
async fn failover(ctx: &Ctx, n: usize) -> anyhow::Result<String> {
    let events = &ctx.events;
    let primary = ctx.stack.redis_addr()?;
    let mut pc = direct(primary).await?;
    // A replica's full sync starts at once rather than after Redis's default 5 s delay.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("repl-diskless-sync-delay")
        .arg(0)
        .query_async(&mut pc)
        .await?;
    let link = Proxy::start(0, primary).await?;
    let replica = Replica::start(
        ctx.stack.replica_port,
        link.local_addr(),
        &ctx.opts.run_dir,
        n,
    )?;
    let mut rc = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match direct(replica.addr).await {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    wait_synced(&mut rc, Duration::from_secs(30)).await?;
    let synced = events.now();
    tokio::time::sleep(ctx.opts.failover_sync).await;

    // 2. Partition the replica from the primary.
    let cut_at = events.now();
    link.cut();
    tokio::time::sleep(ctx.opts.failover_lag).await;

    // 3. Promote the lagging replica; every client now talks to it.
    let primary_offset = offset(&info(&mut pc, "replication").await?, "master_repl_offset");
    let replica_offset = offset(&info(&mut rc, "replication").await?, "slave_repl_offset");
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut rc)
        .await?;
    ctx.proxy.switch(replica.addr);
    let mut proxy_back = ProxyBack {
        proxy: ctx.proxy.clone(),
        primary,
        armed: true,
    };
    let switched = events.now();
    events.redis_loss(cut_at, switched);
    events.log(format!(
        "failover: replica {} promoted {:.1}s after its link was cut, {} bytes of replication \
         stream behind the primary; every client switched to it",
        replica.addr,
        switched - cut_at,
        primary_offset - replica_offset
    ));
    tokio::time::sleep(ctx.opts.failover_serve).await;

    // 4. Switch back without losing anything.
    let mut guard = PrimaryGuard {
        addr: primary,
        armed: true,
    };
    let _: () = redis::cmd("REPLICAOF")
        .arg(replica.addr.ip().to_string())
        .arg(replica.addr.port())
        .query_async(&mut pc)
        .await?;
    wait_synced(&mut pc, Duration::from_secs(60)).await?;
    let paused = events.now();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query_async(&mut rc)
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let master = info(&mut rc, "replication")
            .await
            .map(|i| offset(&i, "master_repl_offset"));
        let copy = info(&mut pc, "replication")
            .await
            .map(|i| offset(&i, "slave_repl_offset"));
        let (master, copy) = (master.unwrap_or(i64::MAX), copy.unwrap_or(-1));
        if copy >= master {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "failover: the stack's Redis did not catch up with the promoted replica ({copy} < {master})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut pc)
        .await?;
    guard.armed = false;
    ctx.proxy.switch(primary);
    proxy_back.armed = false;
    let back = events.now();
    drop(replica); // still paused: nothing more is written there
    Ok(format!(
        "replica synced at {synced:.1}s; link cut at {cut_at:.1}s; promoted and clients switched \
         at {switched:.1}s ({} bytes of replication stream lost); switched back to the stack's \
         Redis at {back:.1}s (writes paused {:.1} ms)",
        primary_offset - replica_offset,
        (back - paused) * 1000.0
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Size;

    #[test]
    fn schedules_every_fault_within_the_load() {
        for size in [Size::Ci, Size::Full] {
            let opts = Options::preset(size);
            let plan = schedule(&opts);
            assert_eq!(plan.len(), opts.planned_faults());
            let load = opts.load_duration().as_secs_f64();
            assert!(plan.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
            assert!(plan.iter().all(|(t, _)| *t > 0.0 && *t < load * 0.9));
            for k in Kind::ALL {
                let n = plan.iter().filter(|(_, p)| *p == k).count();
                assert_eq!(n, k.planned(&opts), "{k:?}");
                assert!(n >= 1, "{size:?} lacks {k:?}");
            }
        }
    }

    #[test]
    fn the_summary_names_every_planned_kind() {
        let opts = Options::preset(Size::Ci);
        let mut injected = BTreeMap::new();
        injected.insert("kill".to_owned(), 5);
        injected.insert("rollback".to_owned(), 1);
        let text = per_kind(&opts, &injected);
        assert!(text.starts_with("(kill=5, rebalance=0, "), "{text}");
        assert!(text.contains("rollback=1, failover=0"), "{text}");
        assert!(text.ends_with("late_send=0, wrongtype=0)"), "{text}");
    }
}
