//! P7: the consumer's peak RSS (VmHWM) at the max rate.

use serde_json::json;

use crate::report::{Figure, Goal};

use super::measure::mib;
use super::world::Collect;

/// P7's figure from the consumer's VmHWM (KiB) after the drain, after the live phase and at the end.
pub(super) fn figures(hwm_drain: u64, hwm_live: u64, hwm_end: u64, out: &mut Collect<'_>) {
    let figures = &mut *out.figures;
    let details = &mut *out.details;
    figures.insert(
        "P7".to_owned(),
        Figure::absolute(
            "consumer peak RSS (VmHWM) at max rate",
            mib(hwm_live),
            "MiB",
            Goal::AtMost(200.0),
        ),
    );
    details.insert(
        "P7".into(),
        json!({"vmhwm_after_drain_mib": mib(hwm_drain), "vmhwm_after_live_mib": mib(hwm_live),
               "vmhwm_at_end_mib": mib(hwm_end)}),
    );
}
