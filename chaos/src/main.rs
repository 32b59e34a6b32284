//! `chatlog-chaos`: one chaos run against the stack the `CHATLOG_*` variables name (see
//! `dev/chaos.sh` and docs/RELIABILITY.md). Prints the summary line, writes the figures as JSON
//! with `--json`, and exits 1 if anything was lost, duplicated, reordered, overwritten or falsely
//! reported missing, a message's final state is not its last acknowledged mutation, or a window
//! was wrong — after the run or after the replay from offset 0 (2 if the run itself could not be
//! carried out).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chatlog_chaos::{Options, Size};
use clap::Parser;

/// chatlog chaos harness: load + faults through the whole pipeline, then a history check.
///
/// DANGER: it restarts Kafka and Redis (FLUSHALL, rollback to a snapshot, failover to a replica on
/// CHATLOG_REDIS_REPLICA_PORT) and pauses Cassandra of the stack that CHATLOG_STACK_DIR /
/// CHATLOG_*_PORT select; the cluster sizes kill -9 brokers and Redis masters of the cluster
/// stack (CHATLOG_CLUSTER_*_PORT). Never point it at a stack others are using.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, max_term_width = 100)]
struct Cli {
    /// The preset: ci (108k messages, every fault kind, mutations, the replay: ~4 minutes), full
    /// (1M messages), cluster-ci (the cluster stack of dev/cluster.sh: 24k messages, the fleet
    /// scaled 1 → 3 → 2, a partition leader broker and a Redis master killed, the replay: ≤ 6
    /// minutes) or cluster (the same with 300k messages).
    #[arg(long, default_value = "ci")]
    size: Size,
    /// Messages to send.
    #[arg(long)]
    messages: Option<usize>,
    /// Sessions they are spread over.
    #[arg(long)]
    sessions: Option<usize>,
    /// Sends in flight at once.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Target send rate, messages/s (the faults are spread over messages / rate seconds).
    #[arg(long)]
    rate: Option<f64>,
    /// Consumer instances.
    #[arg(long)]
    consumers: Option<usize>,
    /// kill -9 of random consumers.
    #[arg(long)]
    kills: Option<usize>,
    /// Rebalances (a consumer joins, later one leaves).
    #[arg(long)]
    rebalances: Option<usize>,
    /// Kafka broker restarts.
    #[arg(long)]
    kafka_restarts: Option<usize>,
    /// Scale-ups of the fleet (each adds --scale-up-by consumers).
    #[arg(long)]
    scale_ups: Option<usize>,
    /// Consumers each scale-up adds.
    #[arg(long)]
    scale_up_by: Option<usize>,
    /// Scale-downs (a consumer leaves for good with SIGTERM), after the scale-ups.
    #[arg(long)]
    scale_downs: Option<usize>,
    /// Cluster: kill -9 of a partition leader broker (brought back).
    #[arg(long)]
    broker_kills: Option<usize>,
    /// Cluster: seconds a killed broker stays down once its partitions moved.
    #[arg(long)]
    broker_down_secs: Option<u64>,
    /// Cluster: kill -9 of a Redis master (its replica takes over; brought back as a replica).
    #[arg(long)]
    redis_master_kills: Option<usize>,
    /// Redis restarts with FLUSHALL.
    #[arg(long)]
    redis_restarts: Option<usize>,
    /// Cassandra SIGSTOP pauses.
    #[arg(long)]
    cassandra_pauses: Option<usize>,
    /// Seconds Cassandra stays stopped.
    #[arg(long)]
    cassandra_pause_secs: Option<u64>,
    /// Consumer pauses: SIGSTOP to a random consumer, SIGCONT later (a zombie).
    #[arg(long)]
    consumer_pauses: Option<usize>,
    /// Seconds a paused consumer stays stopped (default 15, above the 10 s session timeout); also
    /// the pause of a poll zombie.
    #[arg(long)]
    consumer_pause_secs: Option<u64>,
    /// No FLUSHALL while a consumer is paused (by default Redis is flushed 2 s before it resumes).
    #[arg(long)]
    no_pause_flush: bool,
    /// Zombie writers (composed fault: a consumer frozen in its CQL stage past its session timeout
    /// while Redis loses its data, then resumed).
    #[arg(long)]
    zombies: Option<usize>,
    /// Poll zombies: a consumer frozen inside poll past its session timeout, FLUSHALL meanwhile.
    #[arg(long)]
    poll_zombies: Option<usize>,
    /// Rollbacks: Redis restarted from a snapshot taken --rollback-after-secs earlier.
    #[arg(long)]
    rollbacks: Option<usize>,
    /// How far back (seconds) a rollback takes Redis.
    #[arg(long)]
    rollback_after_secs: Option<u64>,
    /// Failovers to a lagging replica (replica on CHATLOG_REDIS_REPLICA_PORT).
    #[arg(long)]
    failovers: Option<usize>,
    /// Seconds of writes the replica misses before it is promoted.
    #[arg(long)]
    failover_lag_secs: Option<u64>,
    /// Periods during which two producer instances send to the same sessions.
    #[arg(long)]
    two_producers: Option<usize>,
    /// Seconds each two-producer period lasts.
    #[arg(long)]
    two_producers_secs: Option<u64>,
    /// Late sends: produce fails after allocation, retried later.
    #[arg(long)]
    late_sends: Option<usize>,
    /// `wrongtype` faults: a session whose window key is a Redis string (its messages go to the
    /// DLQ as `write_failed`).
    #[arg(long)]
    wrongtypes: Option<usize>,
    /// Seconds a late send waits before its retry.
    #[arg(long)]
    late_send_hold_secs: Option<u64>,
    /// Reads per second of the online history oracle (0: only the final sweep).
    #[arg(long)]
    oracle_rate: Option<f64>,
    /// Settle horizon (seconds) the oracle holds history to.
    #[arg(long)]
    settle_horizon_secs: Option<u64>,
    /// Share of poison records (0.01 = 1 %).
    #[arg(long)]
    poison_ratio: Option<f64>,
    /// Share of acknowledged messages resent with the same client_msg_id.
    #[arg(long)]
    resend_ratio: Option<f64>,
    /// Share of acknowledged messages that get 1–3 mutations (edit, recall, delete for everyone).
    #[arg(long)]
    mutation_ratio: Option<f64>,
    /// No replay of the topic from offset 0 after the check (and no second check).
    #[arg(long)]
    no_replay: bool,
    /// Window size W of the consumers.
    #[arg(long)]
    window_size: Option<usize>,
    /// Partitions of the run's topic.
    #[arg(long)]
    partitions: Option<i32>,
    /// Seconds to wait for the pipeline to drain.
    #[arg(long)]
    drain_timeout_secs: Option<u64>,
    /// Seed of every random choice (default: the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// The chatlog-consumer binary (default target/debug for ci, target/release for full).
    #[arg(long, env = "CHATLOG_CONSUMER_BIN")]
    consumer_bin: Option<PathBuf>,
    /// The workspace root (where dev/stack.sh is).
    #[arg(long)]
    workspace: Option<PathBuf>,
    /// Parent folder of the run folder (events.log, consumer logs, report.json).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Also write the report here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Do not print the event log (it is still written to the run folder).
    #[arg(long)]
    quiet: bool,
    /// Checker self-test: corrupt the stores and the history in known ways before checking (the
    /// run must report exactly 2 lost, 2 duplicated, 1 reordered, 1 window mismatch, 1
    /// overwritten, 1 false missing).
    #[arg(long)]
    sabotage: bool,
}

