//! Seq allocation fast path against the real Redis of the local stack (`dev/stack.sh up`).
//!
//! - `seq/allocate_fast`: one `allocate` at a time (latency-bound: one EVALSHA round trip, which
//!   also writes the idempotency record). Compare with `redis-benchmark -p 6390 -c 1 -t incr`.
//! - `seq/allocate_fast_x64`: 64 concurrent allocations on 64 sessions over the one multiplexed
//!   connection (throughput). Compare with `redis-benchmark -p 6390 -c 64 -t incr`.
//! - `redis/incr_baseline`: a bare `INCR` over the same connection, the floor for one round trip.
//!
//! Segments are made so large that no iteration takes the CQL path; keys expire within a minute.
//! The `CHATLOG_*` variables of `dev/stack.sh env` locate the stack (its defaults otherwise).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chatlog_store::seq::{SeqAllocator, SeqConfig};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_main};

// The store benches' stack helpers (this crate's benches cannot depend on the root test kit,
// which depends on this crate).
#[path = "../../store/benches/common/mod.rs"]
mod common;

/// A benchmark group with the short measurement both groups share (a round trip is fast and
/// steady: 20 samples over 3 s are enough).
fn short_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (alloc, redis) = rt.block_on(async {
        let stack = common::connect("chatlog_bench")
            .await
            .expect(common::NO_STACK);
        let config = SeqConfig {
            min_segment: 10_000_000,
            max_segment: 10_000_000,
            dedup_ttl: Duration::from_secs(60),
            idle_ttl: Duration::from_secs(60),
            ..SeqConfig::default()
        };
        let alloc = SeqAllocator::new(stack.cql, &stack.keyspace, stack.redis.clone(), config)
            .await
            .expect("allocator");
        (alloc, stack.redis)
    });
    let run = common::unique("bench");
    let sessions: Vec<String> = (0..64).map(|i| format!("{run}_{i}")).collect();
    // First allocation of each session reserves its (huge) segment: outside the measurement.
    rt.block_on(async {
        for s in &sessions {
            alloc.allocate(s, "warm", "m", 1).await.unwrap();
        }
    });
    let counter = AtomicU64::new(0);

    let mut group = short_group(c, "seq");
    group.throughput(Throughput::Elements(1));
    group.bench_function("allocate_fast", |b| {
        b.to_async(&rt).iter(|| async {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            alloc
                .allocate(&sessions[0], &format!("c{n}"), "m", 1)
                .await
                .unwrap()
        })
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("allocate_fast_x64", |b| {
        b.to_async(&rt).iter(|| async {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            futures::future::join_all(sessions.iter().map(|s| {
                let cmid = format!("c{n}");
                let alloc = alloc.clone();
                async move { alloc.allocate(s, &cmid, "m", 1).await.unwrap() }
            }))
            .await
        })
    });
    group.finish();

    let mut group = short_group(c, "redis");
    group.throughput(Throughput::Elements(1));
    let key = format!("chatlog:{{{run}}}:bench_incr");
    group.bench_function("incr_baseline", |b| {
        b.to_async(&rt).iter(|| {
            let mut con = redis.clone();
            let key = key.clone();
            async move {
                let _: i64 = redis::cmd("INCR")
                    .arg(&key)
                    .query_async(&mut con)
                    .await
                    .unwrap();
            }
        })
    });
    group.finish();
    rt.block_on(async {
        let mut con = redis.clone();
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
    });
}

// `criterion_group!` generates an undocumented `pub fn`.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
