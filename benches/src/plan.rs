//! What a run measures and how big: the command line ([`Options`]) and the sizes it resolves to
//! ([`Plan`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::child::ConsumerSettings;
use crate::mutations::Mix;
use crate::workload::Workload;

/// Command-line options; unset sizes take the full or `--quick` defaults (see [`Plan`]).
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(about = "chatlog benchmarks: P1..P10 next to their references, in one run")]
pub struct Options {
    /// Smoke-run sizes (seconds, not minutes).
    #[arg(long)]
    pub quick: bool,
    /// Messages pre-produced for P3 and drained for P1/P2 (default 2 000 000: P1's drain and
    /// loader windows last ≥ 10 s each on 2 cores).
    #[arg(long)]
    pub messages: Option<usize>,
    /// Messages of the live run (P1 live, P7; default 400 000).
    #[arg(long)]
    pub live_messages: Option<usize>,
    /// Sessions the messages are spread over (round-robin).
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Partitions of the topics.
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Bytes of message content.
    #[arg(long)]
    pub content_bytes: Option<usize>,
    /// Concurrent `send`s of the producer library at full speed.
    #[arg(long)]
    pub producer_concurrency: Option<usize>,
    /// Sends in flight on P3′'s pre-assigned produce path (default: the library's default
    /// `max_in_flight`, 10 000; `--quick`: as `--producer-concurrency`).
    #[arg(long)]
    pub pre_concurrency: Option<usize>,
    /// The consumer's `batch.max_records` (CLI `--max-records`).
    #[arg(long)]
    pub max_records: Option<usize>,
    /// The consumer's `batch.linger`, ms (CLI `--linger`).
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// The consumer's `writer.concurrency` (CQL batches in flight).
    #[arg(long)]
    pub writer_concurrency: Option<usize>,
    /// The raw loader's batches in flight (default: found by a ramp over 8…256 before P1's
    /// first loader run; the fewest in flight within 5 % of the best clean rate).
    #[arg(long)]
    pub loader_concurrency: Option<usize>,
    /// Seconds of the paced latency run (P4).
    #[arg(long)]
    pub latency_seconds: Option<f64>,
    /// Seconds of the naive consumer (P2).
    #[arg(long)]
    pub naive_seconds: Option<f64>,
    /// Seconds of each read/allocation loop (P5, P6, P8, P9).
    #[arg(long)]
    pub loop_seconds: Option<f64>,
    /// Concurrent callers of P5, P6, P8 and P9 (and redis-benchmark clients).
    #[arg(long)]
    pub callers: Option<usize>,
    /// Alternating rounds of ours and the reference at the plan's callers in P5, P6, P8 and P9
    /// (the figure is the median of each side's rounds; an even number is raised by one).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Records of each P10 load (appends, and as many mutations of them).
    #[arg(long)]
    pub mutation_messages: Option<usize>,
    /// Sessions of each P10 round (default: 100 messages each, inside the Redis window).
    #[arg(long)]
    pub mutation_sessions: Option<usize>,
    /// P10 rounds (appends, then mutations, on fresh sessions each round).
    #[arg(long)]
    pub mutation_rounds: Option<usize>,
    /// P10's mutations: `thirds` (edit, recall, delete for everyone in turn: the figure) or
    /// `edits` (every one an edit of the same size: supplementary).
    #[arg(long, value_enum, default_value_t = Mix::Thirds)]
    pub mutation_mix: Mix,
    /// The `chatlog-consumer` binary.
    #[arg(long, default_value = "target/release/chatlog-consumer")]
    pub consumer_bin: PathBuf,
    /// Folder with the Kafka jars (default: `$CHATLOG_KAFKA_LIB`, else from `dev/stack.sh env`).
    #[arg(long)]
    pub kafka_lib: Option<PathBuf>,
    /// Where results.json, consumer.toml and the consumer's log go.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: PathBuf,
    /// Run only some scenarios (for profiling): `all`, `reads` (P5 and P6 alone, on windows the
    /// harness writes itself), `cache` (P8 and P9 alone), `produce` (P3 alone), `pipeline` (P3,
    /// P1, P2, P4 and P7) or `mutations` (P10 alone).
    #[arg(long, value_enum, default_value_t = Only::All)]
    pub only: Only,
}

/// Which scenarios run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Only {
    /// P1…P9.
    #[default]
    All,
    /// P5 and P6.
    Reads,
    /// P8 and P9 (the Smart DAL's cached repositories).
    Cache,
    /// P3 alone.
    Produce,
    /// Everything through Kafka: P3, P1, P2, P4 and P7 (the consumer's figures; for A/B runs of
    /// consumer changes without the read and cache scenarios).
    Pipeline,
    /// P10 alone (the consumer on mutations vs appends).
    Mutations,
}

