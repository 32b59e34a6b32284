//! P1's reference: the same rows written straight into CQL with tuned UNLOGGED single-partition
//! batches (the store's own batch writer, given a large slice at once so every batch is as full as
//! the limits allow) — the ceiling the pipeline is compared with. Its concurrency is found by a
//! short ramp ([`ramp`]): a loader that overloads the node into write timeouts measures the
//! node's overload, not its capacity. Also the row counter that checks what a scenario persisted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chatlog_schemas::ChatMessage;
use chatlog_store::messages::{BatchLimits, DEFAULT_BUCKET_SIZE, MessageWriter, bucket_of};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;

use crate::series::{Sampler, Series};

/// The loader's result.
pub struct Loaded {
    /// Rows written.
    pub rows: usize,
    /// Seconds it took.
    pub seconds: f64,
    /// UNLOGGED batches sent.
    pub requests: usize,
    /// Cumulative rows over time.
    pub series: Series,
    /// Slices written again after a failed write (a CQL timeout of an overloaded node): the
    /// rows are idempotent, and the time lost counts in `seconds`, so a retry lowers the
    /// reference (it flatters P1, and the run says so).
    pub retries: usize,
}

/// Attempts of one slice before the load fails.
const SLICE_ATTEMPTS: usize = 3;

/// One level of the ramp: batches in flight, and what the sample's write gave.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RampLevel {
    /// Batches in flight.
    pub concurrency: usize,
    /// Rows per second of the sample (0 when the write failed).
    pub rate: f64,
    /// The write failed (a CQL timeout of an overloaded node): the level is not a reference.
    pub failed: bool,
}

/// The ramp's result: the levels tried and the one picked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ramp {
    /// Levels in the order tried.
    pub levels: Vec<RampLevel>,
    /// The fewest in flight within 5 % of the best clean rate (the first level if none was
    /// clean).
    pub picked: usize,
}

/// One timed run of the loader: its concurrency, rate, and slices written again.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    /// Batches in flight.
    pub concurrency: usize,
    /// Rows per second (the lost time of retried slices included).
    pub rate: f64,
    /// Slices written again after a failed write: 0 for a clean run.
    pub retries: usize,
}

/// The ramp level below `concurrency` (the lowest level stays itself): where a loader run goes
/// after one that overloaded the node into write timeouts.
pub fn level_below(concurrency: usize) -> usize {
    RAMP_LEVELS
        .iter()
        .rev()
        .copied()
        .find(|&level| level < concurrency)
        .unwrap_or(RAMP_LEVELS[0].min(concurrency))
}

/// Concurrencies the ramp tries, in order: from below the consumer's default (16) up to twice
/// the loader's old fixed setting (two slices of 64 in flight), where one node on two cores
/// timed out in runs 9–11.
pub const RAMP_LEVELS: [usize; 6] = [8, 16, 32, 64, 128, 256];

/// Writes `sample` once per level of [`RAMP_LEVELS`] (one slice, no retry) and picks the fewest
/// in flight whose clean rate is within 5 % of the best. The ramp stops at the first failed write, or when a
/// level is well past the knee (below 90 % of the best rate so far): more in flight only queues.
/// The rows are the reference's own (rewriting them is the same work for an LSM store).
pub async fn ramp(
    session: Arc<Session>,
    keyspace: &str,
    sample: &[ChatMessage],
    limits: &BatchLimits,
) -> Result<Ramp> {
    let mut levels = Vec::new();
    // The best clean rate so far.
    let mut top: Option<f64> = None;
    for concurrency in RAMP_LEVELS {
        let writer = MessageWriter::new(
            session.clone(),
            keyspace,
            BatchLimits {
                concurrency,
                ..limits.clone()
            },
        )
        .await
        .context("loader ramp writer")?;
        let started = Instant::now();
        let outcome = writer.write(sample).await;
        let seconds = started.elapsed().as_secs_f64();
        let level = match outcome {
            Ok(_) => RampLevel {
                concurrency,
                rate: sample.len() as f64 / seconds.max(1e-6),
                failed: false,
            },
            Err(e) => {
                eprintln!("[bench]   loader ramp: {concurrency} in flight failed ({e})");
                RampLevel {
                    concurrency,
                    rate: 0.0,
                    failed: true,
                }
            }
        };
        eprintln!(
            "[bench]   loader ramp: {concurrency} in flight: {:.0} rows/s",
            level.rate
        );
        let (failed, rate) = (level.failed, level.rate);
        levels.push(level);
        if failed {
            break;
        }
        match top {
            Some(best) if rate < 0.9 * best => break,
            Some(best) if rate <= best => {}
            _ => top = Some(rate),
        }
    }
    // The fewest in flight that come within 5 % of the best: a level at the node's edge in a
    // short sample (run 13: 128 and 256 both at 69 k rows/s) timed out in the long runs.
    let picked = top
        .and_then(|best| levels.iter().find(|l| !l.failed && l.rate >= 0.95 * best))
        .map_or(RAMP_LEVELS[0], |l| l.concurrency);
    Ok(Ramp { levels, picked })
}

