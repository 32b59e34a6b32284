//! The form P5, P6 and P8 share: one of our Redis-bound operations next to a `redis-benchmark`
//! command at the same concurrency, at the plan's callers and at one caller, each reference run
//! about as long as ours; one figure (ours / reference at the plan's callers, against the goal).

use anyhow::Result;
use serde_json::json;

use crate::reads::{self, Loops, Measured};
use crate::report::{Figure, Goal};

use super::world::Collect;

/// How P5, P6 or P8 names its two sides.
pub(super) struct Sides {
    /// The figure's id (`P5`).
    pub(super) id: &'static str,
    /// What the figure measures; `, N callers` follows.
    pub(super) what: &'static str,
    /// Our side in the progress lines and the details (`history`).
    pub(super) ours: &'static str,
    /// The reference, as the figure names it (`redis-benchmark INCR`).
    pub(super) reference: &'static str,
    /// The figure's unit.
    pub(super) unit: &'static str,
    /// The least ratio (ours / reference at the plan's callers) the goal asks.
    pub(super) goal: f64,
}

/// Ours and the reference at the plan's callers and at one caller.
pub(super) struct Versus {
    callers: usize,
    ours_many: Measured,
    /// The reference at `callers` (P5's one-connection ratio divides by it).
    pub(super) reference_many: Measured,
    ours_one: Measured,
    reference_one: Measured,
}

/// About as long as our loop of `secs` ran, at least 2000 requests.
fn n_for(m: &Measured, secs: f64) -> usize {
    (m.rate * secs).max(2000.0) as usize
}

/// Runs `ours(callers)` (a measurement of `loops`), then `redis-benchmark` with `command` and
/// `callers` clients, then both with one; the reference gets `scale` requests per operation of
/// ours (P5's ZREVRANGE 4) so it runs about as long.
pub(super) async fn measure<F, Fut>(
    loops: &Loops<'_>,
    callers: usize,
    scale: usize,
    command: &[&str],
    ours: F,
) -> Result<Versus>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<Measured>>,
{
    let (rpid, secs) = (loops.redis, loops.seconds);
    let ours_many = ours(callers).await?;
    let reference_many =
        reads::redis_benchmark(rpid, callers, n_for(&ours_many, secs) * scale, command)?;
    let ours_one = ours(1).await?;
    let reference_one = reads::redis_benchmark(rpid, 1, n_for(&ours_one, secs) * scale, command)?;
    Ok(Versus {
        callers,
        ours_many,
        reference_many,
        ours_one,
        reference_one,
    })
}

impl Versus {
    /// Ours at the plan's callers.
    pub(super) fn ours_many(&self) -> &Measured {
        &self.ours_many
    }

    /// Ours with one caller.
    pub(super) fn ours_one(&self) -> &Measured {
        &self.ours_one
    }

    /// Prints the progress lines and records the figure and its details, with `extra`'s keys
    /// (a JSON object) added to them.
    pub(super) fn record(&self, sides: &Sides, extra: serde_json::Value, out: &mut Collect<'_>) {
        let Sides {
            id,
            what,
            ours,
            reference,
            unit,
            goal,
        } = *sides;
        let callers = self.callers;
        let (many, rb_many) = (&self.ours_many, &self.reference_many);
        let (one, rb_one) = (&self.ours_one, &self.reference_one);
        eprintln!(
            "[bench]   {ours} {:.0}/s vs {reference} {:.0}/s ({callers}); {:.0}/s vs {:.0}/s (1)",
            many.rate, rb_many.rate, one.rate, rb_one.rate
        );
        eprintln!(
            "[bench]   p99 ms: {ours} {:.2} vs {:.2} ({callers}); {:.2} vs {:.2} (1)",
            many.p99_ms, rb_many.p99_ms, one.p99_ms, rb_one.p99_ms
        );
        eprintln!(
            "[bench]   CPU µs/op client+redis: {ours} {:.1}+{:.1}, redis-benchmark {:.1}+{:.1}",
            many.client_cpu_us, many.redis_cpu_us, rb_many.client_cpu_us, rb_many.redis_cpu_us
        );
        out.figures.insert(
            id.to_owned(),
            Figure::ratio(
                &format!("{what}, {callers} callers"),
                many.rate,
                rb_many.rate,
                reference,
                unit,
                Goal::AtLeast(goal),
            ),
        );
        let mut details = json!({
            "callers": callers, "redis_benchmark": rb_many,
            "one_caller": {"redis_benchmark": rb_one, "ratio": one.rate / rb_one.rate.max(1e-9)},
        });
        details[ours] = json!(many);
        details["one_caller"][ours] = json!(one);
        if let (Some(to), serde_json::Value::Object(extra)) = (details.as_object_mut(), extra) {
            to.extend(extra);
        }
        out.details.insert(id.to_owned(), details);
    }
}
