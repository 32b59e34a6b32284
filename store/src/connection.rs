//! One Redis connection type for every caller: a single server (with or without replicas behind
//! Sentinel or a proxy) or a Redis Cluster ([`crate::RedisConfig::cluster_nodes`]).
//!
//! # Why one type
//!
//! Every chatlog key of a session carries the session's hash tag ([`crate::keys`]), so all of a
//! session's keys live in one Cluster slot and each script touches one slot. What differs in a
//! Cluster is the *batching across sessions*: one server takes the seq fast path of many sessions
//! in one `EVALSHA`, or the window appends of a whole Kafka batch in one pipeline, while a Cluster
//! refuses a call or a pipeline that spans slots (`CROSSSLOT`). [`RedisConnection::is_cluster`]
//! tells the batching code which to do, and [`by_slot`] runs the per-slot groups concurrently
//! (the cluster client multiplexes each node's connection, so concurrent groups bound for one node
//! share its socket, as a pipeline would).
//!
//! `MOVED`/`ASK` redirections, topology refreshes and a master failover are the cluster client's
//! (redis-rs `cluster-async`); what a failover does to the data (an older copy of a slot) is the
//! epoch's ([`crate::epoch`]): each script reads the epoch of the node that serves its slot.

use std::collections::BTreeMap;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A multiplexed connection to one Redis server or to a Redis Cluster. Cheap to clone (clones
/// share the connection); reconnects by itself in both modes.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server (redis-rs `ConnectionManager`).
    Single(redis::aio::ConnectionManager),
    /// A Redis Cluster (redis-rs `cluster_async::ClusterConnection`): commands routed by slot,
    /// `MOVED`/`ASK` followed, the topology refreshed after a failover.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConnection::Single(_) => "RedisConnection::Single",
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl From<redis::aio::ConnectionManager> for RedisConnection {
    fn from(one: redis::aio::ConnectionManager) -> Self {
        RedisConnection::Single(one)
    }
}

impl From<redis::cluster_async::ClusterConnection> for RedisConnection {
    fn from(cluster: redis::cluster_async::ClusterConnection) -> Self {
        RedisConnection::Cluster(cluster)
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether a connection reaches a Redis Cluster, where one call or pipeline must stay within one
/// slot. Implemented for the connection types chatlog's generic Redis code is called with.
pub trait Topology {
    /// `true` for a Redis Cluster.
    fn is_cluster(&self) -> bool;
}

impl Topology for RedisConnection {
    fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }
}

impl Topology for redis::aio::ConnectionManager {
    fn is_cluster(&self) -> bool {
        false
    }
}

impl Topology for redis::aio::MultiplexedConnection {
    fn is_cluster(&self) -> bool {
        false
    }
}

impl Topology for redis::cluster_async::ClusterConnection {
    fn is_cluster(&self) -> bool {
        true
    }
}

/// What chatlog's generic Redis code takes: a connection that knows its [`Topology`] and can be
/// cloned for concurrent per-slot calls ([`RedisConnection`], or a plain `ConnectionManager` in
/// tests and tools).
pub trait RedisLike: ConnectionLike + Topology + Clone + Send + Sync {}

impl<C: ConnectionLike + Topology + Clone + Send + Sync> RedisLike for C {}

/// Runs `run` once per group of `slots` — one group of every position on a single server (one
/// call, as before), one group per distinct slot on a Cluster, those concurrently — and returns
/// the outputs in position order. `run` gets a connection of its own and the positions of its
/// group (ascending) and must return one output per position.
pub async fn by_slot<C, T, E, F, Fut>(con: &C, slots: &[u16], run: F) -> Result<Vec<T>, E>
where
    C: Topology + Clone,
    F: Fn(C, Vec<usize>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, E>>,
    E: From<redis::RedisError>,
{
    let groups = slot_groups(con.is_cluster(), slots);
    if groups.len() == 1 {
        let (_, at) = groups.into_iter().next().expect("one group");
        let out = run(con.clone(), at).await?;
        return check_count(out, slots.len());
    }
    let n = slots.len();
    let calls = groups.into_values().map(|at| {
        let fut = run(con.clone(), at.clone());
        async move { fut.await.map(|out| (at, out)) }
    });
    let mut placed: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for (at, out) in futures::future::try_join_all(calls).await? {
        if out.len() != at.len() {
            return Err(count_error(out.len(), at.len()).into());
        }
        for (i, t) in at.into_iter().zip(out) {
            placed[i] = Some(t);
        }
    }
    placed
        .into_iter()
        .map(|t| t.ok_or_else(|| count_error(0, 1).into()))
        .collect()
}

/// Positions grouped by slot (one group of all positions unless `cluster`); an empty input is
/// one empty group.
fn slot_groups(cluster: bool, slots: &[u16]) -> BTreeMap<u16, Vec<usize>> {
    let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    if !cluster || slots.is_empty() {
        groups.insert(0, (0..slots.len()).collect());
        return groups;
    }
    for (i, &slot) in slots.iter().enumerate() {
        groups.entry(slot).or_default().push(i);
    }
    groups
}

fn check_count<T, E: From<redis::RedisError>>(out: Vec<T>, n: usize) -> Result<Vec<T>, E> {
    if out.len() == n {
        Ok(out)
    } else {
        Err(count_error(out.len(), n).into())
    }
}

fn count_error(got: usize, wanted: usize) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "replies of a slot group",
        format!("{got} replies for {wanted} commands"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_on_a_single_server_one_per_slot_on_a_cluster() {
        let slots = [7, 3, 7, 9, 3];
        let single = slot_groups(false, &slots);
        assert_eq!(
            single.into_values().collect::<Vec<_>>(),
            vec![vec![0, 1, 2, 3, 4]]
        );
        let cluster = slot_groups(true, &slots);
        assert_eq!(
            cluster.into_iter().collect::<Vec<_>>(),
            vec![(3, vec![1, 4]), (7, vec![0, 2]), (9, vec![3])]
        );
        assert_eq!(slot_groups(true, &[]).len(), 1);
    }
}
