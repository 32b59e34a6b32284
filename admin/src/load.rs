//! `load`: sends messages through the producer library exactly as Logic does (seq allocation,
//! Avro, idempotent produce keyed by session), so the fleet, its dashboard and its alerts can be
//! watched under traffic — the Docker quick start's `load` service runs it `--forever`.
//!
//! Sends are spread round-robin over `--sessions` sessions, `--concurrency` in flight, paced to
//! `--rate` per second (each send waits for its slot on a schedule, so a slow moment is caught up
//! rather than lost). The summary gives the acknowledged rate and the send latency (allocation +
//! Kafka acknowledgement) percentiles.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chatlog_producer::{ContentType, NewMessage, Producer, ProducerConfig, SessionType};
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cli::LoadArgs;
use crate::connect::Ctx;
use crate::{Error, Outcome, Result};

/// What one round of sends did.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Sends acknowledged by Kafka.
    pub acknowledged: u64,
    /// Sends that failed, by [`chatlog_producer::Error::reason`].
    pub failed: BTreeMap<&'static str, u64>,
    /// Seconds from the first send to the last answer.
    pub seconds: f64,
    /// Acknowledged sends per second.
    pub per_second: f64,
    /// Send latency percentiles, milliseconds (allocation + acknowledgement).
    pub latency_ms: Latencies,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, Serialize)]
pub struct Latencies {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// Runs `load`: one round of `--messages` sends, or rounds until SIGINT/SIGTERM with
/// `--forever`. `Problems` if any send failed.
pub async fn run(ctx: &Ctx, args: &LoadArgs) -> Result<Outcome> {
    if args.sessions == 0 || args.concurrency == 0 {
        return Err(Error::Usage(
            "--sessions and --concurrency must be at least 1".into(),
        ));
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        return Err(Error::Usage(format!(
            "--rate {} is not a rate (0 = as fast as possible)",
            args.rate
        )));
    }
    let metrics_shutdown = CancellationToken::new();
    if let Some(listen) = args.metrics_listen {
        let addr = serve_metrics(listen, metrics_shutdown.clone()).await?;
        eprintln!("load: producer metrics on http://{addr}/metrics");
    }
    let producer = Producer::new(
        producer_config(ctx),
        ctx.cql().await?,
        &ctx.config.cql.keyspace,
        ctx.redis().await?,
    )
    .await?;
    let prefix = args.session_prefix.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("load-{secs}")
    });
    // Cancelled on SIGINT/SIGTERM: the current round stops starting sends, waits for those in
    // flight, prints its summary, and the producer closes.
    let stop = CancellationToken::new();
    chatlog_consumer::cli::cancel_on_signal(stop.clone(), "load: finishing the round in flight");
    // Send latencies from 1 µs to 1 h, 3 significant digits.
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| Error::Other(format!("load: latency histogram: {e}")))?;
    let mut any_failed = false;
    let mut round = 0u64;
    loop {
        let summary = round_of_sends(&producer, args, &prefix, round, &stop, &mut latencies).await;
        any_failed |= !summary.failed.is_empty();
        print_summary(args, round, &summary);
        round += 1;
        if !args.forever || stop.is_cancelled() {
            break;
        }
    }
    producer.close(Duration::from_secs(10)).await?;
    metrics_shutdown.cancel();
    Ok(Outcome::problems_if(any_failed))
}

