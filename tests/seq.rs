//! The seq allocator against the real stack (Redis + CQL): unique and increasing under concurrency
//! (one process and two), across many segments, after Redis loses a session's keys, and idempotent
//! per `client_msg_id`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chatlog::{
    TestRedis, admin, connect_to, cut_replica_link, free_port, fresh_keyspace, primary_and_replica,
    redis_connection, unique, until_answers, until_linked,
};
use chatlog_store::RedisConnection;
use chatlog_store::keys;
use chatlog_store::seq::{
    AllocPath, AllocRequest, Allocation, INSTALL_LUA, SeqAllocator, SeqConfig,
};
use scylla::client::session::Session;

fn small(min: i64, max: i64) -> SeqConfig {
    SeqConfig {
        min_segment: min,
        max_segment: max,
        ..SeqConfig::default()
    }
}

async fn allocator(keyspace_prefix: &str, config: SeqConfig) -> (SeqAllocator, String) {
    let (alloc, _, keyspace) =
        allocator_on(keyspace_prefix, redis_connection().await, config).await;
    (alloc, keyspace)
}

/// An allocator on the Redis behind `con` with a fresh keyspace, also returned (a test that
/// fails over makes a second allocator on the same ceiling table).
async fn allocator_on(
    keyspace_prefix: &str,
    con: RedisConnection,
    config: SeqConfig,
) -> (SeqAllocator, Arc<Session>, String) {
    let (session, cql) = fresh_keyspace(keyspace_prefix).await;
    let alloc = SeqAllocator::new(session.clone(), &cql.keyspace, con, config)
        .await
        .expect("seq allocator");
    (alloc, session, cql.keyspace)
}

/// Deletes every Redis key of one session (what FLUSHALL does to it, without touching others').
async fn lose_redis_keys(con: &mut RedisConnection, session_id: &str) -> usize {
    let pattern = format!("{}:{{{session_id}}}:*", keys::PREFIX);
    let mut cursor = 0u64;
    let mut found: Vec<String> = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await
            .expect("SCAN");
        found.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    if !found.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&found)
            .query_async(con)
            .await
            .expect("DEL");
    }
    found.len()
}

async fn redis_hash(con: &mut RedisConnection, session_id: &str) -> (i64, i64, i64) {
    let (cur, max, step): (Option<i64>, Option<i64>, Option<i64>) = redis::cmd("HMGET")
        .arg(keys::seq(session_id))
        .arg("cur")
        .arg("max")
        .arg("step")
        .query_async(con)
        .await
        .expect("HMGET");
    (cur.unwrap_or(0), max.unwrap_or(0), step.unwrap_or(0))
}

/// One allocation and when its call started and ended.
#[derive(Debug, Clone)]
struct Timed {
    start: Instant,
    end: Instant,
    alloc: Allocation,
}

/// Real-time order: an allocation that ended before another started has the smaller seq.
fn assert_linearizable(all: &[Timed]) {
    let mut by_end: Vec<&Timed> = all.iter().collect();
    by_end.sort_by_key(|t| t.end);
    let mut prefix_max = Vec::with_capacity(by_end.len());
    let mut m = i64::MIN;
    for t in &by_end {
        m = m.max(t.alloc.seq);
        prefix_max.push(m);
    }
    for b in all {
        let ended_before = by_end.partition_point(|a| a.end < b.start);
        if ended_before > 0 {
            let max_before = prefix_max[ended_before - 1];
            assert!(
                max_before < b.alloc.seq,
                "seq {} (path {:?}) handed out after seq {max_before} had been",
                b.alloc.seq,
                b.alloc.path
            );
        }
    }
}

fn assert_unique(all: &[Timed]) {
    let mut seen = HashSet::new();
    for t in all {
        assert!(t.alloc.seq >= 1);
        assert!(seen.insert(t.alloc.seq), "seq {} repeated", t.alloc.seq);
    }
}

