//! The local stack (`dev/stack.sh up`) for the criterion benches of `chatlog-store`, and of
//! `chatlog-producer`, whose `benches/seq_alloc.rs` includes this file by path: the root test kit
//! (package `chatlog`) has the same helpers, but it depends on both crates, so their benches
//! cannot depend on it. Addresses and login come from the `CHATLOG_*` variables of
//! `dev/stack.sh env`, with its defaults.

use std::sync::Arc;

use chatlog_store::{CqlConfig, RedisConfig, Secret};
use scylla::client::session::Session;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A name of this process and moment, `<prefix>_<pid>_<nanos>`: a keyspace, session or key no
/// other run shares.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// The stack's Redis (`CHATLOG_REDIS_URL`).
pub fn redis_config() -> RedisConfig {
    RedisConfig {
        url: env_or("CHATLOG_REDIS_URL", "redis://127.0.0.1:6390/"),
        ..RedisConfig::default()
    }
}

/// A session to the stack's CQL database with every migration applied to `keyspace`, and a
/// connection to its Redis.
pub struct Stack {
    /// The CQL session.
    pub cql: Arc<Session>,
    /// The keyspace the migrations made.
    pub keyspace: String,
    /// The Redis connection (it reconnects by itself).
    pub redis: chatlog_store::RedisConnection,
}

/// Connects to the stack and applies the migrations to `keyspace` (the error names the service
/// that did not answer).
pub async fn connect(keyspace: &str) -> chatlog_store::Result<Stack> {
    let cql_config = CqlConfig {
        nodes: env_or("CHATLOG_CQL_NODES", "127.0.0.1:9042")
            .split(',')
            .map(str::to_owned)
            .collect(),
        keyspace: keyspace.to_owned(),
        // The local stack's login (a local development credential).
        username: env_or("CHATLOG_CQL_USERNAME", "cassandra"),
        password: Secret::new(env_or("CHATLOG_CQL_PASSWORD", "cassandra")),
        ..CqlConfig::default()
    };
    let cql = cql_config.connect().await?;
    chatlog_store::migrate::apply(&cql, &cql_config).await?;
    Ok(Stack {
        cql: Arc::new(cql),
        keyspace: cql_config.keyspace,
        redis: redis_config().connect().await?,
    })
}

/// What a bench says when the stack is not there.
pub const NO_STACK: &str = "the local stack (start it with dev/stack.sh up)";
