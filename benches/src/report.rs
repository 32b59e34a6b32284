//! The results: one [`Figure`] per goal (P1…P9), the machine, the plan, time series and the latency
//! CDF — written as JSON and printed as a table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::series::Series;

/// How a figure is judged against its goal.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// `value >= x`.
    AtLeast(f64),
    /// `value <= x`.
    AtMost(f64),
}

impl Goal {
    fn met(self, value: f64) -> bool {
        match self {
            Goal::AtLeast(x) => value >= x,
            Goal::AtMost(x) => value <= x,
        }
    }

    fn text(self, unit: &str) -> String {
        match self {
            Goal::AtLeast(x) => format!(">= {x}{unit}"),
            Goal::AtMost(x) => format!("<= {x}{unit}"),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What is measured.
    pub what: String,
    /// Our figure (in `unit`).
    pub ours: f64,
    /// The reference's figure, when the goal is a ratio.
    pub reference: Option<f64>,
    /// What the reference is.
    pub reference_what: Option<String>,
    /// Unit of `ours` and `reference`.
    pub unit: String,
    /// The number the goal judges: `ours / reference` for ratios, else `ours`.
    pub value: f64,
    /// The goal.
    pub goal: Goal,
    /// The goal as text (`>= 0.8`, `<= 100 ms`).
    pub goal_text: String,
    /// Whether `value` meets the goal.
    pub met: bool,
}

impl Figure {
    /// A ratio figure: `ours / reference` against `goal`.
    pub fn ratio(
        what: &str,
        ours: f64,
        reference: f64,
        reference_what: &str,
        unit: &str,
        goal: Goal,
    ) -> Figure {
        let value = if reference > 0.0 {
            ours / reference
        } else {
            0.0
        };
        Figure {
            what: what.to_owned(),
            ours,
            reference: Some(reference),
            reference_what: Some(reference_what.to_owned()),
            unit: unit.to_owned(),
            value,
            goal,
            goal_text: goal.text("×"),
            met: goal.met(value),
        }
    }

    /// An absolute figure against `goal`.
    pub fn absolute(what: &str, ours: f64, unit: &str, goal: Goal) -> Figure {
        Figure {
            what: what.to_owned(),
            ours,
            reference: None,
            reference_what: None,
            unit: unit.to_owned(),
            value: ours,
            goal,
            goal_text: goal.text(&format!(" {unit}")),
            met: goal.met(ours),
        }
    }
}

/// The machine a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// RAM, MiB.
    pub mem_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// `/proc/loadavg` when the run started (other work on the machine).
    pub loadavg_at_start: String,
}

impl Machine {
    /// Reads `/proc`.
    pub fn detect() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        let mem_mib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024;
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_mib,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            loadavg_at_start: read("/proc/loadavg").trim().to_owned(),
        }
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Unix time the run started, seconds.
    pub started_unix: u64,
    /// Seconds the run took.
    pub seconds: f64,
    /// The machine.
    pub machine: Machine,
    /// The sizes and settings used.
    pub plan: serde_json::Value,
    /// P1…P9.
    pub figures: BTreeMap<String, Figure>,
    /// Supporting numbers (per scenario).
    pub details: BTreeMap<String, serde_json::Value>,
    /// Cumulative counters over time (seconds since the run started), for the throughput plot.
    pub series: BTreeMap<String, Series>,
    /// P4's latency CDF: `(quantile, ms)`.
    pub latency_cdf: Vec<(f64, f64)>,
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Results {
    /// The table of P1…P9 (Markdown).
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| # | measure | ours | reference | ratio / value | goal | met |"
        );
        let _ = writeln!(t, "|---|---|---|---|---|---|---|");
        for (id, f) in &self.figures {
            let reference = match (&f.reference, &f.reference_what) {
                (Some(r), Some(w)) => format!("{} {} ({w})", num(*r), f.unit),
                _ => "—".to_owned(),
            };
            let value = if f.reference.is_some() {
                format!("{}×", num(f.value))
            } else {
                format!("{} {}", num(f.value), f.unit)
            };
            let _ = writeln!(
                t,
                "| {id} | {} | {} {} | {reference} | **{value}** | {} | {} |",
                f.what,
                num(f.ours),
                f.unit,
                f.goal_text,
                if f.met { "yes" } else { "**no**" }
            );
        }
        t
    }
}
