//! Unit tests of the pure parts: page rules, hole-filling caps, scan bounds.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use chatlog_schemas::{ChatMessage, ContentType, SessionType};

use super::holes::Filled;
use super::page::{classify, desc_page, merge, ranges_of, runs_in, young};
use super::table_reader::{DescScan, Order};

fn msg(seq: i64, server_time_us: i64) -> ChatMessage {
    ChatMessage {
        msg_id: format!("m{seq}"),
        client_msg_id: format!("c{seq}"),
        session_id: "s".into(),
        session_type: SessionType::Single,
        seq,
        sender_id: "u".into(),
        content_type: ContentType::Text,
        content: vec![],
        send_time_ms: 1,
        server_time_us,
        ext: BTreeMap::new(),
        state: Default::default(),
    }
}

#[test]
fn merge_dedupes_and_newer_version_wins() {
    let window = vec![msg(3, 10), msg(4, 5), msg(5, 7)];
    let rows = vec![msg(4, 9), msg(1, 1), msg(3, 10), msg(2, 1)];
    let merged = merge(window, rows);
    let got: Vec<(i64, i64)> = merged.iter().map(|m| (m.seq, m.server_time_us)).collect();
    assert_eq!(got, vec![(1, 1), (2, 1), (3, 10), (4, 9), (5, 7)]);
}

#[test]
fn gaps_are_the_holes_of_the_covered_range() {
    let ms: Vec<_> = [2, 3, 5, 8].iter().map(|&s| msg(s, 1)).collect();
    assert_eq!(runs_in(&ms, 1, 9), vec![(1, 1), (4, 4), (6, 7), (9, 9)]);
    assert_eq!(runs_in(&ms, 3, 5), vec![(4, 4)]);
    assert_eq!(runs_in(&ms, 2, 3), vec![]);
    assert_eq!(runs_in(&[], 4, 6), vec![(4, 6)]);
    // A recovery gap is one run, however long.
    let far: Vec<_> = [1, 10_002].iter().map(|&s| msg(s, 1)).collect();
    assert_eq!(runs_in(&far, 1, 10_002), vec![(2, 10_001)]);
}

#[test]
fn young_gaps_are_pending_old_ones_missing() {
    // 4 is aged by 5 (time 100), 6..7 by 8 (time 900), 9 by the top time.
    let ms = vec![msg(2, 10), msg(3, 10), msg(5, 100), msg(8, 900)];
    let runs = runs_in(&ms, 2, 9);
    let now = 1000;
    // Horizon 500: 5 is 900 old (settled), 8 is 100 old (young), the top unknown (young).
    let (missing, pending) = classify(&ms, &runs, None, now, 500);
    assert_eq!((missing, pending), (vec![4..=4], vec![6..=7, 9..=9]));
    let (missing, pending) = classify(&ms, &runs, Some(0), now, 500);
    assert_eq!((missing, pending), (vec![4..=4, 9..=9], vec![6..=7]));
    // Horizon 0: everything is settled, unless nothing is known above.
    let (missing, pending) = classify(&ms, &runs, Some(now), now, 0);
    assert_eq!((missing, pending), (vec![4..=4, 6..=7, 9..=9], vec![]));
    // A gap of 10^15 seqs is one range.
    let far = vec![msg(1, 0), msg(1_000_000_000_000_000, 0)];
    let runs = runs_in(&far, 1, 1_000_000_000_000_000);
    let (missing, pending) = classify(&far, &runs, None, now, 0);
    assert_eq!((missing, pending), (vec![2..=999_999_999_999_999], vec![]));
    assert!(young(None, now, 0));
}

#[test]
fn get_gaps_join_consecutive_seqs_into_ranges() {
    assert_eq!(ranges_of([]), Vec::<RangeInclusive<i64>>::new());
    assert_eq!(
        ranges_of([-3, 0, 1, 2, 5, 7, 8]),
        vec![-3..=-3, 0..=2, 5..=5, 7..=8]
    );
    assert_eq!(
        ranges_of([i64::MAX - 1, i64::MAX]),
        vec![i64::MAX - 1..=i64::MAX]
    );
}

#[test]
fn filled_pages_keep_the_walks_first_limit() {
    let ms = || (1..=5).map(|s| msg(s, 1)).collect::<Vec<_>>();
    let f = Filled::cap(ms(), 1, false, 3, Order::Desc);
    assert_eq!((f.messages.len(), f.bound, f.stopped), (3, 3, true));
    assert_eq!(f.messages[0].seq, 3);
    let f = Filled::cap(ms(), 5, false, 2, Order::Asc);
    assert_eq!((f.messages.len(), f.bound, f.stopped), (2, 2, true));
    let f = Filled::cap(ms(), 1, false, 10, Order::Desc);
    assert_eq!((f.messages.len(), f.bound, f.stopped), (5, 1, false));
}

#[test]
fn desc_scan_bounds() {
    let limited = DescScan {
        rows: vec![msg(9, 1), msg(7, 1)],
        limited: true,
        complete: false,
        bottom: 7,
    };
    assert_eq!(limited.lower(), (7, Some(7)));
    let complete = DescScan {
        rows: vec![msg(9, 1)],
        limited: false,
        complete: true,
        bottom: 1,
    };
    assert_eq!(complete.lower(), (1, None));
    let stopped = DescScan {
        rows: vec![],
        limited: false,
        complete: false,
        bottom: 40,
    };
    assert_eq!(stopped.lower(), (40, Some(40)));
    // Nothing found, nothing known above: no covered range, but a cursor below the stop.
    let draft = desc_page(stopped, None);
    assert_eq!((draft.covered, draft.next), (None, Some(40)));
}
