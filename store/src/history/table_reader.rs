//! [`TableReader`]: reads the CQL `messages` table for history and the verifier — bucket walks
//! down and up, seq lookups, the head bound (see "Reading the table" in [`super`]). Counts every
//! statement it runs (`chatlog_history_db_queries_total`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chatlog_schemas::ChatMessage;
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::cql::read_row;
use crate::messages::{self, MessageRow};
use crate::{Error, Result};

/// A message's (seq, `server_time_us`): what a head bound or a hole's age is read from.
pub(super) fn stamp(m: &ChatMessage) -> (i64, i64) {
    (m.seq, m.server_time_us)
}

/// A descending table walk.
#[derive(Debug, Default)]
pub(crate) struct DescScan {
    /// Rows found, descending seq.
    pub(crate) rows: Vec<ChatMessage>,
    /// The walk stopped because it found `limit` rows.
    pub(crate) limited: bool,
    /// The walk read everything down to seq 1.
    pub(crate) complete: bool,
    /// The lowest seq the walk has covered (rows below it are unknown unless `complete`).
    pub(crate) bottom: i64,
}

impl DescScan {
    /// The lower end of what this walk proves, and the `before` cursor below it.
    pub(super) fn lower(&self) -> (i64, Option<i64>) {
        let lo = if self.limited {
            self.rows.last().map_or(self.bottom, |m| m.seq)
        } else if self.complete {
            1
        } else {
            self.bottom
        };
        let next = (!self.complete || self.limited)
            .then_some(lo)
            .filter(|&s| s > 1);
        (lo, next)
    }
}

/// An ascending table walk.
#[derive(Debug, Default)]
pub(crate) struct AscScan {
    /// Rows found, ascending seq.
    pub(crate) rows: Vec<ChatMessage>,
    /// The walk stopped because it found `limit` rows.
    pub(crate) limited: bool,
}

#[derive(Clone, Copy)]
pub(super) enum Order {
    Asc,
    Desc,
}

struct Statements {
    range_desc: PreparedStatement,
    range_asc: PreparedStatement,
    seqs: PreparedStatement,
    bucket_max: PreparedStatement,
    session_max: PreparedStatement,
}

fn prepare_err(what: &'static str) -> impl FnOnce(scylla::errors::PrepareError) -> Error {
    move |e| Error::cql(format!("prepare {what}"), e)
}

/// Reads the table: the session, the prepared statements, the bucket walk's settings.
pub(crate) struct TableReader {
    session: Arc<Session>,
    statements: Statements,
    /// Rows per partition bucket.
    pub(super) bucket_size: i64,
    /// `K`: a walk stops after this many consecutive empty buckets.
    pub(super) max_empty_buckets: u32,
    db_queries: AtomicU64,
    /// Whether reads count in history's metrics (not for the consumer's window starts).
    metered: bool,
}

