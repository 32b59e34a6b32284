//! The flags and environment variables that name chatlog's configuration, shared by every binary
//! that reads it (`chatlog-consumer` and the operators' `chatlog`), so one file, one environment
//! and one set of flags drive them all.

use std::path::PathBuf;
use std::time::Duration;

use chatlog_store::Secret;

use crate::{Config, Error};

/// The configuration flags (each with its environment variable). Precedence, lowest first: the
/// built-in defaults, the TOML file of `--config`, `CHATLOG__<SECTION>__<KEY>` variables, then
/// these (a flag beats its variable).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file (see consumer/chatlog-consumer.example.toml).
    #[arg(long, env = "CHATLOG_CONSUMER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "CHATLOG_KAFKA_BOOTSTRAP", global = true)]
    bootstrap_servers: Option<String>,
    /// Topic to consume.
    #[arg(long, env = "CHATLOG_TOPIC", global = true)]
    topic: Option<String>,
    /// DLQ topic for poison records.
    #[arg(long, env = "CHATLOG_DLQ_TOPIC", global = true)]
    dlq_topic: Option<String>,
    /// Consumer group of the fleet.
    #[arg(long, env = "CHATLOG_GROUP_ID", global = true)]
    group_id: Option<String>,
    /// Transactional id: stable and unique per instance (e.g. chatlog-consumer-<ordinal>).
    #[arg(long, env = "CHATLOG_TRANSACTIONAL_ID", global = true)]
    transactional_id: Option<String>,
    /// Kafka SASL password (prefer the environment variable; never printed). The rest of the
    /// TLS/SASL settings live in the config file's `[kafka.security]`.
    #[arg(
        long,
        env = "CHATLOG_KAFKA_SASL_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    kafka_sasl_password: Option<Secret>,
    /// CQL contact points, comma-separated host:port.
    #[arg(long, env = "CHATLOG_CQL_NODES", global = true, value_delimiter = ',')]
    cql_nodes: Option<Vec<String>>,
    /// CQL keyspace.
    #[arg(long, env = "CHATLOG_CQL_KEYSPACE", global = true)]
    keyspace: Option<String>,
    /// CQL username.
    #[arg(long, env = "CHATLOG_CQL_USERNAME", global = true)]
    cql_username: Option<String>,
    /// CQL password (prefer the environment variable; never printed).
    #[arg(
        long,
        env = "CHATLOG_CQL_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    cql_password: Option<Secret>,
    /// Redis URL (redis:// or rediss://), without the password: a URL with one is refused (set
    /// the password with CHATLOG_REDIS_PASSWORD). Its value is never shown here.
    #[arg(long, env = "CHATLOG_REDIS_URL", hide_env_values = true, global = true)]
    redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster, comma-separated redis:// URLs (any few of its nodes); when
    /// given, the Redis URL is not used. Its value is never shown here.
    #[arg(
        long,
        env = "CHATLOG_REDIS_CLUSTER_NODES",
        hide_env_values = true,
        global = true,
        value_delimiter = ','
    )]
    redis_cluster_nodes: Option<Vec<String>>,
    /// Redis password (prefer the environment variable; never printed).
    #[arg(
        long,
        env = "CHATLOG_REDIS_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    redis_password: Option<Secret>,
    /// Newest messages kept per session window.
    #[arg(long, env = "CHATLOG_WINDOW_SIZE", global = true)]
    window_size: Option<usize>,
    /// Most records per transaction.
    #[arg(long, env = "CHATLOG_MAX_RECORDS", global = true)]
    max_records: Option<usize>,
    /// Longest wait for more records once a batch has one (e.g. 10ms).
    #[arg(long, env = "CHATLOG_LINGER", global = true, value_parser = humantime_serde::re::humantime::parse_duration)]
    linger: Option<Duration>,
    /// Listen address of /metrics, /healthz, /readyz (port 0: any free port).
    #[arg(long, env = "CHATLOG_HTTP_LISTEN", global = true)]
    http_listen: Option<std::net::SocketAddr>,
    /// Apply the CQL migrations before consuming.
    #[arg(long, env = "CHATLOG_MIGRATE_ON_START", global = true)]
    migrate_on_start: bool,
}

impl ConfigArgs {
    /// The effective configuration: defaults, file, `CHATLOG__…` variables, then these flags;
    /// validated, with a password inside the Redis URL refused.
    pub fn config(&self) -> Result<Config, Error> {
        // Non-UTF-8 variables cannot be ours: skipped rather than a panic in `std::env::vars`.
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        let mut c = Config::load(self.config.as_deref(), vars)?;
        let set = |dst: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                dst.clone_from(v);
            }
        };
        set(&mut c.kafka.bootstrap_servers, &self.bootstrap_servers);
        set(&mut c.kafka.topic, &self.topic);
        set(&mut c.kafka.dlq_topic, &self.dlq_topic);
        set(&mut c.kafka.group_id, &self.group_id);
        set(&mut c.kafka.transactional_id, &self.transactional_id);
        set(&mut c.cql.keyspace, &self.keyspace);
        set(&mut c.cql.username, &self.cql_username);
        set(&mut c.redis.url, &self.redis_url);
        if let Some(v) = &self.cql_nodes {
            c.cql.nodes.clone_from(v);
        }
        if let Some(v) = &self.redis_cluster_nodes {
            c.redis.cluster_nodes = v.iter().filter(|n| !n.is_empty()).cloned().collect();
        }
        if let Some(v) = &self.kafka_sasl_password {
            c.kafka.security.sasl_password = v.clone();
        }
        if let Some(v) = &self.cql_password {
            c.cql.password = v.clone();
        }
        if let Some(v) = &self.redis_password {
            c.redis.password = v.clone();
        }
        if let Some(v) = self.window_size {
            c.window.size = v;
        }
        if let Some(v) = self.max_records {
            c.batch.max_records = v;
        }
        if let Some(v) = self.linger {
            c.batch.linger = v;
        }
        if let Some(v) = self.http_listen {
            c.http.listen = v;
        }
        c.migrate_on_start |= self.migrate_on_start;
        c.validate()?;
        // Before anything prints the configuration: a password in the Redis URL is refused (and
        // the refusal masks it).
        c.redis.validate()?;
        Ok(c)
    }
}

/// Log formats (`--log-format`, `CHATLOG_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Logs to stderr in `format`, filtered by `CHATLOG_LOG` (tracing's EnvFilter syntax; then
/// `RUST_LOG`), else by `default` (the consumer: `info`; the operators' tool: `warn`, so that its
/// results on stdout are not drowned).
pub fn init_logging(format: LogFormat, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CHATLOG_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Cancels `token` on the first SIGTERM or SIGINT, logging which one arrived and `then` (what the
/// process does now). A process that cannot install the handlers logs it and runs on.
pub fn cancel_on_signal(token: tokio_util::sync::CancellationToken, then: &'static str) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: {then}"),
            _ = int.recv() => tracing::info!("SIGINT: {then}"),
        }
        token.cancel();
    });
}
