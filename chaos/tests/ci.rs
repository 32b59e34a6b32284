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
    for k in Kind::ALL
        .into_iter()
        .filter(|k| k.applies(false) && !matches!(k, Kind::ScaleUp | Kind::ScaleDown))
    {
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

#[test]
fn cluster_ci_size_injects_every_cluster_fault_kind_and_scales_1_3_2() {
    let opts = Options::preset(Size::ClusterCi);
    opts.validate().unwrap();
    chatlog_chaos::faults::check_plan(&opts).unwrap();
    assert!(opts.cluster);
    assert_eq!(opts.window_size, 200, "W as in production");
    assert_eq!(opts.consumers, 1, "the fleet starts with one consumer");
    assert_eq!(opts.consumers + opts.scale_ups * opts.scale_up_by, 3);
    assert_eq!(opts.final_consumers(), 2);
    let plan = schedule(&opts);
    for k in Kind::ALL {
        let wanted = k.applies(true) && k != Kind::Rebalance;
        assert_eq!(
            plan.iter().any(|(_, p)| *p == k),
            wanted,
            "the cluster-ci size and {}",
            k.name()
        );
    }
    let up = plan.iter().position(|(_, k)| *k == Kind::ScaleUp);
    let down = plan.iter().position(|(_, k)| *k == Kind::ScaleDown);
    assert!(up < down, "1 → 3 before 3 → 2: {plan:?}");
    let load = opts.load_duration().as_secs_f64();
    assert!(
        (120.0..=200.0).contains(&load),
        "load of {load:.0}s: CI time"
    );
}