/// The allocations of concurrent tasks (each task's in the order it made them), checked: each task
/// saw its seqs go up, no seq was handed out twice, and real-time order holds across tasks.
async fn join_allocating_tasks(handles: Vec<tokio::task::JoinHandle<Vec<Timed>>>) -> Vec<Timed> {
    let mut all = Vec::new();
    for h in handles {
        let mine = h.await.unwrap();
        for w in mine.windows(2) {
            assert!(w[0].alloc.seq < w[1].alloc.seq, "a task saw seqs go down");
        }
        all.extend(mine);
    }
    assert_unique(&all);
    assert_linearizable(&all);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocations_across_two_allocators_are_unique_and_increasing() {
    // Two allocators = two Logic processes: own Redis connection, own in-process locks; they race
    // through the CQL LWT. Small segments force dozens of reservations.
    let (a, keyspace) = allocator("seqconc", small(5, 20)).await;
    let (session2, _) = {
        let config = chatlog::cql_config(&keyspace);
        (Arc::new(config.connect().await.unwrap()), ())
    };
    let b = SeqAllocator::new(session2, &keyspace, redis_connection().await, small(5, 20))
        .await
        .unwrap();
    let sid = unique("sess");
    const TASKS: usize = 16;
    const PER_TASK: usize = 60;
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let alloc = if task % 2 == 0 { a.clone() } else { b.clone() };
        let sid = sid.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                let start = Instant::now();
                let alloc = alloc
                    .allocate(&sid, &format!("t{task}-{i}"), &format!("m{task}-{i}"), 1)
                    .await
                    .expect("allocate");
                mine.push(Timed {
                    start,
                    end: Instant::now(),
                    alloc,
                });
            }
            mine
        }));
    }
    let all = join_allocating_tasks(handles).await;
    assert_eq!(all.len(), TASKS * PER_TASK);
    assert!(all.iter().all(|t| !t.alloc.duplicate));
    // Every seq came from a reserved segment of at most 20: at least 48 LWTs won. (Counted by the
    // allocators, not as allocations on the segment path: with two processes on one session, the
    // other one can use up a segment before its reserver asks again, and the reserver reserves
    // twice for one allocation.)
    let reservations = a.reservations() + b.reservations();
    assert!(
        reservations >= (TASKS * PER_TASK) as u64 / 20,
        "only {reservations} segments reserved for {} seqs",
        TASKS * PER_TASK
    );
    assert!(all.iter().any(|t| t.alloc.path == AllocPath::Segment));

    let ceiling = a.ceiling(&sid).await.unwrap().expect("ceiling row");
    let top = all.iter().map(|t| t.alloc.seq).max().unwrap();
    let (cur, max, _) = redis_hash(&mut redis_connection().await, &sid).await;
    assert_eq!(cur, top, "cur is the last seq handed out");
    assert!(
        max <= ceiling,
        "redis max {max} above the CQL ceiling {ceiling}"
    );
    assert!(top <= ceiling);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_redis_loses_the_keys_every_new_seq_is_above_every_old_one() {
    let (alloc, _) = allocator("seqloss", small(10, 40)).await;
    let mut con = redis_connection().await;
    let sid = unique("sess");
    let mut old = Vec::new();
    for i in 0..25 {
        old.push(
            alloc
                .allocate(&sid, &format!("a{i}"), "m", 1)
                .await
                .unwrap(),
        );
    }
    assert_eq!(old.first().unwrap().seq, 1);
    assert_eq!(old.first().unwrap().path, AllocPath::Segment);
    let old_max = old.iter().map(|a| a.seq).max().unwrap();
    assert!(lose_redis_keys(&mut con, &sid).await >= 2);

    let first = alloc.allocate(&sid, "b0", "m", 1).await.unwrap();
    assert_eq!(first.path, AllocPath::Recover);
    assert!(first.seq > old_max, "{} not above {old_max}", first.seq);
    let ceiling_before = alloc.ceiling(&sid).await.unwrap().unwrap();
    assert!(first.seq <= ceiling_before);
    let mut prev = first.seq;
    for i in 1..30 {
        let a = alloc
            .allocate(&sid, &format!("b{i}"), "m", 1)
            .await
            .unwrap();
        assert!(a.seq > prev);
        assert_ne!(a.path, AllocPath::Recover);
        prev = a.seq;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_loss_during_concurrent_allocation_keeps_real_time_order() {
    let (alloc, _) = allocator("seqlossconc", small(5, 20)).await;
    let sid = unique("sess");
    const TASKS: usize = 16;
    const PER_TASK: usize = 50;
    const LOSSES: usize = 3;
    // Losses happen while the allocation goes on: the even tasks stop at checkpoints (a fifth of
    // their work, two fifths, …) until the loss is done, the odd ones never stop. Progress-driven,
    // no timing assumptions; an allocator that finishes fast cannot outrun the losses.
    let arrived = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    let (losses_done, losses_seen) = tokio::sync::watch::channel(0usize);
    let checkpoint = |loss: usize| PER_TASK * loss / (LOSSES + 2);
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let (alloc, sid, arrived, progress) = (
            alloc.clone(),
            sid.clone(),
            arrived.clone(),
            progress.clone(),
        );
        let mut losses_seen = losses_seen.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..PER_TASK {
                if task % 2 == 0
                    && let Some(loss) = (1..=LOSSES).find(|&l| checkpoint(l) == i)
                {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    progress.notify_one();
                    losses_seen.wait_for(|&done| done >= loss).await.unwrap();
                }
                let start = Instant::now();
                let a = alloc
                    .allocate(&sid, &format!("t{task}-{i}"), "m", 1)
                    .await
                    .expect("allocate");
                mine.push(Timed {
                    start,
                    end: Instant::now(),
                    alloc: a,
                });
            }
            mine
        }));
    }
    let mut con = redis_connection().await;
    let total = TASKS * PER_TASK;
    for loss in 1..=LOSSES {
        while arrived.load(Ordering::SeqCst) < loss * TASKS / 2 {
            progress.notified().await;
        }
        lose_redis_keys(&mut con, &sid).await;
        losses_done.send_replace(loss);
    }
    let all = join_allocating_tasks(handles).await;
    assert_eq!(all.len(), total);
    let recovers = all
        .iter()
        .filter(|t| t.alloc.path == AllocPath::Recover)
        .count();
    assert!(
        (1..=LOSSES * TASKS).contains(&recovers),
        "{recovers} recover paths for {LOSSES} losses; paths seen {:?}",
        all.iter()
            .map(|t| t.alloc.path)
            .collect::<std::collections::BTreeSet<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_client_msg_id_gets_the_first_allocation_back() {
    let (alloc, _) = allocator("seqdup", SeqConfig::default()).await;
    let sid = unique("sess");
    let first = alloc.allocate(&sid, "c-1", "msg-a", 111).await.unwrap();
    assert!(!first.duplicate);
    let again = alloc.allocate(&sid, "c-1", "msg-b", 222).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.seq, again.msg_id.as_str(), again.server_time_us),
        (first.seq, "msg-a", 111)
    );
    let next = alloc.allocate(&sid, "c-2", "msg-c", 333).await.unwrap();
    assert_eq!(next.seq, first.seq + 1, "a duplicate consumes no seq");

    // Sixteen concurrent sends of one client_msg_id: one allocation, fifteen duplicates of it.
    let tries = futures::future::join_all((0..16).map(|i| {
        let (alloc, sid) = (alloc.clone(), sid.clone());
        async move {
            alloc
                .allocate(&sid, "c-3", &format!("m{i}"), i)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(tries.iter().filter(|a| !a.duplicate).count(), 1);
    let winner = tries.iter().find(|a| !a.duplicate).unwrap();
    for t in &tries {
        assert_eq!(
            (t.seq, &t.msg_id, t.server_time_us),
            (winner.seq, &winner.msg_id, winner.server_time_us)
        );
    }
    assert_eq!(winner.seq, next.seq + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_of_one_session_share_calls_and_keep_every_seq() {
    // Small segments, so that calls also run out of capacity halfway through their requests.
    let (alloc, _) = allocator("seqgroup", small(16, 64)).await;
    let sid = unique("sess");
    let n = 400;
    let all = futures::future::join_all((0..n).map(|i| {
        let (alloc, sid) = (alloc.clone(), sid.clone());
        tokio::spawn(async move { alloc.allocate(&sid, &format!("c{i}"), "m", i).await })
    }))
    .await;
    let mut seqs: Vec<i64> = all
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .inspect(|a| assert!(!a.duplicate))
        .map(|a| a.seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "one allocator: no gap, no repeat"
    );
    let calls = alloc.fast_calls();
    eprintln!("{calls} fast-path calls for {n} concurrent requests");
    assert!(
        calls < n as u64,
        "{calls} fast-path calls for {n} concurrent requests: nothing was coalesced"
    );

    // Callers that give up while their call is in flight strand nobody queued behind them.
    let sid = unique("sess");
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (alloc, sid) = (alloc.clone(), sid.clone());
            tokio::spawn(async move { alloc.allocate(&sid, &format!("k{i}"), "m", i).await })
        })
        .collect();
    for t in tasks.iter().step_by(3) {
        t.abort();
    }
    let mut done = Vec::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(30), t).await {
            Ok(Ok(a)) => done.push(a.unwrap().seq),
            Ok(Err(e)) => assert!(e.is_cancelled(), "{e}"),
            Err(_) => panic!("an allocation hung after other callers were cancelled"),
        }
    }
    assert!(
        done.len() >= 200 - 67,
        "{} allocations finished",
        done.len()
    );
    let unique_seqs: HashSet<i64> = done.iter().copied().collect();
    assert_eq!(unique_seqs.len(), done.len(), "no seq handed out twice");
}

/// The producer allocates a session's waiting sends as one turn (`allocate_many`). Turns of many
/// sessions that wait at once must share fast-path calls (one `EVALSHA` for many sessions: the
/// lanes), each session's seqs still increasing along its requests and turns, none repeated —
/// also when a segment runs out halfway through a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn turns_of_many_sessions_share_calls_and_keep_each_sessions_order() {
    let (alloc, _) = allocator("seqturns", small(16, 64)).await;
    let run = unique("turns");
    const SESSIONS: usize = 64;
    const TURNS: usize = 5;
    const PER_TURN: usize = 8;
    // Each session allocates once first, so the turns below find its hash: a new session's first
    // call goes through the recover path, whose calls depend on timing and are not the subject.
    for s in 0..SESSIONS {
        let a = alloc
            .allocate(&format!("{run}-{s}"), "warm", "m-warm", 1)
            .await
            .expect("warm-up allocation");
        assert_eq!(a.seq, 1);
    }
    let calls_before = alloc.fast_calls();
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let (alloc, sid) = (alloc.clone(), format!("{run}-{s}"));
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for t in 0..TURNS {
                    let requests: Vec<AllocRequest> = (0..PER_TURN)
                        .map(|i| AllocRequest {
                            client_msg_id: format!("c{t}-{i}"),
                            sender_id: "u".into(),
                            fingerprint: String::new(),
                            candidate_msg_id: format!("m{t}-{i}"),
                            server_time_us: 1,
                        })
                        .collect();
                    for a in alloc.allocate_many(&sid, &requests).await {
                        let a = a.expect("allocation");
                        assert!(!a.duplicate);
                        seqs.push(a.seq);
                    }
                }
                seqs
            })
        })
        .collect();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert_eq!(
            seqs,
            (2..=(TURNS * PER_TURN) as i64 + 1).collect::<Vec<_>>(),
            "one allocator: each session's seqs in request order, no gap, no repeat"
        );
    }
    // Counted after the warm-up: without sharing, each turn makes at least one call.
    let calls = alloc.fast_calls() - calls_before;
    eprintln!("{calls} fast-path calls for {} turns", SESSIONS * TURNS);
    assert!(
        calls < (SESSIONS * TURNS) as u64,
        "{calls} fast-path calls for {} turns of {SESSIONS} sessions: no call served two sessions",
        SESSIONS * TURNS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_grow_by_their_rate_when_used_up_quickly() {
    let config = SeqConfig {
        segment_target_lifetime: Duration::from_secs(3600),
        ..small(4, 1000)
    };
    let (alloc, _) = allocator("seqstep", config).await;
    let sid = unique("sess");
    let mut segment_calls = 0;
    for i in 0..200 {
        let a = alloc
            .allocate(&sid, &format!("c{i}"), "m", 1)
            .await
            .unwrap();
        assert_eq!(a.seq, i + 1, "one allocator, no loss: no gaps");
        segment_calls += usize::from(a.path == AllocPath::Segment);
    }
    let (_, max, step) = redis_hash(&mut redis_connection().await, &sid).await;
    // Each segment is used up in far less than the hour's target: ×16 each time (the most one
    // step may grow), then capped. Doubling took 4, 8, 16, 32, 64, 128: six reservations.
    assert_eq!(step, 1000, "4 → 64 → 1000 (1024, capped)");
    assert_eq!(
        segment_calls, 3,
        "4 + 64 seqs, then the third segment holds the rest"
    );
    assert_eq!(alloc.ceiling(&sid).await.unwrap(), Some(max));
}

#[tokio::test]
async fn install_script_only_moves_values_up_and_never_recreates_a_lost_hash() {
    let mut con = redis_connection().await;
    let sid = unique("sess");
    let key = keys::seq(&sid);
    let script = redis::Script::new(INSTALL_LUA);
    let install = |cur: i64, high: i64, create: bool| {
        let mut inv = script.prepare_invoke();
        inv.key(&key)
            .arg(cur)
            .arg(high)
            .arg(high - cur)
            .arg(1)
            .arg(60_000)
            .arg(if create { "1" } else { "0" });
        inv
    };
    let r: i64 = install(0, 10, false).invoke_async(&mut con).await.unwrap();
    assert_eq!(r, 0, "a missing hash is not recreated from a segment");
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!exists);
    let r: i64 = install(0, 10, true).invoke_async(&mut con).await.unwrap();
    assert_eq!(r, 1);
    let r: i64 = install(20, 30, false).invoke_async(&mut con).await.unwrap();
    assert_eq!(r, 1);
    let (cur, max, _) = redis_hash(&mut con, &sid).await;
    assert_eq!((cur, max), (20, 30));
    // A stale, lower segment changes nothing.
    let _: i64 = install(10, 20, false).invoke_async(&mut con).await.unwrap();
    let (cur, max, _) = redis_hash(&mut con, &sid).await;
    assert_eq!((cur, max), (20, 30));
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
}

