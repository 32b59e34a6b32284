//! Small CQL helpers every table module shares: an idempotent prepare, a first-row read, the
//! split of rows into batches capped by count and bytes, and the write of such a batch.

use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
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

/// Writes `rows` of `statement`: one row as a single statement (errors named `one`), more as one
/// idempotent UNLOGGED batch (errors named `batch`); none, nothing.
pub(crate) async fn write_unlogged<V: SerializeRow>(
    session: &Session,
    statement: &PreparedStatement,
    mut rows: Vec<V>,
    one: &'static str,
    batch: &'static str,
) -> Result<()> {
    if rows.len() <= 1 {
        if let Some(row) = rows.pop() {
            session
                .execute_unpaged(statement, row)
                .await
                .map_err(|e| Error::cql(one, e))?;
        }
        return Ok(());
    }
    let mut unlogged = Batch::new(BatchType::Unlogged);
    unlogged.set_is_idempotent(true);
    for _ in &rows {
        unlogged.append_statement(statement.clone());
    }
    session
        .batch(&unlogged, rows)
        .await
        .map_err(|e| Error::cql(batch, e))?;
    Ok(())
}
