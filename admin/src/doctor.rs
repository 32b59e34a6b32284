//! `doctor` (being built).

use crate::cli::DoctorArgs;
use crate::connect::Ctx;
use crate::{Error, Outcome, Result};

/// Runs `doctor`.
pub async fn run(_ctx: &Ctx, _args: &DoctorArgs) -> Result<Outcome> {
    Err(Error::Other("doctor: not built yet".into()))
}
