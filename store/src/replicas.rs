//! Which replicas hold a partition, as the driver's token map says: the key by which writes of
//! several small partitions share one UNLOGGED batch (`messages` and `session_latest`).
//!
//! # Why
//!
//! Under live load a consumer batch holds a few rows of many sessions, so one request per
//! partition is one request per row, and Cassandra's per-request cost dominates (measured with
//! `examples/latest_writes.rs`: ~30–37 µs of Cassandra CPU per row written alone, ~17–25 µs in
//! batches of ten partitions). An UNLOGGED batch over partitions with the same replicas is sent
//! (token-aware) to one of them, which applies every mutation locally — the coordinator fan-out
//! that makes multi-partition batches an anti-pattern does not happen. Ten partitions at most: at
//! Cassandra's `unlogged_batch_across_partitions_warn_threshold` (10 by default) it warns.

use scylla::cluster::ClusterState;
use scylla::routing::Token;

/// Partitions in one UNLOGGED batch at most.
pub const MAX_BATCH_PARTITIONS: usize = 10;

/// The replicas (host id and shard, sorted) of `token` in `table` of `keyspace`; `None` when the
/// driver knows none yet (the row is then written in a batch of its own partition).
pub fn of_token(
    cluster: &ClusterState,
    keyspace: &str,
    table: &str,
    token: Token,
) -> Option<Vec<(uuid::Uuid, u32)>> {
    let mut replicas: Vec<(uuid::Uuid, u32)> = cluster
        .get_token_endpoints(keyspace, table, token)
        .iter()
        .map(|(node, shard)| (node.host_id, *shard))
        .collect();
    replicas.sort_unstable();
    (!replicas.is_empty()).then_some(replicas)
}
