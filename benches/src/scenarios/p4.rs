//! P4: acknowledgement → Redis window visibility, p99, with the producer paced at 50 % of the
//! machine's measured CPU capacity: the rate at which the stack's processes (servers, consumer and
//! the load generator with its producer) use half of the machine's CPUs, found by short paced
//! steps ([`calibrate`]); and (supplementary) at half that rate. Half the live end-to-end rate,
//! the former pacing, kept the two shared cores 96 % busy (the cost per message rises as batches
//! shrink), so it measured a saturated machine, not "half of the maximum".

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::json;

use crate::latency::{self, Paced};
use crate::report::{Figure, Goal};
use crate::{child, cpu};

use super::measure::{add_percentiles, latency_line, ms_at};
use super::p1::Running;
use super::world::{Collect, Ctx};

/// What the two paced runs measured.
pub(super) struct Latency {
    calibration: serde_json::Value,
    paced: Paced,
    paced_rate: f64,
    paced_machine: serde_json::Value,
    paced_cpu: BTreeMap<String, f64>,
    paced_stages: serde_json::Value,
    quarter: Paced,
    quarter_rate: f64,
    quarter_machine: serde_json::Value,
}

/// The paced runs, at 50 % of the CPU capacity and at half that rate, while the consumer runs.
pub(super) async fn run(cx: &Ctx<'_>, running: &Running, out: &mut Collect<'_>) -> Result<Latency> {
    let (plan, workload, origin) = (cx.plan, cx.workload, cx.origin);
    let (s, n) = (plan.sessions, plan.messages);
    let live = plan.live_messages;
    let producer = &running.producer;
    let (consumer, procs_c) = (&running.drain.consumer, &running.drain.procs_c);
    let all_series = &mut *out.series;
    let mut next = s + n + live;
    let (paced_rate, calibration) = calibrate(cx, running, &mut next).await?;
    eprintln!(
        "[bench] P4: {paced_rate:.0} msg/s (50 % of the machine's CPU capacity) for {} s",
        plan.latency_seconds
    );
    let metrics_before_paced = consumer.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let machine_before_paced = cpu::MachineCpu::now();
    let procs_before_paced = procs_c.snapshot();
    let mut paced = latency::run(
        producer,
        workload,
        next,
        paced_rate,
        plan.latency_seconds,
        plan.latency_probes,
        origin,
    )
    .await?;
    next += paced.sent as usize;
    let metrics_after_paced = consumer.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let paced_machine = machine_before_paced.until(&cpu::MachineCpu::now());
    let paced_cpu = procs_before_paced.until(&procs_c.snapshot(), &[]);
    let paced_stages = child::stage_summary(&metrics_before_paced, &metrics_after_paced);
    all_series.insert(
        "P4 paced producer (acks)".into(),
        std::mem::take(&mut paced.series_acked),
    );
    all_series.insert(
        "P4 worst latency per 250 ms (ms)".into(),
        std::mem::take(&mut paced.worst_per_interval),
    );
    // The same at half that rate (~25 % of the CPUs): what is left is the pipeline's own latency.
    let quarter_rate = paced_rate / 2.0;
    eprintln!(
        "[bench] P4 (supplementary): {quarter_rate:.0} msg/s (half the P4 rate) for {} s",
        plan.latency_seconds
    );
    let machine_before_quarter = cpu::MachineCpu::now();
    let quarter = latency::run(
        producer,
        workload,
        next,
        quarter_rate,
        plan.latency_seconds,
        plan.latency_probes,
        origin,
    )
    .await?;
    let quarter_machine = machine_before_quarter.until(&cpu::MachineCpu::now());
    Ok(Latency {
        calibration,
        paced,
        paced_rate,
        paced_machine,
        paced_cpu,
        paced_stages,
        quarter,
        quarter_rate,
        quarter_machine,
    })
}

/// Share of the machine's CPUs the stack is paced to use in P4.
const CPU_SHARE: f64 = 0.5;

