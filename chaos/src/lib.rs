//! chatlog's chaos harness: the whole pipeline (producer library → Kafka → a fleet of real
//! `chatlog-consumer` processes → CQL + Redis windows + DLQ) under faults, checked against the
//! recorded history of acknowledged sends.
//!
//! One run ([`run`]):
//! 1. **Setup**: a fresh keyspace (migrations applied), a fresh topic (8 partitions) and DLQ topic,
//!    a fresh consumer group; the stack is the one the `CHATLOG_*` variables name
//!    ([`stack::Stack::from_env`] refuses a mismatch between the addresses and the stack
//!    `dev/stack.sh` would restart).
//! 2. **Fleet**: `consumers` real `chatlog-consumer` processes supervised by the harness
//!    ([`fleet`]): stable ordinals and transactional ids, restarted when they exit by themselves.
//!    Every Redis client of the run (producers, oracle, checker, consumers) goes through a
//!    switchable TCP proxy ([`proxy`]) that a failover moves to the promoted replica.
//! 3. **Load** ([`load`]): messages through `chatlog_producer::Producer` over many sessions,
//!    retried with the same client_msg_id on failure, some resent after their ack (half of those
//!    with another content: must be refused); ~1 % poison records produced raw, every 50th a
//!    2 MiB lz4-compressed one. Every ack and every poison record is recorded.
//! 4. **Faults** ([`faults`]) spread over the load: kill -9 of consumers, rebalances, a Kafka
//!    broker restart, a Redis restart + FLUSHALL, a Redis rollback to an earlier snapshot, a
//!    failover to a lagging replica, Cassandra paused with SIGSTOP, consumers frozen (in a CQL
//!    stage, inside poll, anywhere), two producers on the same sessions, late sends, a session
//!    whose window keys have the wrong Redis type.
//! 5. **Oracle** ([`oracle`]): history read during the run, and every session once after it.
//! 6. **Drain** ([`drain`]): the group's committed offsets reach the end of every partition; the
//!    fleet stops; the CQL row count is stable.
//! 7. **Check** ([`check`]): lost, duplicated, reordered, window mismatches, overwritten, false
//!    missing (definitions there and in docs/RELIABILITY.md), summed up in one line:
//!    `chaos: N acked, 0 lost, 0 duplicated, 0 reordered, 0 window mismatches, 0 overwritten,
//!    0 false missing, K faults injected (kill=5, rebalance=1, …)`.
#![forbid(unsafe_code)]

pub mod check;
pub mod drain;
pub mod events;
pub mod faults;
pub mod fleet;
pub mod load;
pub mod options;
pub mod oracle;
pub mod poison;
pub mod proxy;
pub mod record;
pub mod sabotage;
pub mod stack;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

pub use check::Findings;
pub use options::{Options, Size};

/// The figures of a run, as printed and as written to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The one summary line.
    pub summary: String,
    /// True when lost, duplicated, reordered, window mismatches, overwritten and false missing are
    /// 0, every message was acknowledged and every planned fault of every kind was injected.
    pub ok: bool,
    /// Acknowledged messages (distinct).
    pub acked: usize,
    /// See [`check`].
    pub lost: usize,
    /// See [`check`].
    pub duplicated: usize,
    /// See [`check`].
    pub reordered: usize,
    /// See [`check`].
    pub window_mismatches: usize,
    /// See [`check`] and [`oracle`].
    pub overwritten: usize,
    /// See [`oracle`].
    pub false_missing: usize,
    /// Faults injected.
    pub faults_injected: usize,
    /// Faults injected per kind ([`faults::Kind::name`]).
    pub faults_by_kind: std::collections::BTreeMap<String, usize>,
    /// Faults planned.
    pub faults_planned: usize,
    /// Messages never acknowledged.
    pub unacked: usize,
    /// Wall time of the whole run.
    pub duration_secs: f64,
    /// Wall time per phase.
    pub phases: Phases,
    /// The run's names.
    pub run: RunInfo,
    /// The settings.
    pub options: Options,
    /// Every fault with its time.
    pub faults: Vec<events::Fault>,
    /// Consumer starts, kills and exits.
    pub fleet: fleet::FleetStats,
    /// Send errors by reason (each was retried).
    pub send_errors: std::collections::BTreeMap<String, usize>,
    /// A few send error texts.
    pub send_error_examples: Vec<String>,
    /// Everything the checker counted, with examples.
    pub findings: Findings,
}

/// Names of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// Run id (prefix of sessions, topics, keyspace, transactional ids).
    pub id: String,
    /// Keyspace.
    pub keyspace: String,
    /// Input topic.
    pub topic: String,
    /// DLQ topic.
    pub dlq: String,
    /// Consumer group.
    pub group: String,
    /// Folder with `events.log` and the consumer logs.
    pub dir: PathBuf,
}

