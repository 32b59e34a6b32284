//! Compares one session's Redis window with the newest rows of the CQL table and prints the report
//! (see `chatlog_store::verify`). Read-only.
//!
//! ```text
//! cargo run -p chatlog-store --example verify_window -- <session_id>
//! ```
//!
//! Reads `CHATLOG_CQL_NODES` (default 127.0.0.1:9042), `CHATLOG_CQL_KEYSPACE` (default `chatlog`),
//! `CHATLOG_REDIS_URL` (default redis://127.0.0.1:6390/), and, when the deployment differs from the
//! defaults, `CHATLOG_WINDOW_SIZE` (200) and `CHATLOG_BUCKET_SIZE` (1000). Exit status: 0 when the
//! window is consistent, 1 when it is not, 2 on usage or connection errors.

use std::process::ExitCode;
use std::sync::Arc;

use chatlog_schemas::Codec;
use chatlog_store::history::{History, HistoryConfig};
use chatlog_store::{CqlConfig, RedisConfig};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match env(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a number")),
    }
}

async fn run(session_id: &str) -> Result<bool, Box<dyn std::error::Error>> {
    let mut cql = CqlConfig::default();
    if let Some(nodes) = env("CHATLOG_CQL_NODES") {
        cql.nodes = nodes.split(',').map(str::to_owned).collect();
    }
    if let Some(ks) = env("CHATLOG_CQL_KEYSPACE") {
        cql.keyspace = ks;
    }
    let mut redis = RedisConfig::default();
    if let Some(url) = env("CHATLOG_REDIS_URL") {
        redis.url = url;
    }
    let mut config = HistoryConfig::default();
    config.window.size = env_number("CHATLOG_WINDOW_SIZE", config.window.size)?;
    config.bucket_size = env_number("CHATLOG_BUCKET_SIZE", config.bucket_size)?;

    let session = Arc::new(cql.connect().await?);
    let history = History::new(
        session,
        &cql.keyspace,
        redis.connect().await?,
        Codec::default(),
        config,
    )
    .await?;
    let report = chatlog_store::verify::verify_window(&history, session_id).await?;
    println!("{report}");
    Ok(report.is_consistent())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [session_id] = args.as_slice() else {
        eprintln!("usage: verify_window <session_id>");
        return ExitCode::from(2);
    };
    match run(session_id).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("verify_window: {e}");
            ExitCode::from(2)
        }
    }
}