/// Allocates for `c<from>`..`c<to - 1>` of `sid`, one after the other; the seqs handed out.
async fn allocate_range(alloc: &SeqAllocator, sid: &str, from: i64, to: i64) -> Vec<i64> {
    let mut seqs = Vec::new();
    for i in from..to {
        let a = alloc
            .allocate(sid, &format!("c{i}"), &format!("m{i}"), i)
            .await
            .unwrap_or_else(|e| panic!("allocate c{i}: {e}"));
        assert!(!a.duplicate, "c{i} is new");
        seqs.push(a.seq);
    }
    seqs
}

/// Checks that the Redis behind `con` holds `sid` at `cur = 5` (`why` it went back there).
async fn assert_back_at_5(con: &mut RedisConnection, sid: &str, why: &str) {
    let (cur, _, _) = redis_hash(con, sid).await;
    assert_eq!(cur, 5, "{why}");
}

/// Promotes the replica behind `con` (`REPLICAOF NO ONE`), which lags: it holds `sid` at
/// `cur = 5` (`why`).
async fn promote_back_at_5(con: &mut RedisConnection, sid: &str, why: &str) {
    let _: String = admin(con, &["REPLICAOF", "NO", "ONE"]).await;
    assert_back_at_5(con, sid, why).await;
}

