//! P1: the end-to-end persisted rate of the real `chatlog-consumer` (the pre-produced drain, then
//! live) next to a raw CQL loader writing the same rows, run once before the drain and once after
//! it (the reference is the mean). The consumer started here keeps running through P4; P7 reads
//! its peak memory.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, bail};
use chatlog_producer::Producer;
use chatlog_schemas::ChatMessage;
use chatlog_store::messages::BatchLimits;
use serde_json::json;

use crate::child::{self, ConsumerProcess, ConsumerTarget};
use crate::kafka::OffsetMeter;
use crate::report::{Figure, Goal};
use crate::series::{self, Sampler};
use crate::{cpu, loader, produce};

use super::measure::{Rested, mib, rest, wait_committed};
use super::world::{Collect, Ctx};

/// The raw CQL loader's runs: P1's reference.
pub(super) struct Reference {
    /// Rows of the first run.
    rows: usize,
    /// Seconds of the first run.
    seconds: f64,
    /// UNLOGGED batches of the first run.
    requests: usize,
    /// Slices the runs wrote again ([`loader::Loaded::retries`]).
    retries: usize,
    limits: BatchLimits,
    loader_rate_1: f64,
    loader_rate_2: f64,
    /// Seconds of the second run.
    seconds_2: f64,
    loader_rate: f64,
    settled_loader: Rested,
    /// How each run after the drain found the node (flush, compactions, CPU settle).
    settled_after: Vec<Rested>,
    loader_cpu: BTreeMap<String, f64>,
    /// The ramp that chose the loader's concurrency (`None`: given with `--loader-concurrency`).
    ramp: Option<loader::Ramp>,
    /// The runs after the drain: one, or two when neither it nor the run before was clean.
    after_drain: Vec<loader::Run>,
    /// Whether a loader run wrote without retrying a slice: without one there is no reference,
    /// and P1 is not measured (its ratio would be flattered by the retries' lost time).
    clean: bool,
}

/// The consumer draining the pre-produced topic, and what the drain measured.
pub(super) struct Drain {
    pub(super) consumer: ConsumerProcess,
    meter: OffsetMeter,
    pub(super) procs_c: cpu::Procs,
    committed_sampler: Sampler,
    rss_sampler: Sampler,
    pre: i64,
    ready_at: f64,
    drained_at: f64,
    settled_drain: Rested,
    /// CPU from the first commit to the last (start-up and group join excluded), and the
    /// records committed in it.
    drain_cpu: BTreeMap<String, f64>,
    drain_cpu_records: i64,
    /// CPU from the consumer's start to the last commit.
    drain_cpu_with_startup: BTreeMap<String, f64>,
    drain_machine: serde_json::Value,
    metrics_after_drain: String,
    hwm_drain: u64,
}

/// The live phase: the producer sending at full speed while the consumer runs.
pub(super) struct Live {
    live: usize,
    live_producer_seconds: f64,
    pub(super) live_rate: f64,
    live_cpu: BTreeMap<String, f64>,
    live_machine: serde_json::Value,
    hwm_live: u64,
    metrics_after_live: String,
}

/// The consumer still running after P1's live phase, and the producer: P4 measures through
/// them, then P1's end stops them.
pub(super) struct Running {
    pub(super) producer: Producer,
    pub(super) drain: Drain,
    pub(super) live: Live,
}

/// What P1's end leaves for the other figures.
pub(super) struct End {
    pub(super) drain_rate: f64,
    pub(super) live_rate: f64,
    /// The consumer's VmHWM (KiB) after the drain, after the live phase and at the end.
    pub(super) hwm_drain: u64,
    pub(super) hwm_live: u64,
    pub(super) hwm_end: u64,
}

