//! `chatlog-consumer`: a thin CLI over the `chatlog_consumer` library.
//!
//! `run` (the default) consumes until SIGTERM/SIGINT, then finishes and commits the current batch
//! and exits 0; a fatal error (e.g. fenced by a newer instance) exits 3. `migrate` applies the CQL
//! migrations and exits. `config` prints the effective configuration (secrets masked).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chatlog_consumer::pipeline::Faults;
use chatlog_consumer::telemetry::{self, Health};
use chatlog_consumer::{Config, Error, Pipeline};
use chatlog_store::Secret;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

/// chatlog's persistence consumer: Kafka (transactions) → CQL + Redis windows, poison → DLQ.
///
/// Settings, lowest precedence first: the built-in defaults (shown by `config`), the TOML file
/// given with --config (consumer/chatlog-consumer.example.toml documents every key; unknown keys
/// are errors), any key as an environment variable CHATLOG__<SECTION>__<KEY> (e.g.
/// CHATLOG__KAFKA__GROUP_INSTANCE_ID=consumer-0, CHATLOG__RETENTION__GROUP=90days), then the
/// environment variables and flags below (a flag beats its variable).
/// Secrets (CQL, Redis, SASL passwords) are best passed in the environment; they are never
/// printed.
///
/// Exit codes: 0 after SIGTERM/SIGINT (the current batch finished and committed, or `migrate` /
/// `config` done); 1 an error the next start may not see (Kafka, CQL or Redis unreachable at
/// start, a migration failed); 2 the configuration is invalid; 3 fatal for this instance (fenced
/// by a newer instance with the same transactional id, a broken transactional producer, a rewind
/// that could not seek) — restart it, the next instance resumes from the committed offsets.
///
/// Logs go to stderr; CHATLOG_LOG sets the filter (tracing's EnvFilter syntax, e.g. `info`,
/// `chatlog_consumer=debug,rdkafka=warn`; default `info`), --log-format json prints one JSON
/// object per line.
#[derive(Debug, Parser)]
#[command(version, max_term_width = 100)]
struct Cli {
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
    /// Fault injection for tests only: every rewind seek fails (see
    /// `chatlog_consumer::pipeline::Faults`).
    #[arg(long, env = "CHATLOG_FAULT_FAIL_SEEKS", hide = true, global = true)]
    fault_fail_seeks: bool,
    /// Log format.
    #[arg(
        long,
        env = "CHATLOG_LOG_FORMAT",
        default_value = "human",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume until SIGTERM (the default).
    Run,
    /// Apply the CQL migrations and exit.
    Migrate,
    /// Print the effective configuration as TOML (secrets masked as "***") and exit.
    Config,
}

impl Cli {
    fn config(&self) -> Result<Config, Error> {
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

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CHATLOG_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let config = match cli.config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.as_ref().unwrap_or(&Command::Run) {
        Command::Run => {
            let faults = Faults {
                fail_seeks: cli.fault_fail_seeks,
            };
            run(config, faults).await
        }
        Command::Migrate => migrate(&config).await,
        Command::Config => config.to_toml().map(|text| print!("{text}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_fatal() => {
            tracing::error!(error = %e, "stopping");
            ExitCode::from(3)
        }
        Err(e) => {
            tracing::error!(error = %e, "stopping");
            ExitCode::from(1)
        }
    }
}

async fn migrate(config: &Config) -> Result<(), Error> {
    let session = config.cql.connect().await?;
    let report = chatlog_store::migrate::apply(&session, &config.cql).await?;
    println!(
        "migrations on keyspace {}: applied {:?}, already applied {:?}",
        config.cql.keyspace, report.applied, report.skipped
    );
    Ok(())
}

async fn run(config: Config, faults: Faults) -> Result<(), Error> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let health = Arc::new(Health::default());
    let metrics = telemetry::install_recorder()?;
    let http_shutdown = CancellationToken::new();
    let addr = telemetry::serve_with_limits(
        config.http.listen,
        config.http.limits.clone(),
        metrics,
        health.clone(),
        http_shutdown.clone(),
    )
    .await?;
    // Tests and operators read the bound address from this line (a log event, so that JSON
    // mode prints only JSON).
    tracing::info!(address = %addr, "http listening on {addr}");
    let patience = config.shutdown.timeout;
    let pipeline = Pipeline::connect(config, shutdown.clone(), health)
        .await?
        .with_faults(faults);
    let worker = std::thread::Builder::new()
        .name("chatlog-pipeline".into())
        .spawn(move || pipeline.run())
        .map_err(|e| Error::Fatal(format!("cannot start the pipeline thread: {e}")))?;
    let joined = tokio::task::spawn_blocking(move || worker.join());
    let result = tokio::select! {
        joined = joined => joined,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(patience).await } => {
            return Err(Error::Fatal(format!(
                "the current batch did not finish within the shutdown timeout ({patience:?})"
            )));
        }
    };
    http_shutdown.cancel();
    match result {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) | Err(_) => Err(Error::Fatal("the pipeline thread panicked".into())),
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) {
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
            _ = term.recv() => tracing::info!("SIGTERM: finishing the current batch"),
            _ = int.recv() => tracing::info!("SIGINT: finishing the current batch"),
        }
        shutdown.cancel();
    });
}
