//! The Redis epoch: which lifetime of which dataset a Redis server is serving, read by a Lua script
//! atomically with its own writes, so that state written before Redis went back in time is never
//! trusted after it.
//!
//! # Why
//!
//! Redis goes back in time routinely: a restart from an RDB snapshot or from an AOF written every
//! second (its defaults), a failover to a replica that had not received the last writes
//! (replication is asynchronous), an operator restoring an old backup. Afterwards the keys still
//! exist, with older values. A seq hash whose `cur` went back would hand out seqs again (a repeat
//! overwrites an acknowledged message), and a window whose newest members were lost would get new
//! members above a hole that looks like a gap. So every such piece of state carries the epoch it
//! was written in, and a script that finds a foreign epoch treats the state as lost: the seq
//! allocator recovers above the CQL ceiling, the window writer starts the window afresh.
//!
//! # What the epoch is
//!
//! `<run_id>:<master_replid>` of the serving instance, both read inside the script from `INFO`
//! (measured on Redis 7.0.15, the Debian build, see `../shared/DESIGN.md` of the project):
//! - a restart (from RDB or AOF) changes `run_id` (and, on 7.0, `master_replid`);
//! - a promotion (`REPLICAOF NO ONE`, a Sentinel or Cluster failover) changes `master_replid` but
//!   not `run_id`;
//! - the trap: a node that resyncs from a lagging replica and is promoted again keeps its `run_id`
//!   while its data went back; its `master_replid` changed at each step.
//!
//! Either one alone misses a case; both together cover every case above, and newer Redis versions
//! that keep the replication id across a restart still change `run_id`. A server whose `INFO`
//! shows neither (some Redis-compatible services hide them) fails the scripts with an error rather
//! than running unchecked. The false alarms are
//! harmless and rare: a master gets a new `master_replid` when it gets its first replica (a new
//! backlog), and state written before then is recovered once (a seq gap, a window that refills).
//! `FLUSHALL` needs no epoch: the keys are gone, which every script already treats as lost.
//!
//! # Cost
//!
//! The two `INFO` calls are most of the cost of the check (`redis-benchmark`, 50 clients, the
//! seq fast-path script: ~88 k calls/s without, ~52 k with both, ~67 k with `INFO replication`
//! alone). The seq fast path therefore reads only `master_replid` per call and carries `run_id` as
//! a literal of a script loaded into that very lifetime ([`pinned_epoch_lua`]; a restart empties
//! the script cache, so the script cannot run anywhere else), and one call serves every request
//! queued meanwhile across many sessions (see [`crate::seq`]). The segment installs and the window
//! writer (once per session per batch) read both.

use crate::connection::{Topology, by_slot};

/// The Lua source of `server_epoch()`, as the scripts of [`crate::seq`] and [`crate::window`]
/// include it.
pub const EPOCH_LUA: &str = include_str!("../lua/epoch.lua");

/// The body of a [`PinnedScript`] that only returns the epoch: the first command of the atomic
/// reads of [`PinnedScript::before`] and [`PinnedScript::before_by_slot`], whose callers compare
/// it with the epochs their keys were written in.
pub const EPOCH_READ_BODY: &str = "return server_epoch()\n";

/// Field of a session's seq hash holding the epoch its `cur`/`max` were written in.
pub const SEQ_FIELD: &str = "ep";

/// Lua defining `server_epoch()` with `run_id` as a literal: only `master_replid` is read per
/// call (`INFO replication`, about a third of the price of both). `None` unless `run_id` is a
/// `run_id` (hex digits only), so nothing else can reach the script's text.
///
/// Sound only for a script loaded into the Redis lifetime whose `run_id` this is (see
/// [`crate::seq`]: the script cache does not survive a restart, so `EVALSHA` of it fails with
/// `NOSCRIPT` on any other lifetime, and the caller loads it again for the new one). A failover
/// or a resync changes `master_replid`, which is still read.
///
/// `load` (hex) makes the text of each load attempt unique: a script loaded by an attempt that
/// found `run_id` changed meanwhile (a restart between reading it and `SCRIPT LOAD`) has a hash
/// that nobody else ever runs, so no process can run a script pinned to one lifetime in another.
pub fn pinned_epoch_lua(run_id: &str, load: &str) -> Option<String> {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(run_id) || !hex(load) {
        return None;
    }
    // Both are hex digits (checked above), so neither can end the Lua string they land in.
    Some(
        include_str!("../lua/epoch_pinned.lua")
            .replace("{run_id}", run_id)
            .replace("{load}", load),
    )
}

