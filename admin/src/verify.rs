//! `verify` (being built).

use crate::cli::VerifyArgs;
use crate::connect::Ctx;
use crate::{Error, Outcome, Result};

/// Runs `verify`.
pub async fn run(_ctx: &Ctx, _args: &VerifyArgs) -> Result<Outcome> {
    Err(Error::Other("verify: not built yet".into()))
}
