//! Hole filling: the seqs a window read lacks between its lowest member and the top of the
//! request are read from the table before anything is called a gap (see "Holes" in [`super`]).

use chatlog_schemas::ChatMessage;

use super::page::{merge, runs_in};
use super::table_reader::stamp;
use super::table_reader::{Order, TableReader};
use crate::Result;
use crate::messages;

/// Hole seqs of one bucket up to which [`TableReader::fill_holes`] reads them with one `seq IN` query
/// (exactly those seqs); more are read with one range query across them.
const HOLE_IN_MAX: i64 = 100;

/// A window's members with their holes confirmed against the table ([`TableReader::fill_holes`]).
pub(super) struct Filled {
    /// Members and the rows found in their holes, ascending, at most the request's `limit`.
    pub(super) messages: Vec<ChatMessage>,
    /// Where the proven range ends on the walked side: the lowest proven seq for `Desc`, the
    /// highest for `Asc`. The request's own end unless `stopped`.
    pub(super) bound: i64,
    /// The page is full (`limit` messages) or the walk stopped early: the page ends at `bound`.
    pub(super) stopped: bool,
    /// Whether the table was read.
    pub(super) read: bool,
    /// For an ascending walk that stopped inside a hole: the member right above the hole, which
    /// ages the gap at the top of the page ([`Draft::above`]).
    pub(super) above: Option<(i64, i64)>,
}

impl Filled {
    /// Keeps the first `limit` messages in walk order (the newest for `Desc`); a page cut that
    /// way, or one holding exactly `limit`, ends at its last kept message.
    pub(super) fn cap(
        mut messages: Vec<ChatMessage>,
        mut bound: i64,
        mut stopped: bool,
        limit: usize,
        order: Order,
    ) -> Filled {
        if limit > 0 && messages.len() >= limit {
            let edge = match order {
                Order::Desc => {
                    messages.drain(..messages.len() - limit);
                    messages.first()
                }
                Order::Asc => {
                    messages.truncate(limit);
                    messages.last()
                }
            };
            if let Some(m) = edge {
                bound = m.seq;
                stopped = true;
            }
        }
        Filled {
            messages,
            bound,
            stopped,
            read: false,
            above: None,
        }
    }
}

impl TableReader {
    /// Confirms the holes a window read left between `lo` and `hi` against the table and adds
    /// the rows found to `members` (ascending, from the window, at most `limit`).
    ///
    /// The walk goes in `order` (`Desc` from `hi` for `latest`/`before`, `Asc` from `lo` for
    /// `after`) and reads only buckets that hold a hole: one `seq IN` query for the hole seqs of
    /// a bucket when they are at most [`HOLE_IN_MAX`], else one range read across them limited
    /// to the rows the page still has room for. It stops as soon as the page holds `limit`
    /// messages on the walked side, or after `K` consecutive bucket reads that found nothing in
    /// buckets without a member (a hole longer than the walk may go: the page ends there, as a
    /// table walk's does). No hole: no query.
    pub(super) async fn fill_holes(
        &self,
        sid: &str,
        members: Vec<ChatMessage>,
        lo: i64,
        hi: i64,
        limit: usize,
        order: Order,
    ) -> Result<Filled> {
        let desc = matches!(order, Order::Desc);
        let mut runs = runs_in(&members, lo, hi);
        let bound = if desc { lo } else { hi };
        if runs.is_empty() || limit == 0 {
            return Ok(Filled::cap(members, bound, false, limit, order));
        }
        if desc {
            runs.reverse();
        }
        let bs = self.bucket_size;
        let k = self.max_empty_buckets;
        let is_member = |s: i64| members.binary_search_by_key(&s, |m| m.seq).is_ok();
        let count_in = |a: i64, b: i64| {
            members.partition_point(|m| m.seq <= b) - members.partition_point(|m| m.seq < a)
        };
        let mut found: Vec<ChatMessage> = Vec::new();
        let mut found_new = 0usize;
        let mut empties = 0u32;
        let mut cut = None;
        // The part of run `i` still to read, in walk order.
        let mut cursor = runs.first().map(|&(a, b)| (0usize, a, b));
        while let Some((ri, ra, rb)) = cursor.take() {
            let bucket = messages::bucket_of(if desc { rb } else { ra }, bs);
            let start = bucket.saturating_mul(bs);
            let end = start.saturating_add(bs - 1);
            // The holes of this bucket, in walk order.
            let mut segs: Vec<(i64, i64)> = Vec::new();
            let mut holes = 0i64;
            let (mut i, mut a, mut b) = (ri, ra, rb);
            loop {
                let (sa, sb) = (a.max(start), b.min(end));
                if sa > sb {
                    cursor = Some((i, a, b));
                    break;
                }
                segs.push((sa, sb));
                holes = holes.saturating_add(sb - sa + 1);
                if desc && a < start {
                    cursor = Some((i, a, start - 1));
                    break;
                }
                if !desc && b > end {
                    cursor = Some((i, end + 1, b));
                    break;
                }
                i += 1;
                match runs.get(i) {
                    Some(&(na, nb)) => (a, b) = (na, nb),
                    None => break,
                }
            }
            let (span_lo, span_hi) = match (segs.first(), segs.last()) {
                (Some(&(fa, fb)), Some(&(la, lb))) => {
                    if desc {
                        (la, fb)
                    } else {
                        (fa, lb)
                    }
                }
                _ => break,
            };
            // Messages the page already holds on the walked side of this bucket's holes.
            let passed = if desc {
                count_in(span_hi.saturating_add(1), i64::MAX)
            } else {
                count_in(i64::MIN, span_lo - 1)
            } + found_new;
            if passed >= limit {
                break;
            }
            let want = limit - passed;
            let rows = if holes <= HOLE_IN_MAX {
                let seqs: Vec<i64> = segs.iter().flat_map(|&(a, b)| a..=b).collect();
                self.lookup_bucket(sid, bucket, seqs).await?
            } else {
                let room = want.saturating_add(count_in(span_lo, span_hi));
                self.range(order, sid, bucket, span_lo, span_hi, room)
                    .await?
            };
            empties = if rows.is_empty() && count_in(start, end) == 0 {
                empties + 1
            } else {
                0
            };
            found_new += rows.iter().filter(|m| !is_member(m.seq)).count();
            found.extend(rows);
            if empties >= k && cursor.is_some() {
                cut = Some(if desc { start.max(lo) } else { end.min(hi) });
                break;
            }
        }
        if found_new > 0 {
            metrics::counter!(crate::telemetry::HISTORY_WINDOW_HOLE_ROWS)
                .increment(found_new as u64);
        }
        // An ascending cut ends the page inside a hole: the member closing the hole ages it.
        let above = cut
            .filter(|_| !desc)
            .and_then(|c| members.get(members.partition_point(|m| m.seq <= c)))
            .map(stamp);
        let mut messages = merge(members, found);
        let (bound, stopped) = match cut {
            Some(c) => {
                messages.retain(|m| if desc { m.seq >= c } else { m.seq <= c });
                (c, true)
            }
            None => (bound, false),
        };
        let mut filled = Filled::cap(messages, bound, stopped, limit, order);
        filled.read = true;
        if filled.bound == bound {
            filled.above = above;
        }
        Ok(filled)
    }
}
