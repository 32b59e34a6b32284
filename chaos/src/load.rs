//! The load: messages sent through the real producer library (`chatlog_producer::Producer`) the
//! way Logic sends them, and poison records produced raw with rdkafka to the same topic. Every
//! acknowledged send and every poison record is recorded: that history is what the checker holds
//! the stores to.
//!
//! - Each session sends sequentially (the next message after the previous one's ack) through
//!   producer instance A; sessions run concurrently, with at most `concurrency` sends in flight
//!   and paced to `rate` messages/s overall.
//! - During a `two_producers` fault, paired sessions send two messages at a time: one through A,
//!   one through B, a second `Producer` with its own Kafka client, CQL session, Redis connection
//!   and seq allocator (two Logic instances in one process: everything a second process would
//!   have but the address space). Their seqs are allocated by two allocators and produced by two
//!   Kafka clients at once, so a session's Kafka order may differ from its seq order.
//! - A `late_send` claims a session's next message, sends it through the *broken* instance (its
//!   Kafka is a closed port: the seq is allocated, the produce times out after 1 s), and a few
//!   seconds later, after later messages of the session landed, through A with the same
//!   client_msg_id: the idempotency record gives it its first seq back, below the session's head.
//! - A failed send is retried with the same `client_msg_id` (backoff 0.2 → 5 s, for up to
//!   [`GIVE_UP`]), as Logic does: the producer's idempotency record gives the same seq back.
//! - A share of acknowledged messages is sent a second time right away (a client retry after a
//!   lost ack): it must return the same seq and msg_id, marked duplicate.
//! - A `poll_zombie` fault can hold new sends back for a moment ([`Load::hold`]).
//! - **Mutations**: after an ack, with probability `mutation_ratio` (seeded per message), a task
//!   makes 1–3 mutations of the message through instance A — edit (by the sender, with a new
//!   content unique to that edit), recall (by the sender) or delete for everyone (by the sender or
//!   an admin) — each after 0–4 s, so they run beside later sends of the session and beside the
//!   faults, with at most `concurrency / 2` attempts in flight of their own. Each is retried like
//!   a send (backoff 0.2 → 5 s, up to [`GIVE_UP`]) while its errors are retriable (`not_found`
//!   while the message is on its way to the stores, `store`, `kafka`); a Kafka error may have
//!   produced it anyway, so such attempts are counted as *uncertain*. Recorded per mutation: what
//!   was asked, by whom, the attempts (uncertain ones apart) and how it ended: acknowledged (the
//!   returned message's [`StateKey`]), refused (e.g. `final`: an edit of a recalled message) or
//!   given up.
//!
//! Recorded per ack: the seq, msg_id, server time, Kafka partition and offset, attempts, when its
//! first attempt began and when it was acknowledged, and which instance sent it. The checker's
//! order rule uses those times: whatever was acknowledged before a send began must be below it
//! in seq and in its partition's offsets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use chatlog_producer::{Actor, NewMessage, Producer};
use chatlog_store::repo::sessions::MemberRole;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Mutex, Semaphore, watch};

use crate::events::Events;
pub use crate::record::{
    Ack, ConflictingResend, LiveAck, LoadResult, Mutation, MutationAck, MutationKind,
    MutationOutcome, Plan, PoisonRecord, Resend, StateKey, Via, payload_hash, sha256_hex,
};

/// How long one message is retried before the harness gives up on it (it is then "unacked").
pub const GIVE_UP: Duration = Duration::from_secs(300);

/// The producer instances of a run.
pub struct Producers {
    /// The main one (Logic instance A).
    pub a: Producer,
    /// A second, independent instance (own Kafka client, CQL session, Redis connection and seq
    /// allocator): Logic instance B, which sends to the same sessions as A during a
    /// `two_producers` fault.
    pub b: Producer,
    /// An instance whose Kafka is unreachable (bootstrap on a closed port, 1 s message timeout),
    /// sharing Redis and CQL with the others: its sends allocate a seq and then fail to produce.
    /// A `late_send` starts there and is retried later through `a`.
    pub broken: Producer,
}