/// The loader's first run (before the drain).
pub(super) async fn loader_before(
    cx: &Ctx<'_>,
    stored: &[ChatMessage],
    out: &mut Collect<'_>,
) -> Result<Reference> {
    let (plan, session, raw_ks, procs) = (cx.plan, &cx.world.session, cx.raw_ks, &cx.procs);
    let all_series = &mut *out.series;
    eprintln!("[bench] P1: raw CQL loader, {} rows", stored.len());
    let (ramp, concurrency) = match plan.loader_concurrency {
        Some(given) => (None, given),
        None => {
            // An eighth of the rows (at most 250 000: a few seconds per level).
            let sample = &stored[..(stored.len() / 8).clamp(1, 250_000).min(stored.len())];
            procs
                .settle("cassandra", 0.3, Duration::from_secs(20))
                .await;
            let ramp =
                loader::ramp(session.clone(), raw_ks, sample, &BatchLimits::default()).await?;
            eprintln!(
                "[bench]   loader ramp over {} rows: {} in flight",
                sample.len(),
                ramp.picked
            );
            let picked = ramp.picked;
            (Some(ramp), picked)
        }
    };
    let limits = BatchLimits {
        concurrency,
        ..BatchLimits::default()
    };
    let (loaded, settled_loader, loader_cpu) = timed_load(cx, stored, &limits).await?;
    let loader_rate_1 = loaded.rows as f64 / loaded.seconds;
    eprintln!(
        "[bench]   loader: {loader_rate_1:.0} rows/s ({} batches)",
        loaded.requests
    );
    all_series.insert("P1 raw CQL loader (rows)".into(), loaded.series);
    Ok(Reference {
        rows: loaded.rows,
        seconds: loaded.seconds,
        requests: loaded.requests,
        retries: loaded.retries,
        limits,
        loader_rate_1,
        loader_rate_2: 0.0,
        seconds_2: 0.0,
        loader_rate: loader_rate_1,
        settled_loader,
        settled_after: Vec::new(),
        loader_cpu,
        ramp,
        after_drain: Vec::new(),
        clean: true,
    })
}

/// One timed run of the loader over `stored` at `limits`, once Cassandra is at rest ([`rest`]):
/// the run, how the node was brought to rest, and the stack's CPU during the run.
async fn timed_load(
    cx: &Ctx<'_>,
    stored: &[ChatMessage],
    limits: &BatchLimits,
) -> Result<(loader::Loaded, Rested, BTreeMap<String, f64>)> {
    let procs = &cx.procs;
    let settled = rest(cx).await?;
    let before = procs.snapshot();
    let loaded = loader::load(
        cx.world.session.clone(),
        cx.raw_ks,
        stored,
        limits.clone(),
        cx.plan.loader_slice,
        cx.origin,
    )
    .await?;
    Ok((loaded, settled, before.until(&procs.snapshot(), &[])))
}

/// Starts the consumer and waits until it has committed every pre-produced record.
pub(super) async fn drain(cx: &Ctx<'_>) -> Result<Drain> {
    let (plan, topic, e2e_ks, origin, procs) = (cx.plan, cx.topic, cx.e2e_ks, cx.origin, &cx.procs);
    let target = ConsumerTarget {
        topic: topic.to_owned(),
        group: format!("{topic}_e2e"),
        keyspace: e2e_ks.to_owned(),
    };
    let config_path = plan.out_dir.join("consumer.toml");
    std::fs::write(&config_path, child::config_toml(&target, &plan.consumer))?;
    let meter = OffsetMeter::new(&target.group, topic, plan.partitions)?;
    let pre = meter.end()?;
    eprintln!("[bench] P1: chatlog-consumer drains {pre} pre-produced records");
    let settled_drain = rest(cx).await?;
    let committed_sampler = {
        let m = OffsetMeter::new(&target.group, topic, plan.partitions)?;
        Sampler::start(origin, Duration::from_millis(50), move || {
            m.committed().ok().map(|v| v as f64)
        })
    };
    let mut consumer = child::spawn(
        &plan.consumer_bin,
        &config_path,
        &plan.out_dir.join("consumer.log"),
    )
    .await?;
    let procs_c = procs.with("consumer", consumer.pid());
    let before_drain = procs_c.snapshot();
    let machine_before_drain = cpu::MachineCpu::now();
    let rss_sampler = {
        let pid = consumer.pid();
        Sampler::start(origin, Duration::from_millis(250), move || {
            child::proc_status_kib(pid, "VmRSS").map(mib)
        })
    };
    let ready_at = origin.elapsed().as_secs_f64();
    // The CPU window opens at the first commit, as the rate's does: the consumer's start-up,
    // its connections and the group join are not the drain's cost per message.
    let first = wait_committed(&meter, 1, Duration::from_secs(300), &mut consumer).await?;
    let at_first_commit = procs_c.snapshot();
    let machine_at_first_commit = cpu::MachineCpu::now();
    wait_committed(&meter, pre, Duration::from_secs(900), &mut consumer).await?;
    let drained_at = origin.elapsed().as_secs_f64();
    let after_drain = procs_c.snapshot();
    let machine_after = cpu::MachineCpu::now();
    let drain_cpu_with_startup = before_drain.until(&after_drain, &[]);
    // A drain done in one batch has no window after its first commit: start-up stays in.
    let (drain_cpu, drain_cpu_records, drain_machine) = if first < pre {
        (
            at_first_commit.until(&after_drain, &[]),
            pre - first,
            machine_at_first_commit.until(&machine_after),
        )
    } else {
        (
            drain_cpu_with_startup.clone(),
            pre,
            machine_before_drain.until(&machine_after),
        )
    };
    let metrics_after_drain = consumer.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let hwm_drain = consumer.status_kib("VmHWM").unwrap_or(0);
    Ok(Drain {
        consumer,
        meter,
        procs_c,
        committed_sampler,
        rss_sampler,
        pre,
        ready_at,
        drained_at,
        settled_drain,
        drain_cpu,
        drain_cpu_records,
        drain_cpu_with_startup,
        drain_machine,
        metrics_after_drain,
        hwm_drain,
    })
}

