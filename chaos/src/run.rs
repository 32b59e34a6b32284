//! One chaos run, phase by phase (the crate docs list them): begin (the run's names and event
//! log), connect (the stack, the Redis proxy), setup (keyspace, topics, the fleet, the producers),
//! load (with the poison, the faults and the oracle at once), drain and check, the replay from
//! offset 0 and its check, report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use scylla::client::session::Session;

use crate::check::{self, Findings};
use crate::events::Events;
use crate::fleet::{self, Fleet, FleetGuard, FleetStats};
use crate::options::Options;
use crate::oracle::{self, Oracle};
use crate::proxy::{self, Proxy};
use crate::record::{LoadResult, Plan};
use crate::report::Replayed;
use crate::report::{Phases, ReplayReport, Report, RunInfo};
use crate::stack::{self, Stack};
use crate::{drain, events, faults, load, poison, replay, sabotage};

/// Runs one chaos run with `opts`. `quiet` keeps the event log off stderr (it is always written to
/// `<run dir>/events.log`).
pub async fn run(mut opts: Options, quiet: bool) -> anyhow::Result<Report> {
    opts.validate()?;
    crate::faults::check_plan(&opts)?;
    let started = Instant::now();
    let begun = begin(&mut opts, quiet)?;
    let (stack, proxy) = connect(&opts, &begun.events).await?;
    let (setup, producers) = setup(&opts, &begun, &stack).await?;
    let mut phases = Phases {
        setup: started.elapsed().as_secs_f64(),
        ..Phases::default()
    };
    let ran = load_phase(
        &opts,
        &begun,
        &stack,
        &proxy,
        &setup,
        producers,
        &mut phases,
    )
    .await?;
    let checked = drain_and_check(&opts, &begun, &stack, setup, ran, &mut phases).await?;
    report(opts, started, begun, phases, checked)
}

/// A run's names, folder and event log.
struct Begun {
    id: String,
    dir: PathBuf,
    events: Events,
    run_info: RunInfo,
}

/// Names the run, opens its event log and checks that the consumer binary exists.
fn begin(opts: &mut Options, quiet: bool) -> anyhow::Result<Begun> {
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
    Ok(Begun {
        id,
        dir,
        events,
        run_info,
    })
}

/// The stack the `CHATLOG_*` variables name, and the proxy every Redis client of the run goes
/// through (none on the cluster stack: clients connect to the Redis Cluster, which fails over by
/// itself).
async fn connect(opts: &Options, events: &Events) -> anyhow::Result<(Stack, Option<Proxy>)> {
    let stack = stack::Stack::from_env(&opts.workspace, opts.cluster)?;
    stack.preflight().await.context("the stack is not usable")?;
    if let Some(cluster) = &stack.cluster {
        events.log(format!(
            "cluster stack: kafka {} (topics with replication factor 3), redis cluster {}, cql \
             {}; state {}",
            stack.kafka,
            cluster.redis_nodes.join(","),
            stack.cql_nodes.join(","),
            cluster.dir.display()
        ));
        return Ok((stack, None));
    }
    let mut stack = stack;
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

    Ok((stack, Some(proxy)))
}

/// What the setup made.
struct Setup {
    session: Arc<Session>,
    fleet: Fleet,
    /// Stops the fleet when the run ends, however it ends.
    _guard: FleetGuard,
    redis: chatlog_store::RedisConnection,
}

/// A fresh keyspace and topics, the fleet consuming, the producer instances.
async fn setup(
    opts: &Options,
    begun: &Begun,
    stack: &Stack,
) -> anyhow::Result<(Setup, load::Producers)> {
    let Begun {
        id,
        dir,
        events,
        run_info,
    } = begun;
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
        // A failed send is retried under its first seq only while that allocation is younger
        // than settle_horizon - message_timeout; later the producer answers `settled` and Logic
        // looks the seq up (which the harness does not do: it gives up). With the default 30 s
        // that window is 30 s, less than a Kafka restart takes on a loaded machine (29 s seen);
        // 10 s leaves 50 s, and failed sends are retried sooner.
        message_timeout: Duration::from_secs(10),
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
    Ok((
        Setup {
            session,
            fleet,
            _guard,
            redis,
        },
        producers,
    ))
}

