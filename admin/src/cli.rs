//! The command line: every subcommand's arguments. The configuration flags are the consumer's
//! ([`ConfigArgs`]), so one file and one environment drive both binaries.

use std::time::Duration;

use chatlog_consumer::cli::ConfigArgs;
pub use chatlog_consumer::cli::LogFormat;
use clap::{Args, Parser, Subcommand};

/// chatlog's operator tool: checks, migrations, inspection, window repair, DLQ replay, load.
///
/// It reads the consumer's configuration, lowest precedence first: the built-in defaults, the
/// TOML file of --config, any key as CHATLOG__<SECTION>__<KEY>, then the variables and flags
/// below. Secrets (CQL, Redis, SASL passwords) are best passed in the environment; they are never
/// printed.
///
/// Exit codes: 0 fine; 1 a check found a problem or an operation failed; 2 the configuration or
/// the arguments are invalid.
///
/// Logs go to stderr (CHATLOG_LOG filter, default `warn`); results go to stdout.
#[derive(Debug, Parser)]
#[command(name = "chatlog", version, max_term_width = 100)]
pub struct Cli {
    /// Configuration (file, environment, flags), as for chatlog-consumer.
    #[command(flatten)]
    pub settings: ConfigArgs,
    /// Log format.
    #[arg(
        long,
        env = "CHATLOG_LOG_FORMAT",
        default_value = "human",
        global = true
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check connectivity, logins, topics, migrations, server versions and clock skew: one
    /// verdict per line; exit 1 if any check fails.
    Doctor(DoctorArgs),
    /// The CQL migrations: which are applied, and apply the rest.
    Migrate(MigrateArgs),
    /// Show one session's state: seq allocator, window vs CQL side by side, gaps.
    Inspect(InspectArgs),
    /// Compare windows with CQL; --repair rebuilds the damaged ones.
    Verify(VerifyArgs),
    /// The dead-letter queue: list, show and replay its records.
    Dlq(DlqArgs),
    /// Generate load through the producer library, with a progress bar and a summary.
    Load(LoadArgs),
    /// The effective configuration.
    Config(ConfigCmdArgs),
}

/// `doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Clock skew (between this host and Redis, and this host and CQL) above which the check
    /// fails; the consumer refuses records further ahead than `limits.max_skew`.
    #[arg(long, default_value = "500ms", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub max_skew: Duration,
    /// How long each service may take to answer.
    #[arg(long, default_value = "10s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub timeout: Duration,
}

/// `migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: MigrateAction,
}

/// `migrate` actions.
#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// List the migrations: applied (and when), pending, or edited after they were applied;
    /// exit 1 if any is pending or edited.
    Status,
    /// Apply every pending migration (safe to repeat).
    Up,
}

/// `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// What to inspect.
    #[command(subcommand)]
    pub what: InspectWhat,
}

/// `inspect` targets.
#[derive(Debug, Subcommand)]
pub enum InspectWhat {
    /// One session: seq ceiling and fast-path state, window vs CQL side by side, gaps.
    Session {
        /// The session id.
        id: String,
        /// How many of the newest seqs to show side by side.
        #[arg(long, default_value_t = 20)]
        rows: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// What to verify.
    #[command(subcommand)]
    pub what: VerifyWhat,
}

/// `verify` targets.
#[derive(Debug, Subcommand)]
pub enum VerifyWhat {
    /// Compare session windows with CQL (one session, or every window in Redis).
    Windows {
        /// One session.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        session: Option<String>,
        /// Every window Redis holds (walked with SCAN, a page at a time).
        #[arg(long)]
        all: bool,
        /// Rebuild each inconsistent window from CQL (the newest W rows, in this Redis epoch).
        #[arg(long)]
        repair: bool,
        /// Windows checked at once with --all.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// With --all: only sessions whose id matches this glob (Redis MATCH syntax, e.g.
        /// `tenant42-*`; default: every session).
        #[arg(long = "match", conflicts_with = "session")]
        matching: Option<String>,
    },
}

/// `dlq`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: DlqAction,
}

/// Which DLQ records a `dlq` action takes.
#[derive(Debug, Clone, Args)]
pub struct DlqSelect {
    /// Only records with this reason (the `chatlog-dlq-reason` header).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only records of this DLQ partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Start at this offset (in each partition taken).
    #[arg(long)]
    pub from_offset: Option<i64>,
    /// At most this many records.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// `dlq` actions.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// One line per record: partition/offset, reason, origin, key, size.
    List {
        /// Which records.
        #[command(flatten)]
        select: DlqSelect,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One record in full: headers, key, and the message decoded if it decodes.
    Show {
        /// The DLQ partition.
        partition: i32,
        /// The offset.
        offset: i64,
    },
    /// Produce the records again to the topic, with their original key and bytes, through the
    /// producer's partitioner (the Java client's murmur2), so each lands in its session's
    /// partition. Replaying is safe: the consumer writes a message at its seq and version.
    Replay {
        /// Which records.
        #[command(flatten)]
        select: DlqSelect,
        /// Print what would be replayed (and to which partition) without producing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many records per second (0: no limit).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// The topic to produce to (default: kafka.topic).
        #[arg(long)]
        to_topic: Option<String>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
}

/// `load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Messages to send.
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Sessions they are spread over.
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    /// Sends in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Messages per second (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Prefix of the session ids (default: `load-<unix seconds>`).
    #[arg(long)]
    pub session_prefix: Option<String>,
    /// Keep sending for ever (until SIGINT/SIGTERM), `--messages` per round.
    #[arg(long)]
    pub forever: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Serve the producer's metrics (`chatlog_producer_*`, `chatlog_seq_*`) on this address's
    /// /metrics while sending, as a Logic process would (the Docker quick start's Logic
    /// dashboard scrapes it).
    #[arg(long, env = "CHATLOG_LOAD_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `config`.
#[derive(Debug, Args)]
pub struct ConfigCmdArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ConfigAction,
}

/// `config` actions.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the configuration; print `ok` or the error (exit 2).
    Check,
    /// Print the effective configuration as TOML, secrets masked as "***".
    Print,
}
