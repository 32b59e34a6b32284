//! `inspect` (being built).

use crate::cli::InspectArgs;
use crate::connect::Ctx;
use crate::{Error, Outcome, Result};

/// Runs `inspect`.
pub async fn run(_ctx: &Ctx, _args: &InspectArgs) -> Result<Outcome> {
    Err(Error::Other("inspect: not built yet".into()))
}
