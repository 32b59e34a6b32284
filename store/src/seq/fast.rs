//! The fast path: one `EVALSHA` of [`FAST_BODY`] per lane call. Sessions are spread over
//! [`FAST_LANES`] lanes; while a lane's call is in flight its requests queue, and the next call
//! serves them all (group commit, see "Paths" in [`super`]).

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;

use super::config::duration_ms;
use super::{AllocPath, AllocRequest, Allocation, SeqAllocator};
use crate::connection::{RedisConnection, by_slot};
use crate::{Error, Result, keys};

/// The fast path for up to [`FAST_BATCH`] requests of one or more sessions. KEYS: per session,
/// its seq hash followed by one idempotency record per request. ARGV: record TTL ms, hash idle TTL
/// ms (0 = none), the number of sessions `G`, then `G` request counts, then per request (in KEYS
/// order) its candidate msg_id and server_time_us.
///
/// Returns one reply per request, in order: the seq alone (an integer) when it allocated one, else
/// `{status, record, a, b, c}` (a table per request cost Lua more than the rest of its work): `1`
/// duplicate (`record` = `"<seq>:<server_time_us>:<msg_id>"`, also when an earlier request of
/// the same call had the same id); `2` hash missing or written in another epoch (see
/// [`crate::epoch`]: Redis went back in time, so its `cur` may be below seqs already handed out);
/// `3` segment used up (`a` = max, `b` = step, `c` = installed-at ms); `4` conflict (`record` =
/// the record of another message under the same key: its fingerprint differs). A session's
/// requests are served in order, so its seqs follow the order of KEYS. ARGV per request: candidate
/// msg_id, server_time_us, fingerprint (hex, may be empty). A record is
/// `"<seq>:<server_time_us>:#<fingerprint>:<msg_id>"` (`"<seq>:<server_time_us>:<msg_id>"` before
/// fingerprints; such a record is never a conflict).
///
/// An idempotency record is honoured whatever the epoch: it names an allocation that was made, and
/// a seq is never handed out twice, so it is still that message's seq.
///
/// It runs after the `server_epoch()` of an [`epoch::PinnedScript`](crate::epoch::PinnedScript) (the serving Redis's `run_id`
/// as a literal, `master_replid` read per call).
pub const FAST_BODY: &str = include_str!("../../lua/seq_fast.lua");

/// Most requests served by one fast-path call.
pub const FAST_BATCH: usize = 128;

/// Fast-path calls of one allocator that may be in flight at once. Sessions are spread over the
/// lanes by hash; each lane has one call in flight, and the requests that arrive meanwhile, of any
/// of its sessions, are served together by its next call. Fewer lanes mean larger calls (the epoch
/// check and the round trip paid once per call); more lanes, more calls in flight. One lane call
/// then holds sessions of several hash tags: on one Redis server it is one `EVALSHA`; on a Redis
/// Cluster `call_fast` splits it with [`by_slot`] into one `EVALSHA` per slot, sent concurrently,
/// so no call spans slots (no `CROSSSLOT`). Lanes stay by hash of the session id, not per slot.
pub const FAST_LANES: usize = 4;

/// What the fast script said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fast {
    Allocated(i64),
    Duplicate(Allocation),
    Missing,
    Exhausted { max: i64, step: i64, at_ms: i64 },
}

/// Parses an idempotency record `"<seq>:<server_time_us>:#<fingerprint>:<msg_id>"` (or, written
/// before fingerprints, `"<seq>:<server_time_us>:<msg_id>"`).
pub(super) fn parse_record(record: &[u8]) -> Option<(i64, i64, String)> {
    let text = std::str::from_utf8(record).ok()?;
    let mut parts = text.splitn(3, ':');
    let seq = parts.next()?.parse().ok()?;
    let time = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    // `#<fingerprint>:<msg_id>` since fingerprints; `<msg_id>` in records written before.
    let msg_id = match rest.strip_prefix('#') {
        Some(tagged) => tagged.split_once(':')?.1,
        None => rest,
    };
    Some((seq, time, msg_id.to_owned()))
}

/// Fast-path requests of one session waiting for their lane's next call: one request of
/// [`SeqAllocator::allocate`], or a turn of [`SeqAllocator::allocate_many`] (at most
/// [`FAST_BATCH`], in order).
pub(super) struct Request {
    session_id: String,
    args: Vec<AllocRequest>,
    reply: tokio::sync::oneshot::Sender<Vec<Result<Fast>>>,
}

