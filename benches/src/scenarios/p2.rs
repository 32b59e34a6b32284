//! P2: the same end-to-end rate next to a naive consumer (one INSERT and one synchronous offset
//! commit per record) reading the same topic with its own group.

use anyhow::Result;
use serde_json::json;

use crate::child::ConsumerTarget;
use crate::report::{Figure, Goal};
use crate::{cpu, naive};

use super::world::{Collect, Ctx};

/// Runs the naive consumer for `naive_seconds`; `drain_rate` and `live_rate` are P1's.
pub(super) async fn run(
    cx: &Ctx<'_>,
    drain_rate: f64,
    live_rate: f64,
    out: &mut Collect<'_>,
) -> Result<()> {
    let (plan, topic, raw_ks, origin, procs) = (cx.plan, cx.topic, cx.raw_ks, cx.origin, &cx.procs);
    let session = &cx.world.session;
    let n = plan.messages;
    let figures = &mut *out.figures;
    let details = &mut *out.details;
    let all_series = &mut *out.series;
    eprintln!("[bench] P2: naive consumer for {} s", plan.naive_seconds);
    let naive_target = ConsumerTarget {
        topic: topic.to_owned(),
        group: format!("{topic}_naive"),
        keyspace: raw_ks.to_owned(),
    };
    let before = procs.snapshot();
    let naive = {
        let session = session.clone();
        let handle = tokio::runtime::Handle::current();
        let seconds = plan.naive_seconds;
        tokio::task::spawn_blocking(move || {
            naive::run(handle, session, &naive_target, seconds, n as u64, origin)
        })
        .await??
    };
    let naive_cpu = before.until(&procs.snapshot(), &[]);
    let naive_rate = naive.records as f64 / naive.seconds.max(1e-9);
    eprintln!("[bench]   naive: {naive_rate:.0} msg/s");
    all_series.insert("P2 naive consumer".into(), naive.series);
    figures.insert(
        "P2".to_owned(),
        Figure::ratio(
            "end-to-end persisted msg/s (pre-produced drain)",
            drain_rate,
            naive_rate,
            // For what it is: a floor that shows batching pays, not a peer of the pipeline.
            "naive consumer: 1 INSERT + 1 synchronous offset commit per record (a floor, not a peer)",
            "msg/s",
            Goal::AtLeast(5.0),
        ),
    );
    details.insert(
        "P2".into(),
        json!({"naive_records": naive.records, "naive_seconds": naive.seconds,
               "naive_cpu_us_per_msg": cpu::per_op_us(&naive_cpu, naive.records),
               "live_rate_ratio": live_rate / naive_rate.max(1e-9)}),
    );

    Ok(())
}
