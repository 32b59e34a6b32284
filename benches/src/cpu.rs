//! Where the CPU went: user + system CPU seconds of every process of the stack (this harness, Redis,
//! Kafka, Cassandra, the consumer child) between two snapshots. On a machine whose few cores run the
//! whole stack, a scenario's throughput is bounded by the CPU it costs per message in all of them,
//! which is what these figures show next to each rate.

use std::collections::BTreeMap;

pub use chatlog::process::cpu_seconds as seconds;

/// The processes watched.
#[derive(Debug, Clone, Default)]
pub struct Procs {
    procs: Vec<(String, u32)>,
}

/// CPU seconds per process at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot(Vec<(String, Option<f64>)>);

impl Procs {
    /// This process, the local stack's Kafka and Cassandra (from `dev/stack.sh`'s pid files) and
    /// Redis (`redis_pid`, from `INFO server`).
    pub fn detect(redis_pid: Option<u32>) -> Procs {
        let mut procs = vec![("bench".to_owned(), std::process::id())];
        if let Some(pid) = redis_pid {
            procs.push(("redis".to_owned(), pid));
        }
        for name in ["kafka", "cassandra"] {
            if let Some(pid) = chatlog::process::stack_pid(name) {
                procs.push((name.to_owned(), pid));
            }
        }
        Procs { procs }
    }

    /// Also watches `pid` as `name` (e.g. the consumer child).
    pub fn with(&self, name: &str, pid: u32) -> Procs {
        let mut p = self.clone();
        p.procs.push((name.to_owned(), pid));
        p
    }

    /// The process id watched as `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.iter().find(|(n, _)| n == name).map(|(_, p)| *p)
    }

    /// Waits (at most `patience`) until process `name` uses less than `cores` CPUs over half a
    /// second — e.g. Cassandra flushing or compacting what the previous scenario wrote — so that
    /// a timed scenario does not pay for the one before. Returns the seconds waited.
    pub async fn settle(&self, name: &str, cores: f64, patience: std::time::Duration) -> f64 {
        let started = std::time::Instant::now();
        let Some(pid) = self.pid(name) else {
            return 0.0;
        };
        let window = std::time::Duration::from_millis(500);
        loop {
            let a = seconds(pid);
            tokio::time::sleep(window).await;
            let b = seconds(pid);
            let busy = match (a, b) {
                (Some(a), Some(b)) => (b - a) / window.as_secs_f64(),
                _ => 0.0,
            };
            if busy < cores || started.elapsed() >= patience {
                return started.elapsed().as_secs_f64();
            }
        }
    }

    /// CPU seconds of each process now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(
            self.procs
                .iter()
                .map(|(n, pid)| (n.clone(), seconds(*pid)))
                .collect(),
        )
    }
}

impl Snapshot {
    /// CPU seconds per process from `self` to `later` (processes readable both times), plus
    /// `extra` (e.g. a child measured by the shell's `times`), and their `total`.
    pub fn until(&self, later: &Snapshot, extra: &[(&str, f64)]) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for ((name, a), (_, b)) in self.0.iter().zip(&later.0) {
            if let (Some(a), Some(b)) = (a, b) {
                out.insert(name.clone(), b - a);
            }
        }
        for (name, v) in extra {
            out.insert((*name).to_owned(), *v);
        }
        let total = out.values().sum();
        out.insert("total".to_owned(), total);
        out
    }
}

/// `cpu` (seconds per process) as microseconds per operation.
pub fn per_op_us(cpu: &BTreeMap<String, f64>, ops: u64) -> BTreeMap<String, f64> {
    cpu.iter()
        .map(|(k, v)| (k.clone(), v * 1e6 / ops.max(1) as f64))
        .collect()
}

/// The children's CPU seconds from a shell's `times` output (its second line).
pub fn shell_times(text: &str) -> f64 {
    text.lines()
        .rfind(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() == 2 && w.iter().all(|x| x.ends_with('s') && x.contains('m'))
        })
        .map(|l| l.split_whitespace().filter_map(shell_time).sum())
        .unwrap_or(0.0)
}

/// `1m2.500000s` → 62.5.
fn shell_time(t: &str) -> Option<f64> {
    let (m, s) = t.strip_suffix('s')?.split_once('m')?;
    Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// Whole-machine CPU counters from `/proc/stat` (jiffies): busy (user, nice, system, irq,
/// softirq), idle (idle, iowait) and steal (time the hypervisor gave to other guests).
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    busy: f64,
    idle: f64,
    steal: f64,
}

impl MachineCpu {
    /// Now.
    pub fn now() -> MachineCpu {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
            return MachineCpu::default();
        };
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
        MachineCpu {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            idle: at(3) + at(4),
            steal: at(7),
        }
    }

    /// From `self` to `later`: `{"busy": fraction, "steal": fraction}` of all CPUs' time.
    pub fn until(&self, later: &MachineCpu) -> serde_json::Value {
        let busy = later.busy - self.busy;
        let idle = later.idle - self.idle;
        let steal = later.steal - self.steal;
        let total = (busy + idle + steal).max(1.0);
        serde_json::json!({"busy": busy / total, "steal": steal / total})
    }
}