impl Cli {
    fn options(&self) -> Options {
        let mut o = Options::preset(self.size);
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { o.$f = v; } )* };
        }
        set!(
            messages,
            sessions,
            concurrency,
            rate,
            consumers,
            kills,
            rebalances,
            kafka_restarts,
            scale_ups,
            scale_up_by,
            scale_downs,
            broker_kills,
            redis_master_kills,
            redis_restarts,
            cassandra_pauses,
            consumer_pauses,
            zombies,
            poll_zombies,
            rollbacks,
            failovers,
            two_producers,
            late_sends,
            wrongtypes,
            oracle_rate,
            poison_ratio,
            resend_ratio,
            mutation_ratio,
            window_size,
            partitions,
            seed,
            consumer_bin,
            workspace,
            run_dir
        );
        if let Some(s) = self.cassandra_pause_secs {
            o.cassandra_pause = Duration::from_secs(s);
        }
        o.sabotage = self.sabotage;
        o.replay &= !self.no_replay;
        o.pause_flush &= !self.no_pause_flush;
        if let Some(s) = self.consumer_pause_secs {
            o.consumer_pause = Duration::from_secs(s);
        }
        let secs = |v: Option<u64>, field: &mut Duration| {
            if let Some(s) = v {
                *field = Duration::from_secs(s);
            }
        };
        secs(self.rollback_after_secs, &mut o.rollback_after);
        secs(self.failover_lag_secs, &mut o.failover_lag);
        secs(self.two_producers_secs, &mut o.two_producers_for);
        secs(self.late_send_hold_secs, &mut o.late_send_hold);
        secs(self.broker_down_secs, &mut o.broker_down);
        secs(self.settle_horizon_secs, &mut o.settle_horizon);
        if let Some(s) = self.drain_timeout_secs {
            o.drain_timeout = Duration::from_secs(s);
        }
        o
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let report = match chatlog_chaos::run(cli.options(), cli.quiet).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: run failed: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &cli.json {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(anyhow::Error::from)
            .and_then(|b| std::fs::write(path, b).map_err(anyhow::Error::from));
        if let Err(e) = written {
            eprintln!("chaos: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    for (what, examples) in &report.findings.examples {
        eprintln!("chaos: {what}:");
        for e in examples {
            eprintln!("  {e}");
        }
    }
    if let Some(replay) = &report.replay {
        for (what, examples) in &replay.findings.examples {
            eprintln!("chaos: after the replay: {what}:");
            for e in examples {
                eprintln!("  {e}");
            }
        }
    }
    eprintln!(
        "chaos: run folder {} (events.log, consumer-*.log, report.json); {:.0}s",
        report.run.dir.display(),
        report.duration_secs
    );
    println!("{}", report.summary);
    if let Some(replay) = &report.replay {
        println!("{}", replay.summary);
    }
    if let Some(line) = report.not_returned_line() {
        println!("{line}");
    }
    if let Some(note) = report.note() {
        println!("{note}");
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        if report.counts.unacked > 0 {
            println!(
                "chaos: {} messages were never acknowledged",
                report.counts.unacked
            );
        }
        if report.faults_injected != report.faults_planned {
            println!(
                "chaos: {} of {} planned faults injected",
                report.faults_injected, report.faults_planned
            );
        }
        for k in chatlog_chaos::faults::Kind::ALL {
            let (planned, done) = (
                k.planned(&report.options),
                report.faults_by_kind.get(k.name()).copied().unwrap_or(0),
            );
            if planned != done {
                println!(
                    "chaos: {} of {planned} planned {} faults injected",
                    done,
                    k.name()
                );
            }
        }
        ExitCode::from(1)
    }
}
