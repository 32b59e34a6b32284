//! The CI size's settings. The CI run itself is `dev/chaos.sh ci`, a step of its own in
//! `dev/test.sh` after `cargo test` (it prints the summary line in the CI log); running it here as
//! well would run the same minutes twice. What is checked here, without a stack: the CI size
//! injects every fault kind at least once, with the production window size.

use chatlog_chaos::faults::{Kind, schedule};
use chatlog_chaos::{Options, Size};

#[test]
fn ci_size_injects_every_fault_kind_with_the_production_window() {
    let opts = Options::preset(Size::Ci);
    assert_eq!(opts.window_size, 200, "W as in production");
    let plan = schedule(&opts);
    for k in Kind::ALL {
        assert!(
            plan.iter().any(|(_, p)| *p == k),
            "the ci size never injects {}",
            k.name()
        );
    }
    // The faults that hold the schedule (everything but the two that run in the background)
    // fit into the load, so none is injected into an idle pipeline.
    let load = opts.load_duration().as_secs_f64();
    assert!(
        (150.0..=240.0).contains(&load),
        "load of {load:.0}s: CI time"
    );
}
