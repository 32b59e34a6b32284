//! Single-flight: identical concurrent requests (same session, same call, same arguments) run
//! once; the others await the first one's shared future (see "Single-flight" in [`super`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::{BoxFuture, FutureExt, Shared};

use super::Page;
use crate::Result;

/// One request as the single-flight map keys it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Request {
    Latest(usize),
    Before(i64, usize),
    After(i64, usize),
    Get(Vec<i64>),
}

impl Request {
    pub(super) fn op(&self) -> &'static str {
        match self {
            Request::Latest(_) => "latest",
            Request::Before(..) => "before",
            Request::After(..) => "after",
            Request::Get(_) => "get",
        }
    }
}

/// A request in flight. The page is behind an `Arc` so that waking a waiter clones a pointer, not
/// the page: `Shared` clones its output for every waiter while another handle (the map's) exists,
/// which for a 50-message page was ~10 % of a window read's CPU.
type Flight = Shared<BoxFuture<'static, Result<Arc<Page>>>>;

/// The requests in flight, keyed by session and request.
#[derive(Default)]
pub(super) struct Flights {
    inflight: Mutex<HashMap<(String, Request), (u64, Flight)>>,
    ids: AtomicU64,
    coalesced: AtomicU64,
}

/// Removes a single-flight entry when its first waiter finishes or its last waiter goes away.
struct FlightGuard<'a> {
    flights: &'a Flights,
    key: Option<(String, Request)>,
    id: u64,
    /// This waiter's clone of the flight: awaited through the guard, so it lives exactly as long.
    flight: Flight,
    finished: bool,
}

impl Drop for FlightGuard<'_> {
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

impl Flights {
    /// Requests that joined an identical one in flight instead of running.
    pub(super) fn coalesced(&self) -> u64 {
        self.coalesced.load(Ordering::Relaxed)
    }

    /// Runs `start(session_id, request)`, or joins an identical request in flight.
    pub(super) async fn run<F>(&self, session_id: &str, request: Request, start: F) -> Result<Page>
    where
        F: FnOnce(String, Request) -> BoxFuture<'static, Result<Page>>,
    {
        let key = (session_id.to_owned(), request);
        let (id, flight, joined) = {
            let mut map = lock(&self.inflight);
            match map.get(&key) {
                Some((id, flight)) => (*id, flight.clone(), true),
                None => {
                    let id = self.ids.fetch_add(1, Ordering::Relaxed);
                    let (sid, req) = key.clone();
                    let run = start(sid, req);
                    let flight: Flight = async move { run.await.map(Arc::new) }.boxed().shared();
                    map.insert(key.clone(), (id, flight.clone()));
                    (id, flight, false)
                }
            }
        };
        if joined {
            self.coalesced.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("chatlog_history_coalesced_total").increment(1);
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
        // the page: a lone waiter then owns the page and takes it without a copy.
        drop(guard);
        // Every waiter gets the same error (`Error` is `Clone`).
        out.map(|page| Arc::try_unwrap(page).unwrap_or_else(|shared| (*shared).clone()))
    }
}