/// What the load phase left.
struct Ran {
    plan: Plan,
    result: LoadResult,
    by_kind: BTreeMap<String, usize>,
    injected: usize,
    oracle: Oracle,
}

/// Load, poison, faults and the oracle at once; returns when the load is done and the faults are
/// over.
async fn load_phase(
    opts: &Options,
    begun: &Begun,
    stack: &Stack,
    proxy: &Option<Proxy>,
    setup: &Setup,
    producers: load::Producers,
    phases: &mut Phases,
) -> anyhow::Result<Ran> {
    let Begun {
        id,
        events,
        run_info,
        ..
    } = begun;
    let Setup { session, fleet, .. } = setup;
    // Load, poison, faults and the oracle at once.
    let plan = load::Plan::new(id, opts.messages, opts.sessions);
    let load = load::Load::new(
        plan.clone(),
        producers,
        events.clone(),
        opts.concurrency,
        opts.rate,
        opts.resend_ratio,
        opts.mutation_ratio,
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
    let oracle = oracle::Oracle::start(
        history.clone(),
        load.clone(),
        events.clone(),
        opts.oracle_rate,
        opts.window_size,
        opts.seed,
    );
    let schedule = faults::schedule(opts);
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

    Ok(Ran {
        plan,
        result,
        by_kind,
        injected,
        oracle,
    })
}

/// Waits for the drain, stops the fleet, runs the oracle's final sweep and the checker.
async fn drain_and_check(
    opts: &Options,
    begun: &Begun,
    stack: &Stack,
    setup: Setup,
    ran: Ran,
    phases: &mut Phases,
) -> anyhow::Result<Checked> {
    let Begun {
        events, run_info, ..
    } = begun;
    let Setup {
        session,
        fleet,
        redis,
        _guard,
        ..
    } = setup;
    let Ran {
        plan,
        result,
        by_kind,
        injected,
        mut oracle,
    } = ran;
    // Drain.
    let drain_started = Instant::now();
    drain::wait(
        &stack.kafka,
        &run_info.topic,
        &run_info.group,
        opts.partitions,
        opts.drain_timeout,
        events,
    )
    .await?;
    events.log("drained: the group committed the end of every partition");
    oracle.stop().await;
    let fleet_stats = fleet.stop(Duration::from_secs(45)).await;
    let cql = check::Cql::new(session.clone(), &run_info.keyspace).await?;
    let session_ids: Vec<String> = (0..plan.sessions).map(|s| plan.session_id(s)).collect();
    check::wait_stable(&cql, &session_ids, Duration::from_secs(60), events).await?;
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
            run_info,
            stack,
            events,
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
        events,
        oracle: &observations,
        horizon: opts.settle_horizon,
    })
    .await?;
    phases.check = check_started.elapsed().as_secs_f64();
    events.log(format!(
        "checked: {} lost, {} duplicated, {} reordered, {} window mismatches, {} overwritten, {} \
         false missing, {} mutation mismatches ({} mutations)",
        findings.counts.lost,
        findings.counts.duplicated,
        findings.counts.reordered,
        findings.counts.window_mismatches,
        findings.counts.overwritten,
        findings.counts.false_missing,
        findings.counts.mutation_mismatches,
        findings.counts.mutations
    ));

    // The replay from offset 0 into the same stores, and the same checks again. Not with
    // --sabotage: its damage would be repaired by the replay, and it expects exact counts.
    let replay = if opts.replay && !opts.sabotage {
        let replay_started = Instant::now();
        let replayed = replay::replay(opts, stack, run_info, events).await?;
        check::wait_stable(&cql, &session_ids, Duration::from_secs(60), events).await?;
        let sweep = oracle.fresh();
        sweep.sweep().await.context("the sweep after the replay")?;
        // The wrongtype messages were dead-lettered because of a key clash the fault repaired
        // afterwards: replayed, they are stored, not dead-lettered again.
        let mut expected = load.clone();
        expected.poison.retain(|p| p.kind != "wrongtype");
        let findings = check::check(check::Inputs {
            plan: &plan,
            load: &expected,
            cql: &cql,
            redis: stack.redis().await?,
            window_size: opts.window_size,
            kafka: &stack.kafka,
            topic: &run_info.topic,
            dlq: &replayed.dlq,
            events,
            oracle: &sweep.observations(),
            horizon: opts.settle_horizon,
        })
        .await?;
        phases.replay = replay_started.elapsed().as_secs_f64();
        Some((replayed, findings))
    } else {
        None
    };

    Ok(Checked {
        findings,
        fleet_stats,
        load,
        by_kind,
        injected,
        replay,
    })
}

