//! The cache in front of the repositories: cache-aside that no race leaves stale (ARCHITECTURE.md,
//! "The Smart DAL").
//!
//! An entry is a Redis hash: `v` (the value: `+` and the encoded entity, or `-` for "the database
//! has none"), `e` (the [epoch](crate::epoch) it was filled in), `o`/`u` (the token and lease end
//! of the one loader, while it loads), `d` (marked deleted). The protocol:
//!
//! - **read** ([`Cache::get`], [`Cache::get_many`]): one atomic round trip carries the epoch and an
//!   `HMGET` per key (keys in Cluster slot order); a value of this epoch is a hit.
//! - **miss**: within the process, one load per key (single-flight); across processes, a Lua
//!   get-or-lock (`store/lua/cache_lock.lua`) returns a value filled meanwhile, makes the caller
//!   wait for another loader's lease, or makes the caller the loader.
//! - **fill** (`cache_fill.lua`): only while the loader's token still owns the entry; TTL drawn
//!   from `ttl ± ttl_jitter`, `empty_ttl` for "none".
//! - **write** ([`Cache::invalidate`], after the database write): `cache_mark.lua` removes the
//!   value and the owner and marks the entry deleted, so a loader holding the old row cannot fill.
//! - **Redis away**: reads go to the database (counted); marks that could not be sent are kept
//!   and retried every 100 ms and before this process's next read ([`pending`]).
//! - **a shared load is fresh for whoever joined it before it asked**: a read that joins this
//!   process's load of a key takes its value only if the Redis call or database read that produced
//!   it was sent after the read joined ([`Cache::load_key`]); one that joined later (the value may
//!   predate a write that returned before the read began) loads again on its own.
//! - **coalesced reads** ([`coalesce`]): single-key reads that arrive while one is under way share
//!   the next round trip, one epoch check for all of them.
//! - **Redis back in time** (restart, failover): entries of another epoch are never hits.
//! - **in-place update** ([`Cache::update_in_place`], after the database write): for entries read
//!   with [`Cache::get_entry`], a monotonic field (`cache_update.lua`) is raised to the maximum on
//!   a value of this epoch with no loader, and anything else is marked deleted as a write's mark
//!   is. A large entry (a 5,000-conversation list) then survives frequent small writes (mark read)
//!   without a reload, and no race leaves it stale: a loader's fill replaces the whole hash, extra
//!   fields included, and only while its token owns it (an update in between removed the token).

mod coalesce;
mod config;
mod pending;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use redis::Value;

pub use config::CacheConfig;
use pending::Pending;

use crate::connection::by_slot;
use crate::epoch::{PinnedScript, is_noscript};
use crate::flight::Flights;
use crate::{RedisConnections, Result, keys, telemetry};

/// What a key caches: the encoded entity, or `None` when the database has none.
pub type Cached = Option<Vec<u8>>;

/// What [`Cache::get_entry`] reads: the value and the fields updated in place since its fill
/// ([`Cache::update_in_place`]; none after a load, which read them from the database).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Cached,
    /// `(field, value)` of every in-place update since the fill.
    pub fields: Fields,
}

/// `(field, value)` pairs of a hash.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The fields of an entry's hash the engine itself uses (never an in-place field).
const ENGINE_FIELDS: [&[u8]; 5] = [b"v", b"e", b"o", b"u", b"d"];

const LOCK_BODY: &str = include_str!("../../lua/cache_lock.lua");
const FILL_BODY: &str = include_str!("../../lua/cache_fill.lua");
const MARK_LUA: &str = include_str!("../../lua/cache_mark.lua");
const UPDATE_BODY: &str = include_str!("../../lua/cache_update.lua");

/// First and longest pause between two get-or-lock attempts while another process loads.
const WAIT_FIRST: Duration = Duration::from_millis(2);
const WAIT_MAX: Duration = Duration::from_millis(50);

/// The cache of one repository (its `repo` label in the metrics). Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    redis: RedisConnections,
    config: CacheConfig,
    repo: &'static str,
    epoch: PinnedScript,
    lock: PinnedScript,
    fill: PinnedScript,
    mark: redis::Script,
    update: PinnedScript,
    flights: Flights<String, (Entry, Tick)>,
    /// Orders the reads that join a load against the calls that load sends (see [`Tick`]).
    ticks: AtomicU64,
    pending: Pending,
    lanes: coalesce::Lanes,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("repo", &self.inner.repo)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// A point in the order of joins and sends: a read takes a ticket (a new tick) before it joins a
