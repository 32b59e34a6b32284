//! The fault kinds, how many of each a run plans, and when each starts.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::options::Options;

/// One planned fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// kill -9 of a consumer.
    Kill,
    /// Join + leave.
    Rebalance,
    /// Broker restart.
    KafkaRestart,
    /// Redis restart and FLUSHALL.
    RedisFlushall,
    /// Redis restarted from an earlier snapshot.
    Rollback,
    /// Failover to a lagging replica.
    Failover,
    /// Cassandra SIGSTOP/SIGCONT.
    CassandraPause,
    /// A consumer SIGSTOP/SIGCONT (a zombie), optionally with FLUSHALL meanwhile.
    ConsumerPause,
    /// The composed zombie-writer fault (frozen in its CQL stage).
    Zombie,
    /// A consumer frozen inside poll past its session timeout.
    PollZombie,
    /// Two producer instances sending to the same sessions.
    TwoProducers,
    /// A send whose produce fails, retried after later seqs landed.
    LateSend,
    /// A session whose window keys have the wrong Redis type.
    WrongType,
    /// Consumers join the fleet (`scale_up_by` at once).
    ScaleUp,
    /// A consumer leaves the fleet for good (SIGTERM).
    ScaleDown,
    /// Cluster: kill -9 of a partition leader broker, brought back later.
    BrokerKill,
    /// Cluster: kill -9 of a Redis master (its replica takes over), brought back as a replica.
    RedisMasterKill,
}

/// Messages a `wrongtype` fault sends to its session.
pub const WRONGTYPE_MESSAGES: usize = 3;

impl Kind {
    /// Every kind, in the order of the summary line.
    pub const ALL: [Kind; 17] = [
        Kind::Kill,
        Kind::Rebalance,
        Kind::KafkaRestart,
        Kind::RedisFlushall,
        Kind::Rollback,
        Kind::Failover,
        Kind::CassandraPause,
        Kind::ConsumerPause,
        Kind::Zombie,
        Kind::PollZombie,
        Kind::TwoProducers,
        Kind::LateSend,
        Kind::WrongType,
        Kind::ScaleUp,
        Kind::ScaleDown,
        Kind::BrokerKill,
        Kind::RedisMasterKill,
    ];

    /// Whether the kind can be injected on the cluster stack (`cluster`) or on the single-node
    /// one. Not on a cluster: the faults on the single Redis (through the harness's proxy:
    /// FLUSHALL, restart, rollback, the failover to the harness's replica, and the zombies whose
    /// point is a FLUSHALL while they are frozen) and the restart of the single Kafka broker. Not
    /// on the single-node stack: the faults that need a second broker or a Redis Cluster.
    pub fn applies(self, cluster: bool) -> bool {
        match self {
            Kind::KafkaRestart
            | Kind::RedisFlushall
            | Kind::Rollback
            | Kind::Failover
            | Kind::Zombie
            | Kind::PollZombie => !cluster,
            Kind::BrokerKill | Kind::RedisMasterKill => cluster,
            _ => true,
        }
    }

    /// The name in the event log, the report and the summary line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Rebalance => "rebalance",
            Kind::KafkaRestart => "kafka_restart",
            Kind::RedisFlushall => "redis_flushall",
            Kind::Rollback => "rollback",
            Kind::Failover => "failover",
            Kind::CassandraPause => "cassandra_pause",
            Kind::ConsumerPause => "consumer_pause",
            Kind::Zombie => "zombie",
            Kind::PollZombie => "poll_zombie",
            Kind::TwoProducers => "two_producers",
            Kind::LateSend => "late_send",
            Kind::WrongType => "wrongtype",
            Kind::ScaleUp => "scale_up",
            Kind::ScaleDown => "scale_down",
            Kind::BrokerKill => "broker_kill",
            Kind::RedisMasterKill => "redis_master_kill",
        }
    }

    /// How many of this kind `opts` plans.
    pub fn planned(self, opts: &Options) -> usize {
        match self {
            Kind::Kill => opts.kills,
            Kind::Rebalance => opts.rebalances,
            Kind::KafkaRestart => opts.kafka_restarts,
            Kind::RedisFlushall => opts.redis_restarts,
            Kind::Rollback => opts.rollbacks,
            Kind::Failover => opts.failovers,
            Kind::CassandraPause => opts.cassandra_pauses,
            Kind::ConsumerPause => opts.consumer_pauses,
            Kind::Zombie => opts.zombies,
            Kind::PollZombie => opts.poll_zombies,
            Kind::TwoProducers => opts.two_producers,
            Kind::LateSend => opts.late_sends,
            Kind::WrongType => opts.wrongtypes,
            Kind::ScaleUp => opts.scale_ups,
            Kind::ScaleDown => opts.scale_downs,
            Kind::BrokerKill => opts.broker_kills,
            Kind::RedisMasterKill => opts.redis_master_kills,
        }
    }
}