struct Shared {
    plan: Plan,
    producers: Producers,
    events: Events,
    permits: Semaphore,
    /// Mutation attempts in flight: apart from the sends' permits, since an attempt may wait up
    /// to the producer's `wait_for_target` for a message not stored yet, which would hold the
    /// sends back below their rate.
    mutation_permits: Semaphore,
    ticket: AtomicU64,
    acked: AtomicU64,
    rate: f64,
    resend_ratio: f64,
    /// Share of acknowledged messages that get mutations.
    mutation_ratio: f64,
    seed: u64,
    /// Per session: the next message number to send (claimed by the worker, its partner during
    /// `two_producers`, and late sends).
    next: Vec<AtomicUsize>,
    /// Per session: whether instance B sends alongside A now.
    paired: Vec<AtomicBool>,
    /// Open (true) unless a fault holds new sends back.
    gate: watch::Sender<bool>,
    /// Per session: acknowledged seqs (for the oracle).
    live: Vec<std::sync::Mutex<BTreeMap<i64, LiveAck>>>,
    /// Late sends under way.
    extra: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Acknowledged messages of `wrongtype` sessions: expected in the DLQ as `write_failed`.
    poisoned: std::sync::Mutex<Vec<PoisonRecord>>,
    out: Mutex<LoadResult>,
}

/// The load of a run: created before the faults start (they act on it), run with [`Load::run`].
/// Cheap to clone.
#[derive(Clone)]
pub struct Load {
    shared: Arc<Shared>,
}