/// A script whose body follows a `server_epoch()` pinned to one Redis lifetime
/// ([`pinned_epoch_lua`]): each call reads only `master_replid`. [`get`](Self::get) loads it into
/// the lifetime behind the connection: read `run_id`, `SCRIPT LOAD` a text that carries it (and a
/// load id of its own), read `run_id` again. Equal twice means no restart in between (run ids are
/// never reused), so the script was loaded into that very lifetime, and `EVALSHA` of it can only
/// run there: a restart empties the script cache. The caller runs it with `EVALSHA` only — never
/// an implicit `EVAL` fallback, which would run it elsewhere — and on `NOSCRIPT` calls
/// [`forget`](Self::forget) and `get` again. Redis before 7.0 copies `SCRIPT LOAD` to replicas and
/// the AOF, so there the script reads both ids per call instead.
pub struct PinnedScript {
    body: &'static str,
    what: &'static str,
    cached: std::sync::Mutex<Option<std::sync::Arc<redis::Script>>>,
}

impl PinnedScript {
    /// `body` runs after `server_epoch()` is defined; `what` names it in errors.
    pub fn new(body: &'static str, what: &'static str) -> PinnedScript {
        PinnedScript {
            body,
            what,
            cached: std::sync::Mutex::new(None),
        }
    }