/// Refuses a plan with faults that are not possible on its stack (the single-Redis faults on a
/// cluster, the cluster faults on the single-node stack). Checked with [`Options::validate`]
/// before a run.
pub fn check_plan(opts: &Options) -> anyhow::Result<()> {
    for k in Kind::ALL {
        if k.planned(opts) > 0 && !k.applies(opts.cluster) {
            anyhow::bail!(
                "{} faults are not possible on the {} stack (set them to 0)",
                k.name(),
                if opts.cluster {
                    "cluster"
                } else {
                    "single-node"
                }
            );
        }
    }
    Ok(())
}

/// `(kill=5, rebalance=1, …)`: the kinds planned or injected, in the order of [`Kind::ALL`];
/// `(none)` when there are none.
pub fn per_kind(opts: &Options, injected: &BTreeMap<String, usize>) -> String {
    let parts: Vec<String> = Kind::ALL
        .iter()
        .filter_map(|k| {
            let n = injected.get(k.name()).copied().unwrap_or(0);
            (n > 0 || k.planned(opts) > 0).then(|| format!("{}={n}", k.name()))
        })
        .collect();
    if parts.is_empty() {
        "(none)".to_owned()
    } else {
        format!("({})", parts.join(", "))
    }
}

/// The faults of a run in a random order, each with its planned start (seconds after the load
/// began), spread over 5 %…85 % of the load. Every scale-up comes before every scale-down (so a
/// fleet of 1 grows to 3 before it shrinks to 2).
pub fn schedule(opts: &Options) -> Vec<(f64, Kind)> {
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0xFA_0175);
    let mut kinds = Vec::new();
    for k in Kind::ALL {
        kinds.extend(std::iter::repeat_n(k, k.planned(opts)));
    }
    kinds.shuffle(&mut rng);
    // The scale steps keep their slots, ups first.
    let slots: Vec<usize> = (0..kinds.len())
        .filter(|&i| matches!(kinds[i], Kind::ScaleUp | Kind::ScaleDown))
        .collect();
    for (n, &i) in slots.iter().enumerate() {
        kinds[i] = if n < opts.scale_ups {
            Kind::ScaleUp
        } else {
            Kind::ScaleDown
        };
    }
    let load = opts.load_duration().as_secs_f64();
    let n = kinds.len().max(1) as f64;
    let slot = load * 0.8 / n;
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let at = load * 0.05 + slot * i as f64 + rng.random_range(0.0..slot * 0.5);
            (at, k)
        })
        .collect()
}

/// Faults `opts` plans in all.
pub fn planned_total(opts: &Options) -> usize {
    Kind::ALL.iter().map(|k| k.planned(opts)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Size;

    #[test]
    fn schedules_every_fault_within_the_load() {
        for size in [Size::Ci, Size::Full, Size::Cluster, Size::ClusterCi] {
            let opts = Options::preset(size);
            opts.validate().unwrap();
            check_plan(&opts).unwrap();
            let plan = schedule(&opts);
            assert_eq!(plan.len(), planned_total(&opts));
            let load = opts.load_duration().as_secs_f64();
            assert!(plan.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
            assert!(plan.iter().all(|(t, _)| *t > 0.0 && *t < load * 0.9));
            for k in Kind::ALL {
                let n = plan.iter().filter(|(_, p)| *p == k).count();
                assert_eq!(n, k.planned(&opts), "{k:?}");
                let wanted = k.applies(size.cluster())
                    && !(size.cluster() && k == Kind::Rebalance)
                    && (size.cluster() || !matches!(k, Kind::ScaleUp | Kind::ScaleDown));
                assert_eq!(n >= 1, wanted, "{size:?} and {k:?}");
            }
            let last_up = plan.iter().rposition(|(_, k)| *k == Kind::ScaleUp);
            let first_down = plan.iter().position(|(_, k)| *k == Kind::ScaleDown);
            assert!(last_up < first_down || first_down.is_none(), "{plan:?}");
        }
    }

    #[test]
    fn the_summary_names_every_planned_kind() {
        let opts = Options::preset(Size::Ci);
        let mut injected = BTreeMap::new();
        injected.insert("kill".to_owned(), 5);
        injected.insert("rollback".to_owned(), 1);
        let text = per_kind(&opts, &injected);
        assert!(text.starts_with("(kill=5, rebalance=0, "), "{text}");
        assert!(text.contains("rollback=1, failover=0"), "{text}");
        assert!(text.ends_with("late_send=0, wrongtype=0)"), "{text}");
    }
}
