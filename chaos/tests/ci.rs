//! The CI size of the chaos harness, end to end against the stack the `CHATLOG_*` variables name
//! (in CI: the main local stack; cargo runs test binaries one at a time, so no other test sees the
//! Kafka restart, the FLUSHALL or the Cassandra pause). 50,000 messages, 3 consumers, 5 kill -9,
//! a rebalance, a Kafka broker restart, a Redis restart with FLUSHALL, Cassandra paused 10 s,
//! 1 % poison; then nothing may be lost, duplicated or reordered and every window must be right.
//!
//! It fails (never skips) when a service is missing. About 2 minutes on a 2-core machine.

use chatlog_chaos::{Options, Size};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_size_loses_duplicates_and_reorders_nothing() {
    let bin = chatlog_chaos::options::debug_consumer_bin().expect("the consumer binary");
    let opts = Options {
        consumer_bin: bin,
        ..Options::preset(Size::Ci)
    };
    let messages = opts.messages;
    let report = chatlog_chaos::run(opts, false)
        .await
        .unwrap_or_else(|e| panic!("the chaos run could not be carried out: {e:#}"));
    println!("{}", report.summary);
    let details = serde_json::to_string_pretty(&report.findings).unwrap_or_default();
    let faults = serde_json::to_string_pretty(&report.faults).unwrap_or_default();
    let context = format!(
        "{}\nfindings: {details}\nfaults: {faults}\nrun folder: {}",
        report.summary,
        report.run.dir.display()
    );
    assert_eq!(
        report.acked, messages,
        "every message acknowledged\n{context}"
    );
    assert_eq!(report.lost, 0, "lost\n{context}");
    assert_eq!(report.duplicated, 0, "duplicated\n{context}");
    assert_eq!(report.reordered, 0, "reordered\n{context}");
    assert_eq!(report.window_mismatches, 0, "window mismatches\n{context}");
    assert!(
        report.faults_injected >= 9,
        "5 kills + rebalance + kafka + redis + cassandra\n{context}"
    );
    assert!(report.ok, "{context}");
}
