//! `chatlog-consumer`: a thin CLI over the `chatlog_consumer` library.
//!
//! `run` (the default) consumes until SIGTERM/SIGINT, then finishes and commits the current batch
//! and exits 0; a fatal error (e.g. fenced by a newer instance) exits 3. `migrate` applies the CQL
//! migrations and exits. `config` prints the effective configuration (secrets masked).
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chatlog_consumer::cli::{ConfigArgs, LogFormat, cancel_on_signal, init_logging};
use chatlog_consumer::pipeline::Faults;
use chatlog_consumer::telemetry::{self, Health};
use chatlog_consumer::{Config, Error, Pipeline};
use clap::{Parser, Subcommand};
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
    /// Configuration (file, environment, flags).
    #[command(flatten)]
    settings: ConfigArgs,
    /// Fault injection for tests only: every rewind seek fails (see
    /// `chatlog_consumer::pipeline::Faults`).
    #[arg(long, env = "CHATLOG_FAULT_FAIL_SEEKS", hide = true, global = true)]
    fault_fail_seeks: bool,
    /// Fault injection for tests only: every transaction waits this many milliseconds before
    /// its offsets are sent.
    #[arg(
        long,
        env = "CHATLOG_FAULT_COMMIT_DELAY_MS",
        hide = true,
        global = true
    )]
    fault_commit_delay_ms: Option<u64>,
    /// Fault injection for tests only: every committed transaction's commit call returns this
    /// many milliseconds late.
    #[arg(
        long,
        env = "CHATLOG_FAULT_COMMIT_RETURN_DELAY_MS",
        hide = true,
        global = true
    )]
    fault_commit_return_delay_ms: Option<u64>,
    /// Fault injection for tests only: the first this many writes fail as a transient error
    /// would.
    #[arg(long, env = "CHATLOG_FAULT_FAIL_WRITES", hide = true, global = true)]
    fault_fail_writes: Option<u32>,
    /// Fault injection for tests only: every write that includes a message with this seq fails
    /// as a transient error would.
    #[arg(
        long,
        env = "CHATLOG_FAULT_FAIL_WRITES_OF_SEQ",
        hide = true,
        global = true
    )]
    fault_fail_writes_of_seq: Option<i64>,
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

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume until SIGTERM (the default).
    Run,
    /// Apply the CQL migrations and exit.
    Migrate,
    /// Print the effective configuration as TOML (secrets masked as "***") and exit.
    Config,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, "info");
    let config = match cli.settings.config() {
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
                commit_delay: Duration::from_millis(cli.fault_commit_delay_ms.unwrap_or(0)),
                commit_return_delay: Duration::from_millis(
                    cli.fault_commit_return_delay_ms.unwrap_or(0),
                ),
                fail_writes: cli.fault_fail_writes.unwrap_or(0),
                fail_writes_of_seq: cli.fault_fail_writes_of_seq,
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
    cancel_on_signal(shutdown.clone(), "finishing the current batch");
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
