//! [`WindowReader`]: reads a session's Redis window for history and the verifier — the epoch
//! check and the reads in one `MULTI`, members decoded and checked (see "When the window answers"
//! in [`super`]).

use chatlog_schemas::{ChatMessage, Codec};

use super::latest_batch::LatestBatcher;
use crate::window;
use crate::{Error, RedisConnections, Result, keys};

/// A message decoded from a window member.
#[derive(Debug, Clone)]
pub(crate) struct WindowMember {
    /// The score.
    pub(crate) seq: i64,
    /// The member's version prefix.
    pub(crate) version: i64,
    /// The decoded message, or why it does not decode.
    pub(crate) message: std::result::Result<ChatMessage, String>,
}

/// A consistent snapshot of the part of a window a request needs.
pub(super) struct WindowView {
    /// Lowest seq in the window (for `latest(n)`: the lowest seq read, which is the window's
    /// lowest whenever the window holds fewer than `n` members — the only case `latest` uses it).
    pub(super) min: i64,
    /// Highest seq in the window (the session's head).
    pub(super) max: i64,
    /// The `server_time_us` of the member at `min` (its version prefix).
    pub(super) min_time: i64,
    /// The `server_time_us` of the member at `max`.
    pub(super) max_time: i64,
    /// The members the request asked for, ascending.
    pub(super) members: Vec<ChatMessage>,
}

impl WindowView {
    /// A view of `members` in a window whose lowest and highest members are `lowest` and
    /// `highest`, each as (seq, `server_time_us`).
    fn new(lowest: (i64, i64), highest: (i64, i64), members: Vec<ChatMessage>) -> WindowView {
        WindowView {
            min: lowest.0,
            max: highest.0,
            min_time: lowest.1,
            max_time: highest.1,
            members,
        }
    }
}

/// What a window read asks for, besides the window's bounds.
pub(super) enum WindowQuery<'a> {
    Latest(usize),
    Before(i64, usize),
    After(i64, usize),
    Get(&'a [i64]),
}

/// Reads windows: the connections, the codec of their members and the pinned epoch check.
pub(crate) struct WindowReader {
    redis: RedisConnections,
    /// The `latest(n)` reads, batched across sessions.
    latest: LatestBatcher,
    codec: Codec,
    /// The window-epoch check ([`window::TRUSTED_BODY`]), pinned to the Redis lifetime last seen.
    trusted: crate::epoch::PinnedScript,
}

impl WindowReader {
    pub(super) fn new(redis: RedisConnections, codec: Codec) -> WindowReader {
        WindowReader {
            latest: LatestBatcher::new(redis.clone()),
            redis,
            codec,
            trusted: crate::epoch::PinnedScript::new(window::TRUSTED_BODY, "window epoch check"),
        }
    }

