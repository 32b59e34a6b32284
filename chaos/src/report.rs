//! What a run reports: the summary line, the counts, the phases' durations, and where its
//! files are.

use std::path::PathBuf;

use serde::Serialize;

use crate::check::{Counts, Findings};
use crate::options::Options;
use crate::{events, fleet};

/// The figures of a run, as printed and as written to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The one summary line.
    pub summary: String,
    /// True when lost, duplicated, reordered, window mismatches, overwritten, false missing,
    /// mutation mismatches and not returned are 0 (after the run and after the replay), every
    /// message was acknowledged and every planned fault of every kind was injected.
    pub ok: bool,
    /// The summary counts (the checker's).
    #[serde(flatten)]
    pub counts: Counts,
    /// Faults injected.
    pub faults_injected: usize,
    /// Faults injected per kind ([`faults::Kind::name`]).
    pub faults_by_kind: std::collections::BTreeMap<String, usize>,
    /// Faults planned.
    pub faults_planned: usize,
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
    /// Failed mutation attempts by reason (each retried while retriable).
    pub mutation_errors: std::collections::BTreeMap<String, usize>,
    /// Everything the checker counted, with examples.
    pub findings: Findings,
    /// The replay from offset 0 and the second check (absent with `--no-replay` or
    /// `--sabotage`).
    pub replay: Option<ReplayReport>,
}

/// The replay from offset 0 and what the checker found after it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// Its summary line (`chaos: after a replay from offset 0 (…): 0 lost, …`).
    pub summary: String,
    /// Every count 0 (and not returned).
    pub ok: bool,
    /// What the replay did.
    pub replayed: Replayed,
    /// What the checker found after it.
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
    /// The replay from offset 0 and its check.
    pub replay: f64,
}

impl Report {
    /// The line printed when the final sweep did not return acknowledged messages.
    pub fn not_returned_line(&self) -> Option<String> {
        let n = self.findings.not_returned
            + self.replay.as_ref().map_or(0, |r| r.findings.not_returned);
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

/// What the replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Replayed {
    /// The replay's consumer group.
    pub group: String,
    /// The replay's DLQ topic.
    pub dlq: String,
    /// Records in the topic (all replayed).
    pub records: i64,
    /// kill -9 of a replaying consumer (restarted at once).
    pub kills: usize,
    /// From the fleet's start to the end of the drain.
    pub secs: f64,
    /// The replay fleet's starts, kills and exits.
    pub fleet: crate::fleet::FleetStats,
}
