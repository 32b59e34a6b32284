//! History read performance against the local stack (`dev/stack.sh up`).
//!
//! 1. criterion `history/latest50_window`: `latest(session, 50)` served by a 200-member window.
//! 2. CQL fallback latency: `latest(session, 50)` with no window (allocator ceiling present, as in
//!    production), N sequential calls, p50/p99/max from an HDR histogram.
//! 3. Window reads/s measured by plain loops — one caller, and 50 callers on 50 sessions — next to
//!    `redis-benchmark -n 100000 -q ZREVRANGE <key> 0 49` (default 50 clients; and `-c 1`) on a
//!    plain key holding the same 200 members. The ratio is information, never an assertion: one
//!    history `latest` is one ZREVRANGE of the window plus Avro decoding of 50 messages.
//!
//! Takes ~30 s. Creates a keyspace `bench_history_…` and drops it at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chatlog_schemas::testing;
use chatlog_schemas::{ChatMessage, Codec};
use chatlog_store::history::{History, HistoryConfig, Source};
use chatlog_store::keys;
use chatlog_store::messages::{BatchLimits, MessageWriter};
use chatlog_store::window::{self, WindowConfig, WindowEntry, WindowWriter};
use criterion::{Criterion, Throughput};
use hdrhistogram::Histogram;

mod common;
use common::Stack;

const MESSAGES: i64 = 1000;
const FALLBACK_CALLS: usize = 500;
const LOOP_TIME: Duration = Duration::from_secs(3);
const CONCURRENCY: usize = 50;

/// A message with a 120-byte payload, the size the benchmark's numbers are for.
fn message(sid: &str, seq: i64) -> ChatMessage {
    ChatMessage {
        content: vec![b'x'; 120],
        ..testing::message(sid, seq)
    }
}

struct Fixture {
    /// The stack, on a keyspace of this run.
    stack: Stack,
    history: History,
    /// A session with 1000 rows and a 200-member window.
    warm: String,
    /// A session with 1000 rows, a ceiling row and no window.
    cold: String,
    /// Sessions with a 200-member window only (concurrent window reads).
    many: Vec<String>,
    /// Window members of `warm`, for the redis-benchmark key.
    members: Vec<(i64, Vec<u8>)>,
}

async fn setup() -> Fixture {
    let stack = common::connect(&common::unique("bench_history"))
        .await
        .expect(common::NO_STACK);
    let (cql, redis) = (&stack.cql, &stack.redis);
    let codec = Codec::default();
    let config = HistoryConfig::default();
    let writer = MessageWriter::new(cql.clone(), &stack.keyspace, BatchLimits::default())
        .await
        .expect("writer");
    let windows = WindowWriter::new(WindowConfig::default());

    let warm = common::unique("warm");
    let cold = common::unique("cold");
    let many: Vec<String> = (0..CONCURRENCY)
        .map(|i| common::unique(&format!("many{i}")))
        .collect();
    let mut members = Vec::new();
    let mut sessions: BTreeMap<String, Vec<WindowEntry>> = BTreeMap::new();
    for sid in [&warm, &cold] {
        let msgs: Vec<ChatMessage> = (1..=MESSAGES).map(|s| message(sid, s)).collect();
        writer.write(&msgs).await.expect("write rows");
        if sid == &warm {
            let entries: Vec<WindowEntry> = msgs
                .iter()
                .map(|m| WindowEntry {
                    seq: m.seq,
                    member: window::member(m.version(), &codec.encode(m).unwrap()),
                })
                .collect();
            members = entries
                .iter()
                .rev()
                .take(200)
                .map(|e| (e.seq, e.member.clone()))
                .collect();
            sessions.insert(sid.clone(), entries);
        }
    }
    for sid in &many {
        let entries = (MESSAGES - 199..=MESSAGES)
            .map(|s| {
                let m = message(sid, s);
                WindowEntry {
                    seq: s,
                    member: window::member(m.version(), &codec.encode(&m).unwrap()),
                }
            })
            .collect();
        sessions.insert(sid.clone(), entries);
    }
    let mut con = redis.clone();
    windows
        .append_proven(&mut con, &sessions)
        .await
        .expect("windows");
    // The seq allocator's ceiling of the cold session: one segment above its head.
    cql.query_unpaged(
        format!(
            "INSERT INTO {}.session_seq (session_id, max_seq) VALUES (?, ?)",
            stack.keyspace
        ),
        (&cold, MESSAGES + 100),
    )
    .await
    .expect("ceiling");

    let history = History::new(cql.clone(), &stack.keyspace, redis.clone(), codec, config)
        .await
        .expect("history");
    Fixture {
        stack,
        history,
        warm,
        cold,
        many,
        members,
    }
}