/// load, a load notes the tick before each call it sends. A value whose call was sent at a tick at
/// or past a read's ticket was sent after the read joined, so Redis or the database answered it
/// after the read began.
type Tick = u64;

/// The answer of the get-or-lock script.
enum Lock {
    /// A value of this epoch (with its in-place fields when the whole hash was asked).
    Hit(Entry),
    /// Another loader holds an unexpired lease.
    Wait,
    /// The caller owns the entry.
    Owned,
}

impl Cache {
    /// The cache of repository `repo` (a fixed name: it labels the metrics).
    pub fn new(redis: RedisConnections, config: CacheConfig, repo: &'static str) -> Result<Cache> {
        config.validate()?;
        let pending = Pending::new(config.max_pending_marks);
        Ok(Cache {
            inner: Arc::new(Inner {
                redis,
                config,
                repo,
                epoch: PinnedScript::new(crate::epoch::EPOCH_READ_BODY, "cache epoch"),
                lock: PinnedScript::new(LOCK_BODY, "cache get-or-lock"),
                fill: PinnedScript::new(FILL_BODY, "cache fill"),
                mark: redis::Script::new(MARK_LUA),
                update: PinnedScript::new(UPDATE_BODY, "cache update in place"),
                flights: Flights::new(telemetry::CACHE_COALESCED),
                ticks: AtomicU64::new(0),
                pending,
                lanes: coalesce::lanes(),
            }),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The value of `key`, from Redis, or loaded with `load` (the database read) and cached.
    ///
    /// `load` may run twice: when a write marks the entry while it loads, the first read may
    /// predate the write, and reads that joined this load after the write returned must not get
    /// it — so the value is read again, uncached.
    pub async fn get<L, F>(&self, key: String, load: L) -> Result<Cached>
    where
        L: Fn() -> F + Send + Sync + 'static,
        F: Future<Output = Result<Cached>> + Send + 'static,
    {
        match self.probe_or_degrade(std::slice::from_ref(&key)).await {
            None => load().await,
            Some(mut probed) => match probed.pop().flatten() {
                Some(value) => Ok(value),
                None => Ok(self.load_key(key, load, false).await?.value),
            },
        }
    }

    /// Like [`get`](Cache::get), for an entry updated in place ([`update_in_place`]): the value
    /// and its in-place fields, read together in one atomic round trip (epoch + `HGETALL`).
    /// Every in-place field present was written after the value's load began, so the caller
    /// merges them into the value (each field a maximum).
    ///
    /// [`update_in_place`]: Cache::update_in_place
    pub async fn get_entry<L, F>(&self, key: String, load: L) -> Result<Entry>
    where
        L: Fn() -> F + Send + Sync + 'static,
        F: Future<Output = Result<Cached>> + Send + 'static,
    {
        let repo = self.inner.repo;
        let degraded = || {
            metrics::counter!(telemetry::CACHE_DEGRADED_READS, "repo" => repo).increment(1);
        };
        if !self.inner.config.enabled || self.inner.pending.overflowed() {
            degraded();
            return Ok(Entry {
                value: load().await?,
                fields: Vec::new(),
            });
        }
        match self.probe_entry(&key).await {
            Ok(Some(entry)) => {
                metrics::counter!(telemetry::CACHE_REQUESTS, "repo" => repo, "result" => "hit")
                    .increment(1);
                Ok(entry)
            }
            Ok(None) => {
                metrics::counter!(telemetry::CACHE_REQUESTS, "repo" => repo, "result" => "miss")
                    .increment(1);
                self.load_key(key, load, true).await
            }
            Err(e) => {
                tracing::warn!(repo, error = %e, "cache unreadable; reading the database");
                degraded();
                Ok(Entry {
                    value: load().await?,
                    fields: Vec::new(),
                })
            }
        }
    }

    /// Raises field `field` of `key`'s entry to `value` (decimal integers joined by `:`, each
    /// part raised to the maximum of the stored and the new one) after the database write, if the
    /// entry holds a value of this epoch and nobody loads it; otherwise marks the entry deleted
    /// (as [`invalidate`](Cache::invalidate)). An entry already holding `max_fields` fields is
    /// marked instead of growing: the next read reloads it and the fill drops every in-place
    /// field. Never fails: a call Redis does not take is kept as a mark and retried.
    pub async fn update_in_place(&self, key: &str, field: &str, value: &str, max_fields: usize) {
        if !self.inner.config.enabled {
            return;
        }
        let repo = self.inner.repo;
        let mark_ttl = self.inner.config.mark_ttl.as_millis().to_string();
        let most = (max_fields + ENGINE_FIELDS.len()).to_string();
        let done = self
            .run_pinned(
                &self.inner.update,
                key,
                &[
                    field.as_bytes(),
                    value.as_bytes(),
                    most.as_bytes(),
                    mark_ttl.as_bytes(),
                ],
            )
            .await
            .and_then(|r: Value| redis::from_redis_value::<i64>(r).map_err(Into::into));
        match done {
            Ok(1) => {
                metrics::counter!(telemetry::CACHE_UPDATES, "repo" => repo, "result" => "in_place")
                    .increment(1);
            }
            Ok(_) => {
                metrics::counter!(telemetry::CACHE_UPDATES, "repo" => repo, "result" => "marked")
                    .increment(1);
            }
            Err(e) => {
                tracing::warn!(repo, error = %e, "cache update kept for retry as a mark");
                metrics::counter!(telemetry::CACHE_MARKS_FAILED, "repo" => repo).increment(1);
                if self.inner.pending.add(&[key.to_owned()]) {
                    self.spawn_retrier();
                }
                self.report_pending();
            }
        }
    }

    /// The values of `keys` (result `i` is key `i`'s): every hit in one round trip, then each miss
    /// loaded with `load(i)` (concurrently; one load per key in flight in this process).
    pub async fn get_many<L, F>(&self, keys: Vec<String>, load: L) -> Result<Vec<Cached>>
    where
        L: Fn(usize) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Cached>> + Send + 'static,
    {
        let Some(probed) = self.probe_or_degrade(&keys).await else {
            return futures::future::try_join_all((0..keys.len()).map(&load)).await;
        };
        let load = Arc::new(load);
        let lookups = keys
            .into_iter()
            .zip(probed)
            .enumerate()
            .map(|(i, (key, hit))| {
                let load = load.clone();
                async move {
                    match hit {
                        Some(value) => Ok(value),
                        None => Ok(self.load_key(key, move || load(i), false).await?.value),
                    }
                }
            });
        futures::future::try_join_all(lookups).await
    }

    /// [`probe`](Cache::probe), counted; `None` when the cache cannot be used now (off, Redis
    /// unreachable, marks lost): the caller reads the database.
    async fn probe_or_degrade(&self, keys: &[String]) -> Option<Vec<Option<Cached>>> {
        let repo = self.inner.repo;
        let degraded = || {
            metrics::counter!(telemetry::CACHE_DEGRADED_READS, "repo" => repo)
                .increment(keys.len() as u64);
        };
        if !self.inner.config.enabled || self.inner.pending.overflowed() {
            degraded();
            return None;
        }
        // One key: coalesced with the other single-key reads of its lane (one epoch check per
        // round trip); several: one round trip of their own.
        let probed = match keys {
            [key] => self.probe_coalesced(key).await.map(|hit| vec![hit]),
            _ => self.probe(keys).await.map_err(|e| e.to_string()),
        };
        match probed {
            Ok(probed) => {
                let hits = probed.iter().filter(|p| p.is_some()).count() as u64;
                metrics::counter!(telemetry::CACHE_REQUESTS, "repo" => repo, "result" => "hit")
                    .increment(hits);
                metrics::counter!(telemetry::CACHE_REQUESTS, "repo" => repo, "result" => "miss")
                    .increment(keys.len() as u64 - hits);
                Some(probed)
            }
            Err(e) => {
                tracing::warn!(repo, error = %e, "cache unreadable; reading the database");
                degraded();
                None
            }
        }
    }

    /// Marks `keys` deleted after their rows changed (call it after the database write). Never
    /// fails: marks Redis does not take are kept and retried (see [`pending`]).
    pub async fn invalidate(&self, keys: &[String]) {
        if !self.inner.config.enabled || keys.is_empty() {
            return;
        }
        if let Err(e) = self.send_marks(keys).await {
            let repo = self.inner.repo;
            tracing::warn!(repo, error = %e, marks = keys.len(), "cache marks kept for retry");
            metrics::counter!(telemetry::CACHE_MARKS_FAILED, "repo" => repo)
                .increment(keys.len() as u64);
            if self.inner.pending.add(keys) {
                self.spawn_retrier();
            }
            self.report_pending();
        }
    }

    /// One atomic round trip: the epoch, then `HMGET v e` of each key (on a Redis Cluster one
    /// per slot, each with its node's epoch). `Some` for a hit. Sends the marks kept for retry
    /// first.
    async fn probe(&self, keys: &[String]) -> redis::RedisResult<Vec<Option<Cached>>> {
        self.flush_pending().await?;
        let reads: Vec<redis::Cmd> = keys
            .iter()
            .map(|k| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(k).arg("v").arg("e");
                cmd
            })
            .collect();
        let con = self.inner.redis.get();
        let replies = self
            .inner
            .epoch
            .before_by_slot(&con, &reads, |i| keys::slot(&keys[i]))
            .await?;
        let mut probed: Vec<Option<Cached>> = Vec::with_capacity(keys.len());
        for (epoch, reply) in replies {
            let (value, filled_in): (Option<Vec<u8>>, Option<String>) =
                redis::from_redis_value(reply)?;
            probed.push(if filled_in.as_deref() == Some(epoch.as_str()) {
                value.as_deref().and_then(decode)
            } else {
                None
            });
        }
        Ok(probed)
    }

    /// One atomic round trip: the epoch, then `HGETALL` of `key`. `Some` for a hit.
    async fn probe_entry(&self, key: &str) -> redis::RedisResult<Option<Entry>> {
        self.flush_pending().await?;
        let mut con = self.inner.redis.get();
        let mut read = redis::pipe();
        read.cmd("HGETALL").arg(key);
        let replies = self.inner.epoch.before(&mut con, &read).await?;
        let (epoch, all): (String, Fields) = redis::from_redis_value(Value::Array(replies))?;
        Ok(whole_entry(all, Some(&epoch)))
    }

    /// A miss: one load of `key` in flight in this process, through the get-or-lock protocol
    /// (`whole`: the hit of another loader comes with its in-place fields, the fill drops them).
    ///
    /// A read that joins a load takes its value only if the call that produced it was sent after
    /// the read joined. Joined later (while the fill's or the lock's answer travels back, or while
    /// a load that gave up waiting for another process holds what it read), the value may predate
    /// a write that returned before this read began: the read then loads on its own.
    async fn load_key<L, F>(&self, key: String, load: L, whole: bool) -> Result<Entry>
    where
        L: Fn() -> F + Send + Sync + 'static,
        F: Future<Output = Result<Cached>> + Send + 'static,
    {
        let ticket = self.inner.ticks.fetch_add(1, Ordering::SeqCst) + 1;
        let this = self.clone();
        let load = Arc::new(load);
        let shared = load.clone();
        // Plain and whole loads of one key never share a flight (a plain one has no fields).
        let flight = if whole { format!("{key}\0all") } else { key };
        let (entry, sent) = self
            .inner
            .flights
            .run(flight.clone(), move |flight| {
                async move {
                    let key = flight.strip_suffix("\0all").unwrap_or(&flight);
                    this.lock_and_load(key, move || shared(), whole).await
                }
                .boxed()
            })
            .await?;
        if sent >= ticket {
            return Ok(entry);
        }
        metrics::counter!(telemetry::CACHE_LATE_JOINS, "repo" => self.inner.repo).increment(1);
        let key = flight.strip_suffix("\0all").unwrap_or(&flight);
        Ok(self.lock_and_load(key, move || load(), whole).await?.0)
    }

    /// The tick a call is sent at (see [`Tick`]).
    fn tick(&self) -> Tick {
        self.inner.ticks.load(Ordering::SeqCst)
    }

    /// The entry of `key` and the tick its producing call was sent at.
    async fn lock_and_load<L, F>(&self, key: &str, load: L, whole: bool) -> Result<(Entry, Tick)>
    where
        L: Fn() -> F,
        F: Future<Output = Result<Cached>>,
    {
        let repo = self.inner.repo;
        let config = &self.inner.config;
        let token = uuid::Uuid::now_v7().simple().to_string();
        let started = Instant::now();
        let mut pause = WAIT_FIRST;
        let plain = |value: Cached, sent: Tick| {
            let fields = Vec::new();
            (Entry { value, fields }, sent)
        };
        let flag: &[u8] = if whole { b"1" } else { b"0" };
        loop {
            let lease = config.lease.as_millis().to_string();
            let sent = self.tick();
            let answer = self
                .run_pinned(
                    &self.inner.lock,
                    key,
                    &[token.as_bytes(), lease.as_bytes(), flag],
                )
                .await
                .and_then(parse_lock);
            match answer {
                Ok(Lock::Hit(entry)) => return Ok((entry, sent)),
                Ok(Lock::Wait) if started.elapsed() < config.max_wait => {
                    metrics::counter!(telemetry::CACHE_LOCK_WAITS, "repo" => repo).increment(1);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(WAIT_MAX);
                }
                Ok(Lock::Wait) => {
                    tracing::warn!(repo, waited = ?started.elapsed(), "cache loader too slow; reading the database");
                    metrics::counter!(telemetry::CACHE_DEGRADED_READS, "repo" => repo).increment(1);
                    let sent = self.tick();
                    return load().await.map(|v| plain(v, sent));
                }
                Ok(Lock::Owned) => {
                    metrics::counter!(telemetry::CACHE_LOADS, "repo" => repo).increment(1);
                    let loaded = load().await;
                    // Filled: no write marked the entry since the lock, so the read holds every
                    // write whose mark came before the fill.
                    let sent = self.tick();
                    if self.fill(key, &token, &loaded, whole).await || loaded.is_err() {
                        return loaded.map(|v| plain(v, sent));
                    }
                    // A write marked the entry after the lock (or the fill's fate is unknown):
                    // what was read may predate it, and reads that joined this load after the
                    // write returned must not get it. Read again, now, uncached.
                    let sent = self.tick();
                    return load().await.map(|v| plain(v, sent));
                }
                Err(e) => {
                    tracing::warn!(repo, error = %e, "cache unreadable; reading the database");
                    metrics::counter!(telemetry::CACHE_DEGRADED_READS, "repo" => repo).increment(1);
                    let sent = self.tick();
                    return load().await.map(|v| plain(v, sent));
                }
            }
        }
    }

    /// Fills `key` with what its loader read (or gives the lease back after a failed read);
    /// `true` if the fill happened (no write marked the entry since the lock).
    async fn fill(&self, key: &str, token: &str, loaded: &Result<Cached>, whole: bool) -> bool {
        let config = &self.inner.config;
        let (value, ttl_ms) = match loaded {
            Ok(Some(v)) => (encode(Some(v)), config.draw_ttl_ms()),
            Ok(None) => (encode(None), config.empty_ttl.as_millis() as u64),
            Err(_) => (Vec::new(), 0),
        };
        let ttl = ttl_ms.to_string();
        let filled = self
            .run_pinned(
                &self.inner.fill,
                key,
                &[
                    token.as_bytes(),
                    &value,
                    ttl.as_bytes(),
                    if whole { b"1" } else { b"0" },
                ],
            )
            .await
            .and_then(|r: Value| redis::from_redis_value::<i64>(r).map_err(Into::into));
        let repo = self.inner.repo;
        match filled {
            Ok(1) => true,
            Ok(_) => {
                // A write marked the entry after this loader locked it: what it read may be old.
                metrics::counter!(telemetry::CACHE_FILLS_REFUSED, "repo" => repo).increment(1);
                false
            }
            Err(e) => {
                tracing::warn!(repo, error = %e, "cache fill failed");
                false
            }
        }
    }

    /// Runs a pinned script on `key` over one of the cache's connections.
    async fn run_pinned(
        &self,
        script: &PinnedScript,
        key: &str,
        args: &[&[u8]],
    ) -> redis::RedisResult<Value> {
        script.run(&mut self.inner.redis.get(), key, args).await
    }

    /// Sends one mark per key in one round trip (on a Redis Cluster one per slot), loading the
    /// script first if Redis lacks it.
    async fn send_marks(&self, keys: &[String]) -> redis::RedisResult<()> {
        let con = self.inner.redis.get();
        let ttl = self.inner.config.mark_ttl.as_millis().to_string();
        let ttl = ttl.as_str();
        let slot_of = |i: usize| keys::slot(&keys[i]);
        by_slot(&con, keys.len(), slot_of, |mut con, at| async move {
            let mut pipe = redis::pipe();
            for &i in &at {
                let mut call = self.inner.mark.prepare_invoke();
                call.key(&keys[i]).arg(ttl);
                pipe.invoke_script(&call).ignore();
            }
            match pipe.query_async::<()>(&mut con).await {
                Err(e) if is_noscript(&e) => {
                    self.inner
                        .mark
                        .prepare_invoke()
                        .load_async(&mut con)
                        .await?;
                    pipe.query_async::<()>(&mut con).await?
                }
                other => other?,
            }
            Ok::<_, redis::RedisError>(vec![(); at.len()])
        })
        .await
        .map(drop)
    }

    /// Sends the marks kept for retry; `Err` while Redis still refuses them.
    async fn flush_pending(&self) -> redis::RedisResult<()> {
        let Some(batch) = self.inner.pending.batch() else {
            return Ok(());
        };
        let keys: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
        self.send_marks(&keys).await?;
        self.inner.pending.sent(&batch);
        self.report_pending();
        Ok(())
    }

    fn report_pending(&self) {
        metrics::gauge!(telemetry::CACHE_PENDING_MARKS, "repo" => self.inner.repo)
            .set(self.inner.pending.len() as f64);
    }

    /// Retries the kept marks every 100 ms until none is left (or the cache is dropped).
    fn spawn_retrier(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(inner) = weak.upgrade() else { return };
                let cache = Cache { inner };
                if cache.flush_pending().await.is_ok() && cache.inner.pending.stop_if_empty() {
                    return;
                }
            }
        });
    }
}

