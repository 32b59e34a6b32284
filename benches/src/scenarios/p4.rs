//! P4: acknowledgement → Redis window visibility, p99, with the producer paced at half the live
//! end-to-end rate; and (supplementary) at a quarter, where what is left is the pipeline's own
//! latency.

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
    paced: Paced,
    paced_rate: f64,
    paced_machine: serde_json::Value,
    paced_cpu: BTreeMap<String, f64>,
    paced_stages: serde_json::Value,
    quarter: Paced,
    quarter_rate: f64,
    quarter_machine: serde_json::Value,
}

/// The paced runs, at half and at a quarter of the live rate, while the consumer runs.
pub(super) async fn run(cx: &Ctx<'_>, running: &Running, out: &mut Collect<'_>) -> Result<Latency> {
    let (plan, workload, origin) = (cx.plan, cx.workload, cx.origin);
    let redis = &cx.world.redis;
    let (s, n) = (plan.sessions, plan.messages);
    let live_rate = running.live.live_rate;
    let live = plan.live_messages;
    let producer = &running.producer;
    let (consumer, procs_c) = (&running.drain.consumer, &running.drain.procs_c);
    let all_series = &mut *out.series;
    let paced_rate = live_rate / 2.0;
    eprintln!(
        "[bench] P4: {paced_rate:.0} msg/s (half the live end-to-end rate) for {} s",
        plan.latency_seconds
    );
    let metrics_before_paced = consumer.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let machine_before_paced = cpu::MachineCpu::now();
    let procs_before_paced = procs_c.snapshot();
    let mut paced = latency::run(
        producer,
        workload,
        s + n + live,
        paced_rate,
        plan.latency_seconds,
        plan.latency_probes,
        redis.clone(),
        origin,
    )
    .await?;
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
    // The same at a quarter of the max rate: where the machine has room, what is left is the
    // pipeline's own latency (on 2 shared cores, half the max rate already keeps them busy).
    let quarter_rate = live_rate / 4.0;
    eprintln!(
        "[bench] P4 (supplementary): {quarter_rate:.0} msg/s (a quarter) for {} s",
        plan.latency_seconds
    );
    let machine_before_quarter = cpu::MachineCpu::now();
    let quarter = latency::run(
        producer,
        workload,
        s + n + live + paced.sent as usize,
        quarter_rate,
        plan.latency_seconds,
        plan.latency_probes,
        redis.clone(),
        origin,
    )
    .await?;
    let quarter_machine = machine_before_quarter.until(&cpu::MachineCpu::now());
    Ok(Latency {
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
        "[bench]   P4 at a quarter: {}, machine {:.0} % busy",
        latency_line(qh),
        latency.quarter_machine["busy"].as_f64().unwrap_or(0.0) * 100.0
    );
    figures.insert(
        "P4".to_owned(),
        Figure::absolute(
            "ack → Redis window visibility p99 at 50% of max rate",
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
