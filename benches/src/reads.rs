//! The read loops of P5, P6, P8 and P9: history `latest(50)` reads/s next to `redis-benchmark
//! ZREVRANGE <window> 0 49`, seq allocations/s next to `redis-benchmark INCR`, cached `get_user`
//! reads/s next to `redis-benchmark GET` (and the uncached CQL read), conversation lists/s next
//! to `redis-benchmark MGET`, at the same concurrency (callers = clients).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chatlog_store::history::{History, Source};
use chatlog_store::repo::conversations::ConversationRepo;
use chatlog_store::repo::users::UserRepo;
use chatlog_store::seq::SeqAllocator;

use crate::cpu::seconds as cpu_seconds;

/// A throughput figure with the CPU it cost, per operation, in this process (the client) and in
/// the Redis server: what explains a ratio on a machine where both share the same cores.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Measured {
    /// Operations per second.
    pub rate: f64,
    /// Operations done.
    pub ops: u64,
    /// Latency of one operation at the 99th percentile, ms (redis-benchmark's own figure for it).
    pub p99_ms: f64,
    /// Client CPU (user + system) per operation, µs.
    pub client_cpu_us: f64,
    /// Redis server CPU per operation, µs.
    pub redis_cpu_us: f64,
}

/// A histogram of per-operation latencies in µs (1 µs to 60 s, 3 significant digits).
fn latency_histogram() -> Result<hdrhistogram::Histogram<u64>> {
    Ok(hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// The Redis server's process id (`INFO server`), when it runs on this machine.
pub async fn redis_pid(redis: &mut chatlog_store::RedisConnection) -> Option<u32> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(redis)
        .await
        .ok()?;
    let pid: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()?;
    std::fs::metadata(format!("/proc/{pid}/stat"))
        .ok()
        .map(|_| pid)
}

/// Runs `work`, returning its result with the CPU seconds this process and `redis` used meanwhile.
async fn with_cpu<T>(
    redis: Option<u32>,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<(T, f64, f64)> {
    let me = std::process::id();
    let (c0, r0) = (cpu_seconds(me), redis.and_then(cpu_seconds));
    let out = work.await?;
    let (c1, r1) = (cpu_seconds(me), redis.and_then(cpu_seconds));
    let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    Ok((out, d(c0, c1), d(r0, r1)))
}

/// Where and how long the loop measurements run: caller `i` on `sessions[i]`, for `seconds`,
/// with the CPU time of this process and of Redis (`redis`, its pid) counted.
#[derive(Debug, Clone, Copy)]
pub struct Loops<'a> {
    /// Redis's pid, when it runs on this machine.
    pub redis: Option<u32>,
    /// One session (P8, P9: one user) per caller, at least as many as callers.
    pub sessions: &'a [String],
    /// How long each measurement runs.
    pub seconds: f64,
    /// Alternating rounds of ours and the reference when a figure compares them (at least 1).
    pub rounds: usize,
}

impl<'a> Loops<'a> {
    /// The plan's loops (its seconds and rounds) on `sessions`, with `redis`'s CPU counted.
    pub fn of(plan: &crate::plan::Plan, redis: Option<u32>, sessions: &'a [String]) -> Self {
        Loops {
            redis,
            sessions,
            seconds: plan.loop_seconds,
            rounds: plan.rounds,
        }
    }
    /// `latest(session, 50)` reads/s of `callers` callers; every page must come from the window
    /// alone with 50 messages.
    pub async fn history_reads(&self, history: &History, callers: usize) -> Result<Measured> {
        self.run(history, callers, |history, sid, _, _| async move {
            let page = history.latest(&sid, 50).await?;
            if page.source != Source::Window || page.messages.len() != 50 {
                bail!(
                    "latest(50) of {sid} came from {:?} with {} messages",
                    page.source,
                    page.messages.len()
                );
            }
            Ok(())
        })
        .await
    }

    /// Seq allocations/s of `callers` callers (segments must be large enough that the fast path
    /// answers every call). Every call's `client_msg_id` is new — the measurement's number is in
    /// it — so none is answered from an earlier measurement's idempotency record (a cheaper path:
    /// until stop 26's review, P6's later rounds reused the first round's ids).
    pub async fn seq_allocations(&self, alloc: &SeqAllocator, callers: usize) -> Result<Measured> {
        static MEASUREMENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let m = MEASUREMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.run(alloc, callers, move |alloc, sid, c, n| async move {
            alloc
                .allocate(&sid, &format!("b{m}-{c}-{n}"), "m", 1)
                .await?;
            Ok(())
        })
        .await
    }

    /// `get(user)` reads/s of `callers` callers, caller `c` on user `sessions[c]`; every user must
    /// exist (a `None` would be a cached "absent", not the read measured).
    pub async fn user_reads<R: UserRepo>(&self, repo: &Arc<R>, callers: usize) -> Result<Measured> {
        self.run(repo, callers, |repo: Arc<R>, user, _, _| async move {
            if repo.get(&user).await?.is_none() {
                bail!("user {user} read as absent");
            }
            Ok(())
        })
        .await
    }

    /// First pages of `len` conversations per second of `callers` callers, caller `c` listing
    /// user `sessions[c]`'s; every page must hold `len` conversations with their latest message.
    pub async fn conversation_lists<R: ConversationRepo>(
        &self,
        repo: &Arc<R>,
        len: usize,
        callers: usize,
    ) -> Result<Measured> {
        self.run(repo, callers, move |repo: Arc<R>, user, _, _| async move {
            let page = repo.conversations(&user, len, None).await?;
            let with_latest = page
                .conversations
                .iter()
                .filter(|c| c.latest.as_ref().is_some_and(|l| !l.avro.is_empty()))
                .count();
            if page.conversations.len() != len || with_latest != len {
                bail!(
                    "the list of {user} held {} conversations, {with_latest} with a latest message, \
                     not {len}",
                    page.conversations.len()
                );
            }
            Ok(())
        })
        .await
    }

    /// `callers` concurrent loops with their CPU cost: caller `c` calls `op(target, sessions[c],
    /// c, n)` in its `n`th round (`target` and the session cloned per call, each a reference
    /// count, so the future owns them).
    async fn run<T, F, Fut>(&self, target: &T, callers: usize, op: F) -> Result<Measured>
    where
        T: Clone + Send + 'static,
        F: Fn(T, Arc<str>, usize, u64) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send,
    {
        let Loops {
            redis,
            sessions,
            seconds,
            ..
        } = *self;
        if sessions.len() < callers {
            bail!(
                "{callers} callers need as many sessions, have {}",
                sessions.len()
            );
        }
        let started = Instant::now();
        let until = started + Duration::from_secs_f64(seconds);
        let run = async move {
            let tasks: Vec<_> = (0..callers)
                .map(|c| {
                    let op = op.clone();
                    let target = target.clone();
                    let session: Arc<str> = sessions[c].as_str().into();
                    tokio::spawn(async move {
                        let mut latency = latency_histogram()?;
                        let mut n = 0u64;
                        while Instant::now() < until {
                            let t0 = Instant::now();
                            op(target.clone(), session.clone(), c, n).await?;
                            latency.saturating_record(t0.elapsed().as_micros() as u64);
                            n += 1;
                        }
                        Ok::<_, anyhow::Error>(latency)
                    })
                })
                .collect();
            let mut latency = latency_histogram()?;
            for t in tasks {
                latency.add(t.await??)?;
            }
            Ok((started.elapsed().as_secs_f64(), latency))
        };
        let ((wall, latency), client, server) = with_cpu(redis, run).await?;
        let ops = latency.len();
        let per = |cpu: f64| cpu * 1e6 / ops.max(1) as f64;
        Ok(Measured {
            rate: ops as f64 / wall,
            ops,
            p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
            client_cpu_us: per(client),
            redis_cpu_us: per(server),
        })
    }
}

/// `redis-benchmark -c clients -n requests <command…>` against the stack's Redis: requests/s and
/// the CPU per request of redis-benchmark itself (the client) and of the server.
pub fn redis_benchmark(
    redis: Option<u32>,
    clients: usize,
    requests: usize,
    command: &[&str],
) -> Result<Measured> {
    // The stack's Redis as the Redis client reads its URL; only host and port reach the command
    // line (which `ps` shows), never a password.
    let client = chatlog::redis_config().client()?;
    let (host, port) = match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host.clone(), port.to_string()),
        other => bail!("redis-benchmark needs a plain TCP address; the stack's Redis is {other}"),
    };
    // `times` (after the benchmark, in the same shell) prints the children's user and system CPU.
    let r0 = redis.and_then(cpu_seconds);
    let out = Command::new("sh")
        .arg("-c")
        .arg("redis-benchmark \"$@\" && times")
        .arg("sh")
        .args(["-h", &host, "-p", &port, "--csv"])
        .args(["-c", &clients.to_string(), "-n", &requests.to_string()])
        .args(command)
        .output()
        .context("run redis-benchmark (Debian package redis-tools)")?;
    let r1 = redis.and_then(cpu_seconds);
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms",…  then  "<command>","12345.67",…
    let row = text
        .lines()
        .find(|l| !l.starts_with("\"test\"") && l.starts_with('"'))
        .with_context(|| format!("redis-benchmark printed no result: {text}"))?;
    // Columns: test, rps, avg, min, p50, p95, p99, max (latencies in ms).
    let column = |i: usize| {
        row.split("\",\"")
            .nth(i)
            .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
            .with_context(|| format!("redis-benchmark result {row:?}, column {i}"))
    };
    let rps = column(1)?;
    let p99_ms = column(6)?;
    // `times`: "0m0.000000s 0m0.000000s" (the shell) then the children's line.
    let client_cpu = crate::cpu::shell_times(&text);
    let server_cpu = match (r0, r1) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let per = |cpu: f64| cpu * 1e6 / requests.max(1) as f64;
    Ok(Measured {
        rate: rps,
        ops: requests as u64,
        p99_ms,
        client_cpu_us: per(client_cpu),
        redis_cpu_us: per(server_cpu),
    })
}
