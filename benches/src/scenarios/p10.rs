//! P10 (issue 17): the real `chatlog-consumer` draining mutations next to the same consumer
//! draining appends, in the same run, alternating. Each round, on sessions of its own: the
//! appends (`mutation_messages` new messages, 100 per session by default, so every one is still
//! in its Redis window) are pre-produced to a fresh topic and drained by a fresh consumer; then
//! one mutation of each (an edit with new content of the same size, a recall, a delete for
//! everyone, in turn; v3 records) is pre-produced to another fresh topic and drained by another.
//! Rates run from the first commit to the last, as P1's. After each mutation drain (untimed)
//! every row must hold its mutation's state and content, and a sample of windows its version.
//! Then, reported beside the figure, the producer library's mutation API next to its send rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chatlog_producer::{Actor, MemberRole, Producer};
use chatlog_schemas::ChatMessage;
use chatlog_store::messages::{
    DEFAULT_BUCKET_SIZE, MessageRow, bucket_of, row_to_message, select_range_asc_cql,
};
use chatlog_store::window::WindowConfig;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use crate::child::{self, ConsumerTarget};
use crate::kafka::OffsetMeter;
use crate::mutations::{Kind, MODERATOR, MUTATION_DELAY_US, Mix, MutationLoad};
use crate::report::{Figure, Goal};
use crate::{cpu, produce, series};

use super::measure::{rest, wait_committed};
use super::world::{Collect, Ctx};

/// Records in flight while pre-producing a load.
const PRODUCE_IN_FLIGHT: usize = 20_000;

/// Windows whose members are checked after each mutation drain.
const WINDOWS_CHECKED: usize = 16;

/// The topic of round `round`'s appends (`mutations == false`) or mutations.
fn topic_of(topic: &str, round: usize, mutations: bool) -> String {
    format!("{topic}_p10_{round}{}", if mutations { "m" } else { "a" })
}

/// The topic of the producer library's API measurement.
fn api_topic(topic: &str) -> String {
    format!("{topic}_p10_api")
}

/// Every topic P10 drains, in order.
fn drained(topic: &str, rounds: usize) -> impl Iterator<Item = String> {
    (0..rounds)
        .flat_map(move |r| [false, true].map(|m| topic_of(topic, r, m)))
        .chain([api_topic(topic)])
}

/// Every topic P10 creates (with the DLQs its consumers may create), for the clean-up.
pub(super) fn topics(topic: &str, rounds: usize) -> Vec<String> {
    drained(topic, rounds)
        .flat_map(|t| [format!("{t}.dlq"), t])
        .collect()
}

/// Every consumer group P10 uses, for the clean-up.
pub(super) fn groups(topic: &str, rounds: usize) -> Vec<String> {
    drained(topic, rounds).map(|t| format!("{t}_e2e")).collect()
}

/// One drain of a pre-produced topic by a fresh consumer.
struct Drained {
    rate: f64,
    details: serde_json::Value,
}