/// Finds the rate at which the stack's processes (those of `procs_c`: the harness — load
/// generator and producer —, Redis, Kafka, Cassandra, the consumer) use [`CPU_SHARE`] of the
/// machine's CPUs: paced steps from half the live rate, each rate scaled by target ÷ measured
/// cores (at most ×2 or ÷4 a step; the cost per message rises as the rate falls, hence several
/// steps). Sends messages from `next` on (advanced). Returns the rate and the steps.
async fn calibrate(
    cx: &Ctx<'_>,
    running: &Running,
    next: &mut usize,
) -> Result<(f64, serde_json::Value)> {
    let (plan, workload, origin) = (cx.plan, cx.workload, cx.origin);
    let procs_c = &running.drain.procs_c;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let target = CPU_SHARE * cpus;
    let step_seconds = (plan.latency_seconds / 5.0).clamp(0.5, 4.0);
    let mut rate = running.live.live_rate / 2.0;
    let mut steps = Vec::new();
    for _ in 0..3 {
        let before = procs_c.snapshot();
        let machine = cpu::MachineCpu::now();
        let step = latency::run(
            &running.producer,
            workload,
            *next,
            rate,
            step_seconds,
            plan.latency_probes,
            origin,
        )
        .await?;
        *next += step.sent as usize;
        let used = before.until(&procs_c.snapshot(), &[]);
        let seconds = step.sent as f64 / step.achieved_rate.max(1e-9);
        let cores = used.get("total").copied().unwrap_or(0.0) / seconds.max(1e-3);
        eprintln!(
            "[bench]   P4 calibration: {rate:.0} msg/s → the stack uses {cores:.2} of {cpus} CPUs"
        );
        steps.push(
            serde_json::json!({"rate": rate, "achieved_rate": step.achieved_rate,
            "stack_cores": cores, "machine_cpu": machine.until(&cpu::MachineCpu::now())}),
        );
        if cores > 0.0 {
            rate *= (target / cores).clamp(0.25, 2.0);
        }
    }
    Ok((
        rate,
        serde_json::json!({"target_stack_cores": target, "cpus": cpus,
            "step_seconds": step_seconds, "steps": steps}),
    ))
}

/// P4's figure, details and latency CDF.
pub(super) fn figures(cx: &Ctx<'_>, latency: &Latency, out: &mut Collect<'_>) {
    let plan = cx.plan;
    let figures = &mut *out.figures;
    let details = &mut *out.details;
    let (paced, quarter) = (&latency.paced, &latency.quarter);
    let h = &paced.hist;
    let ms = |q: f64| ms_at(h, q);
    eprintln!("[bench]   P4 {}", latency_line(h));
    let qh = &quarter.hist;
    eprintln!(
        "[bench]   P4 at half the rate: {}, machine {:.0} % busy",
        latency_line(qh),
        latency.quarter_machine["busy"].as_f64().unwrap_or(0.0) * 100.0
    );
    figures.insert(
        "P4".to_owned(),
        Figure::absolute(
            "ack → Redis window visibility p99 at 50% of the machine's CPU capacity",
            ms(0.99),
            "ms",
            Goal::AtMost(100.0),
        ),
    );
    let mut quarter_details = json!({
        "target_rate": latency.quarter_rate, "achieved_rate": quarter.achieved_rate,
        "samples": qh.len(), "unresolved": quarter.unresolved,
        "machine_cpu": latency.quarter_machine,
    });
    add_percentiles(&mut quarter_details, qh);
    let mut p4_details = json!({
        "target_rate": latency.paced_rate, "achieved_rate": paced.achieved_rate,
        "sent": paced.sent, "acked": paced.acked, "samples": h.len(),
        "unresolved": paced.unresolved, "probes": plan.latency_probes,
        "poll_interval_ms": latency::POLL_INTERVAL.as_secs_f64() * 1000.0,
        "mean_ms": h.mean() / 1000.0,
        "consumer": plan.consumer, "consumer_stages": latency.paced_stages,
        "machine_cpu": latency.paced_machine,
        "pacing": "50 % of the machine's CPUs used by the stack (calibration below); the probe on its own Redis connection",
        "calibration": latency.calibration,
        "cpu_cores_by_process": latency.paced_cpu.iter()
            .map(|(k, v)| (k.clone(), v / plan.latency_seconds))
            .collect::<BTreeMap<_, _>>(),
        "quarter_rate": quarter_details,
    });
    add_percentiles(&mut p4_details, h);
    details.insert("P4".into(), p4_details);
    let cdf = &mut *out.cdf;
    cdf.extend((1..100).map(|p| p as f64 / 100.0).map(|q| (q, ms(q))));
    for q in [0.995, 0.999, 0.9999, 1.0] {
        cdf.push((q, ms(q)));
    }
}