    /// Every member of the window, decoded, and whether the window was written in the serving
    /// Redis's epoch (the verifier's read, one atomic round trip: it reports what the window holds
    /// even when history would not trust it).
    pub(crate) async fn all_members(&self, sid: &str) -> Result<(Vec<WindowMember>, bool)> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGE")
            .arg(keys::window(sid))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        type Scored = Vec<(Vec<u8>, f64)>;
        let (trusted, (raw,)): (bool, (Scored,)) = self
            .read_checked(sid, &pipe)
            .await
            .map_err(Error::redis("read window"))?;
        let members = raw
            .iter()
            .map(|(member, score)| self.decode_member(member, *score))
            .collect();
        Ok((members, trusted))
    }

    /// Reads what `query` needs from the window, with the window's bounds, in one atomic round
    /// trip. `None` when the window is empty or cannot be used (Redis error, undecodable member):
    /// the caller then reads the table.
    pub(super) async fn read(&self, sid: &str, query: WindowQuery<'_>) -> Option<WindowView> {
        // Its own read, batched with other sessions' (the newest members are also the bounds).
        if let WindowQuery::Latest(n) = query {
            return self.read_latest(sid, n).await;
        }
        let key = keys::window(sid);
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGE").arg(&key).arg(0).arg(0).arg("WITHSCORES");
        pipe.cmd("ZRANGE")
            .arg(&key)
            .arg(-1)
            .arg(-1)
            .arg("WITHSCORES");
        match query {
            // Answered above.
            WindowQuery::Latest(_) => {}
            WindowQuery::Before(x, limit) | WindowQuery::After(x, limit) => {
                // The `limit` members nearest to x: below it newest first, above it oldest first.
                let (cmd, end) = match query {
                    WindowQuery::Before(..) => ("ZREVRANGEBYSCORE", "-inf"),
                    _ => ("ZRANGEBYSCORE", "+inf"),
                };
                pipe.cmd(cmd)
                    .arg(&key)
                    .arg(format!("({x}"))
                    .arg(end)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit);
            }
            WindowQuery::Get(seqs) => {
                for s in seqs {
                    pipe.cmd("ZRANGEBYSCORE")
                        .arg(&key)
                        .arg(s)
                        .arg(s)
                        .arg("WITHSCORES");
                }
            }
        }
        let replies: Vec<Vec<(Vec<u8>, f64)>> = self.read_trusted(sid, &pipe).await?;
        let mut replies = replies.into_iter();
        // A bound's time is its version prefix (no decoding); one that does not parse counts as
        // "now or later", which keeps the gaps it ages pending rather than calling them missing.
        let bound = |reply: Option<Vec<(Vec<u8>, f64)>>| {
            reply?.first().map(|(member, score)| {
                let time = window::parse_member(member).map_or(i64::MAX, |(v, _)| v);
                (*score as i64, time)
            })
        };
        let lowest = bound(replies.next())?;
        let highest = bound(replies.next())?;
        let members = self.decode_members(sid, replies.flatten())?;
        Some(WindowView::new(lowest, highest, members))
    }

    /// The window's lowest member at or above `seq` as (seq, version = `server_time_us`); `None`
    /// if there is none or Redis fails (the caller has a fallback).
    pub(super) async fn member_from(&self, sid: &str, seq: i64) -> Option<(i64, i64)> {
        let mut con = self.redis.get();
        let reply: Vec<(Vec<u8>, f64)> = match redis::cmd("ZRANGEBYSCORE")
            .arg(keys::window(sid))
            .arg(seq)
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(1)
            .query_async(&mut con)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                window_unreadable(sid, &e);
                return None;
            }
        };
        let (member, score) = reply.first()?;
        let (version, _) = window::parse_member(member)?;
        Some((*score as i64, version))
    }

    /// Runs the window reads of `reads` in one `MULTI` after the window-epoch check
    /// ([`window::TRUSTED_BODY`]): their replies if the window was written in the serving Redis's
    /// epoch, `None` otherwise or on a Redis error (the table answers). A window from before Redis
    /// went back in time may have lost its newest members, head included, and nothing but the
    /// epoch says so until the consumer writes the session again.
    async fn read_trusted<T: redis::FromRedisValue>(
        &self,
        sid: &str,
        reads: &redis::Pipeline,
    ) -> Option<T> {
        match self.read_checked(sid, reads).await {
            Ok((true, t)) => Some(t),
            Ok((false, _)) => {
                window_untrusted(sid);
                None
            }
            Err(e) => {
                window_unreadable(sid, &e);
                None
            }
        }
    }

    /// Runs the window-epoch check and `reads` in one `MULTI`: whether the window was written in
    /// the serving Redis's epoch, and the replies of `reads`.
    async fn read_checked<T: redis::FromRedisValue>(
        &self,
        sid: &str,
        reads: &redis::Pipeline,
    ) -> redis::RedisResult<(bool, T)> {
        let mut con = self.redis.get();
        let epoch_key = keys::window_epoch(sid);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let script = self.trusted.get(&mut con).await?;
            let mut check = script.prepare_invoke();
            check.key(&epoch_key);
            let mut pipe = redis::pipe();
            pipe.atomic().invoke_script(&check);
            for cmd in reads.cmd_iter() {
                pipe.add_command(cmd.clone());
            }
            let mut replies: Vec<redis::Value> = match pipe.query_async(&mut con).await {
                Ok(r) => r,
                // The pinned script went with a restart: load it again, once.
                Err(e) if crate::epoch::is_noscript(&e) && attempts < 2 => {
                    self.trusted.forget(&script);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if replies.is_empty() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "window read: empty transaction reply",
                )));
            }
            let trusted = matches!(redis::from_redis_value::<i64>(replies.remove(0)), Ok(1));
            let t = redis::from_redis_value::<T>(redis::Value::Array(replies))?;
            return Ok((trusted, t));
        }
    }

    /// The window read of `latest(n)`: the epoch check and one `ZREVRANGE key 0 n-1` instead of
    /// the general transaction (two ZRANGEs for the bounds, the query WITH SCORES).
    ///
    /// - Bounds: `latest` needs the window's lowest seq only when the window holds fewer than `n`
    ///   members, and then this reply holds all of them; so `min` is the lowest seq read (the
    ///   window's lowest whenever fewer than `n` came back) and `max` the highest.
    /// - No scores: a member's score is the seq the consumer decoded from those very bytes, so the
    ///   decoded seq stands for it. What the score check guarded against — a member under a wrong
    ///   score, or two members for one seq — shows as seqs that do not strictly descend in the
    ///   reply's (score) order, and makes the window unusable just the same.
    ///
    /// Profiled with `dev/bench.sh` (P5): per call this halves the RESP elements the client parses
    /// (redis-rs builds a value per element) and drops Redis' formatting of 50 scores; client CPU
    /// went from ~90 to ~50 µs and Redis CPU from ~28 to ~13 µs per `latest(50)`.
    ///
    /// Batched with the `latest` reads of other sessions in flight at the same time
    /// ([`LatestBatcher`]): one epoch read and one round trip for all of them.
    async fn read_latest(&self, sid: &str, n: usize) -> Option<WindowView> {
        let reply = match self.latest.read(sid, n.max(1)).await {
            Ok((true, members)) => members,
            Ok((false, _)) => {
                window_untrusted(sid);
                return None;
            }
            Err(e) => {
                window_unreadable(sid, &e);
                return None;
            }
        };
        let mut members: Vec<ChatMessage> = Vec::with_capacity(reply.len());
        for member in &reply {
            let decoded = match window::parse_member(member) {
                None => Err("no version prefix".to_owned()),
                Some((_, avro)) => self
                    .codec
                    .decode(avro)
                    .map_err(|e| format!("does not decode: {e}")),
            };
            let problem = match decoded {
                Ok(m) if m.session_id != sid => Some((m.seq, "member of another session".into())),
                Ok(m) => match members.last() {
                    Some(above) if m.seq >= above.seq => Some((
                        m.seq,
                        format!("seq {} follows seq {} in score order", m.seq, above.seq),
                    )),
                    _ => {
                        members.push(m);
                        None
                    }
                },
                Err(why) => Some((members.last().map_or(0, |m| m.seq), why)),
            };
            if let Some((seq, why)) = problem {
                self.window_unusable(sid, seq, why);
                return None;
            }
        }
        members.reverse();
        let lowest = members.first().map(|m| (m.seq, m.server_time_us))?;
        let highest = members.last().map(|m| (m.seq, m.server_time_us))?;
        Some(WindowView::new(lowest, highest, members))
    }

    /// Decodes window members (member, score) into messages of `sid`, ascending seq; `None` if any
    /// member is unusable (the window is then not used at all).
    fn decode_members(
        &self,
        sid: &str,
        reply: impl IntoIterator<Item = (Vec<u8>, f64)>,
    ) -> Option<Vec<ChatMessage>> {
        let reply = reply.into_iter();
        let mut members = Vec::with_capacity(reply.size_hint().0);
        for (member, score) in reply {
            let m = self.decode_member(&member, score);
            match m.message {
                Ok(message) if message.session_id == sid => members.push(message),
                Ok(_) => {
                    self.window_unusable(sid, m.seq, "member of another session".into());
                    return None;
                }
                Err(why) => {
                    self.window_unusable(sid, m.seq, why);
                    return None;
                }
            }
        }
        members.sort_by_key(|m| m.seq);
        Some(members)
    }

    fn window_unusable(&self, sid: &str, seq: i64, why: String) {
        tracing::warn!(
            session_id = sid,
            seq,
            why,
            "history: window member unusable, reading the database"
        );
        metrics::counter!(crate::telemetry::HISTORY_WINDOW_ERRORS, "reason" => "member")
            .increment(1);
    }

    /// Decodes one window member (`score` = its seq) and checks that it holds that seq.
    pub(crate) fn decode_member(&self, member: &[u8], score: f64) -> WindowMember {
        let seq = score as i64;
        let Some((version, avro)) = window::parse_member(member) else {
            return WindowMember {
                seq,
                version: -1,
                message: Err("no version prefix".into()),
            };
        };
        let message = match self.codec.decode(avro) {
            Ok(m) if m.seq == seq => Ok(m),
            Ok(m) => Err(format!("holds seq {} under score {seq}", m.seq)),
            Err(e) => Err(format!("does not decode: {e}")),
        };
        WindowMember {
            seq,
            version,
            message,
        }
    }
}

/// Logs and counts a window that Redis could not serve; the caller reads the table instead.
fn window_unreadable(sid: &str, e: &redis::RedisError) {
    tracing::warn!(session_id = sid, error = %e, "history: window unreadable, reading the database");
    metrics::counter!(crate::telemetry::HISTORY_WINDOW_ERRORS, "reason" => "redis").increment(1);
}

/// Logs and counts a window written in another Redis epoch (the table answers instead).
fn window_untrusted(sid: &str) {
    tracing::debug!(
        session_id = sid,
        "history: window written in another Redis epoch (or none), reading the database"
    );
    metrics::counter!(crate::telemetry::HISTORY_WINDOW_ERRORS, "reason" => "epoch").increment(1);
}