impl SeqAllocator {
    /// One fast-path request (see [`lane_call`](Self::lane_call)).
    pub(super) async fn fast(&self, session_id: &str, args: &AllocRequest) -> Result<Fast> {
        let mut results = self.lane_call(session_id, vec![args.clone()]).await;
        results.pop().unwrap_or_else(|| {
            Err(fast_path_error(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the fast-path call returned no result for its request",
            ))))
        })
    }

    /// Fast-path requests of one session (at most [`FAST_BATCH`], served in order): one result
    /// per request. The first requests of an idle lane call Redis at once; requests arriving
    /// while that call is in flight queue, whatever their session, and the lane's next call
    /// serves them together — the turns of many sessions in one `EVALSHA`, each session once
    /// with its requests in arrival order.
    pub(super) async fn lane_call(
        &self,
        session_id: &str,
        args: Vec<AllocRequest>,
    ) -> Vec<Result<Fast>> {
        let n = args.len();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = Request {
            session_id: session_id.to_owned(),
            args,
            reply,
        };
        let lane = lane_of(session_id);
        // The lane stays busy until `NextCall` drops.
        let Some(request) = self.inner.queues.queue_or_lead(lane, request) else {
            return answer.await.unwrap_or_else(|_| {
                let e = fast_path_error(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "the call serving this request ended without an answer",
                    "its task panicked or the runtime shut down".to_owned(),
                )));
                (0..n).map(|_| Err(e.clone())).collect()
            });
        };
        let _next = NextCall {
            allocator: self.clone(),
            lane,
        };
        self.call_fast(&[(session_id, request.args.as_slice())])
            .await
    }

    /// One `EVALSHA` of the fast-path script for the requests of `sessions` (each session once,
    /// with its requests in order): one result per request, in the same order. On a Redis
    /// Cluster, one `EVALSHA` per slot, concurrently (a session's requests stay in one call).
    pub(super) async fn call_fast(
        &self,
        sessions: &[(&str, &[AllocRequest])],
    ) -> Vec<Result<Fast>> {
        let total: usize = sessions.iter().map(|(_, r)| r.len()).sum();
        let slot_of = |i: usize| keys::slot(&keys::seq(sessions[i].0));
        let per_session = by_slot(
            &self.inner.redis,
            sessions.len(),
            slot_of,
            |con, at| async move {
                let group: Vec<(&str, &[AllocRequest])> = at.iter().map(|&i| sessions[i]).collect();
                let mut results = self.call_fast_slot(con, &group).await.into_iter();
                let per_session: Vec<Vec<Result<Fast>>> = at
                    .iter()
                    .map(|&i| results.by_ref().take(sessions[i].1.len()).collect())
                    .collect();
                Ok::<_, redis::RedisError>(per_session)
            },
        )
        .await;
        match per_session {
            Ok(per_session) => per_session.into_iter().flatten().collect(),
            Err(e) => (0..total)
                .map(|_| Err(fast_path_error(e.clone())))
                .collect(),
        }
    }

    /// [`call_fast`](Self::call_fast) for sessions whose keys share one slot (or any sessions on
    /// a single server).
    async fn call_fast_slot(
        &self,
        mut con: RedisConnection,
        sessions: &[(&str, &[AllocRequest])],
    ) -> Vec<Result<Fast>> {
        let inner = &*self.inner;
        inner.fast_calls.fetch_add(1, Ordering::Relaxed);
        let total: usize = sessions.iter().map(|(_, r)| r.len()).sum();
        let mut result = Err(fast_path_error(redis::RedisError::from((
            redis::ErrorKind::Client,
            "seq fast path not attempted",
        ))));
        // Twice at most: a `NOSCRIPT` means another Redis lifetime, whose script is loaded anew.
        for _ in 0..2 {
            let script = match inner.fast.get(&mut con).await {
                Ok(script) => script,
                Err(e) => {
                    result = Err(fast_path_error(e));
                    break;
                }
            };
            // `EVALSHA` written straight into one command: a `ScriptInvocation` keeps each key
            // and argument as a vector of its own and copies them again into the command.
            let mut call = redis::cmd("EVALSHA");
            call.arg(script.get_hash()).arg(sessions.len() + total);
            for (session_id, requests) in sessions {
                call.arg(keys::seq(session_id));
                for r in *requests {
                    call.arg(keys::client_msg(session_id, &r.sender_id, &r.client_msg_id));
                }
            }
            call.arg(duration_ms(inner.config.dedup_ttl).max(1))
                .arg(duration_ms(inner.config.idle_ttl))
                .arg(sessions.len());
            for (_, requests) in sessions {
                call.arg(requests.len());
            }
            for (_, requests) in sessions {
                for r in *requests {
                    call.arg(&r.candidate_msg_id)
                        .arg(r.server_time_us)
                        .arg(&r.fingerprint);
                }
            }
            result = self.invoke_fast(&mut con, call).await;
            match &result {
                Err(Error::Redis { source: e, .. })
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    inner.fast.forget(&script);
                }
                _ => break,
            }
        }
        let replies = match result {
            Ok(replies) => replies,
            Err(e) => {
                return (0..total).map(|_| Err(e.clone())).collect();
            }
        };
        if replies.len() != total {
            let got = format!("{} results for {total} requests", replies.len());
            return (0..total)
                .map(|_| Err(bad_reply("fast path result count", got.as_bytes())))
                .collect();
        }
        replies.into_iter().map(fast_result).collect()
    }

    /// Runs one fast-path invocation (`EVALSHA` only; `NOSCRIPT` is the caller's). With
    /// [`SeqConfig::wait_replicas`], the script and `WAIT` go out as one pipeline on one
    /// connection — `WAIT` covers exactly the writes before it on that connection — and the
    /// replies count only if enough replicas acknowledged.
    async fn invoke_fast(
        &self,
        con: &mut RedisConnection,
        call: redis::Cmd,
    ) -> Result<Vec<FastReply>> {
        let config = &self.inner.config;
        let redis_err = fast_path_error;
        let mut pipe = redis::pipe();
        pipe.add_command(call);
        if config.wait_replicas == 0 {
            let (replies,): (Vec<FastReply>,) = pipe.query_async(con).await.map_err(redis_err)?;
            return Ok(replies);
        }
        let timeout_ms = duration_ms(config.wait_timeout).max(1);
        pipe.cmd("WAIT").arg(config.wait_replicas).arg(timeout_ms);
        let (replies, acked): (Vec<FastReply>, i64) =
            pipe.query_async(con).await.map_err(redis_err)?;
        if acked < i64::from(config.wait_replicas) {
            return Err(Error::NotReplicated {
                wanted: config.wait_replicas,
                acked,
                timeout: config.wait_timeout,
            });
        }
        Ok(replies)
    }
}

