//! The checker's CQL reads: a session's rows with their writetimes, row counts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatlog_schemas::ChatMessage;
use chatlog_store::messages::{self, DEFAULT_BUCKET_SIZE, MessageRow, bucket_of};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::events::Events;

/// CQL statements of the checker.
pub struct Cql {
    pub(super) session: Arc<Session>,
    keyspace: String,
    ceiling: PreparedStatement,
    range: PreparedStatement,
    writetimes: PreparedStatement,
    count: PreparedStatement,
}

/// One session's rows: seq → (message, writetime).
pub(super) type Rows = BTreeMap<i64, (ChatMessage, i64)>;

impl Cql {
    /// Prepares the statements of `keyspace`.
    pub async fn new(session: Arc<Session>, keyspace: &str) -> anyhow::Result<Cql> {
        let statements = [
            messages::select_session_max_seq_cql(keyspace),
            messages::select_range_desc_cql(keyspace),
            messages::select_writetimes_cql(keyspace),
            messages::select_partition_count_cql(keyspace),
        ];
        let prepared =
            futures::future::try_join_all(statements.map(|cql| session.prepare(cql))).await?;
        let Ok([ceiling, range, writetimes, count]) = <[PreparedStatement; 4]>::try_from(prepared)
        else {
            anyhow::bail!("four statements prepared, four expected");
        };
        Ok(Cql {
            ceiling,
            range,
            writetimes,
            count,
            keyspace: keyspace.to_owned(),
            session,
        })
    }

    /// The keyspace.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    async fn buckets(&self, session_id: &str) -> anyhow::Result<std::ops::RangeInclusive<i64>> {
        let ceiling = self
            .session
            .execute_unpaged(&self.ceiling, (session_id,))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i64>,)>()?
            .and_then(|(c,)| c)
            .unwrap_or(0);
        Ok(0..=bucket_of(ceiling, DEFAULT_BUCKET_SIZE))
    }

    /// Rows of one session.
    pub(super) async fn rows(&self, session_id: &str) -> anyhow::Result<Rows> {
        let mut out = Rows::new();
        for bucket in self.buckets(session_id).await? {
            let result = self
                .session
                .execute_unpaged(&self.range, (session_id, bucket, i64::MIN, i64::MAX))
                .await?
                .into_rows_result()?;
            for row in result.rows::<MessageRow>()? {
                let m = messages::row_to_message(row?);
                out.insert(m.seq, (m, i64::MIN));
            }
            let result = self
                .session
                .execute_unpaged(&self.writetimes, (session_id, bucket))
                .await?
                .into_rows_result()?;
            for row in result.rows::<(i64, Option<i64>)>()? {
                let (seq, wt) = row?;
                if let Some(r) = out.get_mut(&seq) {
                    r.1 = wt.unwrap_or(-1);
                }
            }
        }
        Ok(out)
    }

    /// Rows over all of `sessions` (COUNT per partition).
    pub async fn count(&self, sessions: &[String]) -> anyhow::Result<i64> {
        let counts: Vec<i64> = futures::stream::iter(sessions.iter().map(|s| async move {
            let mut n = 0;
            for bucket in self.buckets(s).await? {
                let (c,): (i64,) = self
                    .session
                    .execute_unpaged(&self.count, (s.as_str(), bucket))
                    .await?
                    .into_rows_result()?
                    .single_row()?;
                n += c;
            }
            Ok::<_, anyhow::Error>(n)
        }))
        .buffer_unordered(16)
        .try_collect()
        .await?;
        Ok(counts.iter().sum())
    }
}

/// Waits until the row count of `sessions` is the same twice in a row, 2 s apart.
pub async fn wait_stable(
    cql: &Cql,
    sessions: &[String],
    limit: Duration,
    events: &Events,
) -> anyhow::Result<i64> {
    let deadline = Instant::now() + limit;
    let mut last = cql.count(sessions).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = cql.count(sessions).await?;
        if now == last {
            events.log(format!("CQL row count stable at {now}"));
            return Ok(now);
        }
        events.log(format!("CQL row count still moving: {last} → {now}"));
        anyhow::ensure!(
            Instant::now() < deadline,
            "CQL row count not stable within {limit:?}"
        );
        last = now;
    }
}
