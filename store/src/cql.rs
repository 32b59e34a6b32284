//! Small CQL helpers every table module shares: an idempotent prepare, a first-row read, the
//! split of rows into batches capped by count and bytes.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::{Error, Result};

/// The first row `statement` returns for `values` as a `T` (`None`: no row).
pub(crate) async fn read_row<T>(
    session: &Session,
    statement: &PreparedStatement,
    values: impl scylla::serialize::row::SerializeRow,
    what: &'static str,
) -> Result<Option<T>>
where
    T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    session
        .execute_unpaged(statement, values)
        .await
        .map_err(|e| Error::cql(what, e))?
        .into_rows_result()
        .map_err(|e| Error::cql(what, e))?
        .maybe_first_row::<T>()
        .map_err(|e| Error::cql(what, e))
}

/// Prepares `cql`, marked idempotent (the driver may retry it).
pub(crate) async fn prepare(
    session: &Session,
    cql: String,
    what: &'static str,
) -> Result<PreparedStatement> {
    let mut statement = session
        .prepare(cql)
        .await
        .map_err(|e| Error::cql(format!("prepare {what}"), e))?;
    statement.set_is_idempotent(true);
    Ok(statement)
}

/// Splits `rows` into batches of at most `max_rows` rows and `max_bytes` (as `size` estimates
/// them), in order; a row larger than `max_bytes` is a batch of its own.
pub(crate) fn chunk_by<T>(
    rows: impl IntoIterator<Item = T>,
    max_rows: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut batches = Vec::new();
    let mut batch: Vec<T> = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let n = size(&row);
        if !batch.is_empty() && (batch.len() >= max_rows.max(1) || bytes + n > max_bytes) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += n;
        batch.push(row);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}