/// Hands out seqs 1..5 of `sid` and waits until the replica of `primary` holds them (`why` the
/// assertion names it).
async fn hand_out_5_replicated(
    alloc: &SeqAllocator,
    sid: &str,
    primary: &mut RedisConnection,
    why: &str,
) -> Vec<i64> {
    let seqs = allocate_range(alloc, sid, 0, 5).await;
    let acked: i64 = admin(primary, &["WAIT", "1", "10000"]).await;
    assert_eq!(acked, 1, "{why}");
    seqs
}

/// After Redis went back in time, the next allocation of `sid` is above every seq handed out
/// before (`handed_out`), through recovery above the CQL ceiling; an idempotency record that
/// survived still answers with its own seq.
async fn assert_no_seq_again(alloc: &SeqAllocator, sid: &str, handed_out: &[i64]) {
    let top = *handed_out.iter().max().expect("seqs were handed out");
    let next = alloc
        .allocate(sid, "after-rollback", "m-after", 1_000)
        .await
        .expect("allocate after the rollback");
    assert!(
        next.seq > top,
        "seq {} handed out again after Redis went back in time (already handed out: {handed_out:?})",
        next.seq
    );
    assert_eq!(next.path, AllocPath::Recover, "{next:?}");
    let first = alloc
        .allocate(sid, "c0", "m-other", 2_000)
        .await
        .expect("retry of c0");
    assert!(first.duplicate, "{first:?}");
    assert_eq!((first.seq, first.msg_id.as_str()), (handed_out[0], "m0"));
}