/// When the call of a lane's first request ends (or its caller goes away), the requests queued
/// meanwhile are served by a task of their own, so no waiter depends on a caller that may be
/// cancelled.
struct NextCall {
    allocator: SeqAllocator,
    lane: &'static str,
}

impl Drop for NextCall {
    fn drop(&mut self) {
        let queues = &self.allocator.inner.queues;
        if queues.release(self.lane) {
            return;
        }
        let allocator = self.allocator.clone();
        queues.spawn_drain(
            self.lane,
            Vec::new(),
            FAST_BATCH,
            move |batch: Vec<Request>| {
                let allocator = allocator.clone();
                async move { allocator.serve(batch).await }
            },
        );
    }
}

impl SeqAllocator {
    /// Serves queued requests of one lane: in arrival order, as few calls as hold them
    /// ([`FAST_BATCH`] requests each, one queued entry never split), each call grouped by
    /// session (a session's requests keep their arrival order), each answer sent to its
    /// waiter. The calls run one after the other, so a session's later requests get later seqs.
    async fn serve(&self, batch: Vec<Request>) {
        let mut rest = batch.into_iter().peekable();
        while rest.peek().is_some() {
            let mut group: Vec<Request> = Vec::new();
            let mut total = 0;
            while let Some(next) = rest.peek() {
                if !group.is_empty() && total + next.args.len() > FAST_BATCH {
                    break;
                }
                total += next.args.len();
                group.extend(rest.next());
            }
            self.serve_call(group).await;
        }
    }

