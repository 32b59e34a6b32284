//! chatlog's storage layout — the one owner of every CQL statement, migration, Redis key and Lua
//! script. The consumer (writer) and the history reader (Logic) both call this crate, so the layout
//! cannot drift between them.
//!
//! # Layout
//!
//! - [`config`]: how to reach the CQL database and Redis (documented, `deny_unknown_fields`).
//! - [`connection`]: one Redis connection type for a single server or a Redis Cluster, and the
//!   per-slot grouping of calls that span sessions.
//! - `cql`: small CQL helpers the table modules share (idempotent prepare, first-row read).
//! - [`secret`]: a string that never prints (passwords, keys).
//! - [`security`]: TLS files of the CQL and Redis clients (Kafka's live in `chatlog-kafka`).
//! - [`migrate`]: the numbered migrations of `cql/`, applied once each and recorded.
//! - [`epoch`]: which lifetime of which dataset Redis serves, checked by the scripts so that state
//!   written before Redis went back in time (restart from a snapshot, failover) is never trusted.
//! - [`cache`]: the repositories' cache — strong cache-aside (one loader per key across
//!   processes, deletion marks, epochs), degraded reads when Redis is away.
//! - [`keys`]: Redis key formats (all keys of a session share one Cluster hash tag).
//! - [`limits`]: the `consumer_limits` table — the limits each consumer enforces, read by producers.
//! - [`messages`]: the `messages` table — statements, buckets, the typed row, the batch writer,
//!   the row counter.
//! - [`window`]: the Redis ZSET window of each session — member format, Lua, the writer.
//! - [`history`] (a folder): the history reader — window first, CQL for the rest, coalesced
//!   fallbacks; its window and table readers are also [`verify`]'s.
//! - [`verify`]: compares a session's window with the newest rows of CQL (operators' check).
//! - `flight`: single-flight — identical concurrent requests of a process run once (history's
//!   page reads, the cache's loads).
//! - [`repo`] (a folder): the Smart DAL's repositories — users, sessions and members,
//!   conversation lists and read state — each on CQL and cached.
//! - [`queues`]: per-session queues for group commit (seq allocation, the producer's turns).
//! - [`seq`] (a folder): per-session seq allocation — Redis fast path, CQL LWT segments, recovery
//!   after Redis loss.
//! - `store/lua/*.lua`: every Lua script, loaded with `include_str!`; `epoch.lua` (the one
//!   `server_epoch()`) is concatenated in front of the scripts that check the epoch.
//! - [`telemetry`]: every metric name the crate records.
//! - [`Error`]: one error type, `Clone` (sources behind `Arc`).
//!
//! No file here is over 700 lines and no function over 150.
#![forbid(unsafe_code)]

pub mod cache;
pub mod config;
pub mod connection;
mod cql;
pub mod epoch;
mod flight;
pub mod hidden;
pub mod history;
pub mod keys;
pub mod limits;
pub mod messages;
pub mod migrate;
pub mod queues;
pub mod replicas;
pub mod repo;
pub mod retention;
pub mod secret;
pub mod security;
pub mod seq;
pub mod telemetry;
pub mod verify;
pub mod window;
pub mod window_start;

pub use config::{CqlConfig, RedisConfig, RedisConnections};
pub use connection::RedisConnection;
pub use secret::Secret;