/// A Redis server of its own (taken back in time by the test), an allocator on it and a new
/// session.
struct Rollback {
    redis: TestRedis,
    con: RedisConnection,
    alloc: SeqAllocator,
    sid: String,
}

impl Rollback {
    /// Starts Redis with `args` besides its port; the session's name starts with `name`.
    async fn start(args: &[&str], name: &str) -> Rollback {
        let port = free_port();
        let args: Vec<String> = ["--port", &port.to_string()]
            .iter()
            .chain(args)
            .map(|a| a.to_string())
            .collect();
        let redis = TestRedis::start(&args, port);
        let con = connect_to(port).await;
        let (alloc, _, _) = allocator_on("seq_rollback", con.clone(), small(1000, 1000)).await;
        Rollback {
            redis,
            con,
            alloc,
            sid: unique(name),
        }
    }

    /// [`allocate_range`] of the session.
    async fn hand_out(&self, from: i64, to: i64) -> Vec<i64> {
        allocate_range(&self.alloc, &self.sid, from, to).await
    }

    /// Restarts Redis from what its data folder holds, which has the session at `cur = 5`
    /// (`why`), then [`assert_no_seq_again`].
    async fn restart_and_assert_no_seq_again(mut self, handed_out: &[i64], why: &str) {
        self.redis.restart();
        until_answers(&mut self.con).await;
        assert_back_at_5(&mut self.con, &self.sid, why).await;
        assert_no_seq_again(&self.alloc, &self.sid, handed_out).await;
    }
}