    /// One call for `group`: its sessions in order of first arrival, each with the requests of
    /// its entries in arrival order; each entry answered with its own results.
    async fn serve_call(&self, group: Vec<Request>) {
        let mut order: Vec<String> = Vec::new();
        let mut by_session: HashMap<String, Vec<Request>> = HashMap::new();
        for r in group {
            by_session
                .entry(r.session_id.clone())
                .or_insert_with(|| {
                    order.push(r.session_id.clone());
                    Vec::new()
                })
                .push(r);
        }
        let mut args: Vec<(String, Vec<AllocRequest>)> = Vec::with_capacity(order.len());
        let mut replies = Vec::new();
        for session_id in order {
            let entries = by_session.remove(&session_id).unwrap_or_default();
            let mut session_args = Vec::new();
            for r in entries {
                replies.push((r.args.len(), r.reply));
                session_args.extend(r.args);
            }
            args.push((session_id, session_args));
        }
        let groups: Vec<(&str, &[AllocRequest])> = args
            .iter()
            .map(|(s, r)| (s.as_str(), r.as_slice()))
            .collect();
        let mut results = self.call_fast(&groups).await.into_iter();
        for (n, reply) in replies {
            // A waiter that went away does not need its answer (its seqs become a gap).
            let _ = reply.send(results.by_ref().take(n).collect());
        }
    }
}

/// A Redis error of the fast path (every request a failed call served gets a clone).
fn fast_path_error(source: redis::RedisError) -> Error {
    Error::Redis {
        what: "seq fast path",
        source,
    }
}

/// One request's reply of [`FAST_BODY`]: its seq (the common answer, one integer), or
/// `{status, record, a, b, c}`.
type FastReply = redis::Value;

fn fast_result(reply: FastReply) -> Result<Fast> {
    let (status, record, a, b, c) = match reply {
        redis::Value::Int(seq) => return Ok(Fast::Allocated(seq)),
        other => redis::from_redis_value::<(i64, Vec<u8>, i64, i64, i64)>(other)
            .map_err(|e| fast_path_error(e.into()))?,
    };
    match status {
        1 => {
            let (seq, server_time_us, msg_id) =
                parse_record(&record).ok_or_else(|| bad_reply("idempotency record", &record))?;
            Ok(Fast::Duplicate(Allocation {
                seq,
                msg_id,
                server_time_us,
                duplicate: true,
                path: AllocPath::Fast,
            }))
        }
        2 => Ok(Fast::Missing),
        4 => {
            let (seq, _, msg_id) =
                parse_record(&record).ok_or_else(|| bad_reply("idempotency record", &record))?;
            Err(Error::IdempotencyConflict { seq, msg_id })
        }
        3 => Ok(Fast::Exhausted {
            max: a,
            step: b,
            at_ms: c,
        }),
        other => Err(bad_reply("fast path status", other.to_string().as_bytes())),
    }
}

/// The fast-path lane of a session (a name, as [`SessionQueues`](crate::queues::SessionQueues) keys by name).
fn lane_of(session_id: &str) -> &'static str {
    const NAMES: [&str; 64] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
        "32", "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46",
        "47", "48", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60", "61",
        "62", "63",
    ];
    const _: () = assert!(FAST_LANES <= NAMES.len());
    let mut h = DefaultHasher::new();
    (session_id, "lane").hash(&mut h);
    NAMES[(h.finish() % FAST_LANES as u64) as usize]
}

fn bad_reply(what: &'static str, got: &[u8]) -> Error {
    fast_path_error(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        what,
        String::from_utf8_lossy(got).into_owned(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn an_allocation_is_one_integer_and_the_rare_answers_are_tables() {
        assert_eq!(fast_result(Value::Int(42)).unwrap(), Fast::Allocated(42));
        let table = |status: i64, record: &str, a: i64, b: i64, c: i64| {
            Value::Array(vec![
                Value::Int(status),
                Value::BulkString(record.as_bytes().to_vec()),
                Value::Int(a),
                Value::Int(b),
                Value::Int(c),
            ])
        };
        assert_eq!(
            fast_result(table(3, "", 100, 50, 7)).unwrap(),
            Fast::Exhausted {
                max: 100,
                step: 50,
                at_ms: 7
            }
        );
        assert_eq!(fast_result(table(2, "", 0, 0, 0)).unwrap(), Fast::Missing);
        match fast_result(table(1, "9:1700:#ab:m-9", 0, 0, 0)).unwrap() {
            Fast::Duplicate(a) => assert_eq!(
                (a.seq, a.server_time_us, a.msg_id.as_str()),
                (9, 1700, "m-9")
            ),
            other => panic!("a duplicate: {other:?}"),
        }
        assert!(matches!(
            fast_result(table(4, "9:1700:#ab:m-9", 0, 0, 0)),
            Err(Error::IdempotencyConflict { seq: 9, .. })
        ));
        // A status this client does not know, or a reply of another shape, is an error.
        assert!(fast_result(table(0, "", 5, 0, 0)).is_err());
        assert!(fast_result(Value::Nil).is_err());
    }
}
