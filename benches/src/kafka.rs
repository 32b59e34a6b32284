//! Kafka helpers of the harness: a group's committed offsets and a topic's end offsets (the drain
//! meter), and topic deletion at the end of a run.

use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the committed offsets of one group on one topic without joining the group.
pub struct OffsetMeter {
    client: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl OffsetMeter {
    /// A meter of `group` on `topic` (`partitions` partitions).
    pub fn new(group: &str, topic: &str, partitions: i32) -> Result<OffsetMeter> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", chatlog::kafka_bootstrap())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .context("offset meter client")?;
        Ok(OffsetMeter {
            client,
            topic: topic.to_owned(),
            partitions,
        })
    }

    fn tpl(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic, p);
        }
        tpl
    }

    /// Sum over the partitions of the group's committed offset (0 where none).
    pub fn committed(&self) -> Result<i64> {
        let tpl = self
            .client
            .committed_offsets(self.tpl(), TIMEOUT)
            .context("committed offsets")?;
        Ok(tpl
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum())
    }

    /// Sum of the high watermarks (the offset a drained group has committed).
    pub fn end(&self) -> Result<i64> {
        let mut total = 0;
        for p in 0..self.partitions {
            let (_, hi) = self
                .client
                .fetch_watermarks(&self.topic, p, TIMEOUT)
                .context("watermarks")?;
            total += hi;
        }
        Ok(total)
    }
}

/// Deletes `topics` (best effort: a run must not fail on its clean-up).
pub async fn delete_topics(topics: &[String]) {
    let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", chatlog::kafka_bootstrap())
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let _ = tokio::time::timeout(TIMEOUT, admin.delete_topics(&names, &opts)).await;
}
