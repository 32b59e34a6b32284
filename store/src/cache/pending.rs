//! Deletion marks Redis did not take (unreachable, timing out), kept until it does.
//!
//! A write whose mark fails has still changed the database, so the old value may sit in Redis.
//! The mark is kept here and sent again: every 100 ms by a background task, and in front of every
//! read of this process (so this process never reads a value it failed to mark). Each key carries
//! the generation of its latest failed mark: a retry in flight while the key failed again does not
//! clear the newer one. Past `max` keys the process can no longer vouch for Redis and stops reading
//! the cache (see [`CacheConfig::max_pending_marks`](super::CacheConfig::max_pending_marks)).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
struct State {
    keys: HashMap<String, u64>,
    generation: u64,
    retrier: bool,
}

pub(super) struct Pending {
    state: Mutex<State>,
    /// `keys.len()`, readable without the lock (checked before every read).
    count: AtomicUsize,
    overflowed: AtomicBool,
    max: usize,
}

impl Pending {
    pub(super) fn new(max: usize) -> Pending {
        Pending {
            state: Mutex::new(State::default()),
            count: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether marks were ever dropped for lack of room: the cache must not be read any more.
    pub(super) fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Keeps `keys`; `true` if the caller must start the retrier (none runs).
    pub(super) fn add(&self, keys: &[String]) -> bool {
        let mut state = self.lock();
        state.generation += 1;
        let generation = state.generation;
        for key in keys {
            if state.keys.len() >= self.max && !state.keys.contains_key(key) {
                if !self.overflowed.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        max = self.max,
                        "more cache marks failed than cache.max_pending_marks keeps: this process \
                         reads the database only from now on (restart it once Redis is back)"
                    );
                }
                continue;
            }
            state.keys.insert(key.clone(), generation);
        }
        self.count.store(state.keys.len(), Ordering::Relaxed);
        let start = !state.retrier;
        state.retrier = true;
        start
    }

    /// The kept marks with their generations, `None` if there are none.
    pub(super) fn batch(&self) -> Option<Vec<(String, u64)>> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let state = self.lock();
        let batch: Vec<(String, u64)> = state.keys.iter().map(|(k, g)| (k.clone(), *g)).collect();
        (!batch.is_empty()).then_some(batch)
    }

    /// Forgets the marks of `batch` that Redis took, unless they failed again since.
    pub(super) fn sent(&self, batch: &[(String, u64)]) {
        let mut state = self.lock();
        for (key, generation) in batch {
            if state.keys.get(key) == Some(generation) {
                state.keys.remove(key);
            }
        }
        self.count.store(state.keys.len(), Ordering::Relaxed);
    }

    /// `true` (and the retrier stops) if no mark is left.
    pub(super) fn stop_if_empty(&self) -> bool {
        let mut state = self.lock();
        if state.keys.is_empty() {
            state.retrier = false;
        }
        !state.retrier
    }

    /// Marks kept now.
    pub(super) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_mark_that_failed_again_during_a_retry_is_kept() {
        let p = Pending::new(10);
        assert!(
            p.add(&keys(&["a", "b"])),
            "the first failure starts the retrier"
        );
        let batch = p.batch().unwrap();
        assert!(!p.add(&keys(&["a"])), "one retrier at a time");
        p.sent(&batch);
        assert_eq!(p.batch().unwrap(), vec![("a".to_string(), 2)]);
        assert!(!p.stop_if_empty());
        let batch = p.batch().unwrap();
        p.sent(&batch);
        assert_eq!(p.len(), 0);
        assert!(p.stop_if_empty());
        assert!(p.add(&keys(&["c"])), "a new failure starts a new retrier");
    }

    #[test]
    fn overflow_stops_cache_reads() {
        let p = Pending::new(2);
        p.add(&keys(&["a", "b"]));
        assert!(!p.overflowed());
        p.add(&keys(&["a"]));
        assert!(!p.overflowed(), "a key already kept takes no room");
        p.add(&keys(&["c"]));
        assert!(p.overflowed());
        assert_eq!(p.len(), 2);
    }
}
