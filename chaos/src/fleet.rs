//! The consumer fleet and its supervisor: real `chatlog-consumer` processes, each with a stable
//! ordinal and transactional id (`chaos-<run>-<ordinal>`). An instance that exits without being
//! asked to (exit 3 after being fenced or after a broker restart, a crash) is restarted with the
//! same ordinal after a short backoff, as an orchestrator would; every exit is counted by status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chatlog::process::ConsumerProcess;
use serde::Serialize;

use crate::events::Events;
use crate::stack::Stack;

/// What every instance is started with.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The binary.
    pub bin: PathBuf,
    /// `--topic`.
    pub topic: String,
    /// `--dlq-topic`.
    pub dlq: String,
    /// `--group-id`.
    pub group: String,
    /// `--keyspace`.
    pub keyspace: String,
    /// `--window-size`.
    pub window_size: usize,
    /// Prefix of the transactional ids: `<prefix>-<ordinal>`.
    pub txn_prefix: String,
    /// The TOML config file passed with `--config` (poison size limit).
    pub config_file: PathBuf,
    /// Folder of the per-ordinal logs.
    pub log_dir: PathBuf,
}

/// Exit and restart counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetStats {
    /// Processes started (first starts and restarts).
    pub spawns: usize,
    /// kill -9 sent by the harness.
    pub killed: usize,
    /// SIGTERM sent by the harness (rebalances and the final stop).
    pub terminated: usize,
    /// Exits the harness did not cause, by exit status (e.g. `exit status: 3`): each was restarted.
    pub unexpected_exits: BTreeMap<String, usize>,
    /// Exits after SIGTERM, by status; anything but `exit status: 0` means the graceful path failed.
    pub terminate_exits: BTreeMap<String, usize>,
}

struct Member {
    ordinal: usize,
    child: Option<ConsumerProcess>,
    started: Instant,
    /// Restart not before this (after an unexpected exit).
    restart_at: Option<Instant>,
    failures_in_a_row: u32,
    /// Asked to stop: not restarted.
    retiring: bool,
}

struct State {
    members: Vec<Member>,
    next_ordinal: usize,
    stats: FleetStats,
    stopped: bool,
}

/// The supervised fleet (cheap to clone; the monitor task holds a clone).
#[derive(Clone)]
pub struct Fleet {
    spec: Arc<Spec>,
    stack: Arc<Stack>,
    events: Events,
    state: Arc<Mutex<State>>,
}

