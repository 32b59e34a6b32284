//! `dlq` (being built).

use crate::cli::DlqArgs;
use crate::connect::Ctx;
use crate::{Error, Outcome, Result};

/// Runs `dlq`.
pub async fn run(_ctx: &Ctx, _args: &DlqArgs) -> Result<Outcome> {
    Err(Error::Other("dlq: not built yet".into()))
}
