//! What the scenarios share: what a run created (and its clean-up), where results go, and the
//! context every scenario reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scylla::client::session::Session;

use crate::cpu;
use crate::kafka;
use crate::plan::Plan;
use crate::report::Figure;
use crate::series::Series;
use crate::workload::Workload;

/// What a run created, for the clean-up.
pub(super) struct World {
    pub(super) run: String,
    pub(super) session: Arc<Session>,
    pub(super) keyspaces: Vec<String>,
    pub(super) topics: Vec<String>,
    pub(super) groups: Vec<String>,
    pub(super) redis: chatlog_store::RedisConnection,
}

impl World {
    pub(super) async fn cleanup(&self) {
        kafka::delete_topics(&self.topics).await;
        delete_groups(&self.groups).await;
        for ks in &self.keyspaces {
            let _ = self
                .session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), ())
                .await;
        }
        // Every Redis key of the run carries the run id in its hash tag (a user's after `u:`).
        let mut con = self.redis.clone();
        let pattern = format!("chatlog:{{*{}_*", self.run);
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(5000)
                .query_async(&mut con)
                .await
            else {
                break;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<()> =
                    redis::cmd("UNLINK").arg(&keys).query_async(&mut con).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

async fn delete_groups(groups: &[String]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let Ok(admin) = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", chatlog::kafka_bootstrap())
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ = tokio::time::timeout(Duration::from_secs(10), admin.delete_groups(&names, &opts)).await;
}

/// Where the scenarios put what they measure.
pub(super) struct Collect<'a> {
    pub(super) figures: &'a mut BTreeMap<String, Figure>,
    pub(super) details: &'a mut BTreeMap<String, serde_json::Value>,
    pub(super) series: &'a mut BTreeMap<String, Series>,
    pub(super) cdf: &'a mut Vec<(f64, f64)>,
}

/// What the read scenarios (P6, P8, P9) run against.
#[derive(Clone, Copy)]
pub(super) struct Reads<'a> {
    pub(super) plan: &'a Plan,
    pub(super) world: &'a World,
    /// The keyspace of the real consumer.
    pub(super) e2e_ks: &'a str,
    /// Redis's pid (its CPU time is counted), if found.
    pub(super) rpid: Option<u32>,
}

/// What the Kafka scenarios (P3, P1, P4, P7, P2) read.
pub(super) struct Ctx<'a> {
    pub(super) plan: &'a Plan,
    pub(super) world: &'a World,
    /// The pre-produced topic (P3 ours, then P1, P4 and P2 read it).
    pub(super) topic: &'a str,
    /// The keyspace of the real consumer.
    pub(super) e2e_ks: &'a str,
    /// The keyspace of the loader and the naive consumer.
    pub(super) raw_ks: &'a str,
    pub(super) workload: &'a Workload,
    /// When the run began (the series' time axis).
    pub(super) origin: Instant,
    /// The processes whose CPU time is counted.
    pub(super) procs: cpu::Procs,
}