/// Errors of the storage layer. `Clone` (sources behind `Arc`): one failed call that served many
/// waiters — a coalesced history read, a fast-path seq call — hands each waiter the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Could not connect to the CQL database.
    #[error("cannot connect to CQL nodes {nodes:?}: {source}")]
    CqlConnect {
        /// The contact points tried.
        nodes: Vec<String>,
        /// The driver's error.
        #[source]
        source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A CQL statement failed.
    #[error("CQL {what}: {source}")]
    Cql {
        /// What was being done.
        what: String,
        /// The driver's error.
        #[source]
        source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A Redis command failed.
    #[error("redis {what}: {source}")]
    Redis {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// A migration is invalid or differs from the one already applied.
    #[error("migration {version:04}: {message}")]
    Migration {
        /// The migration's number.
        version: u32,
        /// What is wrong.
        message: String,
    },
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A request is outside the limits (for example more seqs than a history page holds).
    #[error("invalid request: {0}")]
    Request(String),
    /// A repeated idempotency key `(session, sender, client_msg_id)` with another message than
    /// the one first allocated under it. Nothing was allocated; the send must not be
    /// acknowledged. Not retriable: retry with the same message, or send this one under a new
    /// `client_msg_id`.
    #[error(
        "client_msg_id already names another message (seq {seq}, msg_id {msg_id}): a retry must \
         resend the same content"
    )]
    IdempotencyConflict {
        /// The seq of the first message under this key.
        seq: i64,
        /// The msg_id of the first message under this key.
        msg_id: String,
    },
    /// Fewer Redis replicas than `seq.wait_replicas` acknowledged a seq allocation in time; its
    /// seqs were not handed out. Retriable: the same `client_msg_id` gets its seq back.
    #[error(
        "redis replication: {acked} of {wanted} replicas acknowledged the seq allocation within \
         {timeout:?} (see INFO replication; seq.wait_replicas = 0 turns the wait off)"
    )]
    NotReplicated {
        /// `seq.wait_replicas`.
        wanted: u32,
        /// Replicas that acknowledged (Redis `WAIT`'s reply).
        acked: i64,
        /// `seq.wait_timeout`.
        timeout: std::time::Duration,
    },
}

impl Error {
    /// Whether repeating the same write can never succeed, because the data or the state it meets
    /// is at fault rather than the connection: Redis `WRONGTYPE` (a key of another type), a CQL
    /// invalid request (e.g. a mutation or batch too large). Everything else (timeouts,
    /// unavailable, overloaded, broken connections, unknown errors) counts as transient — Redis
    /// `OOM` too: it refuses every write while Redis is full, whatever the record, and passes
    /// once memory is freed, so it is an outage to wait out, not a reason to give records up.
    pub fn is_permanent(&self) -> bool {
        match self {
            // A pipeline fails with each failed command's error: any one permanent is enough
            // (the caller then writes session by session and finds which).
            Error::Redis { source, .. } => source
                .clone()
                .into_server_errors()
                .is_some_and(|errors| errors.iter().any(|(_, e)| e.code() == "WRONGTYPE")),
            Error::Cql { source, .. } => cql_permanent(source.as_ref()),
            _ => false,
        }
    }

    /// A `map_err` for a failed Redis command: [`Error::Redis`] saying `what` was being done.
    pub(crate) fn redis(what: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
        move |source| Error::Redis { what, source }
    }

    pub(crate) fn cql(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Cql {
            what: what.into(),
            source: std::sync::Arc::new(source),
        }
    }
}

/// Whether a CQL error is the request's own fault: the driver's `BadQuery`, the server's
/// `Invalid` (which covers a batch or mutation too large) or a server error saying the mutation
/// is too large.
fn cql_permanent(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
    let (db, message) = match e.downcast_ref::<ExecutionError>() {
        // Refused by the driver before sending: values that cannot be serialized, or a
        // partition key longer than 65,535 bytes (which the server would refuse as Invalid).
        Some(ExecutionError::BadQuery(_)) => return true,
        Some(ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, message))) => {
            (db, message)
        }
        _ => return false,
    };
    match db {
        DbError::Invalid => true,
        DbError::ServerError => {
            let m = message.to_ascii_lowercase();
            m.contains("mutation") && m.contains("too large")
        }
        _ => false,
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::errors::{BadQuery, ExecutionError};

    #[test]
    fn a_statement_the_driver_refuses_is_permanent_and_a_timeout_is_not() {
        let too_long = Error::cql(
            "insert message",
            ExecutionError::BadQuery(BadQuery::ValuesTooLongForKey(70_008, 65_535)),
        );
        assert!(too_long.is_permanent(), "{too_long}");
        let timeout = Error::cql(
            "insert message",
            ExecutionError::RequestTimeout(std::time::Duration::from_secs(1)),
        );
        assert!(!timeout.is_permanent(), "{timeout}");
    }
}
