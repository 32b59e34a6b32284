//! The window reads of `latest(n)`, batched across sessions (issue 18, P5).
//!
//! # Why
//!
//! Read one at a time, each `latest` paid a transaction of its own — `MULTI`, the window-epoch
//! check script, `ZREVRANGE`, `EXEC` — and a round trip. Measured on Redis 7.0 with
//! `INFO commandstats`: the check script alone costs 6.7 µs per call (its `INFO replication`
//! 1.9 µs, the `GET` 0.14 µs, the rest Lua's per-call overhead), the `ZREVRANGE … 0 49` 2.7 µs; per
//! read Redis spent about twice what a bare `ZREVRANGE` costs it. So reads that arrive while
//! earlier ones are in flight wait, and the next call serves them together: one epoch read for all
//! of them, then each session's window-epoch key and newest members, in one atomic round trip
//! ([`PinnedScript::before_by_slot`]: one per slot on a Redis Cluster). A read compares its
//! window's epoch with the server's in the client — the same comparison the script made, on values
//! read atomically with the members.
//!
//! # How
//!
//! A dispatcher task (started by the first read, on the runtime it runs on) takes the reads from a
//! queue. It starts a call whenever fewer than [`LatestBatcher::calls`] are in flight, with every
//! read queued by then (at most [`MAX_READS`], [`MAX_MEMBERS`] members in all); while the calls in
//! flight are at the limit, reads accumulate. An idle reader's read goes out at once, alone.
//! A failed call fails each of its reads, which then read the table, as a failed read always did
//! — a server error in one session's commands (a window key holding another type) fails the
//! call's other reads with it.

use std::sync::{Arc, OnceLock};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::epoch::{EPOCH_READ_BODY, PinnedScript};
use crate::{RedisConnection, RedisConnections, keys};

/// Reads one call serves at most.
const MAX_READS: usize = 64;

/// Window members one call asks for at most (the sum of its reads' `n`): bounds its reply.
const MAX_MEMBERS: usize = 4096;

/// Reads waiting for a call, at most; a read beyond waits for room.
const QUEUE: usize = 1024;

/// A window read's answer: whether the window was written in the serving Redis's epoch, and its
/// newest members, newest first.
pub(super) type Answer = redis::RedisResult<(bool, Vec<Vec<u8>>)>;

/// One read waiting for a call.
struct Ask {
    sid: String,
    n: usize,
    reply: oneshot::Sender<Answer>,
}

/// Batches `latest(n)` window reads (see the module docs).
pub(super) struct LatestBatcher {
    redis: RedisConnections,
    epoch: Arc<PinnedScript>,
    queue: OnceLock<mpsc::Sender<Ask>>,
}

impl LatestBatcher {
    pub(super) fn new(redis: RedisConnections) -> LatestBatcher {
        LatestBatcher {
            redis,
            epoch: Arc::new(PinnedScript::new(EPOCH_READ_BODY, "window epoch")),
            queue: OnceLock::new(),
        }
    }

    /// Calls in flight at most: two per connection (each is multiplexed), at least two.
    fn calls(&self) -> usize {
        (2 * self.redis.count()).max(2)
    }

    /// The newest `n` members of `sid`'s window and whether it was written in this epoch.
    pub(super) async fn read(&self, sid: &str, n: usize) -> Answer {
        let queue = self.queue.get_or_init(|| self.start());
        let (reply, answer) = oneshot::channel();
        let ask = Ask {
            sid: sid.to_owned(),
            n: n.max(1),
            reply,
        };
        if queue.send(ask).await.is_err() {
            return Err(gone());
        }
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Starts the dispatcher on the current runtime; returns its queue.
    fn start(&self) -> mpsc::Sender<Ask> {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(dispatch(
            rx,
            self.redis.clone(),
            self.epoch.clone(),
            self.calls(),
        ));
        tx
    }
}

/// The reads' dispatcher ended (its runtime shut down): the caller reads the table.
fn gone() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "history: the window reads' dispatcher has stopped",
    ))
}

/// Takes reads from `queue` until every sender is gone, starting a call for all that are queued
/// whenever fewer than `calls` are in flight.
async fn dispatch(
    mut queue: mpsc::Receiver<Ask>,
    redis: RedisConnections,
    epoch: Arc<PinnedScript>,
    calls: usize,
) {
    let in_flight = Arc::new(Semaphore::new(calls));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // What queued while the calls in flight were at the limit goes in this one.
        let mut members = first.n;
        let mut asks = vec![first];
        while asks.len() < MAX_READS && members < MAX_MEMBERS {
            match queue.try_recv() {
                Ok(ask) => {
                    members += ask.n;
                    asks.push(ask);
                }
                Err(_) => break,
            }
        }
        let (con, epoch) = (redis.get(), epoch.clone());
        tokio::spawn(async move {
            let answers = call(&con, &epoch, &asks).await;
            for (ask, answer) in asks.into_iter().zip(answers) {
                // A reader that went away no longer waits for its answer.
                let _ = ask.reply.send(answer);
            }
            drop(permit);
        });
    }
}

/// One call for `asks`: the epoch, then each one's window-epoch key and newest members.
async fn call(con: &RedisConnection, epoch: &PinnedScript, asks: &[Ask]) -> Vec<Answer> {
    let mut reads = Vec::with_capacity(2 * asks.len());
    for ask in asks {
        let mut written_in = redis::cmd("GET");
        written_in.arg(keys::window_epoch(&ask.sid));
        let mut newest = redis::cmd("ZREVRANGE");
        newest.arg(keys::window(&ask.sid)).arg(0).arg(ask.n - 1);
        reads.push(written_in);
        reads.push(newest);
    }
    // A session's two commands share its hash tag, so its slot.
    let replies = epoch
        .before_by_slot(con, &reads, |i| keys::slot(&keys::window(&asks[i / 2].sid)))
        .await;
    let replies = match replies {
        Ok(replies) => replies,
        Err(e) => return asks.iter().map(|_| Err(e.clone())).collect(),
    };
    let mut replies = replies.into_iter();
    asks.iter()
        .map(|_| {
            let (Some((epoch, written_in)), Some((_, newest))) = (replies.next(), replies.next())
            else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "history: a batched window read lacks its replies",
                )));
            };
            let written_in: Option<String> = redis::from_redis_value(written_in)?;
            let members: Vec<Vec<u8>> = redis::from_redis_value(newest)?;
            Ok((written_in.as_deref() == Some(epoch.as_str()), members))
        })
        .collect()
}
