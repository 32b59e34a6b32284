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
/// machine's CPUs: paced steps from half the live rate, each next rate from [`next_rate`].
/// Sends messages from `next` on (advanced). Returns the rate and the steps.
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
    // After P1's millions of rows Cassandra compacts for a while: calibrated then, the stack's
    // fixed part alone used more than half the CPUs and no rate reached the target (the run
    // was floored). Wait for it (bounded), as the other timed scenarios do.
    let settled_seconds = procs_c
        .settle("cassandra", 0.3, std::time::Duration::from_secs(90))
        .await;
    let mut rate = running.live.live_rate / 2.0;
    let mut steps = Vec::new();
    let mut points = Vec::new();
    for _ in 0..3 {
        let before = procs_c.snapshot();
        let machine = cpu::MachineCpu::now();
        let started = std::time::Instant::now();
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
        // Over the step's whole wall time: its CPU window also holds the wait until the last
        // watched message is visible.
        let seconds = started.elapsed().as_secs_f64();
        let cores = used.get("total").copied().unwrap_or(0.0) / seconds.max(1e-3);
        eprintln!(
            "[bench]   P4 calibration: {rate:.0} msg/s → the stack uses {cores:.2} of {cpus} CPUs"
        );
        steps.push(
            serde_json::json!({"rate": rate, "achieved_rate": step.achieved_rate,
            "stack_cores": cores, "machine_cpu": machine.until(&cpu::MachineCpu::now())}),
        );
        points.push((rate, cores));
        rate = next_rate(&points, target);
    }
    // On a shared stack the servers' CPU includes other tenants' work, and the stack's fixed
    // part alone may exceed the target: no rate reaches it then. A twentieth of the live rate
    // keeps the run meaningful (the JSON says it was floored).
    let floor = running.live.live_rate / 20.0;
    let floored = rate < floor;
    let rate = rate.max(floor);
    if floored {
        eprintln!(
            "[bench]   P4 calibration: the stack stays above {target} CPUs; paced at a twentieth \
             of the live rate"
        );
    }
    Ok((
        rate,
        serde_json::json!({"target_stack_cores": target, "cpus": cpus, "floored": floored,
            "settled_seconds_before": settled_seconds, "step_seconds": step_seconds,
            "steps": steps}),
    ))
}

/// The next rate to try for `target` cores, from the `(rate, cores)` measured so far: the secant
/// through the last two points (the stack's CPU is roughly a fixed part — Cassandra, Kafka,
/// the consumer's polls — plus a part per message, and the cost per message rises as batches
/// shrink, so a rate scaled by target ÷ cores overshoots), else the rate scaled by target ÷ cores;
/// at most ×2 or ÷4 the last rate, at least 1 msg/s.
fn next_rate(points: &[(f64, f64)], target: f64) -> f64 {
    let Some(&(r1, u1)) = points.last() else {
        return 1.0;
    };
    let proportional = if u1 > 0.0 { r1 * target / u1 } else { r1 * 2.0 };
    let guess = match points.len().checked_sub(2).map(|i| points[i]) {
        Some((r0, u0)) if (r1 - r0).abs() > 1e-9 && (u1 - u0) / (r1 - r0) > 0.0 => {
            r1 + (target - u1) * (r1 - r0) / (u1 - u0)
        }
        _ => proportional,
    };
    guess.clamp(r1 / 4.0, r1 * 2.0).max(1.0)
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

#[cfg(test)]
mod tests {
    use super::next_rate;

    #[test]
    fn the_rate_follows_the_cpu_line_to_the_target() {
        // cores = 0.6 + rate / 10 000: 1 core at 4 000 msg/s.
        let cores = |r: f64| 0.6 + r / 10_000.0;
        let mut points = vec![(15_000.0, cores(15_000.0))];
        for _ in 0..3 {
            let r = next_rate(&points, 1.0);
            points.push((r, cores(r)));
        }
        let last = points.last().unwrap().0;
        assert!((last - 4_000.0).abs() < 1.0, "{points:?}");
    }

    #[test]
    fn one_point_scales_and_the_steps_are_bounded() {
        assert_eq!(next_rate(&[(1000.0, 2.0)], 1.0), 500.0);
        assert_eq!(next_rate(&[(1000.0, 0.1)], 1.0), 2000.0);
        assert_eq!(next_rate(&[(1000.0, 40.0)], 1.0), 250.0);
        // A line falling with the rate (noise): back to scaling.
        assert_eq!(next_rate(&[(2000.0, 1.0), (1000.0, 2.0)], 1.0), 500.0);
        assert_eq!(next_rate(&[(4.0, 9.0)], 1.0), 1.0);
    }
}