impl TableReader {
    /// Prepares the read statements of `keyspace`.
    pub(crate) async fn new(
        session: Arc<Session>,
        keyspace: &str,
        bucket_size: i64,
        max_empty_buckets: u32,
    ) -> Result<TableReader> {
        let prepare = |cql: String, what: &'static str| {
            let session = session.clone();
            async move {
                let mut s = session.prepare(cql).await.map_err(prepare_err(what))?;
                s.set_is_idempotent(true);
                Ok::<_, Error>(s)
            }
        };
        let statements = Statements {
            range_desc: prepare(messages::select_range_desc_cql(keyspace), "range desc").await?,
            range_asc: prepare(messages::select_range_asc_cql(keyspace), "range asc").await?,
            seqs: prepare(messages::select_seqs_cql(keyspace), "seqs").await?,
            bucket_max: prepare(messages::select_bucket_max_seq_cql(keyspace), "bucket max")
                .await?,
            session_max: prepare(messages::select_session_max_seq_cql(keyspace), "ceiling").await?,
        };
        Ok(TableReader {
            session,
            statements,
            bucket_size,
            max_empty_buckets,
            db_queries: AtomicU64::new(0),
            metered: true,
        })
    }

    /// The same reader with its queries left out of history's metrics (for readers that are
    /// not history: the consumer's window starts).
    pub(crate) fn unmetered(mut self) -> TableReader {
        self.metered = false;
        self
    }

    /// CQL statements executed so far.
    pub(super) fn db_queries(&self) -> u64 {
        self.db_queries.load(Ordering::Relaxed)
    }

    /// An upper bound of the session's head for a walk down: the allocator's ceiling, else the
    /// highest seq found by probing buckets. `None`: the session has no message.
    pub(crate) async fn head_bound(&self, sid: &str) -> Result<Option<i64>> {
        match self.ceiling(sid).await? {
            Some(c) => Ok(Some(c)),
            None => self.probe_head(sid).await,
        }
    }

    /// The session's newest stored message as (seq, `server_time_us`): the newest row below the
    /// ceiling, or the probe's result.
    pub(super) async fn find_head(&self, sid: &str) -> Result<Option<(i64, i64)>> {
        let head = match self.ceiling(sid).await? {
            Some(c) => return Ok(self.scan_desc(sid, c, 1).await?.rows.first().map(stamp)),
            None => self.probe_head(sid).await?,
        };
        match head {
            Some(h) => Ok(self.lookup(sid, &[h]).await?.first().map(stamp)),
            None => Ok(None),
        }
    }

    /// The first row with `lo <= seq <= hi` as (seq, `server_time_us`), looked for in at most
    /// `buckets` buckets from `lo` up.
    pub(super) async fn first_row(
        &self,
        sid: &str,
        lo: i64,
        hi: i64,
        buckets: u32,
    ) -> Result<Option<(i64, i64)>> {
        let bs = self.bucket_size;
        let first = messages::bucket_of(lo, bs);
        let last = first.saturating_add(i64::from(buckets));
        for bucket in first..last {
            let start = bucket.saturating_mul(bs);
            let end = start.saturating_add(bs - 1);
            let (from, to) = (lo.max(start), hi.min(end));
            if from > to {
                break;
            }
            let rows = self.range(Order::Asc, sid, bucket, from, to, 1).await?;
            if let Some(m) = rows.first() {
                return Ok(Some(stamp(m)));
            }
            if end >= hi {
                break;
            }
        }
        Ok(None)
    }

    /// `session_seq.max_seq` of the session, if it has a row.
    pub(crate) async fn ceiling(&self, sid: &str) -> Result<Option<i64>> {
        self.count_query();
        crate::seq::read_ceiling(&self.session, &self.statements.session_max, sid).await
    }

    /// The highest seq of the highest non-empty bucket, probing `K` buckets at a time from bucket 0
    /// up until a whole group is empty.
    async fn probe_head(&self, sid: &str) -> Result<Option<i64>> {
        let k = i64::from(self.max_empty_buckets);
        let mut head = None;
        let mut base = 0i64;
        loop {
            let maxima =
                futures::future::try_join_all((base..base + k).map(|b| self.bucket_max(sid, b)))
                    .await?;
            match maxima.into_iter().flatten().max() {
                Some(m) => head = Some(m),
                None => return Ok(head),
            }
            base += k;
        }
    }

    async fn bucket_max(&self, sid: &str, bucket: i64) -> Result<Option<i64>> {
        self.count_query();
        let row = read_row::<(i64,)>(
            &self.session,
            &self.statements.bucket_max,
            (sid, bucket),
            "probe bucket",
        )
        .await?;
        Ok(row.map(|(seq,)| seq))
    }

    fn count_query(&self) {
        self.db_queries.fetch_add(1, Ordering::Relaxed);
        if self.metered {
            metrics::counter!(crate::telemetry::HISTORY_DB_QUERIES).increment(1);
        }
    }

    /// Rows with `seq <= hi`, newest first, until `limit` rows, seq 1, or `K` consecutive empty
    /// buckets.
    pub(crate) async fn scan_desc(&self, sid: &str, hi: i64, limit: usize) -> Result<DescScan> {
        let bs = self.bucket_size;
        let k = self.max_empty_buckets;
        let mut scan = DescScan::default();
        if hi < 1 {
            scan.complete = true;
            scan.bottom = 1;
            return Ok(scan);
        }
        let mut bucket = messages::bucket_of(hi, bs);
        let mut empties = 0;
        loop {
            let lo_b = bucket * bs;
            let hi_b = hi.min(lo_b.saturating_add(bs - 1));
            let want = limit - scan.rows.len();
            let rows = self
                .range(Order::Desc, sid, bucket, lo_b, hi_b, want)
                .await?;
            empties = if rows.is_empty() { empties + 1 } else { 0 };
            scan.rows.extend(rows);
            if scan.rows.len() >= limit {
                scan.limited = true;
                scan.bottom = scan.rows.last().map_or(lo_b, |m| m.seq);
                return Ok(scan);
            }
            if bucket == 0 {
                scan.complete = true;
                scan.bottom = 1;
                return Ok(scan);
            }
            if empties >= k {
                scan.bottom = lo_b.max(1);
                return Ok(scan);
            }
            bucket -= 1;
        }
    }

    /// Rows with `lo <= seq (<= hi)`, oldest first, until `limit` rows or `hi`; without `hi`,
    /// until `K` consecutive empty buckets.
    pub(crate) async fn scan_asc(
        &self,
        sid: &str,
        lo: i64,
        hi: Option<i64>,
        limit: usize,
    ) -> Result<AscScan> {
        let bs = self.bucket_size;
        let k = self.max_empty_buckets;
        let lo = lo.max(1);
        let mut scan = AscScan::default();
        if hi.is_some_and(|h| h < lo) || limit == 0 {
            return Ok(scan);
        }
        let mut bucket = messages::bucket_of(lo, bs);
        let mut empties = 0;
        loop {
            let start = bucket.saturating_mul(bs);
            let end = start.saturating_add(bs - 1);
            let hi_b = hi.map_or(end, |h| h.min(end));
            let want = limit - scan.rows.len();
            let rows = self
                .range(Order::Asc, sid, bucket, lo.max(start), hi_b, want)
                .await?;
            empties = if rows.is_empty() { empties + 1 } else { 0 };
            scan.rows.extend(rows);
            if scan.rows.len() >= limit {
                scan.limited = true;
                return Ok(scan);
            }
            match hi {
                Some(h) if hi_b >= h => return Ok(scan),
                None if empties >= k => return Ok(scan),
                _ => {}
            }
            bucket += 1;
        }
    }

    /// Up to `limit` rows of one bucket with `lo <= seq <= hi`, paged.
    pub(super) async fn range(
        &self,
        order: Order,
        sid: &str,
        bucket: i64,
        lo: i64,
        hi: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>> {
        let mut statement = match order {
            Order::Asc => self.statements.range_asc.clone(),
            Order::Desc => self.statements.range_desc.clone(),
        };
        statement.set_page_size(limit.clamp(1, 1000) as i32);
        self.count_query();
        let pager = self
            .session
            .execute_iter(statement, (sid, bucket, lo, hi))
            .await
            .map_err(|e| Error::cql("history range read", e))?;
        let rows: Vec<MessageRow> = pager
            .rows_stream::<MessageRow>()
            .map_err(|e| Error::cql("history range read", e))?
            .take(limit)
            .try_collect()
            .await
            .map_err(|e| Error::cql("history range read", e))?;
        Ok(rows.into_iter().map(messages::row_to_message).collect())
    }

    /// The rows of the given seqs (ascending input), one `IN` query per bucket, 8 at a time.
    pub(super) async fn lookup(&self, sid: &str, seqs: &[i64]) -> Result<Vec<ChatMessage>> {
        let bs = self.bucket_size;
        let mut by_bucket: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for &s in seqs {
            by_bucket
                .entry(messages::bucket_of(s, bs))
                .or_default()
                .push(s);
        }
        let per_bucket = futures::stream::iter(
            by_bucket
                .into_iter()
                .map(|(bucket, seqs)| self.lookup_bucket(sid, bucket, seqs)),
        )
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
        Ok(per_bucket.into_iter().flatten().collect())
    }

    /// The rows of `seqs` (all in `bucket`), one `seq IN` query.
    pub(super) async fn lookup_bucket(
        &self,
        sid: &str,
        bucket: i64,
        seqs: Vec<i64>,
    ) -> Result<Vec<ChatMessage>> {
        self.count_query();
        let statement = self.statements.seqs.clone();
        let pager = self
            .session
            .execute_iter(statement, (sid, bucket, seqs))
            .await
            .map_err(|e| Error::cql("history seq lookup", e))?;
        pager
            .rows_stream::<MessageRow>()
            .map_err(|e| Error::cql("history seq lookup", e))?
            .map_ok(messages::row_to_message)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| Error::cql("history seq lookup", e))
    }
}
