//! P2's reference: the naive consumer — for every record, decode it, one `INSERT` and one synchronous
//! offset commit. No batching, no window, no transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chatlog_schemas::Codec;
use chatlog_store::messages::{DEFAULT_BUCKET_SIZE, insert_bind, insert_cql};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, TopicPartitionList};
use scylla::client::session::Session;
use tokio::runtime::Handle;

use crate::child::ConsumerTarget;
use crate::series::Series;

/// What the naive consumer did.
pub struct Naive {
    /// Records persisted and committed.
    pub records: u64,
    /// Seconds from its first record to its last commit.
    pub seconds: f64,
    /// Cumulative records over time (seconds since `origin`).
    pub series: Series,
}

/// Consumes `target.topic` with a fresh `target.group` for `seconds` after its first record (or
/// until `max` records), writing into `target.keyspace`. Blocking: run it off the async workers.
pub fn run(
    runtime: Handle,
    session: Arc<Session>,
    target: &ConsumerTarget,
    seconds: f64,
    max: u64,
    origin: Instant,
) -> Result<Naive> {
    let insert = runtime
        .block_on(session.prepare(insert_cql(&target.keyspace)))
        .context("prepare insert")?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", chatlog::kafka_bootstrap())
        .set("group.id", &target.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("naive consumer")?;
    consumer.subscribe(&[&target.topic]).context("subscribe")?;
    let codec = Codec::default();
    let mut first: Option<Instant> = None;
    let mut records = 0u64;
    let mut series = Series::new();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(f) = first
            && (f.elapsed().as_secs_f64() >= seconds || records >= max)
        {
            break;
        }
        if first.is_none() && Instant::now() > give_up {
            anyhow::bail!("naive consumer: no record within 60 s");
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.context("poll")?;
        first.get_or_insert_with(Instant::now);
        let message = codec
            .decode(m.payload().unwrap_or_default())
            .context("decode")?;
        runtime
            .block_on(session.execute_unpaged(&insert, insert_bind(&message, DEFAULT_BUCKET_SIZE)))
            .context("insert")?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            m.topic(),
            m.partition(),
            rdkafka::Offset::Offset(m.offset() + 1),
        )?;
        consumer.commit(&tpl, CommitMode::Sync).context("commit")?;
        records += 1;
        if records.is_multiple_of(100) {
            series.push((origin.elapsed().as_secs_f64(), records as f64));
        }
    }
    let seconds = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    series.push((origin.elapsed().as_secs_f64(), records as f64));
    consumer.unsubscribe();
    Ok(Naive {
        records,
        seconds,
        series,
    })
}
