//! P1's reference: the same rows written straight into CQL with tuned UNLOGGED single-partition
//! batches and high concurrency (the store's own batch writer, given the whole data set at once so
//! every batch is as full as the limits allow) — the ceiling the pipeline is compared with.
//! Also the row counter that checks what a scenario persisted.

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

/// Writes `messages` into `keyspace` in slices of `slice` rows (each grouped into full partition
/// batches), `slices` slices at a time, `concurrency` batches in flight per slice.
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
        .buffered(2)
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
