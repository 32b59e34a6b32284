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

use std::collections::BTreeMap;

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

/// Packs `groups` (each the rows of one partition, in order) that have the same `key` into
/// shared batches of at most [`MAX_BATCH_PARTITIONS`] groups, `max_rows` rows and `max_bytes` (as
/// `size` estimates each row); `key` gets a group and its bytes, and a group it gives `None`
/// stays a batch of its own. A group over the caps alone fills a batch by itself.
pub fn pack<'a, T, K: Ord>(
    groups: Vec<Vec<&'a T>>,
    max_rows: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
    mut key: impl FnMut(&[&'a T], usize) -> Option<K>,
) -> Vec<Vec<&'a T>> {
    struct Open<'a, T> {
        rows: Vec<&'a T>,
        bytes: usize,
        partitions: usize,
    }
    let mut batches = Vec::with_capacity(groups.len());
    let mut open: BTreeMap<K, Open<'a, T>> = BTreeMap::new();
    for group in groups {
        let bytes: usize = group.iter().map(|row| size(row)).sum();
        let Some(key) = key(&group, bytes) else {
            batches.push(group);
            continue;
        };
        let slot = open.entry(key).or_insert_with(|| Open {
            rows: Vec::new(),
            bytes: 0,
            partitions: 0,
        });
        if !slot.rows.is_empty()
            && (slot.partitions == MAX_BATCH_PARTITIONS
                || slot.rows.len() + group.len() > max_rows
                || slot.bytes + bytes > max_bytes)
        {
            batches.push(std::mem::take(&mut slot.rows));
            slot.bytes = 0;
            slot.partitions = 0;
        }
        slot.rows.extend(group);
        slot.bytes += bytes;
        slot.partitions += 1;
    }
    batches.extend(open.into_values().map(|o| o.rows));
    batches
}
