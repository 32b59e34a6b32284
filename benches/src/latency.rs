//! P4: latency from the producer's acknowledgement (Logic's `send` returning) to visibility in the
//! session's Redis window, at a paced rate.
//!
//! All sessions carry load; the first `probes` sessions are watched: every few milliseconds one
//! pipelined round trip reads the newest seq of each watched window that has acknowledged messages
//! not yet seen. A message is visible once its window's newest seq reaches its seq (the consumer
//! appends a partition's records in order, all of a batch in one script call per session). The
//! poll interval bounds the resolution; it is reported with the figures.
//!
//! The poller reads on a Redis connection of its own: on a shared multiplexed connection (the
//! producer's seq allocations use one) its reads would queue behind the allocations and add their
//! wait to every latency. The acknowledgement time is taken in the sending task the moment
//! `send()` resolves with Kafka's delivery report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use chatlog_producer::Producer;
use chatlog_store::RedisConnection;
use chatlog_store::keys;
use hdrhistogram::Histogram;

use crate::series::{Sampler, Series};
use crate::workload::Workload;

/// How often the watched windows are read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// What a paced run measured.
pub struct Paced {
    /// Acknowledgement → window visibility, µs (watched sessions only).
    pub hist: Histogram<u64>,
    /// Sends started.
    pub sent: u64,
    /// Sends acknowledged.
    pub acked: u64,
    /// Watched messages never seen in the window before the deadline.
    pub unresolved: u64,
    /// Acknowledged sends per second over the sending time.
    pub achieved_rate: f64,
    /// Cumulative acknowledgements over time.
    pub series_acked: Series,
    /// The slowest latency seen in each 250 ms of the run: `(seconds since origin, ms)`.
    pub worst_per_interval: Series,
}

type Pending = Vec<BTreeMap<i64, Instant>>;

/// Sends messages `first..` of `workload` at `rate` per second for `seconds`, measuring latency on
/// the first `probes` sessions.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    producer: &Producer,
    workload: &Workload,
    first: usize,
    rate: f64,
    seconds: f64,
    probes: usize,
    origin: Instant,
) -> Result<Paced> {
    let redis = chatlog::redis_config()
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("the latency probe's Redis connection: {e}"))?;
    let sessions = workload.sessions.len();
    let probes = probes.min(sessions).max(1);
    let pending: Arc<Mutex<Pending>> = Arc::new(Mutex::new(vec![BTreeMap::new(); probes]));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        600_000_000,
        3,
    )?));
    let worst: Arc<Mutex<BTreeMap<u64, f64>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let acked = Arc::new(AtomicU64::new(0));
    let sending = Arc::new(AtomicBool::new(true));

    let poller = {
        let pending = pending.clone();
        let hist = hist.clone();
        let worst = worst.clone();
        let sending = sending.clone();
        let keys: Vec<String> = workload.sessions[..probes]
            .iter()
            .map(|s| keys::window(s))
            .collect();
        tokio::spawn(
            async move { poll(redis, keys, pending, hist, sending, (worst, origin)).await },
        )
    };

    let counter = acked.clone();
    let sampler = Sampler::start(origin, Duration::from_millis(100), move || {
        Some(counter.load(Ordering::Relaxed) as f64)
    });
    let total = (rate * seconds).round().max(1.0) as u64;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    let mut tasks = Vec::with_capacity(total as usize);
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(total);
        while sent < due {
            let i = first + sent as usize;
            let m = workload.message(i);
            let idx = i % sessions;
            let producer = producer.clone();
            let pending = pending.clone();
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                if let Ok(s) = producer.send(m).await {
                    let at = Instant::now();
                    acked.fetch_add(1, Ordering::Relaxed);
                    if idx < probes {
                        lock(&pending)[idx].insert(s.seq, at);
                    }
                }
            }));
            sent += 1;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let send_seconds = started.elapsed().as_secs_f64();
    sending.store(false, Ordering::Relaxed);
    let unresolved = poller.await??;
    let acked = acked.load(Ordering::Relaxed);
    let hist = lock(&hist).clone();
    let worst_per_interval = lock(&worst)
        .iter()
        .map(|(k, ms)| (*k as f64 * WORST_INTERVAL, *ms))
        .collect();
    Ok(Paced {
        hist,
        sent,
        acked,
        unresolved,
        achieved_rate: acked as f64 / send_seconds,
        series_acked: sampler.finish(),
        worst_per_interval,
    })
}

/// Seconds per bucket of [`Paced::worst_per_interval`].
const WORST_INTERVAL: f64 = 0.25;

type Worst = (Arc<Mutex<BTreeMap<u64, f64>>>, Instant);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads the newest seq of every watched window with pending messages until sending is over and
/// nothing is pending (or 30 s later). Returns how many stayed unseen.
async fn poll(
    mut redis: RedisConnection,
    keys: Vec<String>,
    pending: Arc<Mutex<Pending>>,
    hist: Arc<Mutex<Histogram<u64>>>,
    sending: Arc<AtomicBool>,
    (worst, origin): Worst,
) -> Result<u64> {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deadline: Option<Instant> = None;
    loop {
        tick.tick().await;
        let watched: Vec<usize> = {
            let p = lock(&pending);
            (0..keys.len()).filter(|&i| !p[i].is_empty()).collect()
        };
        if !sending.load(Ordering::Relaxed) {
            let d = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
            if watched.is_empty() || Instant::now() > d {
                let p = lock(&pending);
                return Ok(p.iter().map(|m| m.len() as u64).sum());
            }
        }
        if watched.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for &i in &watched {
            pipe.cmd("ZREVRANGEBYSCORE")
                .arg(&keys[i])
                .arg("+inf")
                .arg("-inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(1);
        }
        let replies: Vec<Vec<(redis::Value, f64)>> = match pipe.query_async(&mut redis).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("latency poll: {e}");
                continue;
            }
        };
        let now = Instant::now();
        let bucket = (now.duration_since(origin).as_secs_f64() / WORST_INTERVAL) as u64;
        let mut p = lock(&pending);
        let mut h = lock(&hist);
        let mut w = lock(&worst);
        for (&i, reply) in watched.iter().zip(replies) {
            let Some(&(_, top)) = reply.first() else {
                continue;
            };
            let top = top as i64;
            let rest = p[i].split_off(&(top + 1));
            for (_, at) in std::mem::replace(&mut p[i], rest) {
                let us = now.saturating_duration_since(at).as_micros() as u64;
                let _ = h.record(us.max(1));
                let slot = w.entry(bucket).or_insert(0.0);
                *slot = slot.max(us as f64 / 1000.0);
            }
        }
    }
}