/// Seconds per phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    /// Keyspace, topics, fleet start.
    pub setup: f64,
    /// Load (faults run meanwhile).
    pub load: f64,
    /// From the end of the load to the end of the last fault.
    pub faults_tail: f64,
    /// Until the group committed everything, the fleet stopped and CQL was stable.
    pub drain: f64,
    /// The checker.
    pub check: f64,
}

impl Report {
    /// The line printed when the final sweep did not return acknowledged messages.
    pub fn not_returned_line(&self) -> Option<String> {
        let n = self.findings.not_returned;
        (n > 0).then(|| {
            format!(
                "chaos: {n} acknowledged messages not returned by the final history sweep \
                 (history's view of their sessions ends below them; see findings.examples.not_returned)"
            )
        })
    }

    /// The extra line printed when the documented limit of the seq allocator showed up.
    pub fn note(&self) -> Option<String> {
        let n = self.findings.details.known_limit_duplicates;
        (n > 0).then(|| {
            format!(
                "chaos: note: {n} messages stored twice because Redis lost their idempotency \
                 records between two sends (documented limit of the seq allocator; not counted above)"
            )
        })
    }
}

/// Runs one chaos run with `opts`. `quiet` keeps the event log off stderr (it is always written to
/// `<run dir>/events.log`).
pub async fn run(mut opts: Options, quiet: bool) -> anyhow::Result<Report> {
    opts.validate()?;
    let started = Instant::now();
    let id = chatlog::unique("chaos");
    let dir = opts.run_dir.join(&id);
    opts.run_dir = dir.clone();
    let events = events::Events::new(&dir.join("events.log"), quiet)?;
    let run_info = RunInfo {
        keyspace: id.clone(),
        topic: format!("{id}_in"),
        dlq: format!("{id}_dlq"),
        group: format!("{id}_group"),
        dir: dir.clone(),
        id: id.clone(),
    };
    events.log(format!(
        "run {id}: {:?} size, {} messages over {} sessions at {}/s, {} consumers, seed {}; logs in {}",
        opts.size,
        opts.messages,
        opts.sessions,
        opts.rate,
        opts.consumers,
        opts.seed,
        dir.display()
    ));

    anyhow::ensure!(
        opts.consumer_bin.is_file(),
        "the consumer binary {} does not exist: build it with `cargo build -p chatlog-consumer{}` \
         (or pass --consumer-bin / set CHATLOG_CONSUMER_BIN)",
        opts.consumer_bin.display(),
        if opts
            .consumer_bin
            .components()
            .any(|c| c.as_os_str() == "release")
        {
            " --release"
        } else {
            ""
        }
    );
    let mut stack = stack::Stack::from_env(&opts.workspace)?;
    stack.preflight().await.context("the stack is not usable")?;
    // Every Redis client of the run goes through the proxy, which a failover switches.
    let proxy = proxy::Proxy::start(stack.proxy_port, stack.redis_addr()?)
        .await
        .with_context(|| {
            format!(
                "start the Redis proxy on port {} (CHATLOG_CHAOS_REDIS_PROXY_PORT)",
                stack.proxy_port
            )
        })?;
    stack.client_redis_url = Some(proxy.redis_url());
    events.log(format!(
        "stack: kafka {}, cql {}, redis {} (clients through the proxy {}; failover replica port \
         {}), state {}",
        stack.kafka,
        stack.cql_nodes.join(","),
        stack.redis_url,
        proxy.local_addr(),
        stack.replica_port,
        stack.dir.display()
    ));

    // Setup.
    let cql_config = chatlog_store::CqlConfig {
        nodes: stack.cql_nodes.clone(),
        keyspace: run_info.keyspace.clone(),
        username: chatlog::cql_username(),
        password: chatlog::cql_password(),
        request_timeout: Duration::from_secs(12),
        ..Default::default()
    };
    let session = Arc::new(cql_config.connect().await?);
    chatlog_store::migrate::apply(&session, &cql_config)
        .await
        .context("migrations")?;
    stack.create_topic(&run_info.topic, opts.partitions).await?;
    stack.create_topic(&run_info.dlq, 1).await?;
    let config_file = dir.join("consumer.toml");
    std::fs::write(
        &config_file,
        "# Written by chatlog-chaos: poison above 8 KiB is `oversize`.\n[batch]\nmax_record_bytes = 8192\n",
    )?;
    let fleet = fleet::Fleet::start(
        fleet::Spec {
            bin: opts.consumer_bin.clone(),
            topic: run_info.topic.clone(),
            dlq: run_info.dlq.clone(),
            group: run_info.group.clone(),
            keyspace: run_info.keyspace.clone(),
            window_size: opts.window_size,
            txn_prefix: id.clone(),
            config_file,
            log_dir: dir.clone(),
        },
        stack.clone(),
        events.clone(),
        opts.consumers,
    )?;
    let _guard = fleet::FleetGuard(fleet.clone());
    wait_consuming(&fleet, opts.consumers, Duration::from_secs(90)).await?;
    let redis = stack.redis().await?;
    // The consumers take records up to 8 KiB (so the 16 KiB poison is `oversize`): producers
    // whose largest message could be larger refuse to start (the consumer_limits check).
    let producer_config = chatlog_producer::ProducerConfig {
        bootstrap_servers: stack.kafka.clone(),
        topic: run_info.topic.clone(),
        limits: chatlog_schemas::Limits {
            max_content_bytes: 4096,
            max_ext_entries: 8,
            max_ext_bytes: 1024,
            ..Default::default()
        },
        ..Default::default()
    };
    let producers = load::Producers {
        a: chatlog_producer::Producer::new(
            producer_config.clone(),
            session.clone(),
            &run_info.keyspace,
            redis.clone(),
        )
        .await?,
        // Logic instance B: nothing shared with A but the services.
        b: chatlog_producer::Producer::new(
            producer_config.clone(),
            Arc::new(cql_config.connect().await?),
            &run_info.keyspace,
            stack.redis().await?,
        )
        .await?,
        // Its Kafka is a closed port: a send allocates, then fails to produce.
        broken: chatlog_producer::Producer::new(
            chatlog_producer::ProducerConfig {
                bootstrap_servers: "127.0.0.1:1".into(),
                message_timeout: Duration::from_secs(1),
                ..producer_config
            },
            session.clone(),
            &run_info.keyspace,
            stack.redis().await?,
        )
        .await?,
    };
    let mut phases = Phases {
        setup: started.elapsed().as_secs_f64(),
        ..Phases::default()
    };

    // Load, poison, faults and the oracle at once.
    let plan = load::Plan::new(&id, opts.messages, opts.sessions);
    let load = load::Load::new(
        plan.clone(),
        producers,
        events.clone(),
        opts.concurrency,
        opts.rate,
        opts.resend_ratio,
        opts.seed,
    );
    let history = chatlog_store::history::History::new(
        session.clone(),
        &run_info.keyspace,
        stack.redis().await?,
        chatlog_schemas::Codec::default(),
        check::history_config(opts.window_size, opts.settle_horizon),
    )
    .await?;
    let mut oracle = oracle::Oracle::start(
        history.clone(),
        load.clone(),
        events.clone(),
        opts.oracle_rate,
        opts.window_size,
        opts.seed,
    );
    let schedule = faults::schedule(&opts);
    events.log(format!(
        "load starts: ~{:.0}s; faults at {}",
        opts.load_duration().as_secs_f64(),
        schedule
            .iter()
            .map(|(t, k)| format!("{t:.0}s {}", k.name()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let load_started = Instant::now();
    let mut faults_task = tokio::spawn(faults::inject(
        schedule,
        faults::Ctx {
            opts: opts.clone(),
            stack: stack.clone(),
            fleet: fleet.clone(),
            events: events.clone(),
            load: load.clone(),
            proxy: proxy.clone(),
            topic: run_info.topic.clone(),
            group: run_info.group.clone(),
        },
    ));
    let poison_task = {
        let (kafka, topic, id, load) = (
            stack.kafka.clone(),
            run_info.topic.clone(),
            id.clone(),
            load.clone(),
        );
        let (count, over, seed) = (opts.poison_count(), opts.load_duration(), opts.seed);
        tokio::spawn(
            async move { poison::poison(&kafka, &topic, &id, count, over, seed, load).await },
        )
    };
    // A fault that fails ends the run at once: the stack may be left unusable (e.g. the clients'
    // Redis gone), and the load would otherwise retry for minutes.
    let faults_done = {
        let load_run = load.run();
        tokio::pin!(load_run);
        tokio::select! {
            () = &mut load_run => None,
            done = &mut faults_task => {
                let by_kind = done.context("fault task")?.context("a fault failed")?;
                load_run.await;
                Some(by_kind)
            }
        }
    };
    load.close(Duration::from_secs(60)).await;
    phases.load = load_started.elapsed().as_secs_f64();
    let mut result = load.result().await;
    let acked: usize = result.acks.iter().flatten().flatten().count();
    events.log(format!(
        "load done: {acked} of {} acknowledged in {:.1}s ({} failed attempts, retried)",
        opts.messages,
        phases.load,
        result.errors.values().sum::<usize>()
    ));
    let (poison, poison_retries) = poison_task.await.context("poison task")??;
    result.poison = poison;
    result.poison_retries = poison_retries;
    events.log(format!("poison done: {} records", result.poison.len()));
    let tail = Instant::now();
    let by_kind = match faults_done {
        Some(by_kind) => by_kind,
        None => faults_task
            .await
            .context("fault task")?
            .context("a fault failed")?,
    };
    let injected: usize = by_kind.values().sum();
    result.poison.extend(load.poisoned());
    phases.faults_tail = tail.elapsed().as_secs_f64();
    events.log(format!("faults done: {injected} injected"));

    // Drain.
    let drain_started = Instant::now();
    drain::wait(
        &stack.kafka,
        &run_info.topic,
        &run_info.group,
        opts.partitions,
        opts.drain_timeout,
        &events,
    )
    .await?;
    events.log("drained: the group committed the end of every partition");
    oracle.stop().await;
    let fleet_stats = fleet.stop(Duration::from_secs(45)).await;
    let cql = check::Cql::new(session.clone(), &run_info.keyspace).await?;
    let session_ids: Vec<String> = (0..plan.sessions).map(|s| plan.session_id(s)).collect();
    check::wait_stable(&cql, &session_ids, Duration::from_secs(60), &events).await?;
    phases.drain = drain_started.elapsed().as_secs_f64();
    let check_started = Instant::now();
    oracle.sweep().await.context("the oracle's final sweep")?;
    let mut observations = oracle.observations();
    let mut load = result;

    if opts.sabotage {
        sabotage::corrupt(
            &mut load,
            &mut observations,
            &plan,
            &session,
            &run_info,
            &stack,
            &events,
        )
        .await?;
    }

    // Check, on a connection of its own: the last fault may have restarted Redis (a rollback), and
    // the first command of a connection from before fails with a broken pipe.
    drop(redis);
    let findings = check::check(check::Inputs {
        plan: &plan,
        load: &load,
        cql: &cql,
        redis: stack.redis().await?,
        window_size: opts.window_size,
        kafka: &stack.kafka,
        topic: &run_info.topic,
        dlq: &run_info.dlq,
        events: &events,
        oracle: &observations,
        horizon: opts.settle_horizon,
    })
    .await?;
    phases.check = check_started.elapsed().as_secs_f64();

    let summary = format!(
        "chaos: {} acked, {} lost, {} duplicated, {} reordered, {} window mismatches, {} \
         overwritten, {} false missing, {} faults injected {}",
        findings.acked,
        findings.lost,
        findings.duplicated,
        findings.reordered,
        findings.window_mismatches,
        findings.overwritten,
        findings.false_missing,
        injected,
        faults::per_kind(&opts, &by_kind)
    );
    let planned = faults::planned_total(&opts);
    let every_kind = faults::Kind::ALL
        .iter()
        .all(|k| by_kind.get(k.name()).copied().unwrap_or(0) == k.planned(&opts));
    let ok = findings.lost == 0
        && findings.duplicated == 0
        && findings.reordered == 0
        && findings.window_mismatches == 0
        && findings.overwritten == 0
        && findings.false_missing == 0
        && findings.not_returned == 0
        && findings.unacked == 0
        && injected == planned
        && every_kind;
    let report = Report {
        summary,
        ok,
        acked: findings.acked,
        lost: findings.lost,
        duplicated: findings.duplicated,
        reordered: findings.reordered,
        window_mismatches: findings.window_mismatches,
        overwritten: findings.overwritten,
        false_missing: findings.false_missing,
        faults_injected: injected,
        faults_by_kind: by_kind,
        faults_planned: planned,
        unacked: findings.unacked,
        duration_secs: started.elapsed().as_secs_f64(),
        phases,
        run: run_info,
        options: opts,
        faults: events.faults(),
        fleet: fleet_stats,
        send_errors: load.errors.clone(),
        send_error_examples: load.error_examples.clone(),
        findings,
    };
    events.log(format!(
        "checked in {:.1}s; run took {:.1}s",
        report.phases.check, report.duration_secs
    ));
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    Ok(report)
}

/// Waits until `n` consumers logged that they are consuming.
async fn wait_consuming(fleet: &fleet::Fleet, n: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let ready = (0..n)
            .filter(|&o| {
                std::fs::read_to_string(fleet.log_path(o))
                    .map(|log| log.contains("consuming"))
                    .unwrap_or(false)
            })
            .count();
        if ready == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            let mut logs = String::new();
            for o in 0..n {
                let log = std::fs::read_to_string(fleet.log_path(o)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                logs.push_str(&format!(
                    "\n--- consumer-{o} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            anyhow::bail!(
                "only {ready} of {n} consumers started consuming within {limit:?}:{logs}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
