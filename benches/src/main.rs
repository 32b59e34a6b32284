//! `chatlog-bench`: runs P1…P10 next to their references (see the `chatlog_bench` crate docs and
//! BENCHMARKS.md), prints the table and writes `<out-dir>/results.json`. `dev/bench.sh` builds it,
//! runs it and draws the plots.

use clap::Parser;

/// The harness stands for a Logic process, and allocates like one that is set up for it: with
/// jemalloc, the allocator `redis-benchmark` (the reference of P5, P6, P8 and P9) and Redis
/// itself run on. Under glibc's malloc the client CPU of a history read was 52–76 µs and
/// varied from run to run (`malloc_consolidate` on every 10 KB page); under jemalloc 40–42 µs
/// (BENCHMARKS.md, "The harness's allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = chatlog_bench::Options::parse();
    let plan = options.plan()?;
    eprintln!(
        "[bench] plan: {}",
        serde_json::to_string(&plan).unwrap_or_default()
    );
    let results = chatlog_bench::run(&plan).await?;
    let path = plan.out_dir.join("results.json");
    chatlog_bench::write_json(&results, &path)?;
    println!();
    println!(
        "chatlog benchmarks ({} CPUs, {}; load at start {}), {:.0} s:",
        results.machine.cpus,
        results.machine.cpu,
        results.machine.loadavg_at_start,
        results.seconds
    );
    println!();
    print!("{}", results.table());
    println!();
    println!("results: {}", path.display());
    Ok(())
}
