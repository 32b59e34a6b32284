//! The Redis window when Redis goes back in time (restart from a snapshot, failover to a lagging
//! replica) or a late seq arrives below it: the window never gets a hole that history would take
//! for a gap. The seq allocator's side of the same faults is in tests/seq.rs.

use std::collections::BTreeMap;

use chatlog::{
    TestRedis, admin, connect_to, cut_replica_link, free_port, primary_and_replica,
    redis_connection, unique, until_answers,
};
use chatlog_store::RedisConnection;
use chatlog_store::keys;
use chatlog_store::window::{self, WindowConfig, WindowEntry, WindowWriter};

fn writer() -> WindowWriter {
    WindowWriter::new(WindowConfig {
        size: 200,
        ..WindowConfig::default()
    })
}

fn entries(seqs: impl IntoIterator<Item = i64>) -> Vec<WindowEntry> {
    seqs.into_iter()
        .map(|seq| WindowEntry {
            seq,
            member: window::member(1_000 + seq, format!("message {seq}").as_bytes()),
        })
        .collect()
}

/// Appends `seqs` of `sid` through the consumer's writer (members are opaque to the window);
/// returns whether the window was left unstarted (it was empty).
async fn append(con: &mut RedisConnection, sid: &str, seqs: impl IntoIterator<Item = i64>) -> bool {
    let not_started = writer()
        .append(con, &BTreeMap::from([(sid.to_owned(), entries(seqs))]))
        .await
        .expect("append to the window");
    not_started == [sid]
}

/// Appends `seqs` as the table's newest rows of `sid` (what the writer starts a window from).
async fn start(con: &mut RedisConnection, sid: &str, seqs: impl IntoIterator<Item = i64>) {
    writer()
        .append_proven(con, &BTreeMap::from([(sid.to_owned(), entries(seqs))]))
        .await
        .expect("start the window");
}

async fn window_seqs(con: &mut RedisConnection, sid: &str) -> Vec<i64> {
    let scored: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
        .arg(keys::window(sid))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(con)
        .await
        .expect("ZRANGE");
    scored.into_iter().map(|(_, s)| s as i64).collect()
}

/// The window of `sid` went back to 1..100 while 101..150 had been appended (`why`); the next
/// append, 151..160, empties it (another epoch) and does not start it — the records alone do not
/// prove they are the newest — instead of landing above a hole 101..150; then the writer starts
/// it from the table's newest rows.
async fn assert_lagging_window_starts_afresh(con: &mut RedisConnection, sid: &str, why: &str) {
    assert_eq!(
        window_seqs(con, sid).await,
        (1..=100).collect::<Vec<_>>(),
        "{why}"
    );
    assert!(append(con, sid, 151..=160).await, "reported as not started");
    assert_eq!(
        window_seqs(con, sid).await,
        Vec::<i64>::new(),
        "no hole 101..150 inside the window's range, and no window started from 151..160"
    );
    start(con, sid, 1..=160).await;
    assert_eq!(
        window_seqs(con, sid).await,
        (1..=160).collect::<Vec<_>>(),
        "started from the table"
    );
}

/// Redis restarts from a snapshot that holds 1..100 of a window that had reached 150. The next
/// append (151..160) must not land above a hole 101..150 that readers would take for a gap: the
/// window, written in another epoch, starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_rollback_to_an_rdb_snapshot_starts_afresh_instead_of_leaving_a_hole() {
    let port = free_port();
    let mut redis = TestRedis::start(&["--port".into(), port.to_string()], port);
    let mut con = connect_to(port).await;
    let sid = unique("win-rdb");
    start(&mut con, &sid, 1..=100).await;
    let _: String = admin(&mut con, &["SAVE"]).await;
    append(&mut con, &sid, 101..=150).await;

    redis.restart();
    until_answers(&mut con).await;
    assert_lagging_window_starts_afresh(
        &mut con,
        &sid,
        "the restart took the window back to the snapshot",
    )
    .await;
}

/// The same after a failover to a replica that missed 101..150.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_failover_to_a_lagging_replica_starts_afresh_instead_of_leaving_a_hole() {
    let (primary, mut primary_con, _replica, mut replica_con) = primary_and_replica().await;
    let sid = unique("win-failover");
    start(&mut primary_con, &sid, 1..=100).await;
    let acked: i64 = admin(&mut primary_con, &["WAIT", "1", "10000"]).await;
    assert_eq!(acked, 1, "the replica holds 1..100");
    cut_replica_link(&mut primary_con).await;
    append(&mut primary_con, &sid, 101..=150).await;
    drop(primary);
    let _: String = admin(&mut replica_con, &["REPLICAOF", "NO", "ONE"]).await;
    assert_lagging_window_starts_afresh(&mut replica_con, &sid, "the promoted replica lags").await;
}

/// A window that restarted short (expiry, FLUSHALL, a rollback) holds {150}; a replayed or late
/// seq 120 must not extend it downward, or 121..149, which the table has, would look like gaps.
/// Seqs inside the window's range and above it are still added.
#[tokio::test]
async fn replayed_seq_below_the_window_after_rollback_is_left_to_the_table() {
    let mut con = redis_connection().await;
    let sid = unique("win-below");
    start(&mut con, &sid, [150]).await;
    append(&mut con, &sid, [120]).await;
    assert_eq!(window_seqs(&mut con, &sid).await, vec![150]);
    append(&mut con, &sid, [149, 152]).await;
    assert_eq!(window_seqs(&mut con, &sid).await, vec![150, 152]);
    append(&mut con, &sid, [151, 150]).await;
    assert_eq!(
        window_seqs(&mut con, &sid).await,
        vec![150, 151, 152],
        "a late seq inside the range fills it; a replay changes nothing"
    );
    let _: () = redis::cmd("DEL")
        .arg(keys::window(&sid))
        .arg(keys::window_epoch(&sid))
        .query_async(&mut con)
        .await
        .expect("DEL");
}