impl Fleet {
    /// Starts `n` instances (ordinals `0..n`) and the supervisor task.
    pub fn start(spec: Spec, stack: Stack, events: Events, n: usize) -> anyhow::Result<Fleet> {
        std::fs::create_dir_all(&spec.log_dir)?;
        let fleet = Fleet {
            spec: Arc::new(spec),
            stack: Arc::new(stack),
            events,
            state: Arc::new(Mutex::new(State {
                members: Vec::new(),
                next_ordinal: 0,
                stats: FleetStats::default(),
                stopped: false,
            })),
        };
        for _ in 0..n {
            fleet.add()?;
        }
        let monitor = fleet.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                if !monitor.supervise() {
                    break;
                }
            }
        });
        Ok(fleet)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log file of an ordinal.
    pub fn log_path(&self, ordinal: usize) -> PathBuf {
        self.spec.log_dir.join(format!("consumer-{ordinal}.log"))
    }

    fn spawn(&self, ordinal: usize, stats: &mut FleetStats) -> anyhow::Result<ConsumerProcess> {
        let spec = &self.spec;
        let log_path = self.log_path(ordinal);
        {
            // Every incarnation of an ordinal appends to its one log, after this mark.
            use std::io::Write;
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("open {}", log_path.display()))?;
            let _ = writeln!(
                log,
                "===== chaos: start of consumer-{ordinal} at {:.3}s =====",
                self.events.now()
            );
        }
        let config = spec.config_file.to_string_lossy();
        let txn = format!("{}-{ordinal}", spec.txn_prefix);
        let cql_nodes = self.stack.cql_nodes.join(",");
        let window_size = spec.window_size.to_string();
        // On the cluster: the Redis Cluster's nodes, and a group instance id (static membership)
        // as distinct as the transactional id: a restarted instance takes its place back.
        let (redis_flag, redis_value, env) = match &self.stack.cluster {
            Some(cluster) => (
                "--redis-cluster-nodes",
                cluster.redis_nodes.join(","),
                vec![
                    ("CHATLOG_LOG", "info".to_owned()),
                    ("CHATLOG__KAFKA__GROUP_INSTANCE_ID", txn.clone()),
                ],
            ),
            None => (
                "--redis-url",
                self.stack.client_redis_url().to_owned(),
                vec![("CHATLOG_LOG", "info".to_owned())],
            ),
        };
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let args = [
            "--config",
            &config,
            "--bootstrap-servers",
            &self.stack.kafka,
            "--topic",
            &spec.topic,
            "--dlq-topic",
            &spec.dlq,
            "--group-id",
            &spec.group,
            "--transactional-id",
            &txn,
            "--cql-nodes",
            &cql_nodes,
            "--keyspace",
            &spec.keyspace,
            redis_flag,
            &redis_value,
            "--http-listen",
            "127.0.0.1:0",
            "--window-size",
            &window_size,
        ];
        let child = ConsumerProcess::spawn(&spec.bin, args, &env, &log_path)?;
        stats.spawns += 1;
        Ok(child)
    }

    /// Starts one more instance with a new ordinal; returns the ordinal.
    pub fn add(&self) -> anyhow::Result<usize> {
        let mut st = self.lock();
        let ordinal = st.next_ordinal;
        st.next_ordinal += 1;
        let child = self.spawn(ordinal, &mut st.stats)?;
        self.events
            .log(format!("consumer-{ordinal} started (pid {})", child.pid()));
        st.members.push(Member {
            ordinal,
            child: Some(child),
            started: Instant::now(),
            restart_at: None,
            failures_in_a_row: 0,
            retiring: false,
        });
        Ok(ordinal)
    }

    /// One supervisor round: reap exits, restart what should run. `false` once stopped.
    fn supervise(&self) -> bool {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.stopped {
            return false;
        }
        // Retiring members are reaped by `retire`, never restarted.
        for m in st.members.iter_mut().filter(|m| !m.retiring) {
            if let Some(status) = m.child.as_ref().and_then(ConsumerProcess::exited) {
                m.child = None;
                let status = status.to_string();
                *st.stats.unexpected_exits.entry(status.clone()).or_default() += 1;
                // Back off 1, 2, 4 … 16 s while it keeps failing quickly (e.g. broker down).
                if m.started.elapsed() < Duration::from_secs(30) {
                    m.failures_in_a_row += 1;
                } else {
                    m.failures_in_a_row = 1;
                }
                let backoff = Duration::from_secs(1 << (m.failures_in_a_row - 1).min(4));
                self.events.log(format!(
                    "consumer-{} exited by itself ({status}); restarting in {backoff:?}; log {}",
                    m.ordinal,
                    self.log_path(m.ordinal).display()
                ));
                m.restart_at = Some(Instant::now() + backoff);
            }
            if m.child.is_none() && m.restart_at.is_some_and(|t| Instant::now() >= t) {
                match self.spawn(m.ordinal, &mut st.stats) {
                    Ok(child) => {
                        self.events.log(format!(
                            "consumer-{} restarted (pid {})",
                            m.ordinal,
                            child.pid()
                        ));
                        m.child = Some(child);
                        m.started = Instant::now();
                        m.restart_at = None;
                    }
                    Err(e) => {
                        self.events
                            .log(format!("consumer-{} restart failed: {e:#}", m.ordinal));
                        m.restart_at = Some(Instant::now() + Duration::from_secs(2));
                    }
                }
            }
        }
        true
    }

    /// Waits until every one of `ordinals` logged that it is consuming (its log since its start
    /// mark); returns the seconds waited.
    pub async fn wait_consuming(&self, ordinals: &[usize], limit: Duration) -> anyhow::Result<f64> {
        let started = Instant::now();
        loop {
            let waiting: Vec<usize> = ordinals
                .iter()
                .copied()
                .filter(|&o| {
                    let log = std::fs::read_to_string(self.log_path(o)).unwrap_or_default();
                    let last_life = log.rsplit("===== chaos: start of").next().unwrap_or("");
                    !last_life.contains("consuming")
                })
                .collect();
            if waiting.is_empty() {
                return Ok(started.elapsed().as_secs_f64());
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "consumers {waiting:?} did not start consuming within {limit:?} (logs in {})",
                self.spec.log_dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Ordinals of the running instances (preferring those up for at least `min_uptime`).
    pub fn running(&self, min_uptime: Duration) -> Vec<usize> {
        let st = self.lock();
        let up: Vec<usize> = st
            .members
            .iter()
            .filter(|m| m.child.is_some() && !m.retiring)
            .filter(|m| m.started.elapsed() >= min_uptime)
            .map(|m| m.ordinal)
            .collect();
        if !up.is_empty() {
            return up;
        }
        st.members
            .iter()
            .filter(|m| m.child.is_some() && !m.retiring)
            .map(|m| m.ordinal)
            .collect()
    }

    /// The pid of a running instance.
    pub fn pid(&self, ordinal: usize) -> Option<u32> {
        self.lock()
            .members
            .iter()
            .find(|m| m.ordinal == ordinal)
            .and_then(|m| m.child.as_ref().map(ConsumerProcess::pid))
    }

    /// kill -9 of `ordinal`, then an immediate restart with the same ordinal (and transactional id).
    pub fn kill9_and_restart(&self, ordinal: usize) -> anyhow::Result<String> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let m = st
            .members
            .iter_mut()
            .find(|m| m.ordinal == ordinal && m.child.is_some())
            .context("no such running consumer")?;
        let child = m.child.take().context("not running")?;
        let pid = child.pid();
        let uptime = m.started.elapsed();
        child.kill().context("SIGKILL")?;
        st.stats.killed += 1;
        let new = self.spawn(ordinal, &mut st.stats)?;
        let detail = format!(
            "consumer-{ordinal} (pid {pid}, up {:.1}s) killed with SIGKILL, restarted as pid {}",
            uptime.as_secs_f64(),
            new.pid()
        );
        m.child = Some(new);
        m.started = Instant::now();
        m.restart_at = None;
        Ok(detail)
    }

    /// SIGTERM to `ordinal`, which is not restarted; waits up to `limit` for it to exit and
    /// returns its exit status (kill -9 after the limit).
    pub async fn retire(&self, ordinal: usize, limit: Duration) -> anyhow::Result<String> {
        let process = {
            let mut st = self.lock();
            let m = st
                .members
                .iter_mut()
                .find(|m| m.ordinal == ordinal && m.child.is_some())
                .context("no such running consumer")?;
            // Out of the member while it stops: the supervisor neither reaps nor restarts it.
            m.retiring = true;
            let process = m.child.take().context("not running")?;
            st.stats.terminated += 1;
            process
        };
        process.signal("-TERM")?;
        let exit = tokio::task::spawn_blocking(move || {
            let exit = process.wait_exit(limit).ok();
            if exit.is_none() {
                process.kill();
            }
            exit
        })
        .await?;
        let mut st = self.lock();
        st.members.retain(|m| m.ordinal != ordinal);
        let (key, answer) = match exit {
            Some(status) => (status.to_string(), status.to_string()),
            None => (
                "no exit within the limit (killed)".to_owned(),
                format!("did not exit within {limit:?}; killed"),
            ),
        };
        *st.stats.terminate_exits.entry(key).or_default() += 1;
        Ok(answer)
    }

    /// Stops every instance gracefully (SIGTERM, kill -9 after `limit`) and the supervisor.
    pub async fn stop(&self, limit: Duration) -> FleetStats {
        let ordinals: Vec<usize> = {
            let mut st = self.lock();
            // Nothing is restarted from now on.
            for m in st.members.iter_mut() {
                m.retiring = true;
            }
            st.members
                .iter()
                .filter(|m| m.child.is_some())
                .map(|m| m.ordinal)
                .collect()
        };
        let stops = ordinals.iter().map(|&o| self.retire(o, limit));
        for (o, r) in ordinals.iter().zip(futures::future::join_all(stops).await) {
            match r {
                Ok(status) => self.events.log(format!("consumer-{o} stopped: {status}")),
                Err(e) => self.events.log(format!("consumer-{o} stop: {e:#}")),
            }
        }
        let mut st = self.lock();
        st.stopped = true;
        self.kill_all(&mut st);
        st.stats.clone()
    }

    fn kill_all(&self, st: &mut State) {
        for m in st.members.iter_mut() {
            if let Some(child) = m.child.take() {
                child.kill();
            }
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> FleetStats {
        self.lock().stats.clone()
    }

    /// The log folder.
    pub fn log_dir(&self) -> &Path {
        &self.spec.log_dir
    }
}

/// Kills every instance still running when the last handle of a run goes (error paths).
pub struct FleetGuard(pub Fleet);

impl Drop for FleetGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.stopped = true;
        self.0.kill_all(&mut st);
    }
}