/// The loader once more, now that the drain is done: Cassandra's state drifts (memtable
/// flushes, compactions, other tenants), so the reference is the mean of a run before and a
/// run after the drain. It rewrites the same rows (identical work for an LSM store).
///
/// A run that wrote slices again ran above what the node took at that moment (the ramp's short
/// samples rank levels noisily, and the node's state drifts): the run after it goes one ramp
/// level lower ([`loader::level_below`]), and when neither the run before the drain nor this one
/// is clean, one more run goes lower still — P1 is measured only against a clean run.
pub(super) async fn loader_after(
    cx: &Ctx<'_>,
    reference: &mut Reference,
    stored: &[ChatMessage],
    out: &mut Collect<'_>,
) -> Result<()> {
    let all_series = &mut *out.series;
    let mut clean: Vec<f64> = Vec::new();
    let mut limits = reference.limits.clone();
    if reference.retries == 0 {
        clean.push(reference.loader_rate_1);
    } else {
        limits.concurrency = loader::level_below(limits.concurrency);
    }
    // The first run after the drain, and one more if no run so far was clean.
    for attempt in 0..2 {
        let (run, settled, _) = timed_load(cx, stored, &limits).await?;
        reference.settled_after.push(settled);
        let rate = run.rows as f64 / run.seconds;
        reference.retries += run.retries;
        reference.after_drain.push(loader::Run {
            concurrency: limits.concurrency,
            rate,
            retries: run.retries,
        });
        let name = if attempt == 0 {
            "P1 raw CQL loader, again (rows)".to_owned()
        } else {
            format!(
                "P1 raw CQL loader, third run at {} in flight (rows)",
                limits.concurrency
            )
        };
        all_series.insert(name, run.series);
        if attempt == 0 {
            reference.loader_rate_2 = rate;
            reference.seconds_2 = run.seconds;
        }
        if run.retries == 0 {
            clean.push(rate);
        }
        if !clean.is_empty() {
            break;
        }
        let lower = loader::level_below(limits.concurrency);
        eprintln!(
            "[bench]   no clean loader run yet ({rate:.0} rows/s at {} in flight wrote {} \
             slice(s) again): once more at {lower}",
            limits.concurrency, run.retries
        );
        limits.concurrency = lower;
    }
    // A run that wrote a slice again (after a CQL timeout) counts the lost time: its rate is
    // not the loader's, and would flatter P1. The reference is the mean of the clean runs.
    reference.clean = !clean.is_empty();
    let loader_rate = if clean.is_empty() {
        let runs = reference.after_drain.iter().map(|r| r.rate);
        let all: Vec<f64> = std::iter::once(reference.loader_rate_1)
            .chain(runs)
            .collect();
        eprintln!(
            "[bench]   every loader run wrote slices again after failed writes: no clean \
             reference, P1 is not measured (the ratio to their mean is shown, not judged)"
        );
        all.iter().sum::<f64>() / all.len() as f64
    } else {
        if reference.retries > 0 {
            eprintln!(
                "[bench]   loader runs wrote {} slice(s) again after failed writes: the \
                 reference is the clean runs' rate only",
                reference.retries
            );
        }
        clean.iter().sum::<f64>() / clean.len() as f64
    };
    eprintln!(
        "[bench]   loader again: {:.0} rows/s; reference {loader_rate:.0} rows/s",
        reference.loader_rate_2
    );
    reference.loader_rate = loader_rate;
    Ok(())
}

