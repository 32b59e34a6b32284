//! `chatlog inspect session` against the stack: seqs allocated by the real allocator, messages
//! written into a fresh keyspace and the session's window with the store's own writers (as the
//! consumer does), one window member planted by hand; the binary shows the allocator's state, the
//! window, the table, both side by side, and the table's gaps.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use chatlog::{fresh_keyspace, redis_connection, unique};
use chatlog_schemas::{ChatMessage, Codec, testing};
use chatlog_store::keys;
use chatlog_store::messages::{BatchLimits, MessageWriter};
use chatlog_store::seq::{SeqAllocator, SeqConfig};
use chatlog_store::window::{self, WindowConfig, WindowEntry, WindowWriter};
use serde_json::Value;

/// The window size of this test (the binary is given the same).
const W: usize = 10;

fn now_us() -> i64 {
    chatlog::now_ms() * 1000
}

#[tokio::test]
async fn inspect_session_shows_window_and_cql_side_by_side() {
    let (cql, config) = fresh_keyspace("admin_inspect").await;
    let redis = redis_connection().await;
    let codec = Codec::default();
    let sid = unique("insp");

    // 14 seqs from the allocator: the seq hash and the CQL ceiling as in production.
    let seqs = SeqAllocator::new(
        Arc::clone(&cql),
        &config.keyspace,
        redis.clone(),
        SeqConfig::default(),
    )
    .await
    .expect("seq allocator");
    for i in 1..=14 {
        let a = seqs
            .allocate(&sid, &format!("c{i}"), &format!("m{i}"), now_us())
            .await
            .expect("allocate");
        assert_eq!(a.seq, i);
    }
    let ceiling = seqs.ceiling(&sid).await.expect("ceiling").expect("a row");

    // Written: 1..=12 without 5, long ago (a settled gap: missing), seq 11 edited, and 14 just
    // now (13 below it: a young gap, pending).
    let mut msgs: Vec<ChatMessage> = testing::messages(&sid, (1..=12).filter(|&s| s != 5));
    let edit_at = testing::BASE_TIME_US + 1_000_000;
    msgs[9] = testing::edited(&msgs[9], edit_at, 1, b"edited");
    assert_eq!(msgs[9].seq, 11);
    msgs.push(testing::message_at(&sid, 14, now_us(), 0));
    MessageWriter::new(Arc::clone(&cql), &config.keyspace, BatchLimits::default())
        .await
        .expect("message writer")
        .write(&msgs)
        .await
        .expect("write rows");
    let entries = msgs
        .iter()
        .map(|m| WindowEntry {
            ..WindowEntry::of(m, &codec.encode(m).expect("encode"))
        })
        .collect();
    let mut con = redis.clone();
    WindowWriter::new(WindowConfig {
        size: W,
        ..WindowConfig::default()
    })
    .append_proven(&mut con, &BTreeMap::from([(sid.clone(), entries)]))
    .await
    .expect("append window");

    // Planted: seq 9's member with other content at the same version.
    let m9 = &msgs[7];
    assert_eq!(m9.seq, 9);
    let mut changed = m9.clone();
    changed.content = b"tampered".to_vec();
    let member = |m: &ChatMessage| window::member(m.version(), &codec.encode(m).expect("encode"));
    redis::pipe()
        .cmd("ZREM")
        .arg(keys::window(&sid))
        .arg(member(m9))
        .cmd("ZADD")
        .arg(keys::window(&sid))
        .arg(9)
        .arg(member(&changed))
        .query_async::<()>(&mut con)
        .await
        .expect("plant a difference");

    let mut cmd = common::chatlog(&config.keyspace);
    cmd.env("CHATLOG__WINDOW__SIZE", W.to_string());
    let ran = common::run(cmd, &["inspect", "session", &sid, "--rows", "12"]).await;
    assert_eq!(ran.code, Some(1), "the window is inconsistent: {ran}");
    let out = &ran.stdout;
    let has = |needle: &str| assert!(out.contains(needle), "{needle:?} not in\n{ran}");
    has(&format!("session {sid}\n"));
    has(&format!(
        "  redis hash     cur 14  max {ceiling}  step {ceiling}"
    ));
    has("  hash epoch     current\n");
    has(&format!(
        "  fast path      usable ({} seqs left in the segment)",
        ceiling - 14
    ));
    has(&format!("  cql ceiling    {ceiling} "));
    // The newest W = 10 of the 13 written seqs.
    has(&format!(
        "window (W = {W})\n  members        10  seqs 3..=14\n"
    ));
    has("  epoch          current (history serves it)\n");
    has("  head           seq 14 ");
    has("  rows read      12 seqs 1..=14 ");
    has("newest 12 seqs (of --rows 12)\n");
    let row = |seq: i64| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(&seq.to_string()))
            .unwrap_or_else(|| panic!("no row for seq {seq}\n{ran}"))
    };
    let v = |m: &ChatMessage| m.version().to_string();
    assert!(row(9).ends_with("DIFFERS (content)"), "{ran}");
    assert!(row(9).contains(&format!("{} NORMAL", v(m9))), "{ran}");
    assert!(row(14).ends_with("same"), "{ran}");
    assert!(
        row(11).contains(&format!("{} EDITED×1", edit_at)) && row(11).ends_with("same"),
        "{ran}"
    );
    assert!(row(2).ends_with("table only"), "below the window\n{ran}");
    has("gaps in the table between seq 1 and the head 14");
    assert!(row(13).ends_with("pending (may still land)"), "{ran}");
    assert!(row(5).ends_with("missing (final)"), "{ran}");
    has("verdict: window INCONSISTENT");

    // The same as JSON.
    let mut cmd = common::chatlog(&config.keyspace);
    cmd.env("CHATLOG__WINDOW__SIZE", W.to_string());
    let ran = common::run(cmd, &["inspect", "session", &sid, "--rows", "5", "--json"]).await;
    assert_eq!(ran.code, Some(1), "{ran}");
    let json: Value = serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}\n{ran}"));
    assert_eq!(json["seq"]["hash"]["cur"], 14, "{json:#}");
    assert_eq!(json["seq"]["fast_path_usable"], true, "{json:#}");
    assert_eq!(json["seq"]["cql_ceiling"], ceiling, "{json:#}");
    assert_eq!(json["window"]["members"], 10, "{json:#}");
    assert_eq!(json["table"]["head"], 14, "{json:#}");
    let shown: Vec<(i64, String)> = json["seqs"]
        .as_array()
        .expect("seqs")
        .iter()
        .map(|s| {
            (
                s["seq"].as_i64().expect("seq"),
                s["verdict"].as_str().expect("verdict").to_owned(),
            )
        })
        .collect();
    let same = || "same".to_owned();
    assert_eq!(
        shown,
        vec![
            (14, same()),
            (12, same()),
            (11, same()),
            (10, same()),
            (9, "differs (content)".to_owned())
        ],
        "{json:#}"
    );
    assert_eq!(
        json["gaps"],
        serde_json::json!([{"from": 13, "to": 13, "status": "pending"}]),
        "{json:#}"
    );
}