fn encode(value: Option<&Vec<u8>>) -> Vec<u8> {
    match value {
        Some(v) => {
            let mut out = Vec::with_capacity(v.len() + 1);
            out.push(b'+');
            out.extend_from_slice(v);
            out
        }
        None => b"-".to_vec(),
    }
}

/// `Some` for a well-formed value (`None` for anything else: treated as a miss).
fn decode(v: &[u8]) -> Option<Cached> {
    match v.split_first() {
        Some((b'+', rest)) => Some(Some(rest.to_vec())),
        Some((b'-', [])) => Some(None),
        _ => None,
    }
}

fn parse_lock(reply: Value) -> redis::RedisResult<Lock> {
    let Value::Array(mut parts) = reply else {
        return Err(unexpected("cache get-or-lock", &[reply]));
    };
    let status = match parts.first() {
        Some(Value::Int(s)) => *s,
        _ => return Err(unexpected("cache get-or-lock", &parts)),
    };
    match (status, parts.len()) {
        (1, 2) => {
            let reply = parts.remove(1);
            if let Value::Array(_) = reply {
                // The whole hash (an entry read with `get_entry`); its epoch was checked.
                let all: Fields = redis::from_redis_value(reply)?;
                return Ok(whole_entry(all, None).map_or(Lock::Owned, Lock::Hit));
            }
            let value: Vec<u8> = redis::from_redis_value(reply)?;
            // A malformed value is no hit: take the entry over as if it were missing.
            Ok(decode(&value).map_or(Lock::Owned, |value| {
                Lock::Hit(Entry {
                    value,
                    fields: Vec::new(),
                })
            }))
        }
        (2, 1) => Ok(Lock::Wait),
        (3, 1) => Ok(Lock::Owned),
        _ => Err(unexpected("cache get-or-lock", &parts)),
    }
}

/// The entry an `HGETALL` shows: `Some` if it holds a well-formed value (filled in `epoch`, when
/// given), with its in-place fields.
fn whole_entry(all: Fields, epoch: Option<&str>) -> Option<Entry> {
    let mut value = None;
    let mut filled_in = None;
    let mut fields = Vec::new();
    for (field, v) in all {
        match field.as_slice() {
            b"v" => value = Some(v),
            b"e" => filled_in = Some(v),
            f if ENGINE_FIELDS.contains(&f) => {}
            _ => fields.push((field, v)),
        }
    }
    if let Some(epoch) = epoch
        && filled_in.as_deref() != Some(epoch.as_bytes())
    {
        return None;
    }
    let value = decode(&value?)?;
    Some(Entry { value, fields })
}

fn unexpected(what: &'static str, got: &[Value]) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        what,
        format!("{:.200}", format!("{got:?}")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_garbage_is_a_miss() {
        let v = b"user".to_vec();
        assert_eq!(decode(&encode(Some(&v))), Some(Some(v)));
        assert_eq!(decode(&encode(None)), Some(None));
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"-x"), None);
        assert_eq!(decode(b"?"), None);
    }
}
