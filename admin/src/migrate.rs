//! `migrate` (being built).

use crate::cli::MigrateArgs;
use crate::connect::Ctx;
use crate::{Error, Outcome, Result};

/// Runs `migrate`.
pub async fn run(_ctx: &Ctx, _args: &MigrateArgs) -> Result<Outcome> {
    Err(Error::Other("migrate: not built yet".into()))
}