/// P1 live: `live_messages` more sent at full speed while the consumer runs.
pub(super) async fn live(
    cx: &Ctx<'_>,
    producer: Producer,
    mut drain: Drain,
    out: &mut Collect<'_>,
) -> Result<Running> {
    let (plan, workload, origin) = (cx.plan, cx.workload, cx.origin);
    let (s, n) = (plan.sessions, plan.messages);
    let all_series = &mut *out.series;
    let Drain {
        consumer,
        meter,
        procs_c,
        ..
    } = &mut drain;
    let after_drain = procs_c.snapshot();
    let machine_after_drain = cpu::MachineCpu::now();

    // ------------------------------------------------------------------------------- P1 live
    let live = plan.live_messages;
    eprintln!("[bench] P1 live: {live} messages produced while the consumer runs");
    let live_start = origin.elapsed().as_secs_f64();
    let live_burst = produce::burst(
        &producer,
        workload,
        s + n..s + n + live,
        plan.producer_concurrency,
        origin,
    )
    .await;
    let live_end_offset = meter.end()?;
    wait_committed(meter, live_end_offset, Duration::from_secs(900), consumer).await?;
    let live_done = origin.elapsed().as_secs_f64();
    let live_cpu = after_drain.until(&procs_c.snapshot(), &[]);
    let live_machine = machine_after_drain.until(&cpu::MachineCpu::now());
    let hwm_live = consumer.status_kib("VmHWM").unwrap_or(0);
    let metrics_after_live = consumer.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    all_series.insert("P1 live: producer (acks)".into(), live_burst.series);
    let live_rate = live as f64 / (live_done - live_start);
    let live = Live {
        live,
        live_producer_seconds: live_burst.seconds,
        live_rate,
        live_cpu,
        live_machine,
        hwm_live,
        metrics_after_live,
    };
    Ok(Running {
        producer,
        drain,
        live,
    })
}