impl Load {
    /// The load of `plan` through `producers`; `mutation_ratio` of the acknowledged messages get
    /// 1–3 mutations.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: Plan,
        producers: Producers,
        events: Events,
        concurrency: usize,
        rate: f64,
        resend_ratio: f64,
        mutation_ratio: f64,
        seed: u64,
    ) -> Load {
        let acks = plan.per_session.iter().map(|&n| vec![None; n]).collect();
        let sessions = plan.sessions;
        Load {
            shared: Arc::new(Shared {
                plan,
                producers,
                events,
                permits: Semaphore::new(concurrency),
                mutation_permits: Semaphore::new((concurrency / 2).max(1)),
                ticket: AtomicU64::new(0),
                acked: AtomicU64::new(0),
                rate,
                resend_ratio,
                mutation_ratio,
                seed,
                next: (0..sessions).map(|_| AtomicUsize::new(0)).collect(),
                paired: (0..sessions).map(|_| AtomicBool::new(false)).collect(),
                gate: watch::channel(true).0,
                live: (0..sessions).map(|_| Default::default()).collect(),
                extra: Default::default(),
                poisoned: Default::default(),
                out: Mutex::new(LoadResult {
                    acks,
                    ..LoadResult::default()
                }),
            }),
        }
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.shared.plan
    }

    /// Holds new sends back (those under way finish) until [`Load::resume`].
    pub fn hold(&self) {
        self.shared.gate.send_replace(false);
    }

    /// Open (true) unless [`Load::hold`] holds sends back; poison production follows it too.
    pub fn gate(&self) -> watch::Receiver<bool> {
        self.shared.gate.subscribe()
    }

    /// Lets sends go again.
    pub fn resume(&self) {
        self.shared.gate.send_replace(true);
    }

    /// Makes instance B send alongside A to `sessions` (`on`), or stops it.
    pub fn pair(&self, sessions: &[usize], on: bool) {
        for &s in sessions {
            self.shared.paired[s].store(on, Ordering::Relaxed);
        }
    }

    /// Sessions with at least `left` messages still to send.
    pub fn sessions_with(&self, left: usize) -> Vec<usize> {
        (0..self.shared.plan.sessions)
            .filter(|&s| {
                self.shared.next[s].load(Ordering::Relaxed) + left
                    <= self.shared.plan.per_session[s]
            })
            .collect()
    }

    /// The acknowledged message at `(s, seq)`, if any.
    pub fn acked_at_seq(&self, s: usize, seq: i64) -> Option<LiveAck> {
        lock(&self.shared.live[s]).get(&seq).cloned()
    }

    /// Up to `n` acknowledged seqs of session `s`, spread over its history, and its highest.
    pub fn acked_seqs(&self, s: usize, n: usize) -> (Vec<i64>, Option<i64>) {
        let live = lock(&self.shared.live[s]);
        let step = (live.len() / n.max(1)).max(1);
        let seqs = live.keys().step_by(step).take(n).copied().collect();
        (seqs, live.keys().next_back().copied())
    }

    /// A late send: claims session `s`'s next message, sends it through the broken instance
    /// (the seq is allocated, the produce fails), and `hold` later sends it again through A with
    /// the same client_msg_id, after later messages of the session landed. Returns the message
    /// number, or `None` when the session has nothing left to send.
    pub fn late_send(&self, s: usize, hold: Duration) -> Option<usize> {
        let j = claim(&self.shared, s)?;
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            let message = shared.plan.message(s, j);
            let first_try_at = shared.events.now();
            let mut attempts = 0;
            let mut produce_failed = false;
            // Until the broken instance has allocated (a Redis or CQL outage fails earlier).
            for _ in 0..20 {
                attempts += 1;
                match shared.producers.broken.send(message.clone()).await {
                    Ok(sent) => {
                        // Cannot happen (its Kafka is unreachable); record it as sent.
                        shared.events.log(format!(
                            "late_send {}/{}: the broken producer got an ack (seq {})",
                            message.session_id, message.client_msg_id, sent.seq
                        ));
                        break;
                    }
                    Err(e) if e.reason() == "kafka" => {
                        produce_failed = true;
                        break;
                    }
                    Err(e) => {
                        record_error(&shared, &e).await;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            tokio::time::sleep(hold).await;
            let _ = shared.gate.subscribe().wait_for(|open| *open).await;
            let Some((sent, more)) = send_with_retry(&shared, &shared.producers.a, &message).await
            else {
                return;
            };
            shared.events.log(format!(
                "late_send {}/{}: produce {} at {first_try_at:.1}s, re-sent {:.1}s later: seq {} \
                 (duplicate of the first allocation: {})",
                message.session_id,
                message.client_msg_id,
                if produce_failed {
                    "failed after allocating"
                } else {
                    "never allocated"
                },
                shared.events.now() - first_try_at,
                sent.seq,
                sent.duplicate
            ));
            let ack = record_ack(
                &shared,
                s,
                j,
                sent,
                attempts + more,
                first_try_at,
                Via::Late,
            )
            .await;
            spawn_mutations(&shared, &ack);
        });
        lock(&self.shared.extra).push(task);
        Some(j)
    }

    /// Sends message `j` of a session outside the plan (a `wrongtype` fault's) through instance A
    /// until acknowledged, and records it as poison the DLQ must hold as `write_failed`; returns
    /// its partition and offset.
    pub async fn send_poisoned(&self, session_id: &str, j: usize) -> anyhow::Result<(i32, i64)> {
        let mut message = self.shared.plan.message(0, j);
        message.session_id = session_id.to_owned();
        message.content = format!("chaos wrongtype {session_id} #{j}").into_bytes();
        let (sent, _) = send_with_retry(&self.shared, &self.shared.producers.a, &message)
            .await
            .with_context(|| format!("{session_id}: the send was given up"))?;
        lock(&self.shared.poisoned).push(PoisonRecord {
            key: session_id.to_owned(),
            kind: "wrongtype",
            reasons: &["write_failed"],
            partition: sent.partition,
            offset: sent.offset,
            payload_hash: None,
            payload_len: 0,
            payload_sha256: None,
        });
        Ok((sent.partition, sent.offset))
    }

    /// The run's event log.
    pub fn events(&self) -> &Events {
        &self.shared.events
    }

    /// The messages [`Load::send_poisoned`] sent, once the faults are over.
    pub fn poisoned(&self) -> Vec<PoisonRecord> {
        std::mem::take(&mut *lock(&self.shared.poisoned))
    }

    /// Sends every message of the plan (and the resends); returns when all are acknowledged or
    /// given up, late sends included.
    pub async fn run(&self) {
        let shared = &self.shared;
        let start = tokio::time::Instant::now();
        let workers: Vec<_> = (0..shared.plan.sessions)
            .map(|s| {
                let shared = shared.clone();
                tokio::spawn(async move { session_worker(shared, s, start).await })
            })
            .collect();
        let progress = {
            let shared = shared.clone();
            let total: usize = shared.plan.per_session.iter().sum();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(15));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let acked = shared.acked.load(Ordering::Relaxed);
                    shared
                        .events
                        .log(format!("load: {acked} of {total} acknowledged"));
                }
            })
        };
        for w in workers {
            let _ = w.await;
        }
        loop {
            let extra: Vec<_> = std::mem::take(&mut *lock(&shared.extra));
            if extra.is_empty() {
                break;
            }
            for t in extra {
                let _ = t.await;
            }
        }
        progress.abort();
        let _ = progress.await;
    }

    /// The history, once [`Load::run`] returned (the faults may still hold a clone).
    pub async fn result(&self) -> LoadResult {
        std::mem::take(&mut *self.shared.out.lock().await)
    }

    /// Closes the producers (flushing what is under way).
    pub async fn close(&self, timeout: Duration) {
        let p = &self.shared.producers;
        for (name, producer) in [("a", &p.a), ("b", &p.b), ("broken", &p.broken)] {
            if let Err(e) = producer.flush(timeout).await
                && name != "broken"
            {
                self.shared
                    .events
                    .log(format!("producer {name} flush: {e}"));
            }
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The next message number of session `s` to send, if any is left.
fn claim(shared: &Shared, s: usize) -> Option<usize> {
    let n = shared.plan.per_session[s];
    shared.next[s]
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |j| {
            (j < n).then_some(j + 1)
        })
        .ok()
}

async fn session_worker(shared: Arc<Shared>, s: usize, start: tokio::time::Instant) {
    let mut rng = StdRng::seed_from_u64(shared.seed ^ (s as u64).wrapping_mul(0x9E37_79B9));
    let mut gate = shared.gate.subscribe();
    loop {
        let paired = shared.paired[s].load(Ordering::Relaxed);
        let Some(j) = claim(&shared, s) else { break };
        let partner = if paired { claim(&shared, s) } else { None };
        let tickets = 1 + u64::from(partner.is_some());
        let ticket = shared.ticket.fetch_add(tickets, Ordering::Relaxed);
        let due = start + Duration::from_secs_f64(ticket as f64 / shared.rate);
        tokio::time::sleep_until(due).await;
        let _ = gate.wait_for(|open| *open).await;
        let resend = match rng.random_bool(shared.resend_ratio) {
            false => AfterAck::No,
            true if rng.random_bool(0.5) => AfterAck::Conflicting,
            true => AfterAck::Same,
        };
        match partner {
            // Both instances at once: seqs of one session allocated by two allocators and
            // produced by two Kafka clients concurrently.
            Some(k) => {
                tokio::join!(
                    send_one(&shared, s, j, Via::A, resend),
                    send_one(&shared, s, k, Via::B, AfterAck::No)
                );
            }
            None => send_one(&shared, s, j, Via::A, resend).await,
        }
    }
}

/// What follows a message's ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterAck {
    /// Nothing.
    No,
    /// The same message again (a client whose ack was lost).
    Same,
    /// The same client_msg_id with another content (must be refused).
    Conflicting,
}

