//! The four requests, run once per single-flight: each reads the window, fills its holes or
//! continues in the table, and [`History::finish`] ages the page's gaps (see the range rules in
//! [`super`]).

use std::collections::BTreeMap;

use chatlog_schemas::ChatMessage;

use super::History;
use super::page::{
    Draft, Page, Source, classify, desc_page, keep_newer, merge, now_us, ranges_of, runs_in, young,
};
use super::table_reader::Order;
use super::window_reader::WindowQuery;
use crate::Result;

impl History {
    pub(super) async fn exec_latest(&self, sid: &str, n: usize) -> Result<Page> {
        if n == 0 {
            return Ok(Page::empty(Source::Window));
        }
        let draft = match self.inner.window.read(sid, WindowQuery::Latest(n)).await {
            // The window's newest n (or all of it, when it holds fewer), trusted up to its head.
            Some(w) => {
                self.desc_from_window(sid, w.members, w.min, w.max, n)
                    .await?
            }
            None => {
                self.count_db_read();
                let Some(bound) = self.inner.table.head_bound(sid).await? else {
                    return Ok(Page::empty(Source::Database));
                };
                let scan = self.inner.table.scan_desc(sid, bound, n).await?;
                desc_page(scan, None)
            }
        };
        self.finish(sid, draft).await
    }

    pub(super) async fn exec_before(&self, sid: &str, x: i64, limit: usize) -> Result<Page> {
        if x <= 1 || limit == 0 {
            return Ok(Page::empty(Source::Window));
        }
        let draft = match self
            .inner
            .window
            .read(sid, WindowQuery::Before(x, limit))
            .await
        {
            Some(w) if w.min < x => {
                // The window has members below x (at least its lowest one).
                let hi = if w.max >= x { x - 1 } else { w.max };
                let mut draft = self
                    .desc_from_window(sid, w.members, w.min, hi, limit)
                    .await?;
                // x - 1 is a gap (rare: a cursor is the lowest seq of a page): its age is that of
                // the nearest message above it, the window's first member at or above x unless the
                // table has a nearer one.
                if w.max >= x && draft.messages.last().is_none_or(|m| m.seq < hi) {
                    draft.above = Some(
                        self.inner
                            .window
                            .member_from(sid, x)
                            .await
                            .unwrap_or((w.max, w.max_time)),
                    );
                }
                draft
            }
            Some(w) => {
                // The whole window is at or above x: it proves that x - 1 is below the head.
                self.count_db_read();
                let scan = self.inner.table.scan_desc(sid, x - 1, limit).await?;
                let mut draft = desc_page(scan, Some(x - 1));
                draft.above = Some((w.min, w.min_time));
                draft
            }
            None => {
                self.count_db_read();
                // Include x itself: if it exists, everything below it is below the head.
                let mut scan = self.inner.table.scan_desc(sid, x, limit + 1).await?;
                let x_exists = scan.rows.first().is_some_and(|m| m.seq == x);
                let above = if x_exists {
                    let row_x = scan.rows.remove(0);
                    Some((x, row_x.server_time_us))
                } else {
                    scan.rows.truncate(limit);
                    None
                };
                let mut draft = desc_page(scan, x_exists.then_some(x - 1));
                draft.above = above;
                draft
            }
        };
        self.finish(sid, draft).await
    }

    /// The descending page (`latest`, `before`) of a window read: `members` are the window's
    /// newest members at or below `hi` (at most `limit`; all of them when fewer), `wmin` the
    /// window's lowest member. The window's holes between the lowest member and `hi` are confirmed
    /// against the table first; when that leaves room and the window does not start at seq 1, the
    /// table continues below `wmin`.
    async fn desc_from_window(
        &self,
        sid: &str,
        members: Vec<ChatMessage>,
        wmin: i64,
        hi: i64,
        limit: usize,
    ) -> Result<Draft> {
        let first = members.first().map_or(wmin, |m| m.seq);
        let filled = self
            .inner
            .table
            .fill_holes(sid, members, first, hi, limit, Order::Desc)
            .await?;
        let source = if filled.read {
            Source::Both
        } else {
            Source::Window
        };
        if filled.stopped || wmin <= 1 {
            if filled.read {
                self.count_db_read();
            }
            // Stopped: the page ends at the bound. Otherwise the window, holes confirmed, holds the
            // whole history up to `hi` (it starts at seq 1).
            let lo = if filled.stopped { filled.bound } else { 1 };
            let next = Some(lo).filter(|&s| s > 1);
            return Ok(Draft::new(filled.messages, (lo, hi), source, next));
        }
        self.count_db_read();
        let scan = self
            .inner
            .table
            .scan_desc(sid, wmin - 1, limit - filled.messages.len())
            .await?;
        let (lo, next) = scan.lower();
        let messages = merge(filled.messages, scan.rows);
        Ok(Draft::new(messages, (lo, hi), Source::Both, next))
    }

