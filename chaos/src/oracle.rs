//! The online history oracle: while the load and the faults run, it reads history the way clients
//! do (`chatlog_store::history::History`: `latest`, `after`, `get` on random sessions, at
//! `oracle_rate` reads per second) and records what each answer claimed; after the drain it reads
//! every session once more from seq 0 to its end (`after` page by page, the "sweep"). Two
//! promises are checked:
//!
//! - **No false `missing`.** `missing` is final for a client: it stops asking for those seqs. A
//!   seq reported missing that holds an acknowledged message is a *false missing* when the read
//!   began after that message's ack (it was durable in Kafka, so it will be written), or less than
//!   the settle horizon after its allocation (a gap that young must be reported `pending`, not
//!   `missing`: its send may still be retried, or another producer's send may still be in
//!   flight). Only a message allocated more than the horizon before the read and acknowledged
//!   after it may have been reported missing (its producer broke the horizon, not history).
//!   Acknowledged seqs that the final sweep neither returned nor reported are counted apart
//!   (`not returned`: history's view of the session ends below them, e.g. a window whose head went
//!   back in a rollback and got no message since); they fail the run too.
//! - **No message comes back as another.** Each message a read returns must carry the content of
//!   the message its client_msg_id names (session, sender, types, content, send time, ext — or,
//!   once mutated, one of that message's edit contents, or no content and no ext); a
//!   msg_id returned at a seq where that msg_id was acknowledged must be that acknowledged
//!   message; and a seq acknowledged for a message before the read began must not come back
//!   holding another message (an *overwrite* seen online).
//!
//! The judging is in plain functions ([`observe`], [`judge_missing`]) so that the checker's
//! self-test can feed them hand-made histories.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatlog_schemas::{ChatMessage, MessageState};
use chatlog_store::history::History;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::events::Events;
use crate::load::{Ack, LiveAck, Load, Plan, StateKey};

/// Looks up acknowledged messages by seq while the run goes on.
pub trait Acked {
    /// The message acknowledged at `(s, seq)` so far, if any.
    fn acked_at_seq(&self, s: usize, seq: i64) -> Option<LiveAck>;
}

impl Acked for Load {
    fn acked_at_seq(&self, s: usize, seq: i64) -> Option<LiveAck> {
        Load::acked_at_seq(self, s, seq)
    }
}

impl Acked for BTreeMap<(usize, i64), LiveAck> {
    fn acked_at_seq(&self, s: usize, seq: i64) -> Option<LiveAck> {
        self.get(&(s, seq)).cloned()
    }
}

/// When a `(session, seq)` was reported missing.
#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    /// Start of the first read that said so (s since the run started).
    pub first: f64,
    /// Start of the last read that said so.
    pub last: f64,
    /// The call of the first such read.
    pub op: &'static str,
}

/// What the oracle's reads claimed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observations {
    /// Reads answered.
    pub reads: u64,
    /// Reads that failed (Redis or CQL down: history may fail then).
    pub read_errors: u64,
    /// Messages the reads returned.
    pub messages_seen: u64,
    /// Seqs reported `pending` (summed over reads).
    pub pending_reported: u64,
    /// `(session, seq)` reported missing, with when.
    #[serde(skip)]
    pub missing: BTreeMap<(usize, i64), Seen>,
    /// Acknowledged messages `(session, message number)` seen overwritten, with an example text.
    #[serde(skip)]
    pub overwritten: BTreeMap<(usize, usize), String>,
    /// `(session, seq)` that came back with another message's content, with an example text.
    #[serde(skip)]
    pub content_mismatches: BTreeMap<(usize, i64), String>,
    /// Acknowledged `(session, seq)` the final sweep neither returned nor reported missing.
    #[serde(skip)]
    pub not_returned: BTreeMap<(usize, i64), String>,
    /// What the final sweep returned at each `(session, seq)`: the checker holds the mutated
    /// messages' copies to their expected state.
    #[serde(skip)]
    pub final_copies: BTreeMap<(usize, i64), FinalCopy>,
}

