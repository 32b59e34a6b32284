//! The scenarios of a run, one module each (P1…P9, see the crate docs), in the order they run:
//! P5 and P6 (reads, on sessions of their own), P8 and P9 (the cached repositories, on users and
//! sessions of their own), then through Kafka P3 (whose sends the others consume), P1 (loader,
//! drain, loader again, live), P4 (paced, while the consumer still runs), P7 (the consumer's peak
//! memory) and P2 (the naive consumer); last P10 (the consumer on mutations vs appends, on
//! topics and sessions of its own).

mod measure;
mod p1;
mod p10;
mod p2;
mod p3;
mod p4;
mod p5;
mod p6;
mod p7;
mod p8;
mod p9;
mod versus;
mod world;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::plan::{Only, Plan};
use crate::report::{Machine, Results};
use crate::series::Series;
use crate::workload::Workload;
use crate::{cpu, reads};

use world::{Collect, Ctx, Reads, World};

/// Runs every scenario of `plan`; cleans up what it created even when a scenario fails.
pub async fn run(plan: &Plan) -> Result<Results> {
    std::fs::create_dir_all(&plan.out_dir).with_context(|| format!("create {:?}", plan.out_dir))?;
    if matches!(plan.only, Only::All | Only::Pipeline | Only::Mutations)
        && !plan.consumer_bin.exists()
    {
        bail!(
            "{:?} does not exist: build it with `cargo build --release -p chatlog-consumer`",
            plan.consumer_bin
        );
    }
    let run = chatlog::unique("bench");
    let (session, cql_e2e) = chatlog::fresh_keyspace("bench_e2e").await;
    let raw_ks = chatlog::unique("bench_raw");
    chatlog_store::migrate::apply(&session, &chatlog::cql_config(&raw_ks))
        .await
        .context("migrations of the loader keyspace")?;
    let redis = chatlog::redis_connection().await;
    let topic = chatlog::unique("bench");
    let world = World {
        run: run.clone(),
        session: session.clone(),
        keyspaces: vec![cql_e2e.keyspace.clone(), raw_ks.clone()],
        topics: [
            topic.clone(),
            format!("{topic}_pp"),
            format!("{topic}_ppu"),
            format!("{topic}_pre"),
            format!("{topic}.dlq"),
        ]
        .into_iter()
        .chain(p10::topics(&topic, plan.mutation_rounds))
        .collect(),
        groups: [format!("{topic}_e2e"), format!("{topic}_naive")]
            .into_iter()
            .chain(p10::groups(&topic, plan.mutation_rounds))
            .collect(),
        redis: redis.clone(),
    };
    let result = scenarios(plan, &world, &topic, &cql_e2e.keyspace, &raw_ks).await;
    world.cleanup().await;
    result
}

async fn scenarios(
    plan: &Plan,
    world: &World,
    topic: &str,
    e2e_ks: &str,
    raw_ks: &str,
) -> Result<Results> {
    let origin = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let machine = Machine::detect();
    let workload = Workload::new(&world.run, plan.sessions, plan.content_bytes);
    let mut figures = BTreeMap::new();
    let mut details: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut all_series: BTreeMap<String, Series> = BTreeMap::new();
    let mut cdf = Vec::new();
    let mut out = Collect {
        figures: &mut figures,
        details: &mut details,
        series: &mut all_series,
        cdf: &mut cdf,
    };
    // P5 and P6 run first, on sessions of their own whose windows are written the consumer's way.
    // Measured after the write scenarios, both sides met a machine those had left behind (Cassandra
    // compacting, Redis and the harness hundreds of MiB larger): per read the client cost 58 instead
    // of 45 µs and Redis 21 instead of 13 µs, while the reference ran later and met less of it.
    if matches!(plan.only, Only::All | Only::Reads) {
        let read_sessions: Vec<String> = (0..plan.callers)
            .map(|i| format!("{}_r{i}", world.run))
            .collect();
        p5::populate_windows(&world.redis, &read_sessions).await?;
        let rpid = p5::run(plan, world, e2e_ks, &read_sessions, &mut out).await?;
        p6::run(
            Reads {
                plan,
                world,
                e2e_ks,
                rpid,
            },
            &mut out,
        )
        .await?;
    }
    // P8 and P9 next, for the same reason: before the write scenarios change the machine.
    if matches!(plan.only, Only::All | Only::Cache) {
        let rpid = reads::redis_pid(&mut world.redis.clone()).await;
        let reads = Reads {
            plan,
            world,
            e2e_ks,
            rpid,
        };
        p8::run(reads, &mut out).await?;
        p9::run(reads, &mut out).await?;
    }
    let procs = cpu::Procs::detect(reads::redis_pid(&mut world.redis.clone()).await);
    let cx = Ctx {
        plan,
        world,
        topic,
        e2e_ks,
        raw_ks,
        workload: &workload,
        origin,
        procs,
    };
    if matches!(plan.only, Only::All | Only::Produce | Only::Pipeline) {
        pipeline(&cx, &mut out).await?;
    }
    // Last: P10's drains are compared with each other, not with what ran before.
    if matches!(plan.only, Only::All | Only::Mutations) {
        p10::run(&cx, &mut out).await?;
    }
    Ok(Results {
        started_unix,
        seconds: origin.elapsed().as_secs_f64(),
        machine,
        plan: serde_json::to_value(plan)?,
        figures,
        details,
        series: all_series,
        latency_cdf: cdf,
    })
}

/// P3, P1, P4, P7 and P2: everything that runs through Kafka.
async fn pipeline(cx: &Ctx<'_>, out: &mut Collect<'_>) -> Result<()> {
    chatlog::create_topic(cx.topic, cx.plan.partitions).await;
    for suffix in ["_pp", "_ppu", "_pre"] {
        chatlog::create_topic(&format!("{}{suffix}", cx.topic), cx.plan.partitions).await;
    }
    let (producer, stored) = p3::run(cx, out).await?;
    let Some(stored) = stored else {
        return Ok(());
    };
    let mut reference = p1::loader_before(cx, &stored, out).await?;
    let drain = p1::drain(cx).await?;
    p1::loader_after(cx, &mut reference, &stored, out).await?;
    drop(stored);
    let running = p1::live(cx, producer, drain, out).await?;
    let latency = p4::run(cx, &running, out).await?;
    let end = p1::finish(cx, running, &reference, out).await?;
    p4::figures(cx, &latency, out);
    p7::figures(end.hwm_drain, end.hwm_live, end.hwm_end, out);
    p2::run(cx, end.drain_rate, end.live_rate, out).await
}
