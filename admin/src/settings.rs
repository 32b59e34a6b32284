//! `config check|print`: the effective configuration (defaults, file, environment, flags) as the
//! consumer would run with it.

use crate::cli::{ConfigAction, ConfigCmdArgs};
use crate::connect::Ctx;
use crate::{Outcome, Result};

/// Runs `config check` or `config print`. An invalid configuration never gets here: it stops
/// with exit 2 before (see [`crate::run`]).
pub fn run(ctx: &Ctx, args: &ConfigCmdArgs) -> Result<Outcome> {
    match args.action {
        ConfigAction::Check => {
            ctx.config.codec()?;
            println!("ok: the configuration is valid");
        }
        ConfigAction::Print => print!("{}", ctx.config.to_toml()?),
    }
    Ok(Outcome::Fine)
}