/// A message as the final sweep returned it (the parts a mutation changes).
#[derive(Debug, Clone)]
pub struct FinalCopy {
    /// Its msg_id.
    pub msg_id: String,
    /// Its state.
    pub key: StateKey,
    /// Its ext.
    pub ext: BTreeMap<String, String>,
}

/// Whether `m` carries exactly the content of message `j` of session `s` (everything but the
/// fields the producer assigns: seq, msg_id, server time) in some state: as sent, edited with
/// one of the load's edit contents of that message, or recalled or deleted (no content, no ext).
/// Which state it must be in is the checker's business (after the drain), not the online reads'
/// (a read may see a state a newer acknowledged mutation has not replaced yet).
fn same_content(plan: &Plan, s: usize, j: usize, m: &ChatMessage) -> bool {
    let want = plan.message(s, j);
    let content = match &m.state {
        MessageState::Normal => m.content == want.content && m.ext == want.ext,
        MessageState::Edited { .. } => plan.is_edit_of(s, j, &m.content) && m.ext == want.ext,
        MessageState::Recalled { .. } | MessageState::Deleted { .. } => {
            m.content.is_empty() && m.ext.is_empty()
        }
    };
    m.client_msg_id == want.client_msg_id
        && m.session_id == want.session_id
        && m.session_type == want.session_type
        && m.sender_id == want.sender_id
        && m.content_type == want.content_type
        && content
        && m.send_time_ms == want.send_time_ms
}

/// Records one answer of history for session `s`, read by `op` starting at `at` (s since the run
/// started): the messages it returned and the seqs it reported missing and pending.
#[allow(clippy::too_many_arguments)]
pub fn observe(
    obs: &mut Observations,
    plan: &Plan,
    acked: &impl Acked,
    s: usize,
    op: &'static str,
    at: f64,
    messages: &[ChatMessage],
    missing: &[i64],
    pending: &[i64],
) {
    obs.reads += 1;
    obs.messages_seen += messages.len() as u64;
    obs.pending_reported += pending.len() as u64;
    for &seq in missing {
        obs.missing
            .entry((s, seq))
            .and_modify(|seen| {
                seen.first = seen.first.min(at);
                seen.last = seen.last.max(at);
            })
            .or_insert(Seen {
                first: at,
                last: at,
                op,
            });
    }
    for m in messages {
        let index = Plan::index_of(&m.client_msg_id)
            .filter(|&j| j < plan.per_session.get(s).copied().unwrap_or(0));
        if m.session_id != plan.session_id(s) || !index.is_some_and(|j| same_content(plan, s, j, m))
        {
            obs.content_mismatches.entry((s, m.seq)).or_insert_with(|| {
                format!(
                    "{op} at {at:.1}s: {} seq {} msg_id {} ({}) does not carry the content of the \
                     message its client_msg_id names",
                    plan.session_id(s),
                    m.seq,
                    m.msg_id,
                    m.client_msg_id
                )
            });
        }
        let Some(live) = acked.acked_at_seq(s, m.seq) else {
            continue;
        };
        if live.msg_id == m.msg_id {
            if index != Some(live.index) {
                obs.content_mismatches.entry((s, m.seq)).or_insert_with(|| {
                    format!(
                        "{op} at {at:.1}s: {} seq {}: msg_id {} came back as {}, acknowledged for {}",
                        plan.session_id(s),
                        m.seq,
                        m.msg_id,
                        m.client_msg_id,
                        Plan::client_msg_id(live.index)
                    )
                });
            }
        } else if live.acked_at < at {
            obs.overwritten.entry((s, live.index)).or_insert_with(|| {
                format!(
                    "{op} at {at:.1}s: {} seq {} holds msg_id {} ({}), but {} was acknowledged \
                     there as msg_id {} at {:.1}s",
                    plan.session_id(s),
                    m.seq,
                    m.msg_id,
                    m.client_msg_id,
                    Plan::client_msg_id(live.index),
                    live.msg_id,
                    live.acked_at
                )
            });
        }
    }
}