/// Redis restarted from an RDB snapshot taken earlier: its seq hash says `cur = 5` while 6..10
/// were handed out after the snapshot. The allocator sees the foreign epoch and recovers above
/// the CQL ceiling instead of handing 6 out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_an_rdb_snapshot_never_hands_a_seq_out_twice() {
    let mut t = Rollback::start(&[], "rdb").await;
    let mut handed_out = t.hand_out(0, 5).await;
    let _: String = admin(&mut t.con, &["SAVE"]).await;
    handed_out.extend(t.hand_out(5, 10).await);
    assert_eq!(handed_out, (1..=10).collect::<Vec<_>>());
    t.restart_and_assert_no_seq_again(&handed_out, "the restart took Redis back to the snapshot")
        .await;
}

/// The same with an AOF that lost its last writes: the data folder is restored to a copy taken
/// after seq 5, as the lost last second of an `appendfsync everysec` AOF (Redis's default) or an
/// old backup would leave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_an_older_aof_never_hands_a_seq_out_twice() {
    // Every write in the file before its reply, so the copy below holds exactly 1..5
    // (`everysec` may postpone a write by up to two seconds).
    let args = ["--appendonly", "yes", "--appendfsync", "always"];
    let mut t = Rollback::start(&args, "aof").await;
    let mut handed_out = t.hand_out(0, 5).await;
    // A consistent copy: the server writes nothing while frozen, and what it wrote is in the
    // page cache whether or not it was fsynced.
    let backup = chatlog::TempDir::new("aof-backup");
    t.redis.freeze();
    chatlog::copy_dir(&t.redis.dir().join("appendonlydir"), &backup.0).expect("copy the AOF");
    t.redis.thaw();
    handed_out.extend(t.hand_out(5, 10).await);

    t.redis.kill();
    let aof = t.redis.dir().join("appendonlydir");
    std::fs::remove_dir_all(&aof).expect("remove the AOF");
    chatlog::copy_dir(&backup.0, &aof).expect("restore the older AOF");
    t.restart_and_assert_no_seq_again(&handed_out, "the restart took Redis back to the older AOF")
        .await;
}

