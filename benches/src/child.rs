//! The real `chatlog-consumer` binary as a child process: its configuration file, readiness, memory
//! (VmHWM/VmRSS from `/proc`), its `/metrics`, and a SIGTERM stop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The consumer settings a scenario runs with (reported in the results).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerSettings {
    /// `batch.max_records`.
    pub max_records: usize,
    /// `batch.linger`, ms.
    pub linger_ms: u64,
    /// `writer.concurrency` (CQL batches in flight).
    pub writer_concurrency: usize,
    /// `writer.max_rows` (rows per UNLOGGED batch).
    pub writer_max_rows: usize,
}

/// What the consumer reads and writes.
#[derive(Debug, Clone)]
pub struct ConsumerTarget {
    /// Topic to consume.
    pub topic: String,
    /// Consumer group (also the transactional id's stem).
    pub group: String,
    /// CQL keyspace (migrated already).
    pub keyspace: String,
}

/// The configuration file of one consumer instance.
pub fn config_toml(target: &ConsumerTarget, s: &ConsumerSettings) -> String {
    let nodes = chatlog::cql_nodes()
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"# Written by chatlog-bench.
[kafka]
bootstrap_servers = {bootstrap:?}
topic = {topic:?}
dlq_topic = "{topic}.dlq"
group_id = {group:?}
transactional_id = "{group}-0"

[batch]
max_records = {max_records}
linger = "{linger}ms"

[cql]
nodes = [{nodes}]
keyspace = {keyspace:?}

[writer]
concurrency = {concurrency}
max_rows = {max_rows}

[redis]
url = {redis:?}

[window]
ttl = "30m"

[http]
listen = "127.0.0.1:0"
"#,
        bootstrap = chatlog::kafka_bootstrap(),
        topic = target.topic,
        group = target.group,
        max_records = s.max_records,
        linger = s.linger_ms,
        keyspace = target.keyspace,
        concurrency = s.writer_concurrency,
        max_rows = s.writer_max_rows,
        redis = chatlog::redis_url(),
    )
}

/// A running consumer.
pub struct ConsumerChild {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// `host:port` of its HTTP endpoint.
    pub http: String,
    /// Its log file (stderr).
    pub log: PathBuf,
}

impl ConsumerChild {
    /// Starts `bin --config <config>` with its stderr in `log`, and waits until it serves HTTP and
    /// reports ready.
    pub fn spawn(bin: &Path, config: &Path, log: &Path) -> Result<ConsumerChild> {
        let file = std::fs::File::create(log).with_context(|| format!("create {log:?}"))?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .env("CHATLOG_LOG", "warn,chatlog_consumer=info")
            .envs(chatlog::cql_login_env())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {bin:?} (build it: cargo build --release -p chatlog-consumer)"
                )
            })?;
        let mut me = ConsumerChild {
            pid: child.id(),
            child,
            http: String::new(),
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = me.child.try_wait()? {
                bail!("consumer exited with {status} during start-up; log {log:?}");
            }
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.split("http listening on ").nth(1))
            {
                me.http = addr.trim().to_owned();
                break;
            }
            if Instant::now() > deadline {
                bail!("consumer did not start within 60 s; log {log:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        loop {
            if me.get("/readyz").map(|(s, _)| s == 200).unwrap_or(false) {
                return Ok(me);
            }
            if let Some(status) = me.child.try_wait()? {
                bail!("consumer exited with {status} before ready; log {log:?}");
            }
            if Instant::now() > deadline {
                bail!("consumer not ready within 60 s; log {log:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` on the consumer's HTTP endpoint: (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut s = TcpStream::connect(&self.http)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.http
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmHWM`, `VmRSS`).
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        proc_status_kib(self.pid, field)
    }

    /// SIGTERM, then waits (SIGKILL after `patience`).
    pub fn stop(mut self, patience: Duration) -> Result<ExitStatus> {
        let _ = chatlog::signal(self.pid, "-TERM");
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ConsumerChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A field of `/proc/<pid>/status` in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Sums the samples of a Prometheus metric family line by line: `name{labels} value` lines whose
/// name and labels contain every string of `must` (e.g. `_sum`, `stage="cql"`).
pub fn prom_sum(text: &str, must: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && must.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A Prometheus histogram's buckets `(le, cumulative count)`, sum and count, from the lines of
/// `name` whose labels contain `filter` (e.g. `stage="cql"`).
#[derive(Debug, Clone, Default)]
pub struct PromHistogram {
    /// `(upper bound, cumulative count)`, ascending bound.
    pub buckets: Vec<(f64, f64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: f64,
}

impl PromHistogram {
    /// Parses `name` from an exposition `text`.
    pub fn parse(text: &str, name: &str, filter: &str) -> PromHistogram {
        let mut h = PromHistogram::default();
        for l in text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(filter))
        {
            let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            if l.starts_with(&format!("{name}_bucket")) {
                let le = l
                    .split("le=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .map(|x| {
                        if x == "+Inf" {
                            f64::INFINITY
                        } else {
                            x.parse().unwrap_or(f64::NAN)
                        }
                    });
                if let Some(le) = le {
                    h.buckets.push((le, v));
                }
            } else if l.starts_with(&format!("{name}_sum")) {
                h.sum += v;
            } else if l.starts_with(&format!("{name}_count")) {
                h.count += v;
            }
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h
    }

    /// The observations of `self` that are not in `earlier` (same buckets).
    pub fn since(&self, earlier: &PromHistogram) -> PromHistogram {
        PromHistogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| {
                    let before = earlier
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (*le, c - before)
                })
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The upper bound of the bucket holding quantile `q` (Prometheus' resolution).
    pub fn quantile_bound(&self, q: f64) -> f64 {
        let want = q * self.count;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= want)
            .map_or(f64::NAN, |(le, _)| *le)
    }

    /// Mean observation.
    pub fn mean(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            0.0
        }
    }
}

/// Per stage of the consumer (`decode`, `cql`, `redis`, `commit`) between two `/metrics` texts:
/// batches, mean and p99 bucket bound (ms); plus records per batch.
pub fn stage_summary(before: &str, after: &str) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for stage in ["decode", "cql", "redis", "commit"] {
        let f = format!("stage=\"{stage}\"");
        let h = PromHistogram::parse(after, "chatlog_stage_duration_seconds", &f).since(
            &PromHistogram::parse(before, "chatlog_stage_duration_seconds", &f),
        );
        out.insert(
            stage.to_owned(),
            serde_json::json!({
                "batches": h.count,
                "mean_ms": h.mean() * 1000.0,
                "p99_bucket_ms": h.quantile_bound(0.99) * 1000.0,
            }),
        );
    }
    let b = PromHistogram::parse(after, "chatlog_consumer_batch_records", "").since(
        &PromHistogram::parse(before, "chatlog_consumer_batch_records", ""),
    );
    out.insert("records_per_batch".to_owned(), serde_json::json!(b.mean()));
    let e = PromHistogram::parse(after, "chatlog_e2e_latency_seconds", "").since(
        &PromHistogram::parse(before, "chatlog_e2e_latency_seconds", ""),
    );
    out.insert(
        "consumer_e2e_latency".to_owned(),
        serde_json::json!({"mean_ms": e.mean() * 1000.0,
                           "p99_bucket_ms": e.quantile_bound(0.99) * 1000.0}),
    );
    serde_json::Value::Object(out)
}