/// The false missing among `obs` (see the module docs): `(session, seq)` → why. `alloc_at` turns
/// a server time (µs since the epoch) into seconds since the run started.
pub fn judge_missing(
    obs: &Observations,
    plan: &Plan,
    acks: &[Vec<Option<Ack>>],
    alloc_at: impl Fn(i64) -> f64,
    horizon_secs: f64,
) -> BTreeMap<(usize, i64), String> {
    let mut by_seq: BTreeMap<(usize, i64), Vec<&Ack>> = BTreeMap::new();
    for ack in acks.iter().flatten().flatten() {
        if obs.missing.contains_key(&(ack.session, ack.seq)) {
            by_seq.entry((ack.session, ack.seq)).or_default().push(ack);
        }
    }
    let mut out = BTreeMap::new();
    for (&(s, seq), seen) in &obs.missing {
        for ack in by_seq.get(&(s, seq)).into_iter().flatten() {
            let allocated = alloc_at(ack.server_time_us);
            let why = if ack.acked_at <= seen.last {
                Some(format!(
                    "reported missing by a read at {:.1}s ({}), after its ack at {:.1}s",
                    seen.last, seen.op, ack.acked_at
                ))
            } else if seen.first - allocated < horizon_secs {
                Some(format!(
                    "reported missing by a read at {:.1}s ({}), {:.1}s after its allocation \
                     (settle horizon {horizon_secs:.0}s); acknowledged at {:.1}s",
                    seen.first,
                    seen.op,
                    seen.first - allocated,
                    ack.acked_at
                ))
            } else {
                None
            };
            if let Some(why) = why {
                out.entry((s, seq)).or_insert_with(|| {
                    format!(
                        "{} seq {} ({}): {why}",
                        plan.session_id(s),
                        seq,
                        Plan::client_msg_id(ack.index)
                    )
                });
            }
        }
    }
    out
}

/// The running oracle.
pub struct Oracle {
    history: History,
    load: Load,
    events: Events,
    obs: Arc<Mutex<Observations>>,
    window_size: usize,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn lock(obs: &Mutex<Observations>) -> std::sync::MutexGuard<'_, Observations> {
    obs.lock().unwrap_or_else(|e| e.into_inner())
}

impl Oracle {
    /// Starts reading at `rate` reads per second (0: no online reads; the sweep still runs).
    pub fn start(
        history: History,
        load: Load,
        events: Events,
        rate: f64,
        window_size: usize,
        seed: u64,
    ) -> Oracle {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let mut oracle = Oracle {
            history,
            load,
            events,
            obs: Arc::default(),
            window_size,
            stop,
            task: None,
        };
        if rate > 0.0 {
            let reader = oracle.clone_reader();
            oracle.task = Some(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ 0x0_0AC1E);
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = tick.tick() => reader.read_once(&mut rng).await,
                        _ = stopped.changed() => break,
                    }
                }
            }));
        }
        oracle
    }

    fn clone_reader(&self) -> Reader {
        Reader {
            history: self.history.clone(),
            load: self.load.clone(),
            events: self.events.clone(),
            obs: self.obs.clone(),
            window_size: self.window_size,
        }
    }

    /// Stops the online reads.
    pub async fn stop(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let o = lock(&self.obs);
        self.events.log(format!(
            "oracle: {} reads ({} failed), {} messages seen, {} seqs reported missing, {} \
             pending",
            o.reads,
            o.read_errors,
            o.messages_seen,
            o.missing.len(),
            o.pending_reported
        ));
    }

    /// After the drain: every session read from seq 0 to its end with `after`; acknowledged seqs
    /// neither returned nor reported missing are recorded in `not_returned`.
    pub async fn sweep(&self) -> anyhow::Result<()> {
        let reader = self.clone_reader();
        let sessions = self.load.plan().sessions;
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..sessions)
            .map(|s| {
                let reader = &reader;
                async move { reader.sweep_session(s).await }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        Ok(())
    }

    /// An oracle reading the same history for the same load, with no observations yet and no
    /// online reads: for a second [`Oracle::sweep`] (after the replay).
    pub fn fresh(&self) -> Oracle {
        Oracle {
            history: self.history.clone(),
            load: self.load.clone(),
            events: self.events.clone(),
            obs: Arc::default(),
            window_size: self.window_size,
            stop: tokio::sync::watch::channel(false).0,
            task: None,
        }
    }

    /// What was seen so far.
    pub fn observations(&self) -> Observations {
        lock(&self.obs).clone()
    }
}