/// Failover to a replica that missed the last writes (its link was cut, then `REPLICAOF NO
/// ONE`): the promoted replica has `cur = 5` while 6..10 were handed out by the old primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_lagging_replica_never_hands_a_seq_out_twice() {
    let (primary, mut primary_con, _replica, mut replica_con) = primary_and_replica().await;
    let (alloc, session, keyspace) =
        allocator_on("seq_failover", primary_con.clone(), small(1000, 1000)).await;
    let sid = unique("failover");
    let mut handed_out = hand_out_5_replicated(
        &alloc,
        &sid,
        &mut primary_con,
        "the replica holds seqs 1..5",
    )
    .await;
    // Cut the link: the primary drops the replica and refuses it from now on (the replica has no
    // password), while the connections already open on the primary stay logged in.
    cut_replica_link(&mut primary_con).await;
    handed_out.extend(allocate_range(&alloc, &sid, 5, 10).await);
    // The primary dies before the replica gets 6..10; the replica is promoted.
    drop(primary);
    promote_back_at_5(&mut replica_con, &sid, "the promoted replica lags").await;

    // Logic follows the failover: its allocator now talks to the promoted replica.
    let promoted = SeqAllocator::new(session, &keyspace, replica_con, small(1000, 1000))
        .await
        .expect("seq allocator on the promoted replica");
    assert_no_seq_again(&promoted, &sid, &handed_out).await;
}

/// The trap of a `run_id`-only check: the old primary resyncs from the lagging replica promoted
/// in its place (its data goes back, its `run_id` stays) and is promoted again. Only its
/// replication id says its data changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_back_to_a_primary_that_resynced_from_a_lagging_replica_never_repeats_a_seq() {
    let (_a, mut a_con, b, mut b_con) = primary_and_replica().await;
    let (alloc, _, _) = allocator_on("seq_failover", a_con.clone(), small(1000, 1000)).await;
    let sid = unique("trap");
    let mut handed_out = hand_out_5_replicated(&alloc, &sid, &mut a_con, "B holds seqs 1..5").await;
    let run_id_before = chatlog_store::epoch::current(&mut a_con).await.unwrap();

    // Cut B off: frozen, its link killed, and A now refuses it (B has no password), while the
    // connections already open on A stay logged in.
    b.freeze();
    cut_replica_link(&mut a_con).await;
    handed_out.extend(allocate_range(&alloc, &sid, 5, 10).await);
    b.thaw();
    promote_back_at_5(&mut b_con, &sid, "B lags").await;

    // A resyncs from B (its data goes back to seq 5) and is promoted again.
    let _: () = admin(&mut a_con, &["CONFIG", "SET", "requirepass", ""]).await;
    let b_port = b.port.to_string();
    let _: String = admin(&mut a_con, &["REPLICAOF", "127.0.0.1", &b_port]).await;
    until_linked(&mut a_con).await;
    promote_back_at_5(&mut a_con, &sid, "A's data went back").await;
    let run_id_after = chatlog_store::epoch::current(&mut a_con).await.unwrap();
    assert_eq!(
        run_id_before.split(':').next(),
        run_id_after.split(':').next(),
        "A kept its run_id"
    );
    assert_no_seq_again(&alloc, &sid, &handed_out).await;
}

