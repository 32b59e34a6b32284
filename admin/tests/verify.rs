//! `chatlog verify windows` against the stack: messages written into a fresh keyspace and their
//! windows with the store's own writers (as the consumer does), windows damaged by hand, then the
//! binary finds them, says which, and `--repair` rebuilds them so that history reads exactly the
//! table's rows from the window again.
//!
//! Other tests' windows live in the same Redis: `--all` sees them too (compared with this test's
//! keyspace, where they have no rows), so assertions name this test's sessions only, or narrow
//! the walk with `--match`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use chatlog::{fresh_keyspace, history_config, redis_connection, unique};
use chatlog_schemas::{ChatMessage, Codec, testing};
use chatlog_store::RedisConnection;
use chatlog_store::history::{History, Source};
use chatlog_store::keys;
use chatlog_store::messages::{BatchLimits, MessageWriter};
use chatlog_store::verify::verify_window;
use chatlog_store::window::{self, WindowConfig, WindowEntry, WindowWriter};

/// The window size of these tests (the binary is given the same).
const W: usize = 10;

struct Fixture {
    keyspace: String,
    redis: RedisConnection,
    codec: Codec,
    messages: MessageWriter,
    window: WindowWriter,
    history: History,
}

async fn fixture() -> Fixture {
    fixture_on(redis_connection().await).await
}

async fn fixture_on(redis: RedisConnection) -> Fixture {
    let (cql, config) = fresh_keyspace("admin_verify").await;
    let codec = Codec::default();
    let history = History::new(
        Arc::clone(&cql),
        &config.keyspace,
        redis.clone(),
        codec.clone(),
        history_config(W),
    )
    .await
    .expect("history reader");
    let messages = MessageWriter::new(cql, &config.keyspace, BatchLimits::default())
        .await
        .expect("message writer");
    Fixture {
        keyspace: config.keyspace,
        redis,
        codec,
        messages,
        window: WindowWriter::new(WindowConfig {
            size: W,
            ..WindowConfig::default()
        }),
        history,
    }
}

impl Fixture {
    /// `chatlog` on this keyspace with this window size.
    fn chatlog(&self) -> std::process::Command {
        let mut cmd = common::chatlog(&self.keyspace);
        cmd.env("CHATLOG__WINDOW__SIZE", W.to_string());
        cmd
    }

    fn member(&self, m: &ChatMessage) -> Vec<u8> {
        window::member(m.version(), &self.codec.encode(m).expect("encode"))
    }

    /// Writes `seqs` of `sid` to the table and the window, as the consumer does; returns them.
    async fn write(
        &self,
        sid: &str,
        seqs: impl IntoIterator<Item = i64>,
    ) -> BTreeMap<i64, ChatMessage> {
        let msgs = testing::messages(sid, seqs);
        self.messages.write(&msgs).await.expect("write rows");
        let entries = msgs
            .iter()
            .map(|m| WindowEntry::of(m, &self.codec.encode(m).expect("encode")))
            .collect();
        let mut con = self.redis.clone();
        self.window
            .append_proven(&mut con, &BTreeMap::from([(sid.to_owned(), entries)]))
            .await
            .expect("append window");
        msgs.into_iter().map(|m| (m.seq, m)).collect()
    }

    /// Damages the window of `sid`: a hole at `hole` (ZREM) and another message's content at
    /// `wrong` (same version).
    async fn damage(&self, written: &BTreeMap<i64, ChatMessage>, hole: i64, wrong: i64) {
        let key = keys::window(&written[&hole].session_id);
        let mut changed = written[&wrong].clone();
        changed.content = b"tampered".to_vec();
        let mut con = self.redis.clone();
        redis::pipe()
            .cmd("ZREM")
            .arg(&key)
            .arg(self.member(&written[&hole]))
            .arg(self.member(&written[&wrong]))
            .cmd("ZADD")
            .arg(&key)
            .arg(wrong)
            .arg(self.member(&changed))
            .query_async::<()>(&mut con)
            .await
            .expect("damage the window");
    }

    /// Marks the window of `sid` as written in another Redis epoch.
    async fn age_epoch(&self, sid: &str) {
        let mut con = self.redis.clone();
        redis::cmd("SET")
            .arg(keys::window_epoch(sid))
            .arg("0:0")
            .query_async::<()>(&mut con)
            .await
            .expect("SET the window epoch");
    }

    async fn exists(&self, key: &str) -> bool {
        let mut con = self.redis.clone();
        redis::cmd("EXISTS")
            .arg(key)
            .query_async::<i64>(&mut con)
            .await
            .expect("EXISTS")
            == 1
    }
}

