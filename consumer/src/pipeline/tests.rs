//! Unit tests of the loop's pure logic: the write plan, the membership gate, isolation and stall
//! bookkeeping, the offsets to commit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chatlog_schemas::ChatMessage;
use chatlog_store::window::EntryRef;
use rdkafka::Offset;

use super::MembershipGate;
use super::collect::{first_offsets, next_offsets};
use super::isolation::Progress;
use super::plan::WritePlan;
use crate::decode::{self, Good, Origin, Record};

fn rec(partition: i32, offset: i64) -> Record {
    Record {
        origin: Origin {
            topic: "t".into(),
            partition,
            offset,
        },
        key: None,
        payload: None,
    }
}

fn good(session_id: &str, seq: i64, version: i64) -> Good {
    Good {
        origin: Origin {
            topic: "t".into(),
            partition: 0,
            offset: seq,
        },
        message: decode::test_message(session_id, seq, version),
        avro: vec![seq as u8],
    }
}

fn seqs_of(rows: &[&ChatMessage], session_id: &str) -> Vec<i64> {
    let mut seqs: Vec<i64> = rows
        .iter()
        .filter(|m| m.session_id == session_id)
        .map(|m| m.seq)
        .collect();
    seqs.sort_unstable();
    seqs
}

#[test]
fn windows_go_with_the_rows_unless_the_append_would_trim_messages_of_the_batch() {
    // Window size 3. Session "few": 3 messages → written at once. Session "many": seqs 1..=5
    // with seq 5 twice (an edit) and out of order → seqs 1, 2 first, then the newest 3 seqs.
    let batch = [
        good("few", 7, 1),
        good("many", 5, 1),
        good("many", 2, 1),
        good("few", 8, 1),
        good("many", 1, 1),
        good("many", 4, 1),
        good("many", 3, 1),
        good("many", 5, 2),
        good("few", 9, 1),
    ];
    let plan = WritePlan::new(&batch, 3);
    assert_eq!(seqs_of(&plan.rows, "few"), [7, 8, 9]);
    assert_eq!(seqs_of(&plan.rows, "many"), [3, 4, 5, 5]);
    assert_eq!(seqs_of(&plan.trimmed_rows, "many"), [1, 2]);
    assert!(seqs_of(&plan.trimmed_rows, "few").is_empty());
    let window_seqs = |w: &BTreeMap<&str, Vec<EntryRef>>, s: &str| {
        let mut seqs: Vec<i64> = w.get(s).into_iter().flatten().map(|e| e.seq).collect();
        seqs.sort_unstable();
        seqs
    };
    assert_eq!(window_seqs(&plan.windows, "few"), [7, 8, 9]);
    assert!(!plan.windows.contains_key("many"));
    assert_eq!(
        window_seqs(&plan.windows_after_trimmed_rows, "many"),
        [3, 4, 5, 5],
        "both versions of seq 5: the script keeps the newer"
    );
    assert!(!plan.windows_after_trimmed_rows.contains_key("few"));
    // Every message is written exactly once.
    assert_eq!(plan.rows.len() + plan.trimmed_rows.len(), batch.len());
}

#[test]
fn a_membership_error_closes_window_writes_until_a_newer_assignment() {
    let mut gate = MembershipGate::default();
    assert!(gate.open(0), "open at start");
    gate.close(3);
    assert!(!gate.open(3), "no assignment since the error");
    assert!(!gate.open(3), "still closed");
    assert!(gate.open(4), "a newer assignment reopens");
    assert!(gate.open(4));
    // A second error after that assignment waits for the next one again.
    gate.close(4);
    assert!(!gate.open(4));
    assert!(gate.open(7));
}

#[test]
fn a_commit_failed_by_a_rebalance_it_overlapped_leaves_window_writes_open() {
    // Batch N's transaction opened after 3 assignments and was closed on the commit thread; the
    // poll of batch N+1 meanwhile took part in a rebalance (assignment 4), whose new generation
    // failed N's commit. The error speaks of generation 3: assignment 4 answers it already.
    let mut gate = MembershipGate::default();
    gate.close(3);
    assert!(
        gate.open(4),
        "the assignment that failed the commit reopens"
    );
    // An error of an older call never undoes a later one's closure.
    gate.close(5);
    gate.close(3);
    assert!(!gate.open(5), "closed at 5, not reopened by an error at 3");
    assert!(gate.open(6));
}

#[test]
fn rewinds_in_a_row_start_isolating_until_a_commit_passes_the_failed_batch() {
    let tp = |p: i32| ("t".to_owned(), p);
    let batch = BTreeMap::from([(tp(0), (10, 20)), (tp(1), (5, 9))]);
    let mut progress = Progress::default();
    // Fences are not the records' fault: no strike.
    progress.rewound(&batch, false, 2);
    assert_eq!(progress.strikes, 0);
    progress.rewound(&batch, true, 2);
    assert!(!progress.isolating());
    progress.rewound(&batch, true, 2);
    assert!(progress.isolating());
    assert_eq!(progress.isolate_through[&tp(0)], 20);
    assert_eq!(
        progress.stuck[&tp(0)].1,
        3,
        "every rewind counts for the stall"
    );
    // A small batch of partition 0 commits, short of offset 20: still isolating there.
    progress.committed(&BTreeMap::from([(tp(0), (10, 15))]));
    assert_eq!(progress.strikes, 0);
    assert!(progress.isolating());
    assert!(!progress.stuck.contains_key(&tp(0)), "partition 0 moved");
    assert!(progress.stuck.contains_key(&tp(1)));
    progress.committed(&BTreeMap::from([(tp(0), (16, 20)), (tp(1), (5, 9))]));
    assert!(!progress.isolating());
    assert!(progress.stuck.is_empty());
}

#[test]
fn a_partition_rewound_for_stall_after_is_reported_until_it_moves_or_leaves() {
    let tp = |p: i32| ("t".to_owned(), p);
    let mut progress = Progress::default();
    let batch = BTreeMap::from([(tp(3), (0, 1))]);
    progress.rewound(&batch, true, 5);
    let now = Instant::now();
    let after = Duration::from_secs(60);
    assert_eq!(progress.stalled(after, now).0, 0, "not yet");
    let (n, why) = progress.stalled(after, now + after);
    assert_eq!(n, 1);
    let why = why.unwrap();
    assert!(why.contains("t [3]") && why.contains("not moving"), "{why}");
    progress.keep_only(&BTreeSet::from([tp(4)]));
    assert_eq!(progress.stalled(after, now + after).0, 0, "revoked");
}

#[test]
fn offsets_to_commit_are_last_plus_one() {
    let batch = [rec(0, 5), rec(1, 9), rec(0, 7), rec(0, 6)];
    let origins = || batch.iter().map(|r| &r.origin);
    let tpl = next_offsets(origins());
    assert_eq!(
        tpl.find_partition("t", 0).unwrap().offset(),
        Offset::Offset(8)
    );
    assert_eq!(
        tpl.find_partition("t", 1).unwrap().offset(),
        Offset::Offset(10)
    );
    let first = first_offsets(origins());
    assert_eq!(first[&("t".to_owned(), 0)], 5);
    assert_eq!(first[&("t".to_owned(), 1)], 9);
}