/// A Prometheus recorder for this process (every `_seconds` histogram with buckets from 0.5 ms to
/// 10 s, so it renders as a histogram, not a summary) served on `listen` with the consumer's
/// bounded HTTP endpoint.
async fn serve_metrics(
    listen: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> Result<std::net::SocketAddr> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    const BUCKETS: &[f64] = &[
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .and_then(|b| b.install_recorder())
        .map_err(|e| Error::Other(format!("load: metrics recorder: {e}")))?;
    let health = std::sync::Arc::new(chatlog_consumer::telemetry::Health::default());
    health.set_ready(true);
    Ok(chatlog_consumer::telemetry::serve_with_limits(
        listen,
        chatlog_consumer::telemetry::HttpLimits::default(),
        handle,
        health,
        shutdown,
    )
    .await?)
}

/// The producer settings: the consumer configuration's Kafka connection, topic, security, extra
/// properties and limits (so nothing is sent that the consumer would refuse).
fn producer_config(ctx: &Ctx) -> ProducerConfig {
    let k = &ctx.config.kafka;
    ProducerConfig {
        bootstrap_servers: k.bootstrap_servers.clone(),
        topic: k.topic.clone(),
        security: k.security.clone(),
        kafka: k.properties.clone(),
        limits: ctx.config.limits,
        ..ProducerConfig::default()
    }
}

async fn round_of_sends(
    producer: &Producer,
    args: &LoadArgs,
    prefix: &str,
    round: u64,
    stop: &CancellationToken,
    latencies: &mut Histogram<u64>,
) -> Summary {
    let bar = progress_bar(args);
    let started = Instant::now();
    let text = "x".repeat(args.size.max(1));
    latencies.reset();
    let mut summary = Summary::default();
    let mut sends = futures::stream::iter(0..args.messages)
        .take_while(|_| std::future::ready(!stop.is_cancelled()))
        .map(|i| {
            let producer = producer.clone();
            let session_id = format!("{prefix}-s{}", i % args.sessions);
            let message = NewMessage {
                client_msg_id: format!("{prefix}-r{round}-m{i}"),
                session_id,
                session_type: SessionType::Group,
                sender_id: format!("load-user-{}", i % 97),
                content_type: ContentType::Text,
                content: text.clone().into_bytes(),
                send_time_ms: now_ms(),
                ext: BTreeMap::new(),
            };
            let slot =
                (args.rate > 0.0).then(|| started + Duration::from_secs_f64(i as f64 / args.rate));
            async move {
                if let Some(slot) = slot {
                    tokio::time::sleep_until(slot.into()).await;
                }
                let t = Instant::now();
                let result = producer.send(message).await;
                (result, t.elapsed())
            }
        })
        .buffer_unordered(args.concurrency);
    while let Some((result, took)) = sends.next().await {
        match result {
            Ok(_) => {
                summary.acknowledged += 1;
                let _ = latencies.record(took.as_micros().max(1) as u64);
            }
            Err(e) => {
                *summary.failed.entry(e.reason()).or_default() += 1;
                bar.suspend(|| tracing::warn!(error = %e, "load: send failed"));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary.seconds = started.elapsed().as_secs_f64();
    summary.per_second = summary.acknowledged as f64 / summary.seconds.max(1e-9);
    let ms = |v: u64| v as f64 / 1000.0;
    if !latencies.is_empty() {
        summary.latency_ms = Latencies {
            p50: ms(latencies.value_at_quantile(0.5)),
            p99: ms(latencies.value_at_quantile(0.99)),
            max: ms(latencies.max()),
        };
    }
    summary
}

fn progress_bar(args: &LoadArgs) -> ProgressBar {
    let bar = ProgressBar::new(args.messages as u64);
    if args.quiet || args.json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else if let Ok(style) =
        ProgressStyle::with_template("sending  {bar:40} {pos}/{len} {per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

fn print_summary(args: &LoadArgs, round: u64, s: &Summary) {
    if args.json {
        if let Ok(line) = serde_json::to_string(s) {
            println!("{line}");
        }
        return;
    }
    let failed: u64 = s.failed.values().sum();
    println!(
        "load{}: {} acknowledged, {} failed{} in {:.1} s ({:.0} msg/s); send latency p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms",
        if args.forever {
            format!(" round {round}")
        } else {
            String::new()
        },
        s.acknowledged,
        failed,
        if failed > 0 {
            format!(" {:?}", s.failed)
        } else {
            String::new()
        },
        s.seconds,
        s.per_second,
        s.latency_ms.p50,
        s.latency_ms.p99,
        s.latency_ms.max
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