/// Window reads per second: `callers` tasks, each on its own session, for `LOOP_TIME`.
async fn window_reads_per_second(history: &History, sessions: &[String]) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = sessions
        .iter()
        .map(|sid| {
            let history = history.clone();
            let sid = sid.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < LOOP_TIME {
                    let page = history.latest(&sid, 50).await.unwrap();
                    assert_eq!(page.messages.len(), 50);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// The port of the stack's Redis as the Redis client reads its URL (redis-benchmark gets only
/// the port, never a password from the URL).
fn redis_port() -> String {
    let client = common::redis_config().client().expect("CHATLOG_REDIS_URL");
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(_, port) => port.to_string(),
        other => panic!("redis-benchmark needs a plain TCP address; the stack's Redis is {other}"),
    }
}

/// Runs redis-benchmark with `args` and returns its requests/s.
fn redis_benchmark(port: &str, key: &str, args: &[&str]) -> Option<f64> {
    let out = std::process::Command::new("redis-benchmark")
        .args(["-p", port, "-q"])
        .args(args)
        .args(["ZREVRANGE", key, "0", "49"])
        .output()
        .map_err(|e| eprintln!("redis-benchmark not runnable: {e}"))
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .split(['\r', '\n'])
        .rfind(|l| l.contains("requests per second"))?;
    let value = line.split(':').nth(1)?.split_whitespace().next()?;
    value.parse().ok()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fx = rt.block_on(setup());

    // 1. criterion: latest-50 from the window.
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(50);
    {
        let mut group = c.benchmark_group("history");
        group.throughput(Throughput::Elements(1));
        group.bench_function("latest50_window", |b| {
            b.to_async(&rt).iter(|| async {
                let page = fx.history.latest(&fx.warm, 50).await.unwrap();
                assert_eq!(page.source, Source::Window);
                page
            })
        });
        group.finish();
    }

    // 2. CQL fallback latency.
    let (reads, queries) = (fx.history.db_reads(), fx.history.db_queries());
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    rt.block_on(async {
        for _ in 0..FALLBACK_CALLS {
            let started = Instant::now();
            let page = fx.history.latest(&fx.cold, 50).await.unwrap();
            hist.record(started.elapsed().as_micros() as u64).unwrap();
            assert_eq!((page.source, page.messages.len()), (Source::Database, 50));
        }
    });
    println!(
        "history/latest50_cql_fallback: {FALLBACK_CALLS} calls, p50 {} µs, p99 {} µs, max {} µs, \
         {:.1} CQL statements/call ({} db reads)",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max(),
        (fx.history.db_queries() - queries) as f64 / FALLBACK_CALLS as f64,
        fx.history.db_reads() - reads,
    );

    // 3. Window reads/s next to redis-benchmark on a plain key with the same 200 members.
    let sequential = rt.block_on(window_reads_per_second(
        &fx.history,
        std::slice::from_ref(&fx.warm),
    ));
    let concurrent = rt.block_on(window_reads_per_second(&fx.history, &fx.many));
    let port = redis_port();
    let plain = common::unique("chatlog_bench_zset");
    rt.block_on(async {
        let mut con = fx.stack.redis.clone();
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(&plain);
        for (seq, member) in &fx.members {
            cmd.arg(seq).arg(member);
        }
        cmd.query_async::<()>(&mut con).await.expect("ZADD");
    });
    let rb50 = redis_benchmark(&port, &plain, &["-n", "100000"]);
    let rb1 = redis_benchmark(&port, &plain, &["-n", "20000", "-c", "1"]);
    println!(
        "history/latest50_window: {sequential:.0} reads/s (1 caller), {concurrent:.0} reads/s ({CONCURRENCY} callers, {CONCURRENCY} sessions)"
    );
    match (rb50, rb1) {
        (Some(rb50), Some(rb1)) => {
            println!(
                "redis-benchmark ZREVRANGE 0 49 (200 members): {rb50:.0} req/s (-c 50), {rb1:.0} req/s (-c 1)"
            );
            println!(
                "ratio history/redis-benchmark: {:.2} (50 callers vs -c 50), {:.2} (1 caller vs -c 1)",
                concurrent / rb50,
                sequential / rb1
            );
        }
        _ => println!("redis-benchmark: no figure (is redis-tools installed?)"),
    }

    // Clean up.
    rt.block_on(async {
        let mut con = fx.stack.redis.clone();
        let mut del = redis::cmd("DEL");
        del.arg(&plain).arg(keys::window(&fx.warm));
        for sid in &fx.many {
            del.arg(keys::window(sid));
        }
        let _ = del.query_async::<()>(&mut con).await;
        let _ = fx
            .stack
            .cql
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", fx.stack.keyspace), ())
            .await;
    });
    c.final_summary();
}