/// Writes `messages` into `keyspace` in slices of `slice` rows (each grouped into full partition
/// batches), one slice after the other, `limits.concurrency` batches in flight.
pub async fn load(
    session: Arc<Session>,
    keyspace: &str,
    messages: &[ChatMessage],
    limits: BatchLimits,
    slice: usize,
    origin: Instant,
) -> Result<Loaded> {
    let writer = MessageWriter::new(session, keyspace, limits)
        .await
        .context("loader writer")?;
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    let sampler = Sampler::start(origin, Duration::from_millis(50), move || {
        Some(counter.load(Ordering::Relaxed) as f64)
    });
    let started = Instant::now();
    let retries = AtomicU64::new(0);
    let requests: Vec<usize> = futures::stream::iter(messages.chunks(slice.max(1)))
        .map(|chunk| {
            let writer = writer.clone();
            let done = done.clone();
            let retries = &retries;
            async move {
                let mut attempt = 1;
                loop {
                    match writer.write(chunk).await {
                        Ok(stats) => {
                            done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            return Ok::<_, chatlog_store::Error>(stats.requests);
                        }
                        Err(e) if attempt < SLICE_ATTEMPTS => {
                            eprintln!("[bench]   loader: slice write failed ({e}); again");
                            retries.fetch_add(1, Ordering::Relaxed);
                            attempt += 1;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        })
        // One slice at a time: `limits.concurrency` is then the batches in flight, as in the
        // ramp that chose it (a slice's tail, the last batches draining, is ~0.5 % of it).
        .buffered(1)
        .try_collect()
        .await
        .context("loader write")?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Loaded {
        rows: messages.len(),
        seconds,
        requests: requests.iter().sum(),
        series: sampler.finish(),
        retries: retries.load(Ordering::Relaxed) as usize,
    })
}

/// Rows of `sessions` in `keyspace` (seqs up to `max_seq`), counted partition by partition.
pub async fn count_rows(
    session: &Session,
    keyspace: &str,
    sessions: &[String],
    max_seq: i64,
) -> Result<i64> {
    let count = session
        .prepare(chatlog_store::messages::select_partition_count_cql(
            keyspace,
        ))
        .await?;
    let partitions: Vec<(&str, i64)> = sessions
        .iter()
        .flat_map(|s| (0..=bucket_of(max_seq, DEFAULT_BUCKET_SIZE)).map(move |b| (s.as_str(), b)))
        .collect();
    let counts: Vec<i64> = futures::stream::iter(partitions)
        .map(|(s, b)| {
            let count = &count;
            async move {
                let (c,): (i64,) = session
                    .execute_unpaged(count, (s, b))
                    .await?
                    .into_rows_result()?
                    .single_row()?;
                Ok::<_, anyhow::Error>(c)
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    Ok(counts.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_after_timeouts_goes_one_ramp_level_lower() {
        assert_eq!(level_below(256), 128);
        assert_eq!(level_below(32), 16);
        // A concurrency given with --loader-concurrency, between levels: the level below it.
        assert_eq!(level_below(48), 32);
        assert_eq!(level_below(1000), 256);
        // Nothing below the lowest level: it stays.
        assert_eq!(level_below(8), 8);
        assert_eq!(level_below(3), 3);
    }
}
