//! P3: the producer library's send rate next to Kafka's own `ProducerPerformance` (same record
//! size, acks=all, idempotence, lz4, linger 5 ms). Its sends are the records P1 and P2 consume.

use anyhow::{Context, Result, bail};
use serde_json::json;

use chatlog_producer::Producer;
use chatlog_schemas::ChatMessage;

use crate::plan::Only;
use crate::report::{Figure, Goal};
use crate::{cpu, produce};

use super::world::{Collect, Ctx};

/// Runs P3; returns the producer (the later scenarios send through it) and the messages as stored
/// (None when only the producer is measured).
pub(super) async fn run(
    cx: &Ctx<'_>,
    out: &mut Collect<'_>,
) -> Result<(Producer, Option<Vec<ChatMessage>>)> {
    let (plan, topic, workload, origin, procs) =
        (cx.plan, cx.topic, cx.workload, cx.origin, &cx.procs);
    let (s, n) = (plan.sessions, plan.messages);
    let topic_pp = format!("{topic}_pp");
    let figures = &mut *out.figures;
    let details = &mut *out.details;
    let all_series = &mut *out.series;
    eprintln!("[bench] P3: producer library, {n} messages over {s} sessions");
    let producer = Producer::new(
        produce::producer_config(topic),
        cx.world.session.clone(),
        cx.e2e_ks,
        cx.world.redis.clone(),
    )
    .await
    .context("producer")?;
    // One message per session first: each session's first seq segment is reserved (a CQL LWT)
    // outside the measurement.
    let warm = produce::burst(&producer, workload, 0..s, plan.producer_concurrency, origin).await;
    let before = procs.snapshot();
    let ours = produce::burst(
        &producer,
        workload,
        s..s + n,
        plan.producer_concurrency,
        origin,
    )
    .await;
    if warm.failed + ours.failed > 0 {
        bail!("{} sends failed", warm.failed + ours.failed);
    }
    let ours_cpu = before.until(&procs.snapshot(), &[]);
    let producer_rate = n as f64 / ours.seconds;
    eprintln!("[bench]   producer library: {producer_rate:.0} msg/s");
    eprintln!(
        "[bench] P3: Kafka ProducerPerformance, {n} records of {} bytes",
        plan.record_bytes
    );
    let before = procs.snapshot();
    let java = {
        let lib = plan.kafka_lib.clone();
        let t = topic_pp.clone();
        let bytes = plan.record_bytes;
        tokio::task::spawn_blocking(move || produce::java_producer_performance(&lib, &t, n, bytes))
            .await??
    };
    let java_cpu = before.until(&procs.snapshot(), &[("java", java.cpu_seconds)]);
    eprintln!(
        "[bench]   ProducerPerformance: {:.0} msg/s",
        java.records_per_s
    );
    figures.insert(
        "P3".to_owned(),
        Figure::ratio(
            "producer library send rate",
            producer_rate,
            java.records_per_s,
            "Kafka ProducerPerformance",
            "msg/s",
            Goal::AtLeast(1.0),
        ),
    );
    details.insert(
        "P3".into(),
        json!({"ours_seconds": ours.seconds, "java": java, "record_bytes": plan.record_bytes,
               "concurrency": plan.producer_concurrency,
               "settings": "acks=all, idempotence, lz4, linger 5 ms (both)",
               "ours_cpu_us_per_msg": cpu::per_op_us(&ours_cpu, n as u64),
               "java_cpu_us_per_msg": cpu::per_op_us(&java_cpu, n as u64)}),
    );
    all_series.insert("P3 producer library (acks)".into(), ours.series);
    if plan.only == Only::Produce {
        return Ok((producer, None));
    }
    let mut stored = warm.stored;
    stored.extend(ours.stored);

    Ok((producer, Some(stored)))
}