    pub(super) async fn exec_after(&self, sid: &str, x: i64, limit: usize) -> Result<Page> {
        if limit == 0 {
            return Ok(Page::empty(Source::Window));
        }
        let lo = x.saturating_add(1);
        let draft = match self
            .inner
            .window
            .read(sid, WindowQuery::After(x, limit))
            .await
        {
            Some(w) if w.min <= lo => {
                let Some(hi) = w.members.last().map(|m| m.seq) else {
                    return Ok(Page::empty(Source::Window));
                };
                let filled = self
                    .inner
                    .table
                    .fill_holes(sid, w.members, lo, hi, limit, Order::Asc)
                    .await?;
                let source = if filled.read {
                    self.count_db_read();
                    Source::Both
                } else {
                    Source::Window
                };
                let next = Some(filled.bound).filter(|&h| h < w.max);
                let mut draft = Draft::new(filled.messages, (lo, filled.bound), source, next);
                draft.above = filled.above;
                draft
            }
            Some(w) => {
                self.count_db_read();
                let scan = self
                    .inner
                    .table
                    .scan_asc(sid, lo, Some(w.min - 1), limit)
                    .await?;
                if scan.limited {
                    let hi = scan.rows.last().map_or(lo, |m| m.seq);
                    Draft::new(scan.rows, (lo, hi), Source::Database, Some(hi))
                } else {
                    let take = limit - scan.rows.len();
                    let from_window: Vec<ChatMessage> = w.members.into_iter().take(take).collect();
                    let (source, hi, from_window, above) = match from_window.last().map(|m| m.seq) {
                        Some(top) => {
                            let filled = self
                                .inner
                                .table
                                .fill_holes(sid, from_window, w.min, top, take, Order::Asc)
                                .await?;
                            (
                                Source::Both,
                                Some(filled.bound),
                                filled.messages,
                                filled.above,
                            )
                        }
                        None => (
                            Source::Database,
                            scan.rows.last().map(|m| m.seq),
                            Vec::new(),
                            None,
                        ),
                    };
                    let Some(hi) = hi else {
                        return Ok(Page::empty(source));
                    };
                    let messages = merge(from_window, scan.rows);
                    let next = Some(hi).filter(|&h| h < w.max);
                    let mut draft = Draft::new(messages, (lo, hi), source, next);
                    draft.above = above;
                    draft
                }
            }
            None => {
                self.count_db_read();
                let ceiling = self.inner.table.ceiling(sid).await?;
                if ceiling.is_some_and(|c| c < lo) {
                    return Ok(Page::empty(Source::Database));
                }
                let scan = self.inner.table.scan_asc(sid, lo, ceiling, limit).await?;
                let Some(hi) = scan.rows.last().map(|m| m.seq) else {
                    return Ok(Page::empty(Source::Database));
                };
                let next = scan.limited.then_some(hi);
                Draft::new(scan.rows, (lo, hi), Source::Database, next)
            }
        };
        self.finish(sid, draft).await
    }

