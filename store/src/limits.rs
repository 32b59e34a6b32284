//! The `consumer_limits` table (migration 3): the message limits each consumer instance enforces,
//! published at its start, read by producers at theirs.
//!
//! A producer whose limits are above a consumer's would acknowledge messages that the consumer
//! then sends to the DLQ: acknowledged, never stored. So each consumer writes its effective
//! [`Limits`] and its largest accepted record (`batch.max_record_bytes`) under `(topic,
//! instance)`, and `Producer::new` reads every row of its topic (one partition, at most
//! [`MAX_ROWS`]) and refuses to start if any of its limits, or the largest record its limits
//! allow, is above a consumer's. No row (no consumer started since migration 3, or the table is
//! missing): the producer compares with the consumer defaults and warns.

use std::time::Duration;

use chatlog_schemas::Limits;
use scylla::client::session::Session;
use scylla::value::CqlTimestamp;

use crate::{Error, Result};

/// Most rows [`read`] returns (one per consumer instance of a topic).
pub const MAX_ROWS: usize = 1000;

/// `INSERT` of one instance's limits (an upsert: a restart overwrites its row).
pub fn upsert_cql(keyspace: &str) -> String {
    format!(
        "INSERT INTO {keyspace}.consumer_limits (topic, instance, max_content_bytes, \
         max_id_bytes, max_ext_entries, max_ext_bytes, max_skew_ms, max_record_bytes, \
         published_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
}

/// Every instance's limits of one topic, at most [`MAX_ROWS`].
pub fn select_cql(keyspace: &str) -> String {
    format!(
        "SELECT instance, max_content_bytes, max_id_bytes, max_ext_entries, max_ext_bytes, \
         max_skew_ms, max_record_bytes, published_at FROM {keyspace}.consumer_limits \
         WHERE topic = ? LIMIT {MAX_ROWS}"
    )
}

/// The limits one consumer instance enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The instance (its `kafka.transactional_id`, stable and unique per instance).
    pub instance: String,
    /// Its message limits.
    pub limits: Limits,
    /// Its `batch.max_record_bytes`: larger records go to its DLQ as `oversize`.
    pub max_record_bytes: usize,
    /// When it published them, ms since the Unix epoch.
    pub published_at_ms: i64,
}

fn big(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored size; a negative value (never written by us) counts as 0, the strictest.
fn size(v: i64) -> usize {
    usize::try_from(v).unwrap_or(0)
}

/// Writes (or overwrites) `p` as the limits of `p.instance` on `topic`.
pub async fn publish(session: &Session, keyspace: &str, topic: &str, p: &Published) -> Result<()> {
    let l = &p.limits;
    let skew_ms = i64::try_from(l.max_skew.as_millis()).unwrap_or(i64::MAX);
    session
        .query_unpaged(
            upsert_cql(keyspace),
            (
                topic,
                &p.instance,
                big(l.max_content_bytes),
                big(l.max_id_bytes),
                big(l.max_ext_entries),
                big(l.max_ext_bytes),
                skew_ms,
                big(p.max_record_bytes),
                CqlTimestamp(p.published_at_ms),
            ),
        )
        .await
        .map_err(|e| Error::cql("publish consumer limits", e))?;
    Ok(())
}

type Row = (
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<CqlTimestamp>,
);

/// The limits published for `topic`, at most [`MAX_ROWS`] (in instance order).
pub async fn read(session: &Session, keyspace: &str, topic: &str) -> Result<Vec<Published>> {
    let what = "read consumer limits";
    let rows = session
        .query_unpaged(select_cql(keyspace), (topic,))
        .await
        .map_err(|e| Error::cql(what, e))?
        .into_rows_result()
        .map_err(|e| Error::cql(what, e))?;
    let mut out = Vec::new();
    for row in rows.rows::<Row>().map_err(|e| Error::cql(what, e))? {
        let (instance, content, id, entries, ext, skew_ms, record, at) =
            row.map_err(|e| Error::cql(what, e))?;
        // A missing cell (a row written by hand) counts as 0: the strictest reading.
        let get = |v: Option<i64>| size(v.unwrap_or(0));
        out.push(Published {
            instance,
            limits: Limits {
                max_content_bytes: get(content),
                max_id_bytes: get(id),
                max_ext_entries: get(entries),
                max_ext_bytes: get(ext),
                max_skew: Duration::from_millis(get(skew_ms) as u64),
            },
            max_record_bytes: get(record),
            published_at_ms: at.map_or(0, |t| t.0),
        });
    }
    Ok(out)
}
