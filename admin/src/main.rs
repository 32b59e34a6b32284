//! `chatlog`: a thin CLI over the `chatlog_admin` library (see its docs for the subcommands).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = chatlog_admin::cli::Cli::parse();
    chatlog_consumer::cli::init_logging(cli.log_format, "warn");
    ExitCode::from(chatlog_admin::run(cli).await)
}