/// Waits for the consumer to commit everything, stops it, checks the rows and records P1.
pub(super) async fn finish(
    cx: &Ctx<'_>,
    running: Running,
    reference: &Reference,
    out: &mut Collect<'_>,
) -> Result<End> {
    let (plan, workload, e2e_ks) = (cx.plan, cx.workload, cx.e2e_ks);
    let session = &cx.world.session;
    let s = plan.sessions;
    let figures = &mut *out.figures;
    let details = &mut *out.details;
    let all_series = &mut *out.series;
    let Running {
        producer,
        drain,
        live,
    } = running;
    let (pre, ready_at, drained_at) = (drain.pre, drain.ready_at, drain.drained_at);
    let mut consumer = drain.consumer;
    let final_end = drain.meter.end()?;
    wait_committed(
        &drain.meter,
        final_end,
        Duration::from_secs(300),
        &mut consumer,
    )
    .await?;
    let hwm_end = consumer.status_kib("VmHWM").unwrap_or(0);
    let status = consumer.stop(Duration::from_secs(30))?;
    let committed_series = drain.committed_sampler.finish();
    all_series.insert(
        "P1 consumer (committed offsets)".into(),
        committed_series.clone(),
    );
    all_series.insert("P7 consumer RSS (MiB)".into(), drain.rss_sampler.finish());
    producer.close(Duration::from_secs(10)).await?;

    // From the first commit to the last (start-up and group join excluded); a drain that took a
    // single batch has no such interval and is timed from readiness instead.
    let (drain_rate, t0, t1, drain_method) =
        match series::steady_rate(&committed_series, 0.0, pre as f64) {
            Some((rate, t0, t1)) => (rate, t0, t1, "first to last commit"),
            None => (
                pre as f64 / (drained_at - ready_at).max(1e-3),
                ready_at,
                drained_at,
                "ready to drained (one batch)",
            ),
        };
    // Issue 18: each timed window of P1 should last ≥ 10 s (shorter ones weigh start-up and
    // Cassandra's flushes too much); say so when the sizes did not give that.
    let windows = [
        ("loader", reference.seconds),
        ("loader again", reference.seconds_2),
        ("drain", t1 - t0),
    ];
    for (name, secs) in windows {
        if secs < 10.0 && !plan.quick {
            eprintln!(
                "[bench]   note: P1's {name} window lasted {secs:.1} s (< 10 s): raise --messages"
            );
        }
    }
    // Seqs are dense per session (round-robin sends, no Redis loss): one bucket of slack.
    let max_seq = final_end / s as i64 + 1000;
    let rows = loader::count_rows(session, e2e_ks, &workload.sessions, max_seq).await?;
    eprintln!(
        "[bench]   drain {drain_rate:.0} msg/s, live {:.0} msg/s; {rows} rows for {final_end} records",
        live.live_rate
    );
    if rows < final_end {
        bail!("the consumer persisted {rows} rows of {final_end} records");
    }
    let mut p1 = Figure::ratio(
        "end-to-end persisted msg/s (pre-produced drain)",
        drain_rate,
        reference.loader_rate,
        if reference.clean {
            "raw CQL loader"
        } else {
            "raw CQL loader, no clean run: not measured"
        },
        "msg/s",
        Goal::AtLeast(0.8),
    );
    // A reference that lost time to retried slices flatters the ratio: never judged met.
    p1.met &= reference.clean;
    figures.insert("P1".to_owned(), p1);
    let stages = child::stage_summary("", &drain.metrics_after_drain);
    let live_stages = child::stage_summary(&drain.metrics_after_drain, &live.metrics_after_live);
    details.insert(
        "P1".into(),
        json!({
            "drain_records": pre,
            "drain_rate": drain_rate,
            "drain_rate_method": drain_method,
            "drain_first_commit_s": t0, "drain_last_commit_s": t1,
            "drain_seconds_including_startup": drained_at - ready_at,
            "drain_consumer_stages": stages,
            "live_messages": live.live,
            "live_rate": live.live_rate,
            "live_producer_rate": live.live as f64 / live.live_producer_seconds,
            "live_consumer_stages": live_stages,
            "loader_rows": reference.rows, "loader_seconds": reference.seconds,
            "loader_seconds_after_drain": reference.seconds_2,
            "drain_window_seconds": t1 - t0,
            "loader_rate_before_drain": reference.loader_rate_1,
            "loader_rate_after_drain": reference.loader_rate_2,
            "loader_batches": reference.requests, "loader_concurrency": reference.limits.concurrency,
            "loader_ramp": reference.ramp,
            "loader_runs_after_drain": reference.after_drain,
            "loader_slice_retries": reference.retries,
            "loader_clean": reference.clean,
            "loader_slice": plan.loader_slice,
            "rows_checked": rows,
            "rest_before_loader": reference.settled_loader,
            "rest_before_drain": drain.settled_drain,
            "rest_before_loader_runs_after_drain": reference.settled_after,
            "drain_cpu_us_per_msg": cpu::per_op_us(&drain.drain_cpu, drain.drain_cpu_records as u64),
            "drain_cpu_window_records": drain.drain_cpu_records,
            "drain_cpu_us_per_msg_including_startup": cpu::per_op_us(&drain.drain_cpu_with_startup, pre as u64),
            "drain_machine_cpu": drain.drain_machine,
            "live_machine_cpu": live.live_machine,
            "live_cpu_us_per_msg": cpu::per_op_us(&live.live_cpu, live.live as u64),
            "loader_cpu_us_per_row": cpu::per_op_us(&reference.loader_cpu, reference.rows as u64),
            "consumer_exit": status.to_string(),
        }),
    );
    Ok(End {
        drain_rate,
        live_rate: live.live_rate,
        hwm_drain: drain.hwm_drain,
        hwm_live: live.hwm_live,
        hwm_end,
    })
}