/// The verdict lines of `stdout` about `sid` (`<class> <sid>: …`; not the report's header
/// `session <sid>: …` that `--session` prints above it).
fn lines_of<'a>(stdout: &'a str, sid: &str) -> Vec<&'a str> {
    let needle = format!(" {sid}: ");
    stdout
        .lines()
        .filter(|l| l.contains(&needle) && !l.starts_with("session "))
        .collect()
}

#[tokio::test]
async fn verify_finds_and_repairs_a_damaged_window() {
    let fx = fixture().await;
    let sid = unique("vrep");
    let written = fx.write(&sid, 1..=25).await;
    let healthy = common::run(fx.chatlog(), &["verify", "windows", "--session", &sid]).await;
    assert_eq!(healthy.code, Some(0), "{healthy}");
    assert!(
        healthy.stdout.contains(&format!("consistent    {sid}: ")),
        "{healthy}"
    );

    fx.damage(&written, 20, 23).await;
    let found = common::run(fx.chatlog(), &["verify", "windows", "--session", &sid]).await;
    assert_eq!(found.code, Some(1), "{found}");
    let lines = lines_of(&found.stdout, &sid);
    assert_eq!(lines.len(), 1, "{found}");
    assert!(
        lines[0].starts_with("INCONSISTENT")
            && lines[0].contains("missing in window [20]")
            && lines[0].contains("differing [23]"),
        "{found}"
    );
    assert!(
        found
            .stdout
            .contains("1 inconsistent, 0 other-epoch, 0 repaired"),
        "{found}"
    );

    let repaired = common::run(
        fx.chatlog(),
        &["verify", "windows", "--session", &sid, "--repair"],
    )
    .await;
    assert_eq!(repaired.code, Some(0), "{repaired}");
    assert!(
        repaired
            .stdout
            .contains(&format!("repaired: {W} rows from the table appended")),
        "{repaired}"
    );
    assert!(repaired.stdout.contains("1 repaired"), "{repaired}");

    let report = verify_window(&fx.history, &sid).await.expect("verify");
    assert!(report.is_consistent(), "{report}");
    assert!(report.window_epoch_current, "{report}");
    assert_eq!(report.window_range, Some((16, 25)), "{report}");
    let page = fx.history.latest(&sid, W).await.expect("latest");
    assert_eq!(page.source, Source::Window, "{page:?}");
    let expected: Vec<ChatMessage> = written.range(16..=25).map(|(_, m)| m.clone()).collect();
    assert_eq!(page.messages, expected);

    // Repaired means repaired: the binary agrees now.
    let again = common::run(fx.chatlog(), &["verify", "windows", "--session", &sid]).await;
    assert_eq!(again.code, Some(0), "{again}");
}

#[tokio::test]
async fn verify_all_walks_every_window() {
    let fx = fixture().await;
    let prefix = unique("vall");
    let sids: Vec<String> = (0..4).map(|i| format!("{prefix}-s{i}")).collect();
    let mut written = Vec::new();
    for sid in &sids {
        written.push(fx.write(sid, 1..=15).await);
    }
    let other_epoch = format!("{prefix}-old");
    let old = fx.write(&other_epoch, 1..=15).await;
    fx.damage(&written[2], 8, 12).await;
    // Damaged too, but of another epoch: never served, so not inconsistent.
    fx.damage(&old, 8, 12).await;
    fx.age_epoch(&other_epoch).await;

    // Every window of Redis (other tests' too, which have no rows in this keyspace).
    let all = common::run(fx.chatlog(), &["verify", "windows", "--all"]).await;
    assert_eq!(all.code, Some(1), "{all}");
    for (i, sid) in sids.iter().enumerate() {
        let lines = lines_of(&all.stdout, sid);
        if i == 2 {
            assert_eq!(lines.len(), 1, "{all}");
            assert!(lines[0].starts_with("INCONSISTENT"), "{all}");
        } else {
            assert_eq!(lines, Vec::<&str>::new(), "consistent: not listed\n{all}");
        }
    }
    let lines = lines_of(&all.stdout, &other_epoch);
    assert_eq!(lines.len(), 1, "{all}");
    assert!(lines[0].starts_with("other-epoch"), "{all}");

    // This test's windows only, with a bounded page concurrency.
    let glob = format!("{prefix}-*");
    let mine = common::run(
        fx.chatlog(),
        &[
            "verify",
            "windows",
            "--all",
            "--match",
            &glob,
            "--concurrency",
            "2",
        ],
    )
    .await;
    assert_eq!(mine.code, Some(1), "{mine}");
    assert!(
        mine.stdout.contains(
            "checked 5: 3 consistent, 1 inconsistent, 1 other-epoch, 0 repaired, 0 deleted;"
        ),
        "{mine}"
    );

    let repaired = common::run(
        fx.chatlog(),
        &["verify", "windows", "--all", "--match", &glob, "--repair"],
    )
    .await;
    assert_eq!(repaired.code, Some(0), "{repaired}");
    assert!(
        repaired.stdout.contains(
            "checked 5: 3 consistent, 1 inconsistent, 1 other-epoch, 1 repaired, 1 deleted;"
        ),
        "{repaired}"
    );
    let report = verify_window(&fx.history, &sids[2]).await.expect("verify");
    assert!(
        report.is_consistent() && report.window_epoch_current,
        "{report}"
    );
    assert!(!fx.exists(&keys::window(&other_epoch)).await);
    assert!(!fx.exists(&keys::window_epoch(&other_epoch)).await);

    let after = common::run(
        fx.chatlog(),
        &["verify", "windows", "--all", "--match", &glob],
    )
    .await;
    assert_eq!(after.code, Some(0), "{after}");
    assert!(
        after
            .stdout
            .contains("checked 4: 4 consistent, 0 inconsistent"),
        "{after}"
    );
}

