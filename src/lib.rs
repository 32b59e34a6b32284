//! The test kit of chatlog's end-to-end tests and benchmarks: where the local stack's services are
//! (from the `CHATLOG_*` variables that `dev/stack.sh env` prints, with the same defaults) and unique
//! names so tests never share a topic, keyspace or session.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

/// The Kafka bootstrap servers of the local stack.
pub fn kafka_bootstrap() -> String {
    env_or("CHATLOG_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
}

/// The CQL contact points of the local stack.
pub fn cql_nodes() -> Vec<String> {
    env_or("CHATLOG_CQL_NODES", "127.0.0.1:9042")
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// The Redis URL of the local stack.
pub fn redis_url() -> String {
    env_or("CHATLOG_REDIS_URL", "redis://127.0.0.1:6390/")
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A name unique to this test process and call: `<prefix>_<pid>_<n>_<nanos>`, valid as a Kafka
/// topic, a CQL keyspace (when `prefix` is) and a session id.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
}

/// The message every test prints when a service of the stack is not reachable.
pub fn stack_hint(service: &str, address: &str) -> String {
    format!(
        "{service} is not reachable at {address}: start the local stack with `dev/stack.sh up` \
         (logs in ~/.cache/chatlog/stack/logs)"
    )
}
