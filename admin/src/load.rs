//! `load` (being built).

use crate::cli::LoadArgs;
use crate::connect::Ctx;
use crate::{Error, Outcome, Result};

/// Runs `load`.
pub async fn run(_ctx: &Ctx, _args: &LoadArgs) -> Result<Outcome> {
    Err(Error::Other("load: not built yet".into()))
}