/// The resolved sizes and settings of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Smoke sizes.
    pub quick: bool,
    /// Pre-produced messages (P1 drain, P2, P3), after one warm-up message per session.
    pub messages: usize,
    /// Live-run messages.
    pub live_messages: usize,
    /// Sessions.
    pub sessions: usize,
    /// Topic partitions.
    pub partitions: i32,
    /// Content bytes per message.
    pub content_bytes: usize,
    /// Encoded record bytes (Avro single-object).
    pub record_bytes: usize,
    /// Concurrent sends at full speed.
    pub producer_concurrency: usize,
    /// Sends in flight on P3′'s pre-assigned path.
    pub pre_concurrency: usize,
    /// Consumer settings.
    pub consumer: ConsumerSettings,
    /// Loader batches in flight (`None`: the ramp picks it).
    pub loader_concurrency: Option<usize>,
    /// Rows the loader groups at once (a slice).
    pub loader_slice: usize,
    /// P4 seconds.
    pub latency_seconds: f64,
    /// Sessions watched for P4.
    pub latency_probes: usize,
    /// P2 seconds.
    pub naive_seconds: f64,
    /// P5/P6/P8/P9 loop seconds.
    pub loop_seconds: f64,
    /// P5/P6/P8/P9 callers.
    pub callers: usize,
    /// P5/P6/P8/P9 alternating rounds at `callers`.
    pub rounds: usize,
    /// Records of each P10 load.
    pub mutation_messages: usize,
    /// Sessions of each P10 round.
    pub mutation_sessions: usize,
    /// P10 rounds.
    pub mutation_rounds: usize,
    /// P10's mutations.
    pub mutation_mix: Mix,
    /// The consumer binary.
    pub consumer_bin: PathBuf,
    /// Kafka jars.
    pub kafka_lib: PathBuf,
    /// Output folder.
    pub out_dir: PathBuf,
    /// Which scenarios run.
    pub only: Only,
}

impl Options {
    /// Resolves the defaults.
    pub fn plan(&self) -> Result<Plan> {
        let q = self.quick;
        let pick =
            |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if q { quick } else { full });
        let pickf =
            |v: Option<f64>, full: f64, quick: f64| v.unwrap_or(if q { quick } else { full });
        let sessions = pick(self.sessions, 200, 60).max(1);
        // 10× the 200 000 of the first runs: the drain (~120 k msg/s) and each loader pass
        // (~190 k rows/s) now last 10–20 s, not 1–2 s in which start-up effects weigh.
        let messages = pick(self.messages, 2_000_000, 3_000).max(1);
        let content_bytes = pick(self.content_bytes, 160, 160);
        let mutation_messages = pick(self.mutation_messages, 200_000, 2_000).max(1);
        let producer_concurrency = pick(self.producer_concurrency, 2048, 512);
        let kafka_lib = match &self.kafka_lib {
            Some(p) => p.clone(),
            None => kafka_lib()?,
        };
        Ok(Plan {
            quick: q,
            messages,
            live_messages: pick(self.live_messages, 400_000, 2_000).max(1),
            sessions,
            partitions: self.partitions.unwrap_or(8).max(1),
            content_bytes,
            record_bytes: Workload::new("x", 1, content_bytes).record_bytes(),
            producer_concurrency,
            // The Java reference keeps whatever its 32 MiB buffer holds in flight (~15 000 records
            // at 22 ms of latency); with acks=all and linger 5 ms every send waits ~10 ms, so
            // 2048 in flight would cap P3′ near 200 k msg/s whatever its CPU cost. The library
            // itself allows `max_in_flight` (10 000 by default).
            pre_concurrency: self.pre_concurrency.unwrap_or(if q {
                producer_concurrency
            } else {
                chatlog_producer::ProducerConfig::default().max_in_flight
            }),
            consumer: ConsumerSettings {
                max_records: pick(self.max_records, 20_000, 2000),
                linger_ms: self.linger_ms.unwrap_or(5),
                writer_concurrency: pick(self.writer_concurrency, 16, 16),
                writer_max_rows: 100,
            },
            loader_concurrency: self.loader_concurrency,
            loader_slice: (messages / 4).max(1000),
            latency_seconds: pickf(self.latency_seconds, 20.0, 3.0),
            latency_probes: 32.min(sessions),
            naive_seconds: pickf(self.naive_seconds, 10.0, 2.0),
            loop_seconds: pickf(self.loop_seconds, 5.0, 1.0),
            callers: pick(self.callers, 50, 50).min(sessions).max(1),
            // Odd, so that each side's median is one round's measurement.
            rounds: pick(self.rounds, 3, 1).max(1) | 1,
            mutation_messages,
            mutation_sessions: self
                .mutation_sessions
                .unwrap_or(mutation_messages / 100)
                .clamp(1, mutation_messages),
            mutation_rounds: pick(self.mutation_rounds, 2, 1).max(1),
            mutation_mix: self.mutation_mix,
            consumer_bin: self.consumer_bin.clone(),
            kafka_lib,
            out_dir: self.out_dir.clone(),
            only: self.only,
        })
    }
}

/// The Kafka jar folder: `$CHATLOG_KAFKA_LIB`, else what `dev/stack.sh env` prints.
fn kafka_lib() -> Result<PathBuf> {
    if let Some(v) = std::env::var_os("CHATLOG_KAFKA_LIB").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(v));
    }
    let stack = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dev/stack.sh");
    let out = std::process::Command::new(&stack)
        .arg("env")
        .output()
        .with_context(|| format!("run {stack:?} env"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("export CHATLOG_KAFKA_LIB="))
        .map(PathBuf::from)
        .context("CHATLOG_KAFKA_LIB not set and not printed by dev/stack.sh env")
}