    pub(super) async fn exec_get(&self, sid: &str, seqs: &[i64]) -> Result<Page> {
        let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
            return Ok(Page::empty(Source::Window));
        };
        let valid: Vec<i64> = seqs.iter().copied().filter(|&s| s >= 1).collect();
        let mut found: BTreeMap<i64, ChatMessage> = BTreeMap::new();
        // Seqs below 1 never exist, whatever their age.
        let mut missing: Vec<i64> = seqs.iter().copied().filter(|&s| s < 1).collect();
        // The newest message known, (seq, server_time_us).
        let mut head: Option<(i64, i64)> = None;
        let mut to_db = Vec::new();
        let mut from_window = false;
        let window = if valid.is_empty() {
            None
        } else {
            self.inner.window.read(sid, WindowQuery::Get(&valid)).await
        };
        match window {
            Some(w) => {
                head = Some((w.max, w.max_time));
                let mut members: BTreeMap<i64, ChatMessage> =
                    w.members.into_iter().map(|m| (m.seq, m)).collect();
                for &s in &valid {
                    match members.remove(&s) {
                        Some(m) => {
                            found.insert(s, m);
                            from_window = true;
                        }
                        // Below the window, above it, or a hole in it: the table decides.
                        None => to_db.push(s),
                    }
                }
            }
            None => to_db = valid,
        }
        let window_known = head.is_some();
        let mut gaps = Vec::new();
        let source = if to_db.is_empty() {
            Source::Window
        } else {
            self.count_db_read();
            for m in self.inner.table.lookup(sid, &to_db).await? {
                keep_newer(&mut found, m);
            }
            if let Some((&s, m)) = found.last_key_value()
                && head.is_none_or(|(h, _)| s > h)
            {
                head = Some((s, m.server_time_us));
            }
            // Without a window, the head decides which unfound seqs are gaps: look it up only
            // when some unfound seq lies above every row found.
            let head_seq = head.map_or(0, |(h, _)| h);
            if !window_known
                && to_db
                    .iter()
                    .any(|s| *s > head_seq && !found.contains_key(s))
                && let Some(h) = self.inner.table.find_head(sid).await?
                && h.0 > head_seq
            {
                head = Some(h);
            }
            let head_seq = head.map_or(0, |(h, _)| h);
            gaps.extend(
                to_db
                    .iter()
                    .copied()
                    .filter(|s| *s < head_seq && !found.contains_key(s)),
            );
            if from_window {
                Source::Both
            } else {
                Source::Database
            }
        };
        let (gap_missing, pending) = self
            .age_gaps(sid, &gaps, &found, head, window_known)
            .await?;
        missing.extend(gap_missing);
        missing.sort_unstable();
        let hi = last.min(head.map_or(0, |(h, _)| h));
        Ok(Page {
            hidden: Vec::new(),
            messages: found.into_values().collect(),
            missing: ranges_of(missing),
            pending: ranges_of(pending),
            covered: (first <= hi).then_some(first..=hi),
            source,
            next: None,
        })
    }

    /// Sorts the gaps of a `get` (ascending, each below `head`) into (missing, pending), each
    /// aged by the nearest existing message above it: the nearest of `found`, `head` and the
    /// first row the table has between the gap and them (looked for in `K` buckets). When that
    /// look finds nothing and there is a window, its first member above the gap stands in for the
    /// head: a fixed message, where the head moves on with every new one and would keep an old
    /// gap of a busy session pending.
    async fn age_gaps(
        &self,
        sid: &str,
        gaps: &[i64],
        found: &BTreeMap<i64, ChatMessage>,
        head: Option<(i64, i64)>,
        window: bool,
    ) -> Result<(Vec<i64>, Vec<i64>)> {
        let (mut missing, mut pending) = (Vec::new(), Vec::new());
        if gaps.is_empty() {
            return Ok((missing, pending));
        }
        let (now, horizon) = (now_us(), self.horizon_us());
        // Walking down: the nearest message known above the current gap, and the lowest seq from
        // which up to it the table is known to hold nothing.
        let k = self.inner.config.max_empty_buckets;
        let mut nearest = head;
        let mut clear_from = head.map_or(i64::MAX, |(h, _)| h);
        for &s in gaps.iter().rev() {
            if let Some((&k, m)) = found.range(s.saturating_add(1)..).next()
                && nearest.is_none_or(|(n, _)| k < n)
            {
                nearest = Some((k, m.server_time_us));
                clear_from = k;
            }
            let top = clear_from.min(nearest.map_or(i64::MAX, |(n, _)| n)) - 1;
            if s < top {
                match self.inner.table.first_row(sid, s + 1, top, k).await? {
                    Some(row) => nearest = Some(row),
                    None if window => {
                        if let Some(member) = self.inner.window.member_from(sid, s + 1).await
                            && nearest.is_none_or(|(n, _)| member.0 < n)
                        {
                            nearest = Some(member);
                        }
                    }
                    None => {}
                }
            }
            clear_from = s;
            if young(nearest.map(|(_, t)| t), now, horizon) {
                pending.push(s);
            } else {
                missing.push(s);
            }
        }
        missing.reverse();
        pending.reverse();
        Ok((missing, pending))
    }

    fn horizon_us(&self) -> i64 {
        i64::try_from(self.inner.config.settle_horizon.as_micros()).unwrap_or(i64::MAX)
    }

    /// Turns a draft into the page: its gaps, aged against the settle horizon, become `missing`
    /// or `pending`. A gap at the top of the covered range is aged by the first row above it
    /// (looked up in the next bucket only, below `draft.above`), else by `draft.above`.
    async fn finish(&self, sid: &str, draft: Draft) -> Result<Page> {
        let Draft {
            messages,
            covered,
            source,
            next,
            above,
        } = draft;
        let Some((lo, hi)) = covered.filter(|(lo, hi)| lo <= hi) else {
            return Ok(Page {
                hidden: Vec::new(),
                messages,
                next,
                ..Page::empty(source)
            });
        };
        let runs = runs_in(&messages, lo, hi);
        let top_us = match runs.last() {
            Some(&(_, b)) if b == hi => match above {
                Some((k, t)) if k == hi + 1 => Some(t),
                Some((k, t)) => Some(
                    self.inner
                        .table
                        .first_row(sid, hi.saturating_add(1), k - 1, 1)
                        .await?
                        .map_or(t, |(_, found)| found),
                ),
                None => None,
            },
            _ => None,
        };
        let (missing, pending) = classify(&messages, &runs, top_us, now_us(), self.horizon_us());
        Ok(Page {
            hidden: Vec::new(),
            messages,
            missing,
            pending,
            covered: Some(lo..=hi),
            source,
            next,
        })
    }
}
