//! The form P5, P6, P8 and P9 share: one of our Redis-bound operations next to a
//! `redis-benchmark` command at the same concurrency, at the plan's callers (in alternating
//! rounds) and at one caller, each reference run about as long as ours; one figure (the median of
//! ours / the median of the reference at the plan's callers, against the goal).
//!
//! Why rounds: a single pair ran ours first, then the reference; a compaction, a JVM's
//! collection or another tenant of the machine landing in one of the two moved the figure by
//! more than any change to the code did (P5 0.49 to 0.81 over four runs of the same read code).
//! Alternating the order and taking each side's median keeps one disturbed run from deciding it.

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

/// One round at the plan's callers: ours and the reference, back to back.
#[derive(Debug, Clone, Copy)]
struct Round {
    ours: Measured,
    reference: Measured,
    /// Whether the reference ran first in this round.
    reference_first: bool,
}

/// Ours and the reference at the plan's callers (in alternating rounds) and at one caller.
pub(super) struct Versus {
    callers: usize,
    /// Every round at `callers`, in the order they ran.
    rounds: Vec<Round>,
    /// Ours at `callers`: the round with the median rate.
    ours_many: Measured,
    /// The reference at `callers`: the round with the median rate (P5's one-connection ratio
    /// divides by it).
    pub(super) reference_many: Measured,
    ours_one: Measured,
    reference_one: Measured,
}

/// About as long as our loop of `secs` ran, at least 2000 requests.
fn n_for(m: &Measured, secs: f64) -> usize {
    (m.rate * secs).max(2000.0) as usize
}

/// The measurement with the median rate (the plan's rounds are odd; of an even count, the upper
/// middle).
fn median(mut of: Vec<Measured>) -> Measured {
    of.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    of.get(of.len() / 2).copied().unwrap_or_default()
}

/// Runs `loops.rounds` rounds of `ours(callers)` (a measurement of `loops`) and `redis-benchmark`
/// with `command` and `callers` clients — the reference second in even rounds, first in odd ones,
/// so a machine that drifts during the comparison weighs on both sides alike — then both with one
/// caller. The reference gets `scale` requests per operation of ours (P5's ZREVRANGE 4) so it runs
/// about as long.
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
    let reference = |clients: usize, like: &Measured| {
        reads::redis_benchmark(rpid, clients, n_for(like, secs) * scale, command)
    };
    let mut rounds: Vec<Round> = Vec::with_capacity(loops.rounds);
    for i in 0..loops.rounds.max(1) {
        // The reference first in odd rounds, sized like the round before's ours.
        let previous = rounds.last().map(|r| r.ours);
        let round = match previous.filter(|_| i % 2 == 1) {
            Some(like) => {
                let reference = reference(callers, &like)?;
                Round {
                    ours: ours(callers).await?,
                    reference,
                    reference_first: true,
                }
            }
            None => {
                let ours = ours(callers).await?;
                Round {
                    reference: reference(callers, &ours)?,
                    ours,
                    reference_first: false,
                }
            }
        };
        eprintln!(
            "[bench]   round {}: ours {:.0}/s, reference {:.0}/s ({})",
            i + 1,
            round.ours.rate,
            round.reference.rate,
            if round.reference_first {
                "reference first"
            } else {
                "ours first"
            }
        );
        rounds.push(round);
    }
    let ours_many = median(rounds.iter().map(|r| r.ours).collect());
    let reference_many = median(rounds.iter().map(|r| r.reference).collect());
    let ours_one = ours(1).await?;
    let reference_one = reference(1, &ours_one)?;
    Ok(Versus {
        callers,
        rounds,
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
        let rounds: Vec<_> = self
            .rounds
            .iter()
            .map(|r| {
                json!({"ours": r.ours.rate, "reference": r.reference.rate,
                       "ratio": r.ours.rate / r.reference.rate.max(1e-9),
                       "reference_first": r.reference_first})
            })
            .collect();
        let mut details = json!({
            "callers": callers, "redis_benchmark": rb_many,
            "rounds": rounds,
            "figure_from": format!(
                "the median rate of each side over {} alternating rounds at {callers} callers",
                self.rounds.len()
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rate: f64) -> Measured {
        Measured {
            rate,
            ..Measured::default()
        }
    }

    #[test]
    fn the_figure_takes_the_median_round_of_each_side() {
        // One disturbed round (the 10) does not decide the figure, whichever side it hit.
        assert_eq!(median(vec![at(40.0), at(10.0), at(38.0)]).rate, 38.0);
        assert_eq!(median(vec![at(5.0)]).rate, 5.0);
        assert_eq!(median(vec![at(1.0), at(3.0)]).rate, 3.0);
        assert_eq!(median(Vec::new()).rate, 0.0);
    }
}