#[tokio::test]
async fn verify_reports_a_window_of_another_epoch_as_such() {
    let fx = fixture().await;
    let sid = unique("vepoch");
    let written = fx.write(&sid, 1..=15).await;
    fx.damage(&written, 9, 11).await;
    fx.age_epoch(&sid).await;

    let found = common::run(fx.chatlog(), &["verify", "windows", "--session", &sid]).await;
    assert_eq!(
        found.code,
        Some(0),
        "not served, so nothing is wrong: {found}"
    );
    let lines = lines_of(&found.stdout, &sid);
    assert_eq!(lines.len(), 1, "{found}");
    assert!(lines[0].starts_with("other-epoch"), "{found}");
    assert!(
        found.stdout.contains("0 inconsistent, 1 other-epoch"),
        "{found}"
    );

    let deleted = common::run(
        fx.chatlog(),
        &["verify", "windows", "--session", &sid, "--repair"],
    )
    .await;
    assert_eq!(deleted.code, Some(0), "{deleted}");
    assert!(deleted.stdout.contains("  deleted"), "{deleted}");
    assert!(!fx.exists(&keys::window(&sid)).await);
    // History reads the table meanwhile.
    let page = fx.history.latest(&sid, 5).await.expect("latest");
    assert_eq!(page.source, Source::Database, "{page:?}");
    assert_eq!(page.seqs(), (11..=15).collect::<Vec<_>>());
}

/// `--all` on a Redis Cluster: `SCAN` walks one node, so the tool walks every master; windows
/// on each of the three are found, the damaged ones repaired.
#[tokio::test]
async fn verify_all_walks_every_master_of_a_cluster() {
    let fx = fixture_on(chatlog::cluster::redis_connection().await).await;
    let sids = chatlog::cluster::sessions_on_every_master("vcl", 2).await;
    let glob = format!("{}*", sids[0].rsplit_once('_').expect("a numbered id").0);
    for (i, sid) in sids.iter().enumerate() {
        let written = fx.write(sid, 1..=15).await;
        if i % 2 == 0 {
            fx.damage(&written, 8, 12).await;
        }
    }
    let cluster = || {
        let mut cmd = fx.chatlog();
        cmd.env(
            "CHATLOG_REDIS_CLUSTER_NODES",
            chatlog::cluster::redis_nodes().join(","),
        );
        cmd
    };
    let found = common::run(cluster(), &["verify", "windows", "--all", "--match", &glob]).await;
    assert_eq!(found.code, Some(1), "{found}");
    assert!(
        found
            .stdout
            .contains("checked 6: 3 consistent, 3 inconsistent"),
        "{found}"
    );
    for (i, sid) in sids.iter().enumerate() {
        assert_eq!(
            lines_of(&found.stdout, sid).len(),
            usize::from(i % 2 == 0),
            "{found}"
        );
    }
    let repaired = common::run(
        cluster(),
        &["verify", "windows", "--all", "--match", &glob, "--repair"],
    )
    .await;
    assert_eq!(repaired.code, Some(0), "{repaired}");
    assert!(repaired.stdout.contains("3 repaired"), "{repaired}");
    for sid in &sids {
        let report = verify_window(&fx.history, sid).await.expect("verify");
        assert!(
            report.is_consistent() && report.window_epoch_current,
            "{report}"
        );
    }
}