/// With `wait_replicas = 1` a seq is handed out only once the replica holds it, so a failover to
/// that replica cannot hand it out again: right after every allocation returns, the replica's
/// `cur` is already at or above it (across segment installs, too). With the replica frozen the
/// allocation fails with `NotReplicated` instead of handing out a seq only the primary knows; once
/// the replica is back, the retry of the same `client_msg_id` gets that seq, now replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_every_seq_handed_out_is_already_on_the_replica() {
    let (_primary, primary_con, replica, mut replica_con) = primary_and_replica().await;
    let (session, cql) = fresh_keyspace("seq_wait").await;
    let mut primary_admin = primary_con.clone();
    // Patient where the replica is healthy (a loaded machine may take a while to replicate), short
    // where it is frozen; both allocate from the same Redis and ceiling table.
    let allocator = |timeout: Duration| {
        SeqAllocator::new(
            session.clone(),
            &cql.keyspace,
            primary_con.clone(),
            SeqConfig {
                wait_replicas: 1,
                wait_timeout: timeout,
                ..small(3, 3)
            },
        )
    };
    let alloc = allocator(Duration::from_secs(10))
        .await
        .expect("seq allocator");
    let timeout = Duration::from_millis(300);
    let impatient = allocator(timeout).await.expect("seq allocator");
    let sid = unique("wait");
    let mut last = 0;
    for i in 0..20 {
        let a = alloc
            .allocate(&sid, &format!("c{i}"), &format!("m{i}"), i)
            .await
            .expect("allocate with a replica");
        assert!(a.seq > last, "seq {} after {last}", a.seq);
        last = a.seq;
        let (on_replica, _, _) = redis_hash(&mut replica_con, &sid).await;
        assert!(
            on_replica >= a.seq,
            "seq {} was handed out while the replica's cur was {on_replica}",
            a.seq
        );
    }

    replica.freeze();
    let started = Instant::now();
    let err = impatient
        .allocate(&sid, "frozen", "m-frozen", 99)
        .await
        .expect_err("no replica can acknowledge");
    replica.thaw();
    assert!(
        matches!(
            err,
            chatlog_store::Error::NotReplicated {
                wanted: 1,
                acked: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
    assert!(started.elapsed() >= timeout, "WAIT gave up early");

    let retried = alloc
        .allocate(&sid, "frozen", "m-retry", 100)
        .await
        .expect("the replica is back");
    assert_eq!(
        retried.seq,
        last + 1,
        "the retry gets the seq of the failed call"
    );
    assert_eq!(retried.msg_id, "m-frozen", "…and its first msg_id");
    let (on_replica, _, _) = redis_hash(&mut replica_con, &sid).await;
    assert!(on_replica >= retried.seq);

    // A Redis that forgot the script (restart, SCRIPT FLUSH): the pipeline loads it and goes on.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut primary_admin)
        .await
        .expect("SCRIPT FLUSH");
    let after_flush = alloc
        .allocate(&sid, "after-flush", "m-after-flush", 101)
        .await
        .expect("allocate after SCRIPT FLUSH");
    assert!(after_flush.seq > retried.seq && !after_flush.duplicate);
    let (on_replica, _, _) = redis_hash(&mut replica_con, &sid).await;
    assert!(on_replica >= after_flush.seq);
}

/// Idempotency records carry the message's fingerprint: the same key with another fingerprint is
/// a conflict (nothing allocated, the first allocation untouched), the same fingerprint or none
/// is a duplicate, and a record written before fingerprints existed is still honoured.
#[tokio::test]
async fn a_conflicting_repeat_of_a_client_msg_id_is_refused_and_allocates_nothing() {
    let (alloc, _) = allocator("seqconflict", small(100, 100)).await;
    let sid = unique("conflict");
    let request = |fingerprint: &str, msg_id: &str| AllocRequest {
        client_msg_id: "c-1".to_owned(),
        sender_id: "u-1".to_owned(),
        fingerprint: fingerprint.to_owned(),
        candidate_msg_id: msg_id.to_owned(),
        server_time_us: 7,
    };
    let first = alloc
        .allocate_request(&sid, &request("aa01", "m-first"))
        .await
        .expect("first");
    let err = alloc
        .allocate_request(&sid, &request("bb02", "m-other"))
        .await
        .expect_err("another message under the same key");
    assert!(
        matches!(&err, chatlog_store::Error::IdempotencyConflict { seq, msg_id }
            if *seq == first.seq && msg_id == "m-first"),
        "{err}"
    );
    let again = alloc
        .allocate_request(&sid, &request("aa01", "m-again"))
        .await
        .expect("the same message");
    assert!(again.duplicate && again.seq == first.seq && again.msg_id == "m-first");
    let next = alloc
        .allocate(&sid, "c-2", "m-next", 8)
        .await
        .expect("next");
    assert_eq!(next.seq, first.seq + 1, "the conflict allocated nothing");

    // A record from before fingerprints: `<seq>:<time>:<msg_id>`.
    let mut con = redis_connection().await;
    let _: () = redis::cmd("SET")
        .arg(keys::client_msg(&sid, "u-1", "legacy"))
        .arg("3:1700000000000000:m-legacy")
        .query_async(&mut con)
        .await
        .expect("SET legacy record");
    let mut legacy = request("cc03", "m-new");
    legacy.client_msg_id = "legacy".to_owned();
    let old = alloc
        .allocate_request(&sid, &legacy)
        .await
        .expect("legacy record");
    assert!(old.duplicate);
    assert_eq!((old.seq, old.msg_id.as_str()), (3, "m-legacy"));
}