    /// The script of the Redis lifetime behind `con`, loaded into it if needed (see the type).
    ///
    /// On a Redis Cluster the script is not pinned: each node has its own `run_id`, and one
    /// script text cannot carry them all, so there every call reads both ids (the cost in the
    /// module docs) on whichever node serves its slot. `SCRIPT LOAD` goes to every master.
    pub async fn get<C: redis::aio::ConnectionLike + Topology + Send>(
        &self,
        con: &mut C,
    ) -> redis::RedisResult<std::sync::Arc<redis::Script>> {
        if let Some(script) = self.lock().clone() {
            return Ok(script);
        }
        if con.is_cluster() {
            let script = redis::Script::new(&format!("{EPOCH_LUA}{}", self.body));
            script.prepare_invoke().load_async(con).await?;
            let script = std::sync::Arc::new(script);
            *self.lock() = Some(script.clone());
            return Ok(script);
        }
        for _ in 0..3 {
            let (major, before) = server(con).await?;
            let lua = if major < 7 {
                format!("{EPOCH_LUA}{}", self.body)
            } else {
                let load = format!("{:032x}", uuid::Uuid::now_v7().as_u128());
                let Some(epoch) = pinned_epoch_lua(&before, &load) else {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "INFO server: run_id is not hex",
                        before,
                    )));
                };
                epoch + self.body
            };
            let script = redis::Script::new(&lua);
            script.prepare_invoke().load_async(con).await?;
            if server(con).await?.1 == before {
                let script = std::sync::Arc::new(script);
                *self.lock() = Some(script.clone());
                return Ok(script);
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "redis kept restarting while a script was loaded",
            self.what.to_owned(),
        )))
    }

    /// One atomic round trip: this script (no keys, no arguments), then every command of
    /// `reads`; the replies in that order. Loads the script again once if this Redis lifetime
    /// lacks it (`NOSCRIPT`).
    pub async fn before<C: redis::aio::ConnectionLike + Topology + Send>(
        &self,
        con: &mut C,
        reads: &redis::Pipeline,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        let mut attempts = 0;
        loop {
            let script = self.get(con).await?;
            let mut pipe = redis::pipe();
            pipe.atomic().invoke_script(&script.prepare_invoke());
            for cmd in reads.cmd_iter() {
                pipe.add_command(cmd.clone());
            }
            match pipe.query_async(con).await {
                Err(e) if is_noscript(&e) && attempts == 0 => {
                    self.forget(&script);
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    /// [`before`](Self::before) for reads of many sessions: `reads[i]` touches the keys of slot
    /// `slot_of(i)`. One atomic round trip on a single server; on a Cluster one per slot,
    /// concurrently, each with the epoch of the node that serves it. Returns each read's reply
    /// with the epoch it was read under, in the order of `reads`.
    pub async fn before_by_slot<C>(
        &self,
        con: &C,
        reads: &[redis::Cmd],
        slot_of: impl Fn(usize) -> u16,
    ) -> redis::RedisResult<Vec<(String, redis::Value)>>
    where
        C: redis::aio::ConnectionLike + Topology + Clone + Send,
    {
        by_slot(con, reads.len(), slot_of, |mut con, at| async move {
            let mut pipe = redis::pipe();
            for &i in &at {
                pipe.add_command(reads[i].clone());
            }
            let mut replies = self.before(&mut con, &pipe).await?.into_iter();
            let epoch = match replies.next() {
                Some(value) => redis::from_redis_value::<String>(value)?,
                None => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "epoch read: no reply",
                    )));
                }
            };
            Ok(replies.map(|v| (epoch.clone(), v)).collect())
        })
        .await
    }

    /// Runs the script on `key` with `args`, loading it again once if this Redis lifetime lacks
    /// it (`NOSCRIPT`).
    pub async fn run<C: redis::aio::ConnectionLike + Topology + Send, T: redis::FromRedisValue>(
        &self,
        con: &mut C,
        key: &str,
        args: &[&[u8]],
    ) -> redis::RedisResult<T> {
        let mut attempts = 0;
        loop {
            let script = self.get(con).await?;
            let mut call = script.prepare_invoke();
            call.key(key);
            for a in args {
                call.arg(*a);
            }
            match call.invoke_async(con).await {
                Err(e) if is_noscript(&e) && attempts == 0 => {
                    self.forget(&script);
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    /// Forgets `script` (its Redis lifetime is gone: `NOSCRIPT`) unless another call already
    /// replaced it.
    pub fn forget(&self, script: &std::sync::Arc<redis::Script>) {
        let mut cached = self.lock();
        if cached
            .as_ref()
            .is_some_and(|c| std::sync::Arc::ptr_eq(c, script))
        {
            *cached = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<std::sync::Arc<redis::Script>>> {
        self.cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether `e` says the server does not have the script (`NOSCRIPT`).
pub fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// The `redis_version` major of the server behind `con` (`INFO server`) and its `run_id`.
pub async fn server<C: redis::aio::ConnectionLike + Send>(
    con: &mut C,
) -> redis::RedisResult<(u32, String)> {
    let info: String = redis::cmd("INFO").arg("server").query_async(con).await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let major = field("redis_version:")
        .and_then(|v| v.split('.').next().and_then(|m| m.parse().ok()))
        .unwrap_or(0);
    let run_id = field("run_id:").ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "INFO server without run_id",
        ))
    })?;
    Ok((major, run_id))
}

/// The epoch of the server behind `con`, as the scripts compute it (for tests and operators; a
/// script never trusts a value read outside it).
pub async fn current<C: redis::aio::ConnectionLike + Send>(con: &mut C) -> crate::Result<String> {
    let script = redis::Script::new(concat!(
        include_str!("../lua/epoch.lua"),
        "return server_epoch()"
    ));
    script
        .prepare_invoke()
        .invoke_async(con)
        .await
        .map_err(crate::Error::redis("read the redis epoch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_hex_run_id_reaches_the_script() {
        let lua = pinned_epoch_lua("0a9f", "01").unwrap();
        assert!(lua.contains("'0a9f:'"));
        assert_ne!(
            lua,
            pinned_epoch_lua("0a9f", "02").unwrap(),
            "one text per load"
        );
        let injected = "0a9f' .. redis.call('FLUSHALL') .. '";
        assert_eq!(pinned_epoch_lua(injected, "01"), None);
        assert_eq!(pinned_epoch_lua("", "01"), None);
        assert_eq!(pinned_epoch_lua("0a9f", "x"), None);
    }
}
