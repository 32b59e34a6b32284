//! Waiting until the pipeline has consumed everything: the group's committed offsets reach the
//! end offset of every partition of the topic. Offsets move only after a batch's CQL and Redis
//! writes succeeded, so this means every record was written by some consumer.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::events::Events;

/// Total lag (end offset − committed offset, summed over partitions) of `group` on `topic`.
pub fn lag(kafka: &str, topic: &str, group: &str, partitions: i32) -> anyhow::Result<i64> {
    lag_with(kafka, topic, group, partitions, "read_committed")
}

/// [`lag`] from the committed offsets alone: under `read_uncommitted` the offset fetch does not
/// wait for transactional offset commits still pending (KIP-447 `require_stable`), which a frozen
/// consumer's open transaction keeps pending until it times out. Offsets in a pending transaction
/// count as not committed.
pub fn stable_lag(kafka: &str, topic: &str, group: &str, partitions: i32) -> anyhow::Result<i64> {
    lag_with(kafka, topic, group, partitions, "read_uncommitted")
}

/// The group's committed offset of one partition (0 when none), under read_committed.
pub fn committed_offset(
    kafka: &str,
    topic: &str,
    group: &str,
    partition: i32,
) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .context("committed offsets")?;
    Ok(
        match committed
            .find_partition(topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        },
    )
}

fn lag_with(
    kafka: &str,
    topic: &str,
    group: &str,
    partitions: i32,
    isolation: &str,
) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .context("committed offsets")?;
    let mut lag = 0;
    for p in 0..partitions {
        let (_low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .context("watermarks")?;
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        };
        lag += (high - done).max(0);
    }
    Ok(lag)
}

/// Waits until the lag is 0 (checked twice, 1 s apart), logging progress; errors after `limit`.
pub async fn wait(
    kafka: &str,
    topic: &str,
    group: &str,
    partitions: i32,
    limit: Duration,
    events: &Events,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut last_log = Instant::now() - Duration::from_secs(60);
    let mut zero_seen = false;
    loop {
        let (k, t, g) = (kafka.to_owned(), topic.to_owned(), group.to_owned());
        let lag = tokio::task::spawn_blocking(move || lag(&k, &t, &g, partitions)).await?;
        match lag {
            Ok(0) if zero_seen => return Ok(()),
            Ok(0) => zero_seen = true,
            Ok(n) => {
                zero_seen = false;
                if last_log.elapsed() >= Duration::from_secs(10) {
                    events.log(format!("draining: {n} records not yet committed"));
                    last_log = Instant::now();
                }
                if Instant::now() > deadline {
                    anyhow::bail!("the pipeline did not drain within {limit:?}: {n} records left");
                }
            }
            Err(e) => {
                zero_seen = false;
                events.log(format!("draining: cannot read offsets ({e:#})"));
                if Instant::now() > deadline {
                    return Err(e.context(format!("the pipeline did not drain within {limit:?}")));
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
