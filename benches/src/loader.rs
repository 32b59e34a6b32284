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
}

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
    let requests: Vec<usize> = futures::stream::iter(messages.chunks(slice.max(1)))
        .map(|chunk| {
            let writer = writer.clone();
            let done = done.clone();
            async move {
                let stats = writer.write(chunk).await?;
                done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Ok::<_, chatlog_store::Error>(stats.requests)
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
