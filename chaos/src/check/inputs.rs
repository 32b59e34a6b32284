//! What the checker is given, and the history settings of the run's readers.

use std::time::Duration;

use chatlog_store::history::HistoryConfig;

use crate::events::Events;
use crate::record::{LoadResult, Plan};

use super::cql::Cql;

/// Inputs of [`super::check`].
pub struct Inputs<'a> {
    /// What was sent.
    pub plan: &'a Plan,
    /// What was acknowledged.
    pub load: &'a LoadResult,
    /// CQL.
    pub cql: &'a Cql,
    /// Redis.
    pub redis: chatlog_store::RedisConnection,
    /// `W`.
    pub window_size: usize,
    /// Kafka bootstrap servers.
    pub kafka: &'a str,
    /// The input topic.
    pub topic: &'a str,
    /// The DLQ topic.
    pub dlq: &'a str,
    /// The event log (Redis loss intervals).
    pub events: &'a Events,
    /// What the online oracle saw (and the final sweep).
    pub oracle: &'a crate::oracle::Observations,
    /// The settle horizon (see [`crate::oracle`]).
    pub horizon: Duration,
}

/// The history settings of the run's readers (the oracle and the window verifier): the consumers'
/// `W` and the run's settle horizon, everything else the defaults.
pub fn history_config(window_size: usize, settle_horizon: Duration) -> HistoryConfig {
    HistoryConfig {
        settle_horizon,
        ..chatlog::history_config(window_size)
    }
}
