//! The checker catches what it claims to: a short run without faults whose stores and history are
//! then damaged in known ways (`--sabotage`, see `chatlog_chaos::sabotage`) must report exactly
//! those findings. A checker that says "0" to everything would pass the CI run too; this test is
//! what makes the CI run's zeros mean something. About 15 seconds.

use chatlog_chaos::{Options, Size};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sabotaged_stores_are_reported_exactly() {
    let bin = chatlog_chaos::options::debug_consumer_bin().expect("the consumer binary");
    let opts = Options {
        consumer_bin: bin,
        messages: 2000,
        sessions: 20,
        rate: 1000.0,
        kills: 0,
        rebalances: 0,
        kafka_restarts: 0,
        redis_restarts: 0,
        cassandra_pauses: 0,
        sabotage: true,
        ..Options::preset(Size::Ci)
    };
    let report = chatlog_chaos::run(opts, false)
        .await
        .unwrap_or_else(|e| panic!("the chaos run could not be carried out: {e:#}"));
    let examples = serde_json::to_string_pretty(&report.findings.examples).unwrap_or_default();
    assert_eq!(
        (
            report.lost,
            report.duplicated,
            report.reordered,
            report.window_mismatches
        ),
        chatlog_chaos::sabotage::EXPECTED,
        "{}\n{examples}",
        report.summary
    );
    assert_eq!(report.acked, 2000);
    assert!(!report.ok, "a damaged store must fail the run");
}