/// Sends message `j` of session `s` through `via` until acknowledged, records the ack, and
/// resends it once (`resend`) with the same client_msg_id.
async fn send_one(shared: &Arc<Shared>, s: usize, j: usize, via: Via, resend: AfterAck) {
    let producer = match via {
        Via::B => &shared.producers.b,
        _ => &shared.producers.a,
    };
    let message = shared.plan.message(s, j);
    let first_try_at = shared.events.now();
    let Some((sent, attempts)) = send_with_retry(shared, producer, &message).await else {
        return;
    };
    let ack = record_ack(shared, s, j, sent, attempts, first_try_at, via).await;
    spawn_mutations(shared, &ack);
    if resend == AfterAck::Conflicting {
        let mut edited = message.clone();
        edited
            .content
            .extend_from_slice(b" (edited: a conflicting resend)");
        let (outcome, acked_seq) = send_conflicting(shared, producer, &edited).await;
        shared.out.lock().await.conflicting.push(ConflictingResend {
            session: s,
            index: j,
            first_try_at,
            at: shared.events.now(),
            outcome,
            acked_seq,
        });
        return;
    }
    if resend == AfterAck::Same
        && let Some((again, _)) = send_with_retry(shared, producer, &message).await
    {
        shared.out.lock().await.resends.push(Resend {
            session: s,
            index: j,
            first_seq: ack.seq,
            seq: again.seq,
            same_msg_id: again.msg_id == ack.msg_id,
            duplicate: again.duplicate,
            first_acked_at: ack.acked_at,
            acked_at: shared.events.now(),
        });
    }
}

async fn record_ack(
    shared: &Shared,
    s: usize,
    j: usize,
    sent: chatlog_producer::Sent,
    attempts: u32,
    first_try_at: f64,
    via: Via,
) -> Ack {
    let ack = Ack {
        session: s,
        index: j,
        seq: sent.seq,
        msg_id: sent.msg_id,
        server_time_us: sent.server_time_us,
        partition: sent.partition,
        offset: sent.offset,
        attempts,
        first_try_at,
        acked_at: shared.events.now(),
        duplicate: sent.duplicate,
        via,
    };
    lock(&shared.live[s]).insert(
        ack.seq,
        LiveAck {
            index: j,
            msg_id: ack.msg_id.clone(),
            acked_at: ack.acked_at,
        },
    );
    shared.out.lock().await.acks[s][j] = Some(ack.clone());
    shared.acked.fetch_add(1, Ordering::Relaxed);
    ack
}

