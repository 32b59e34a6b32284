//! Single-flight: identical concurrent requests of one process run once; the others await the
//! first one's shared future. History coalesces identical page reads with it, the cache one load
//! per key.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::{BoxFuture, FutureExt, Shared};

use crate::Result;

/// A request in flight. The output is behind an `Arc` so that waking a waiter clones a pointer,
/// not the output: `Shared` clones its output for every waiter while another handle (the map's)
/// exists, which for a 50-message page was ~10 % of a window read's CPU.
type Flight<V> = Shared<BoxFuture<'static, Result<Arc<V>>>>;

/// The requests in flight, keyed by `K`.
pub(crate) struct Flights<K, V> {
    inflight: Mutex<HashMap<K, (u64, Flight<V>)>>,
    ids: AtomicU64,
    coalesced: AtomicU64,
    /// Counter incremented for each request that joined another.
    metric: &'static str,
}

/// Removes a single-flight entry when its first waiter finishes or its last waiter goes away.
struct FlightGuard<'a, K: Eq + Hash, V> {
    flights: &'a Flights<K, V>,
    key: Option<K>,
    id: u64,
    /// This waiter's clone of the flight: awaited through the guard, so it lives exactly as long.
    flight: Flight<V>,
    finished: bool,
}

impl<K: Eq + Hash, V> Drop for FlightGuard<'_, K, V> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut map = lock(&self.flights.inflight);
        let Some((id, flight)) = map.get(&key) else {
            return;
        };
        // The map holds one clone and this waiter another (`self.flight`, dropped after this
        // body), so 2 means nobody else waits.
        if *id == self.id && (self.finished || flight.strong_count().is_none_or(|n| n <= 2)) {
            map.remove(&key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K, V> Flights<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone + Send + Sync + 'static,
{
    /// No request in flight; `metric` counts the requests that join another.
    pub(crate) fn new(metric: &'static str) -> Flights<K, V> {
        Flights {
            inflight: Mutex::new(HashMap::new()),
            ids: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            metric,
        }
    }

    /// Requests that joined an identical one in flight instead of running.
    pub(crate) fn coalesced(&self) -> u64 {
        self.coalesced.load(Ordering::Relaxed)
    }

    /// Runs `start(key)`, or joins the request of `key` in flight. Every waiter gets the same
    /// result (errors are `Clone`).
    pub(crate) async fn run<F>(&self, key: K, start: F) -> Result<V>
    where
        F: FnOnce(K) -> BoxFuture<'static, Result<V>>,
    {
        let (id, flight, joined) = {
            let mut map = lock(&self.inflight);
            match map.get(&key) {
                Some((id, flight)) => (*id, flight.clone(), true),
                None => {
                    let id = self.ids.fetch_add(1, Ordering::Relaxed);
                    let run = start(key.clone());
                    let flight: Flight<V> = async move { run.await.map(Arc::new) }.boxed().shared();
                    map.insert(key.clone(), (id, flight.clone()));
                    (id, flight, false)
                }
            }
        };
        if joined {
            self.coalesced.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(self.metric).increment(1);
        }
        let mut guard = FlightGuard {
            flights: self,
            key: Some(key),
            id,
            flight,
            finished: false,
        };
        let out = (&mut guard.flight).await;
        guard.finished = true;
        // Dropping the guard drops the map's handle and ours, and with them the flight's copy of
        // the output: a lone waiter then owns it and takes it without a copy.
        drop(guard);
        out.map(|v| Arc::try_unwrap(v).unwrap_or_else(|shared| (*shared).clone()))
    }
}