/// A handle the reading task and the sweep share.
struct Reader {
    history: History,
    load: Load,
    events: Events,
    obs: Arc<Mutex<Observations>>,
    window_size: usize,
}

impl Reader {
    fn record(&self, s: usize, op: &'static str, at: f64, page: &chatlog_store::history::Page) {
        observe(
            &mut lock(&self.obs),
            self.load.plan(),
            &self.load,
            s,
            op,
            at,
            &page.messages,
            &page.missing_seqs().collect::<Vec<_>>(),
            &page.pending_seqs().collect::<Vec<_>>(),
        );
    }

    async fn read_once(&self, rng: &mut StdRng) {
        let plan = self.load.plan();
        let s = rng.random_range(0..plan.sessions);
        let session_id = plan.session_id(s);
        let (seqs, _head) = self.load.acked_seqs(s, 32);
        let at = self.events.now();
        let choice = rng.random_range(0..10);
        let (op, result) = if choice < 4 || seqs.is_empty() {
            let n = rng.random_range(1..=2 * self.window_size);
            ("latest", self.history.latest(&session_id, n).await)
        } else if choice < 8 {
            let from = seqs.choose(rng).copied().unwrap_or(1);
            let x = (from - 1 - rng.random_range(0..50)).max(0);
            ("after", self.history.after(&session_id, x, 200).await)
        } else {
            let pick: Vec<i64> = seqs.choose_multiple(rng, 20).copied().collect();
            ("get", self.history.get(&session_id, &pick).await)
        };
        match result {
            Ok(page) => self.record(s, op, at, &page),
            Err(_) => lock(&self.obs).read_errors += 1,
        }
    }

    async fn sweep_session(&self, s: usize) -> anyhow::Result<()> {
        let session_id = self.load.plan().session_id(s);
        let at = self.events.now();
        let mut returned = std::collections::BTreeSet::new();
        let mut reported = std::collections::BTreeSet::new();
        let mut cursor = 0;
        loop {
            // A connection from before a Redis restart fails its first command: try again.
            let mut tries = 0;
            let page = loop {
                match self.history.after(&session_id, cursor, 1000).await {
                    Ok(page) => break page,
                    Err(e) if tries < 5 => {
                        tries += 1;
                        self.events
                            .log(format!("sweep {session_id}: {e}; reading again"));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            self.record(s, "sweep", at, &page);
            returned.extend(page.messages.iter().map(|m| m.seq));
            {
                let mut obs = lock(&self.obs);
                for m in &page.messages {
                    obs.final_copies.insert(
                        (s, m.seq),
                        FinalCopy {
                            msg_id: m.msg_id.clone(),
                            key: StateKey::of(m),
                            ext: m.ext.clone(),
                        },
                    );
                }
            }
            reported.extend(page.missing_seqs());
            match page.next {
                Some(next) if next > cursor => cursor = next,
                _ => break,
            }
        }
        let (all, _) = self.load.acked_seqs(s, usize::MAX);
        let mut obs = lock(&self.obs);
        for seq in all {
            if !returned.contains(&seq) && !reported.contains(&seq) {
                obs.not_returned.entry((s, seq)).or_insert_with(|| {
                    format!(
                        "{session_id} seq {seq}: acknowledged, but a complete after(0) sweep at \
                         {at:.1}s neither returned it nor reported it"
                    )
                });
            }
        }
        Ok(())
    }
}
