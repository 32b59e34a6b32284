//! Coalesced single-key reads: a `get` that arrives while another read of its lane is under way
//! waits for the next round trip, which serves every key queued meanwhile with one epoch check.
//!
//! Why: the epoch check (a pinned script reading `INFO replication`) costs Redis ~13 µs, a hash
//! read ~0.4 µs (BENCHMARKS.md, P8). One check per round trip instead of one per key leaves the
//! guarantee as it is — every hit was filled in the epoch Redis serves at the moment of the read
//! — and divides its price by the number of callers waiting. An idle cache reads at once, alone.
//! Rounds run in a task of their own (the per-lane queue of [`crate::queues`]), so a caller that
//! stops waiting never leaves the others behind it waiting.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::{Cache, Cached};
use crate::queues::SessionQueues;

/// Lanes of coalesced reads (keys share them by hash): one round trip in flight per lane.
const LANES: usize = 4;
/// Most keys one coalesced round trip reads.
const ROUND_MAX: usize = 256;
const LANE_NAMES: [&str; LANES] = ["0", "1", "2", "3"];

/// A read's answer: a hit (`Some`), a miss, or why Redis could not answer.
type Probed = Result<Option<Cached>, String>;

/// One queued read.
pub(super) struct Waiter {
    key: String,
    reply: tokio::sync::oneshot::Sender<Probed>,
}

/// The lanes' queues.
pub(super) type Lanes = Arc<SessionQueues<Waiter>>;

pub(super) fn lanes() -> Lanes {
    Arc::new(SessionQueues::new(LANES))
}

fn lane_of(key: &str) -> &'static str {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    LANE_NAMES[(h.finish() % LANES as u64) as usize]
}

impl Cache {
    /// The probe of one key, in the next round trip of its lane (see the module docs).
    pub(super) async fn probe_coalesced(&self, key: &str) -> Probed {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let waiter = Waiter {
            key: key.to_owned(),
            reply,
        };
        let lane = lane_of(key);
        if let Some(first) = self.inner.lanes.queue_or_lead(lane, waiter) {
            let cache = self.clone();
            let serve = move |round: Vec<Waiter>| {
                let cache = cache.clone();
                async move { cache.serve_round(round).await }
            };
            self.inner
                .lanes
                .spawn_drain(lane, vec![first], ROUND_MAX, serve);
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the round serving this read ended without an answer".into()))
    }

    /// One round trip for every key of `round`; each waiter gets its own answer.
    async fn serve_round(&self, round: Vec<Waiter>) {
        let keys: Vec<String> = round.iter().map(|w| w.key.clone()).collect();
        match self.probe(&keys).await {
            Ok(probed) => {
                for (waiter, answer) in round.into_iter().zip(probed) {
                    let _ = waiter.reply.send(Ok(answer));
                }
            }
            Err(e) => {
                let e = e.to_string();
                for waiter in round {
                    let _ = waiter.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
