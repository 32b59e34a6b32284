//! The benchmark harness runs end to end at a minimal size against the local stack and writes a
//! results JSON holding every figure P1…P10 with a positive value. Speed is never asserted here
//! (ratios belong in BENCHMARKS.md, not in a timed test); this only keeps `dev/bench.sh` working.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use chatlog_bench::{Only, Options};

/// The `chatlog-consumer` binary of the profile this test was built with, built if missing
/// (`cargo test --workspace` builds it anyway).
fn consumer_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/smoke-<hash> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .to_path_buf();
    let bin = profile_dir.join("chatlog-consumer");
    if !bin.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args(["build", "-q", "-p", "chatlog-consumer"]);
        if release {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo build -p chatlog-consumer");
        assert!(status.success(), "cargo build -p chatlog-consumer failed");
    }
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_run_measures_every_figure() {
    let started = Instant::now();
    let out_dir = std::env::temp_dir().join(chatlog::unique("chatlog_bench_smoke"));
    let options = Options {
        quick: true,
        messages: Some(400),
        live_messages: Some(400),
        sessions: Some(12),
        producer_concurrency: Some(64),
        latency_seconds: Some(1.5),
        naive_seconds: Some(0.5),
        loop_seconds: Some(0.3),
        callers: Some(8),
        mutation_messages: Some(400),
        consumer_bin: consumer_bin(),
        out_dir: out_dir.clone(),
        only: Only::All,
        ..Options::default()
    };
    let plan = options.plan().expect("plan");
    let results = chatlog_bench::run(&plan).await.expect("benchmark run");
    let path = out_dir.join("results.json");
    chatlog_bench::write_json(&results, &path).expect("write results");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read results"))
            .expect("results are JSON");
    for id in [
        "P1", "P2", "P3", "P3′", "P4", "P5", "P6", "P7", "P8", "P8-cql", "P9", "P10",
    ] {
        let f = &json["figures"][id];
        let value = f["value"].as_f64().unwrap_or(0.0);
        let ours = f["ours"].as_f64().unwrap_or(0.0);
        assert!(
            value > 0.0 && ours > 0.0 && value.is_finite(),
            "{id} missing or not positive: {f}"
        );
        if f["reference"].is_number() {
            assert!(f["reference"].as_f64().unwrap_or(0.0) > 0.0, "{id}: {f}");
        }
    }
    assert!(
        json["series"].as_object().is_some_and(|s| !s.is_empty()),
        "no time series"
    );
    assert!(
        json["latency_cdf"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "no latency CDF"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
    eprintln!("smoke run took {:.1} s", started.elapsed().as_secs_f64());
}