/// Runs P10.
pub(super) async fn run(cx: &Ctx<'_>, out: &mut Collect<'_>) -> Result<()> {
    let plan = cx.plan;
    let (n, s, rounds) = (
        plan.mutation_messages,
        plan.mutation_sessions,
        plan.mutation_rounds,
    );
    eprintln!("[bench] P10: {rounds} round(s) of {n} appends then {n} mutations over {s} sessions");
    let mut appends = Vec::new();
    let mut mutations = Vec::new();
    let mut per_round = Vec::new();
    for round in 0..rounds {
        // In the past by more than every send and mutation time of the load (future ones would
        // go to the DLQ as skewed).
        let first_us = chatlog::now_ms() * 1000 - MUTATION_DELAY_US - 2 * n as i64 - 1_000_000;
        let load = MutationLoad::new(
            &format!("{}_m{round}", cx.world.run),
            s,
            n,
            plan.content_bytes,
            first_us,
            plan.mutation_mix,
        );
        let a_topic = topic_of(cx.topic, round, false);
        chatlog::create_topic(&a_topic, plan.partitions).await;
        let a_bytes = produce::raw(
            &a_topic,
            load.all().map(|i| load.original(i)),
            PRODUCE_IN_FLIGHT,
        )
        .await?;
        let a = drain(cx, &a_topic, &format!("appends, round {round}"), out).await?;
        eprintln!("[bench]   round {round}: appends {:.0} msg/s", a.rate);
        // Produced only now: the originals are stored, as for a user's edit or recall.
        let m_topic = topic_of(cx.topic, round, true);
        chatlog::create_topic(&m_topic, plan.partitions).await;
        let m_bytes = produce::raw(
            &m_topic,
            load.all().map(|i| load.mutation(i)),
            PRODUCE_IN_FLIGHT,
        )
        .await?;
        let m = drain(cx, &m_topic, &format!("mutations, round {round}"), out).await?;
        eprintln!(
            "[bench]   round {round}: mutations {:.0} msg/s ({:.2}×)",
            m.rate,
            m.rate / a.rate.max(1e-9)
        );
        let rows = check_rows(cx, &load).await?;
        let windows = check_windows(cx, &load).await?;
        per_round.push(json!({
            "ratio": m.rate / a.rate.max(1e-9),
            "appends": a.details, "mutations": m.details,
            "append_record_bytes_mean": a_bytes.bytes as f64 / a_bytes.records.max(1) as f64,
            "mutation_record_bytes_mean": m_bytes.bytes as f64 / m_bytes.records.max(1) as f64,
            "rows_checked": rows, "window_members_checked": windows,
        }));
        appends.push(a.rate);
        mutations.push(m.rate);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (a, m) = (mean(&appends), mean(&mutations));
    out.figures.insert(
        "P10".to_owned(),
        Figure::ratio(
            match plan.mutation_mix {
                Mix::Thirds => {
                    "consumer drain of mutations (edit, recall, delete for everyone; v3)"
                }
                Mix::Edits => "consumer drain of mutations (edits only, same content size; v3)",
            },
            m,
            a,
            "the same consumer draining as many appends",
            "msg/s",
            Goal::AtLeast(0.8),
        ),
    );
    let producer_api = producer_api(cx, out).await?;
    out.details.insert(
        "P10".into(),
        json!({
            "messages": n, "sessions": s, "rounds": rounds,
            "mix": plan.mutation_mix,
            "mix_thirds": "message i: i % 3 = 0 edit (same content size, by the sender), 1 recall (by the sender), 2 delete for everyone (by a moderator)",
            "append_rates": appends, "mutation_rates": mutations,
            "per_round": per_round,
            "producer_api": producer_api,
        }),
    );
    Ok(())
}

/// Starts a consumer on the pre-produced `topic` (its own group, the shared keyspace), waits
/// until it has committed everything, stops it; the rate runs from its first commit to its last.
async fn drain(cx: &Ctx<'_>, topic: &str, label: &str, out: &mut Collect<'_>) -> Result<Drained> {
    let (plan, origin, procs) = (cx.plan, cx.origin, &cx.procs);
    let target = ConsumerTarget {
        topic: topic.to_owned(),
        group: format!("{topic}_e2e"),
        keyspace: cx.e2e_ks.to_owned(),
    };
    let config_path = plan.out_dir.join("consumer_p10.toml");
    std::fs::write(&config_path, child::config_toml(&target, &plan.consumer))?;
    let meter = OffsetMeter::new(&target.group, topic, plan.partitions)?;
    let pre = meter.end()?;
    let settled = rest(cx).await?;
    let sampler = {
        let m = OffsetMeter::new(&target.group, topic, plan.partitions)?;
        series::Sampler::start(origin, Duration::from_millis(50), move || {
            m.committed().ok().map(|v| v as f64)
        })
    };
    let mut consumer = child::spawn(
        &plan.consumer_bin,
        &config_path,
        &plan.out_dir.join("consumer_p10.log"),
    )
    .await?;
    let procs_c = procs.with("consumer", consumer.pid());
    let (before, machine_before) = (procs_c.snapshot(), cpu::MachineCpu::now());
    let ready_at = origin.elapsed().as_secs_f64();
    wait_committed(&meter, pre, Duration::from_secs(900), &mut consumer).await?;
    let drained_at = origin.elapsed().as_secs_f64();
    let used = before.until(&procs_c.snapshot(), &[]);
    let machine = machine_before.until(&cpu::MachineCpu::now());
    let metrics = consumer.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let status = consumer.stop(Duration::from_secs(30))?;
    let committed = sampler.finish();
    out.series
        .insert(format!("P10 {label} (committed)"), committed.clone());
    let (rate, method) = match series::steady_rate(&committed, 0.0, pre as f64) {
        Some((rate, _, _)) => (rate, "first to last commit"),
        None => (
            pre as f64 / (drained_at - ready_at).max(1e-3),
            "ready to drained (one batch)",
        ),
    };
    Ok(Drained {
        rate,
        details: json!({
            "records": pre, "rate": rate, "rate_method": method,
            "seconds_including_startup": drained_at - ready_at,
            "rest_before": settled,
            "cpu_us_per_msg": cpu::per_op_us(&used, pre as u64),
            "machine_cpu": machine,
            "consumer_stages": child::stage_summary("", &metrics),
            "consumer_mutations_total": counter_sum(&metrics, "chatlog_consumer_mutations_total"),
            "consumer_exit": status.to_string(),
        }),
    })
}

/// The sum over its label sets of counter `name` in a `/metrics` text.
fn counter_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every row of the round's sessions holds its mutation (state and content); returns the rows
/// checked.
async fn check_rows(cx: &Ctx<'_>, load: &MutationLoad) -> Result<usize> {
    let session = &cx.world.session;
    let select = session
        .prepare(select_range_asc_cql(cx.e2e_ks))
        .await
        .context("prepare the P10 row check")?;
    let max_seq = load.max_seq();
    let sessions = load.workload.sessions.len();
    let partitions: Vec<(usize, i64)> = (0..sessions)
        .flat_map(|j| (0..=bucket_of(max_seq, DEFAULT_BUCKET_SIZE)).map(move |b| (j, b)))
        .collect();
    let checked: Vec<usize> = futures::stream::iter(partitions)
        .map(|(j, bucket)| {
            let select = &select;
            async move {
                let sid = &load.workload.sessions[j];
                let rows = session
                    .execute_unpaged(select, (sid, bucket, 1_i64, max_seq))
                    .await?
                    .into_rows_result()?;
                let mut n = 0;
                for row in rows.rows::<MessageRow>()? {
                    let got: ChatMessage = row_to_message(row?);
                    let i = (got.seq - 1) as usize * sessions + j;
                    let want = load.mutation(i);
                    if (&got.state, &got.content) != (&want.state, &want.content) {
                        bail!(
                            "P10: seq {} of {sid} holds {:?} ({} content bytes), not its mutation {:?} ({} bytes)",
                            got.seq,
                            got.state,
                            got.content.len(),
                            want.state,
                            want.content.len()
                        );
                    }
                    n += 1;
                }
                Ok::<usize, anyhow::Error>(n)
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    let rows: usize = checked.iter().sum();
    if rows != load.messages {
        bail!("P10: {rows} rows stored for {} messages", load.messages);
    }
    Ok(rows)
}

/// The first [`WINDOWS_CHECKED`] sessions' windows hold one member per seq, each at its
/// mutation's version; returns the members checked.
async fn check_windows(cx: &Ctx<'_>, load: &MutationLoad) -> Result<usize> {
    let mut con = cx.world.redis.clone();
    let sessions = load.workload.sessions.len();
    let mut checked = 0;
    for (j, sid) in load
        .workload
        .sessions
        .iter()
        .enumerate()
        .take(WINDOWS_CHECKED)
    {
        let members: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
            .arg(chatlog_store::keys::window(sid))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut con)
            .await
            .context("read a P10 window")?;
        let expected = load.all().filter(|i| i % sessions == j).count();
        if members.len() != expected.min(WindowConfig::default().size) {
            bail!(
                "P10: the window of {sid} holds {} members, not {expected}",
                members.len()
            );
        }
        for (member, seq) in members {
            let i = (seq as usize - 1) * sessions + j;
            let version = chatlog_store::window::parse_member(&member).map(|(v, _)| v);
            if version != Some(load.mutation(i).version()) {
                bail!(
                    "P10: seq {seq} of {sid} is at version {version:?} in its window, not its mutation's"
                );
            }
            checked += 1;
        }
    }
    Ok(checked)
}

/// The producer library's own mutation API (edit, recall, delete for everyone, the same mix)
/// next to its send rate, on sessions of its own (not the figure: this is the library's path —
/// target read through history, policy, v3 encode, produce, ack — not the consumer's): a tenth
/// of `mutation_messages` sent through `Producer::send` (after one warm-up message per session,
/// as P3), stored by a consumer, then each mutated once through the API, from the same 16 tasks
/// and in-flight bound as the sends.
async fn producer_api(cx: &Ctx<'_>, out: &mut Collect<'_>) -> Result<serde_json::Value> {
    let (plan, origin) = (cx.plan, cx.origin);
    let n = (plan.mutation_messages / 10).max(1);
    let s = (n / 100).max(1);
    let load = MutationLoad::new(
        &format!("{}_mp", cx.world.run),
        s,
        n,
        plan.content_bytes,
        0,
        plan.mutation_mix,
    );
    let topic = api_topic(cx.topic);
    chatlog::create_topic(&topic, plan.partitions).await;
    eprintln!("[bench] P10 producer API: {n} sends, then {n} mutations, over {s} sessions");
    let producer = Producer::new(
        produce::producer_config(&topic),
        cx.world.session.clone(),
        cx.e2e_ks,
        cx.world.redis.clone(),
    )
    .await
    .context("P10 producer")?;
    let warm = produce::burst(
        &producer,
        &load.workload,
        0..s,
        plan.producer_concurrency,
        origin,
    )
    .await;
    let sent = produce::burst(
        &producer,
        &load.workload,
        s..s + n,
        plan.producer_concurrency,
        origin,
    )
    .await;
    if warm.failed + sent.failed > 0 {
        bail!("P10: {} sends failed", warm.failed + sent.failed);
    }
    let send_rate = n as f64 / sent.seconds;
    // The API reads its target through history: the messages must be stored first.
    drain(cx, &topic, "producer API's sends", out).await?;
    let started = Instant::now();
    let targets = Arc::new(sent.stored);
    let mix = load.mix;
    let tasks = 16.min(n);
    let per_task = (plan.producer_concurrency / tasks).max(1);
    let handles: Vec<_> = (0..tasks)
        .map(|k| {
            let (producer, targets) = (producer.clone(), targets.clone());
            tokio::spawn(async move {
                let mutate = |i: usize| {
                    let (producer, m) = (producer.clone(), &targets[i]);
                    async move {
                        let sender = Actor::Sender(m.sender_id.clone());
                        let r = match mix.kind(i) {
                            Kind::Edit => {
                                let content = m.content.iter().rev().copied().collect();
                                producer.edit(&m.session_id, m.seq, content, &sender).await
                            }
                            Kind::Recall => producer.recall(&m.session_id, m.seq, &sender).await,
                            Kind::Delete => {
                                let moderator = Actor::Member {
                                    user_id: MODERATOR.to_owned(),
                                    role: MemberRole::Admin,
                                };
                                producer
                                    .delete_for_everyone(&m.session_id, m.seq, &moderator)
                                    .await
                            }
                        };
                        r.map_err(|e| e.to_string())
                    }
                };
                let results: Vec<_> = futures::stream::iter((k..targets.len()).step_by(tasks))
                    .map(mutate)
                    .buffer_unordered(per_task)
                    .collect()
                    .await;
                results
            })
        })
        .collect();
    let mut failed = 0;
    let mut first_error = None;
    for h in handles {
        for r in h.await? {
            if let Err(e) = r {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let mutation_rate = n as f64 / started.elapsed().as_secs_f64();
    producer.close(Duration::from_secs(10)).await?;
    if let Some(e) = first_error {
        bail!("P10: {failed} of {n} producer API mutations failed, the first: {e}");
    }
    eprintln!(
        "[bench]   producer API: mutations {mutation_rate:.0}/s vs sends {send_rate:.0}/s ({:.2}×)",
        mutation_rate / send_rate
    );
    Ok(json!({
        "messages": n, "sessions": s, "concurrency": plan.producer_concurrency,
        "send_rate": send_rate, "mutation_rate": mutation_rate,
        "ratio": mutation_rate / send_rate,
    }))
}
