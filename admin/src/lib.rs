//! `chatlog`, the operators' command line: the tools one needs around a running fleet, reading the
//! same configuration (file, `CHATLOG__…` variables, flags) as `chatlog-consumer`, CQL and Redis
//! logins included.
//!
//! | subcommand | module | what |
//! |---|---|---|
//! | `doctor` | [`doctor`] | connectivity, logins, topics, migrations, server versions, clock skew: a verdict per line |
//! | `migrate status\|up` | [`migrate`] | the CQL migrations recorded and pending; apply them |
//! | `inspect session ID` | [`inspect`] | seq state, window vs CQL side by side, gaps |
//! | `verify windows` | [`verify`] | windows compared with CQL; `--repair` rebuilds a damaged one |
//! | `dlq list\|show\|replay` | [`dlq`] | the DLQ's records; replay with the producer's partitioner and the original key |
//! | `load` | [`load`] | the load generator (producer library), progress bar and summary |
//! | `config check\|print` | [`settings`] | the effective configuration as TOML, secrets masked |
//!
//! Exit codes ([`Outcome`]): 0 everything fine; 1 a check found a problem or an operation failed;
//! 2 the configuration or the arguments are invalid.
#![forbid(unsafe_code)]

pub mod cli;
pub mod connect;
pub mod dlq;
pub mod doctor;
pub mod inspect;
pub mod load;
pub mod migrate;
pub mod settings;
pub mod verify;

/// What can stop a subcommand.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid (exit 2).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Invalid arguments (exit 2).
    #[error("invalid arguments: {0}")]
    Usage(String),
    /// A store (CQL, Redis) failed.
    #[error(transparent)]
    Store(#[from] chatlog_store::Error),
    /// The consumer library refused something (configuration, Kafka client settings).
    #[error(transparent)]
    Consumer(#[from] chatlog_consumer::Error),
    /// The producer library failed.
    #[error(transparent)]
    Producer(#[from] chatlog_producer::Error),
    /// Kafka failed.
    #[error("kafka: {what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// Redis failed.
    #[error("redis: {what}: {source}")]
    Redis {
        /// What was being done.
        what: String,
        /// The client's error.
        source: redis::RedisError,
    },
    /// Anything else, said in words.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// A Kafka error while doing `what`.
    pub fn kafka(what: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
        let what = what.into();
        move |source| Error::Kafka { what, source }
    }

    /// A Redis error while doing `what`.
    pub fn redis(what: impl Into<String>) -> impl FnOnce(redis::RedisError) -> Error {
        let what = what.into();
        move |source| Error::Redis { what, source }
    }

    /// The exit code of a subcommand that stopped on this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Usage(_) => 2,
            Error::Consumer(chatlog_consumer::Error::Config(_)) => 2,
            _ => 1,
        }
    }
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a subcommand that ran to its end came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing wrong (exit 0).
    Fine,
    /// The subcommand ran and found or left a problem (exit 1): a failed check, an inconsistent
    /// window not repaired, records that could not be replayed.
    Problems,
}

impl Outcome {
    /// `Problems` if `bad`, else `Fine`.
    pub fn problems_if(bad: bool) -> Outcome {
        if bad {
            Outcome::Problems
        } else {
            Outcome::Fine
        }
    }

    /// The exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Fine => 0,
            Outcome::Problems => 1,
        }
    }
}

/// Runs the subcommand of `cli`; returns the process's exit code (errors are logged).
pub async fn run(cli: cli::Cli) -> u8 {
    let result = match cli.settings.config() {
        Err(e) => Err(Error::Config(e.to_string())),
        Ok(config) => {
            let ctx = connect::Ctx::new(config);
            dispatch(&ctx, &cli.command).await
        }
    };
    match result {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

async fn dispatch(ctx: &connect::Ctx, command: &cli::Command) -> Result<Outcome> {
    use cli::Command;
    match command {
        Command::Doctor(args) => doctor::run(ctx, args).await,
        Command::Migrate(args) => migrate::run(ctx, args).await,
        Command::Inspect(args) => inspect::run(ctx, args).await,
        Command::Verify(args) => verify::run(ctx, args).await,
        Command::Dlq(args) => dlq::run(ctx, args).await,
        Command::Load(args) => load::run(ctx, args).await,
        Command::Config(args) => settings::run(ctx, args),
    }
}
