//! The replay: after the drain and the first check, the whole topic is consumed once more from
//! offset 0 into the same keyspace and Redis by a fresh consumer group (its own transactional ids
//! and its own DLQ topic), with a kill -9 of one of its consumers once a third of the records is
//! committed; then everything is checked again ([`crate::check`]). Every record — sends, resends,
//! mutations, poison — arrives a second time, in partition order, long after all of them were
//! applied: the stores must end exactly as they were (the highest version of each message wins
//! in CQL and in the window, so no mutation is undone and no recalled content comes back; each
//! window is still the newest rows). The replay's DLQ must hold each poison record once, like the
//! first (except the `wrongtype` messages: their key clash was repaired, so they are stored now).

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use crate::drain;
use crate::events::Events;
use crate::fleet::{self, Fleet, FleetGuard};
use crate::options::Options;
use crate::report::{Replayed, RunInfo};
use crate::stack::Stack;

/// Replays the run's topic from offset 0 with the run's final fleet size
/// ([`Options::final_consumers`]) of consumers of a new group; returns
/// once the group committed the end of every partition and the fleet stopped.
pub async fn replay(
    opts: &Options,
    stack: &Stack,
    run: &RunInfo,
    events: &Events,
) -> anyhow::Result<Replayed> {
    let started = Instant::now();
    let group = format!("{}_replay", run.group);
    let dlq = format!("{}_dlq_replay", run.id);
    stack.create_topic(&dlq, 1).await?;
    let fleet = Fleet::start(
        fleet::Spec {
            bin: opts.consumer_bin.clone(),
            topic: run.topic.clone(),
            dlq: dlq.clone(),
            group: group.clone(),
            keyspace: run.keyspace.clone(),
            window_size: opts.window_size,
            txn_prefix: format!("{}-replay", run.id),
            config_file: run.dir.join("consumer.toml"),
            log_dir: run.dir.join("replay"),
        },
        stack.clone(),
        events.clone(),
        opts.final_consumers(),
    )?;
    let _guard = FleetGuard(fleet.clone());
    let lag = || {
        let (k, t, g, p) = (
            stack.kafka.clone(),
            run.topic.clone(),
            group.clone(),
            opts.partitions,
        );
        async move { tokio::task::spawn_blocking(move || drain::lag(&k, &t, &g, p)).await? }
    };
    // The new group has committed nothing: its lag is every record of the topic.
    let records = lag().await?;
    events.log(format!(
        "replay: {records} records from offset 0 by group {group} ({} consumers, DLQ {dlq})",
        opts.final_consumers()
    ));
    // A kill -9 once a third is committed: a replay interrupted part-way, its open transaction
    // aborted, the rest replayed again by the restarted instance.
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x4E_97A7);
    let mut kills = 0;
    let deadline = Instant::now() + opts.drain_timeout;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        match lag().await {
            Ok(left) if left * 3 <= records * 2 => {
                let up = fleet.running(Duration::ZERO);
                if let Some(&victim) = up.choose(&mut rng) {
                    let detail = fleet.kill9_and_restart(victim)?;
                    events.log(format!(
                        "replay: {left} of {records} records left; {detail}"
                    ));
                    kills += 1;
                }
                break;
            }
            Ok(_) => {}
            Err(e) => events.log(format!("replay: cannot read the lag ({e:#})")),
        }
    }
    drain::wait(
        &stack.kafka,
        &run.topic,
        &group,
        opts.partitions,
        opts.drain_timeout,
        events,
    )
    .await?;
    let fleet_stats = fleet.stop(Duration::from_secs(45)).await;
    let secs = started.elapsed().as_secs_f64();
    events.log(format!(
        "replay drained: {records} records in {secs:.1}s, {kills} kill -9"
    ));
    Ok(Replayed {
        group,
        dlq,
        records,
        kills,
        secs,
        fleet: fleet_stats,
    })
}