/// What the drain and the checker found.
struct Checked {
    findings: Findings,
    fleet_stats: FleetStats,
    load: LoadResult,
    by_kind: BTreeMap<String, usize>,
    injected: usize,
    /// The replay and what the checker found after it.
    replay: Option<(Replayed, Findings)>,
}

/// The summary line and the report (also written to `<run dir>/report.json`).
fn report(
    opts: Options,
    started: Instant,
    begun: Begun,
    phases: Phases,
    checked: Checked,
) -> anyhow::Result<Report> {
    let Checked {
        findings,
        fleet_stats,
        load,
        by_kind,
        injected,
        replay,
    } = checked;
    let Begun {
        dir,
        events,
        run_info,
        ..
    } = begun;
    let name = if opts.cluster {
        "chaos cluster"
    } else {
        "chaos"
    };
    let summary = format!(
        "{name}: {} acked, {}, {} faults injected {}",
        findings.counts.acked,
        counts_text(&findings.counts),
        injected,
        faults::per_kind(&opts, &by_kind)
    );
    let planned = faults::planned_total(&opts);
    let every_kind = faults::Kind::ALL
        .iter()
        .all(|k| by_kind.get(k.name()).copied().unwrap_or(0) == k.planned(&opts));
    let replay = replay.map(|(replayed, findings)| ReplayReport {
        summary: format!(
            "{name}: after a replay from offset 0 ({} records, kill={}, {:.0}s): {}",
            replayed.records,
            replayed.kills,
            replayed.secs,
            counts_text(&findings.counts)
        ),
        ok: clean(&findings),
        replayed,
        findings,
    });
    let ok = clean(&findings)
        && findings.counts.unacked == 0
        && injected == planned
        && every_kind
        && replay.as_ref().is_none_or(|r| r.ok);
    let report = Report {
        summary,
        ok,
        counts: findings.counts.clone(),
        faults_injected: injected,
        faults_by_kind: by_kind,
        faults_planned: planned,
        duration_secs: started.elapsed().as_secs_f64(),
        phases,
        run: run_info,
        options: opts,
        faults: events.faults(),
        fleet: fleet_stats,
        send_errors: load.errors.clone(),
        send_error_examples: load.error_examples.clone(),
        mutation_errors: load.mutation_errors.clone(),
        findings,
        replay,
    };
    events.log(format!(
        "checked in {:.1}s; run took {:.1}s",
        report.phases.check, report.duration_secs
    ));
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    Ok(report)
}

/// `0 lost, 0 duplicated, …, 0 mutation mismatches (M mutations)`: the counts of the summary line.
fn counts_text(c: &check::Counts) -> String {
    format!(
        "{} lost, {} duplicated, {} reordered, {} window mismatches, {} overwritten, {} false \
         missing, {} mutation mismatches ({} mutations)",
        c.lost,
        c.duplicated,
        c.reordered,
        c.window_mismatches,
        c.overwritten,
        c.false_missing,
        c.mutation_mismatches,
        c.mutations
    )
}

/// Whether the checker found nothing: every count of the summary and *not returned* are 0.
fn clean(f: &Findings) -> bool {
    let c = &f.counts;
    c.lost == 0
        && c.duplicated == 0
        && c.reordered == 0
        && c.window_mismatches == 0
        && c.overwritten == 0
        && c.false_missing == 0
        && c.mutation_mismatches == 0
        && f.not_returned == 0
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