/// With probability `mutation_ratio` (seeded by the message, so a rerun with the same seed picks
/// the same messages), starts a task that makes 1–3 mutations of the acknowledged message `ack`;
/// [`Load::run`] waits for it.
fn spawn_mutations(shared: &Arc<Shared>, ack: &Ack) {
    let salt = ((ack.session as u64) << 32 | ack.index as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
    let mut rng = StdRng::seed_from_u64(shared.seed ^ 0x3D17_A7E5 ^ salt);
    if shared.mutation_ratio <= 0.0 || !rng.random_bool(shared.mutation_ratio.min(1.0)) {
        return;
    }
    let n = rng.random_range(1..=3usize);
    let (s, j, seq) = (ack.session, ack.index, ack.seq);
    let shared2 = shared.clone();
    let task = tokio::spawn(async move {
        let mut gate = shared2.gate.subscribe();
        for k in 0..n {
            // Some at once (the message may not be stored yet: `not_found`, retried), most a few
            // seconds later, beside later sends and the faults.
            let delay = if rng.random_bool(0.3) {
                0
            } else {
                rng.random_range(0..4000)
            };
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let _ = gate.wait_for(|open| *open).await;
            let kind = match rng.random_range(0..10) {
                0..=5 => MutationKind::Edit,
                6 | 7 => MutationKind::Recall,
                _ => MutationKind::DeleteForEveryone,
            };
            let by_admin = kind == MutationKind::DeleteForEveryone && rng.random_bool(0.5);
            mutate_one(&shared2, s, j, seq, k, kind, by_admin).await;
        }
    });
    lock(&shared.extra).push(task);
}

/// The admin who deletes for everyone in session `s` (a member with the Admin role).
pub fn admin_of(s: usize) -> String {
    format!("admin-{}", s % 7)
}

/// Makes the `k`-th mutation of message `j` of session `s` (at `seq`) through instance A until it
/// is acknowledged, refused or given up, and records it.
async fn mutate_one(
    shared: &Shared,
    s: usize,
    j: usize,
    seq: i64,
    k: usize,
    kind: MutationKind,
    by_admin: bool,
) {
    let plan = &shared.plan;
    let message = plan.message(s, j);
    let session_id = message.session_id;
    let (actor, by) = if by_admin {
        let admin = admin_of(s);
        (
            Actor::Member {
                user_id: admin.clone(),
                role: MemberRole::Admin,
            },
            admin,
        )
    } else {
        (Actor::Sender(message.sender_id.clone()), message.sender_id)
    };
    let content = plan.edit_content(s, j, k);
    let producer = &shared.producers.a;
    let first_try_at = shared.events.now();
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    let (mut attempts, mut uncertain_attempts) = (0, 0);
    let outcome = loop {
        attempts += 1;
        let result = {
            let Ok(_permit) = shared.mutation_permits.acquire().await else {
                break MutationOutcome::GaveUp("closed".into());
            };
            match kind {
                MutationKind::Edit => {
                    producer
                        .edit(&session_id, seq, content.clone(), &actor)
                        .await
                }
                MutationKind::Recall => producer.recall(&session_id, seq, &actor).await,
                MutationKind::DeleteForEveryone => {
                    producer.delete_for_everyone(&session_id, seq, &actor).await
                }
            }
        };
        match result {
            Ok(m) => {
                break MutationOutcome::Acked(MutationAck {
                    key: StateKey::of(&m.message),
                    unchanged: m.unchanged,
                    partition: m.partition,
                    offset: m.offset,
                });
            }
            Err(e) => {
                let reason = e.reason();
                *shared
                    .out
                    .lock()
                    .await
                    .mutation_errors
                    .entry(reason.to_owned())
                    .or_default() += 1;
                // Only a Kafka error comes after the record was handed to Kafka: it may be in
                // the topic. Every other error is raised before anything is produced.
                let produced_maybe = reason == "kafka";
                if produced_maybe {
                    uncertain_attempts += 1;
                }
                if !produced_maybe && !e.is_retriable() {
                    break MutationOutcome::Refused(reason.to_owned());
                }
                if started.elapsed() > GIVE_UP {
                    shared.events.log(format!(
                        "giving up on the {kind:?} of {session_id} seq {seq} after {attempts} \
                         attempts: {e}"
                    ));
                    break MutationOutcome::GaveUp(reason.to_owned());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let mutation = Mutation {
        session: s,
        index: j,
        seq,
        kind,
        by,
        content_hash: (kind == MutationKind::Edit).then(|| payload_hash(&content)),
        first_try_at,
        ended_at: shared.events.now(),
        attempts,
        uncertain_attempts,
        outcome,
    };
    shared.out.lock().await.mutations.push(mutation);
}

async fn record_error(shared: &Shared, e: &chatlog_producer::Error) {
    let mut out = shared.out.lock().await;
    *out.errors.entry(e.reason().to_owned()).or_default() += 1;
    if !e.is_retriable() {
        out.not_retriable_errors += 1;
    }
    if out.error_examples.len() < 10 {
        out.error_examples
            .push(format!("{:.1}s {}: {e}", shared.events.now(), e.reason()));
    }
}

/// Sends a conflicting version of an acknowledged message, retrying what is retriable; returns
/// the outcome (`conflict`, `acked`, or the last error's reason) and the seq of an ack.
async fn send_conflicting(
    shared: &Shared,
    producer: &Producer,
    message: &NewMessage,
) -> (String, Option<i64>) {
    let final_error = |e: &chatlog_producer::Error| e.reason() == "conflict" || !e.is_retriable();
    match send_until(shared, producer, message, final_error, false).await {
        None => ("closed".into(), None),
        Some((Ok(sent), _)) => {
            shared.events.log(format!(
                "conflicting resend {}/{} ACKNOWLEDGED with seq {}",
                message.session_id, message.client_msg_id, sent.seq
            ));
            ("acked".into(), Some(sent.seq))
        }
        Some((Err(e), _)) => (e.reason().to_owned(), None),
    }
}

/// Sends `message` until it is acknowledged; `None` when it is given up (logged).
async fn send_with_retry(
    shared: &Shared,
    producer: &Producer,
    message: &NewMessage,
) -> Option<(chatlog_producer::Sent, u32)> {
    // `settled`: the first allocation is older than the settle horizon allows to produce again;
    // Logic would look the seq up and resend under a new client_msg_id. The harness gives up
    // instead: the message shows as never acknowledged.
    let hopeless = |e: &chatlog_producer::Error| {
        matches!(e.reason(), "invalid" | "closed" | "config" | "settled")
    };
    match send_until(shared, producer, message, hopeless, true).await? {
        (Ok(sent), attempts) => Some((sent, attempts)),
        (Err(e), attempts) => {
            shared.events.log(format!(
                "giving up on {}/{} after {attempts} attempts: {e}",
                message.session_id, message.client_msg_id
            ));
            None
        }
    }
}

/// Sends `message` (one permit per attempt) until it is acknowledged, an error `is_final`, or
/// [`GIVE_UP`] has passed, with backoff 0.2 → 5 s; `record`: count every failed attempt in the
/// load's errors. Returns the last result and the attempts made; `None` once the load is closed.
async fn send_until(
    shared: &Shared,
    producer: &Producer,
    message: &NewMessage,
    is_final: impl Fn(&chatlog_producer::Error) -> bool,
    record: bool,
) -> Option<(Result<chatlog_producer::Sent, chatlog_producer::Error>, u32)> {
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = {
            let _permit = shared.permits.acquire().await.ok()?;
            producer.send(message.clone()).await
        };
        match result {
            Ok(sent) => return Some((Ok(sent), attempts)),
            Err(e) => {
                if record {
                    record_error(shared, &e).await;
                }
                if is_final(&e) || started.elapsed() > GIVE_UP {
                    return Some((Err(e), attempts));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_spreads_messages_and_names_round_trip() {
        let plan = Plan::new("r", 10, 3);
        assert_eq!(plan.per_session, vec![4, 3, 3]);
        assert_eq!(Plan::index_of(&Plan::client_msg_id(42)), Some(42));
        assert_eq!(Plan::index_of("other"), None);
        // Deterministic: the checker rebuilds exactly what was sent.
        assert_eq!(plan.message(2, 7), plan.message(2, 7));
        assert_ne!(plan.message(2, 7).content, plan.message(2, 8).content);
        assert!(plan.message(1, 3).session_id.ends_with("-s1"));
    }
}
