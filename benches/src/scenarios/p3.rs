//! P3 and P3′: the producer library's send rate (P3, with the real seq allocation) and its
//! produce path with the seqs given (P3′, [`produce::Preassigned`]: the library's efficiency
//! without allocation), each next to Kafka's Java producer fed like ours — the same session-id
//! keys over the same sessions, chatlog's own encoded records as payloads, acks=all, idempotence,
//! lz4, linger 5 ms (`benches/java/KeyedProducerPerf.java`; `ProducerPerformance` cannot send
//! keys, and keys change the batching). `ProducerPerformance` itself (unkeyed, random payloads of
//! the same size) still runs, as a supplementary line. The library's sends are the records P1 and
//! P2 consume.

use anyhow::{Context, Result, bail};
use serde_json::json;

use chatlog_producer::Producer;
use chatlog_schemas::ChatMessage;

use crate::plan::Only;
use crate::report::{Figure, Goal};
use crate::{cpu, produce};

use super::world::{Collect, Ctx};

/// Distinct records the keyed Java producer cycles through (rounded up to whole rounds over the
/// sessions): enough that lz4 sees batches of different records, as ours are.
const KEYED_ENTRIES: usize = 1000;

/// Runs P3 and P3′; returns the producer (the later scenarios send through it) and the messages
/// as stored (None when only the producer is measured).
pub(super) async fn run(
    cx: &Ctx<'_>,
    out: &mut Collect<'_>,
) -> Result<(Producer, Option<Vec<ChatMessage>>)> {
    let (plan, topic, workload, origin, procs) =
        (cx.plan, cx.topic, cx.workload, cx.origin, &cx.procs);
    let (s, n) = (plan.sessions, plan.messages);
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

    // The keyed Java producer: the reference of P3 and P3′.
    let keyed_file = plan.out_dir.join("keyed-records.bin");
    let entries = produce::write_keyed_records(workload, &keyed_file, KEYED_ENTRIES)?;
    eprintln!(
        "[bench] P3: Kafka's Java producer, {n} keyed records of {} bytes ({entries} distinct, \
         {s} sessions)",
        plan.record_bytes
    );
    let before = procs.snapshot();
    let java = {
        let lib = plan.kafka_lib.clone();
        let t = format!("{topic}_pp");
        let file = keyed_file.clone();
        tokio::task::spawn_blocking(move || produce::java_keyed(&lib, &t, n, s, &file)).await??
    };
    // The JVM's CPU over its timed window only; the other processes' over the JVM's whole life
    // (idle while it starts).
    let java_cpu = before.until(&procs.snapshot(), &[("java", java.cpu_seconds)]);
    let _ = std::fs::remove_file(&keyed_file);
    eprintln!(
        "[bench]   Java producer (keyed): {:.0} msg/s (start-up and warm-up {:.1} s outside)",
        java.records_per_s, java.seconds_before_window
    );

    // P3′: the same sends, the seqs given.
    eprintln!(
        "[bench] P3′: the produce path with pre-assigned seqs, {n} messages, {} in flight",
        plan.pre_concurrency
    );
    let pre = produce::Preassigned::new(&produce::producer_config(&format!("{topic}_pre")), s)?;
    let send_pre = move |i, m| {
        let pre = pre.clone();
        async move { pre.send(i, m).await }
    };
    let conc = plan.pre_concurrency;
    let warm_pre = produce::burst_with(workload, 0..s, conc, origin, false, send_pre.clone()).await;
    let before = procs.snapshot();
    let pre_burst = produce::burst_with(workload, s..s + n, conc, origin, false, send_pre).await;
    if warm_pre.failed + pre_burst.failed > 0 {
        bail!(
            "{} pre-assigned sends failed",
            warm_pre.failed + pre_burst.failed
        );
    }
    let pre_cpu = before.until(&procs.snapshot(), &[]);
    let pre_rate = n as f64 / pre_burst.seconds;
    eprintln!("[bench]   pre-assigned seqs: {pre_rate:.0} msg/s");
    // What the load generator alone costs per message (building each `NewMessage`), inside the
    // sending process's CPU of P3 and P3′ but not the library's: timed on one thread.
    let sample = n.min(200_000);
    let built = std::time::Instant::now();
    let bytes: usize = (s..s + sample)
        .map(|i| std::hint::black_box(workload.message(i)).content.len())
        .sum();
    let build_us = built.elapsed().as_secs_f64() * 1e6 / sample.max(1) as f64;
    std::hint::black_box(bytes);

    eprintln!(
        "[bench] P3 (supplementary): Kafka ProducerPerformance, {n} unkeyed records of {} bytes",
        plan.record_bytes
    );
    let before = procs.snapshot();
    let pp = {
        let lib = plan.kafka_lib.clone();
        let t = format!("{topic}_ppu");
        let bytes = plan.record_bytes;
        tokio::task::spawn_blocking(move || produce::java_producer_performance(&lib, &t, n, bytes))
            .await??
    };
    let pp_cpu = before.until(&procs.snapshot(), &[("java", pp.cpu_seconds)]);
    eprintln!(
        "[bench]   ProducerPerformance (unkeyed): {:.0} msg/s",
        pp.records_per_s
    );

    figures.insert(
        "P3".to_owned(),
        Figure::ratio(
            "producer library send rate (seq allocation included)",
            producer_rate,
            java.records_per_s,
            "Kafka Java producer, keyed like ours",
            "msg/s",
            Goal::AtLeast(1.0),
        ),
    );
    figures.insert(
        "P3′".to_owned(),
        Figure::ratio(
            "produce path with pre-assigned seqs (the producer's steps after allocation, run by the harness)",
            pre_rate,
            java.records_per_s,
            "Kafka Java producer, keyed like ours",
            "msg/s",
            Goal::AtLeast(1.2),
        ),
    );
    details.insert(
        "P3".into(),
        json!({"ours_seconds": ours.seconds, "record_bytes": plan.record_bytes,
               "concurrency": plan.producer_concurrency,
               "settings": "acks=all, idempotence, lz4, linger 5 ms (all); keys = session ids over the same sessions (ours, P3′, the Java reference)",
               "java_keyed": java,
               "java_keyed_cpu_note": "JVM CPU over its timed window only (start-up, source compilation and one warm-up record per session excluded); the stack's processes over the JVM's whole run",
               "ours_cpu_us_per_msg": cpu::per_op_us(&ours_cpu, n as u64),
               "load_generator_us_per_msg": build_us,
               "java_cpu_us_per_msg": cpu::per_op_us(&java_cpu, n as u64),
               "producer_performance_unkeyed": {
                   "rate": pp.records_per_s, "summary": pp.summary,
                   "ratio_of_ours": producer_rate / pp.records_per_s.max(1e-9),
                   "cpu_us_per_msg_jvm_startup_included": cpu::per_op_us(&pp_cpu, n as u64),
               }}),
    );
    details.insert(
        "P3′".into(),
        json!({"seconds": pre_burst.seconds, "rate": pre_rate,
               "in_flight": plan.pre_concurrency,
               "load_generator_us_per_msg": build_us,
               "what": "harness code (benches/src/produce.rs Preassigned) repeating the producer's steps after allocation: NewMessage::validate, assign (msg_id, seq = i / sessions + 1, server time), Codec::encode (codec built as the producer builds it), FutureRecord keyed by session id with the timestamp (and the schema header if configured), FutureProducer from ProducerConfig::client_config(), delivery awaited in the sending task; the library has no public way to skip the allocation, so its turn queue, in-flight semaphore, fingerprint and metrics are not in this path",
               "cpu_us_per_msg": cpu::per_op_us(&pre_cpu, n as u64)}),
    );
    all_series.insert("P3 producer library (acks)".into(), ours.series);
    all_series.insert("P3′ pre-assigned seqs (acks)".into(), pre_burst.series);
    if plan.only == Only::Produce {
        return Ok((producer, None));
    }
    let mut stored = warm.stored;
    stored.extend(ours.stored);

    Ok((producer, Some(stored)))
}
