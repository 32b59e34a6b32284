//! Small CQL helpers every table module shares: an idempotent prepare, a first-row read.

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
