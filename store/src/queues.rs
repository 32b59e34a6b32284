//! Per-session queues for group commit: while one call of a session is under way, the requests
//! that arrive for it wait, and the next call serves all of them in arrival order.
//!
//! Used by the seq allocator's fast path ([`crate::seq`]) and by the producer's turns (a session's
//! sends allocated and handed to Kafka together). A session with an entry in the map has a call
//! under way; whoever finds no entry leads: it gets its own item back and starts serving. Queued
//! items are served by [`SessionQueues::drain`], a future meant for a task of its own, so no waiter
//! depends on a caller that may be cancelled; dropped before the queue is empty (a panic, a runtime
//! shutting down), it forgets the session's queue, so its waiters see their reply channels close
//! instead of waiting forever.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Queued items by session, in shards (sessions share a shard's lock by hash).
pub struct SessionQueues<T> {
    shards: Vec<Mutex<HashMap<String, Vec<T>>>>,
}

impl<T> SessionQueues<T> {
    fn shard(&self, session_id: &str) -> MutexGuard<'_, HashMap<String, Vec<T>>> {
        let mut h = DefaultHasher::new();
        session_id.hash(&mut h);
        // Nothing panics while holding this lock; take it anyway if something did.
        self.shards[(h.finish() % self.shards.len() as u64) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Send + 'static> SessionQueues<T> {
    /// Empty queues over `shards` locks (at least one).
    pub fn new(shards: usize) -> SessionQueues<T> {
        SessionQueues {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    /// Queues `item` behind the session's call under way and returns `None`; or, if the session
    /// is idle, marks it busy and returns the item: the caller leads and must serve it, then
    /// [`release`](Self::release) the session or [`drain`](Self::drain) it.
    pub fn queue_or_lead(&self, session_id: &str, item: T) -> Option<T> {
        let mut shard = self.shard(session_id);
        match shard.get_mut(session_id) {
            Some(waiting) => {
                waiting.push(item);
                None
            }
            None => {
                shard.insert(session_id.to_owned(), Vec::new());
                Some(item)
            }
        }
    }

    /// Marks the session idle if nothing queued meanwhile (`true`); otherwise it stays busy and
    /// its queue must be [`drain`](Self::drain)ed.
    pub fn release(&self, session_id: &str) -> bool {
        let mut shard = self.shard(session_id);
        let idle = shard.get(session_id).is_none_or(Vec::is_empty);
        if idle {
            shard.remove(session_id);
        }
        idle
    }

    /// Up to `max` queued items of the session, oldest first; `None` once nothing is queued, and
    /// the session is then idle.
    fn next_batch(&self, session_id: &str, max: usize) -> Option<Vec<T>> {
        let mut shard = self.shard(session_id);
        let waiting = shard.get_mut(session_id)?;
        if waiting.is_empty() {
            shard.remove(session_id);
            return None;
        }
        let n = waiting.len().min(max.max(1));
        Some(waiting.drain(..n).collect())
    }

    /// Serves the session: `first` (the leader's items, may be empty), then the queued items in
    /// batches of at most `max`, each batch awaited through `serve` before the next is taken, until
    /// none is left. See the module docs for what dropping the future early does.
    pub fn drain<F, Fut>(
        self: Arc<Self>,
        session_id: String,
        first: Vec<T>,
        max: usize,
        mut serve: F,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        // Built before the future is first polled: a future dropped unpolled still cleans up.
        let mut guard = Draining {
            queues: self,
            session_id,
            finished: false,
        };
        async move {
            if !first.is_empty() {
                serve(first).await;
            }
            while let Some(batch) = guard.queues.next_batch(&guard.session_id, max) {
                serve(batch).await;
            }
            guard.finish();
        }
    }

    /// [`drain`](Self::drain) in a task of its own, so no waiter depends on a caller that may
    /// stop waiting. Without a runtime the drain is dropped unrun: the session is forgotten and
    /// its waiters see their reply channels close.
    pub fn spawn_drain<F, Fut>(
        self: &Arc<Self>,
        session_id: &str,
        first: Vec<T>,
        max: usize,
        serve: F,
    ) where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        // Built before the spawn: dropped unrun, it still cleans up.
        let drain = self.clone().drain(session_id.to_owned(), first, max, serve);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain);
        }
    }
}

/// Forgets a session's queue unless its drain finished.
struct Draining<T> {
    queues: Arc<SessionQueues<T>>,
    session_id: String,
    finished: bool,
}

impl<T> Draining<T> {
    /// The queue is empty and the session idle: nothing to forget.
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl<T> Drop for Draining<T> {
    fn drop(&mut self) {
        if !self.finished {
            self.queues.shard(&self.session_id).remove(&self.session_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_item_leads_later_ones_queue_and_release_needs_an_empty_queue() {
        let q = SessionQueues::new(4);
        assert_eq!(q.queue_or_lead("s", 1), Some(1));
        assert_eq!(q.queue_or_lead("s", 2), None);
        assert_eq!(
            q.queue_or_lead("t", 9),
            Some(9),
            "other sessions are independent"
        );
        assert!(!q.release("s"), "an item is queued: the session stays busy");
        assert_eq!(q.next_batch("s", 10), Some(vec![2]));
        assert_eq!(q.next_batch("s", 10), None, "empty: now idle");
        assert_eq!(q.queue_or_lead("s", 3), Some(3));
        assert!(q.release("s"));
        assert_eq!(q.queue_or_lead("s", 4), Some(4));
    }

    #[tokio::test]
    async fn drain_serves_in_order_in_bounded_batches_and_a_dropped_drain_frees_the_session() {
        let q = Arc::new(SessionQueues::new(4));
        assert_eq!(q.queue_or_lead("s", 0), Some(0));
        for i in 1..=5 {
            assert_eq!(q.queue_or_lead("s", i), None);
        }
        let served = Arc::new(Mutex::new(Vec::new()));
        let log = served.clone();
        q.clone()
            .drain("s".into(), vec![0], 2, move |batch| {
                log.lock().unwrap().push(batch);
                async {}
            })
            .await;
        assert_eq!(
            *served.lock().unwrap(),
            vec![vec![0], vec![1, 2], vec![3, 4], vec![5]]
        );
        assert_eq!(q.queue_or_lead("s", 6), Some(6), "drained: idle again");

        // Dropped without ever running (no runtime to spawn on, a shutdown): the queue goes.
        assert_eq!(q.queue_or_lead("s", 7), None);
        drop(q.clone().drain("s".into(), Vec::new(), 2, |_| async {}));
        assert_eq!(
            q.queue_or_lead("s", 8),
            Some(8),
            "the session starts afresh"
        );
    }
}
