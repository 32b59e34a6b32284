//! The numbered migrations of `cql/`, applied by chatlog's own code (no cqlsh needed).
//!
//! Migration 1 creates the keyspace; every later one is recorded in
//! `<keyspace>.schema_migrations` with a checksum, so applying twice is a no-op and an edited,
//! already-applied migration is an error instead of a silent divergence. Statements are written with
//! `IF NOT EXISTS`, and the record is an LWT insert, so two consumers starting at once are safe.

use scylla::client::session::Session;
use scylla::value::CqlTimestamp;

use crate::{CqlConfig, Error, Result};

/// One migration file, embedded at build time.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number (the file's `NNNN_` prefix).
    pub version: u32,
    /// The file name.
    pub name: &'static str,
    /// The CQL text with `{keyspace}` and `{replication}` placeholders.
    pub text: &'static str,
}

/// One [`Migration`]: its number and its file in `cql/`, embedded.
macro_rules! migration {
    ($version:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $file,
            text: include_str!(concat!("../../cql/", $file)),
        }
    };
}

/// Every migration, in order. Add a file to `cql/` and a line here.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_keyspace.cql"),
    migration!(2, "0002_messages.cql"),
    migration!(3, "0003_consumer_limits.cql"),
    migration!(4, "0004_dal.cql"),
    migration!(5, "0005_mutations.cql"),
];

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Migrations applied by this call.
    pub applied: Vec<u32>,
    /// Migrations found already recorded.
    pub skipped: Vec<u32>,
}

impl Migration {
    /// The statements of this migration for `config`: comments removed, split at `;`.
    pub fn statements(&self, config: &CqlConfig) -> Vec<String> {
        let text: String = self
            .text
            .lines()
            .map(|l| l.split("--").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        text.replace("{keyspace}", &config.keyspace)
            .replace("{replication}", &config.replication)
            .split(';')
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// FNV-1a of the file text: stable across builds and platforms, enough to spot an edit.
    pub fn checksum(&self) -> i64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h as i64
    }
}

/// Applies every migration not yet recorded. Safe to call at every start.
pub async fn apply(session: &Session, config: &CqlConfig) -> Result<Report> {
    config.validate()?;
    let ks = &config.keyspace;
    let mut report = Report::default();
    // The keyspace must exist before the table that records migrations can.
    let first = &MIGRATIONS[0];
    run_statements(session, first, config).await?;
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations \
         (version int PRIMARY KEY, name text, checksum bigint, applied_at timestamp)"
    );
    session
        .query_unpaged(create, ())
        .await
        .map_err(|e| Error::cql("create schema_migrations", e))?;
    let select = format!("SELECT version, checksum FROM {ks}.schema_migrations");
    let applied: Vec<(i32, i64)> = read_rows(session, select, (), "read schema_migrations").await?;
    for m in MIGRATIONS {
        if let Some((_, sum)) = applied.iter().find(|(v, _)| *v as u32 == m.version) {
            if *sum != m.checksum() {
                return Err(Error::Migration {
                    version: m.version,
                    message: format!(
                        "{} was edited after it was applied (checksum {} recorded, {} now); \
                         add a new migration instead",
                        m.name,
                        sum,
                        m.checksum()
                    ),
                });
            }
            report.skipped.push(m.version);
            continue;
        }
        if m.version != first.version {
            run_statements(session, m, config).await?;
        }
        let record = format!(
            "INSERT INTO {ks}.schema_migrations (version, name, checksum, applied_at) \
             VALUES (?, ?, ?, toTimestamp(now())) IF NOT EXISTS"
        );
        session
            .query_unpaged(record, (m.version as i32, m.name, m.checksum()))
            .await
            .map_err(|e| Error::cql(format!("record migration {}", m.name), e))?;
        tracing::info!(version = m.version, name = m.name, "applied CQL migration");
        report.applied.push(m.version);
    }
    Ok(report)
}

/// Where one migration stands in a keyspace (see [`status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Recorded with this build's checksum.
    Applied {
        /// When it was recorded, ms since the Unix epoch (`None`: the cell is empty).
        applied_at_ms: Option<i64>,
    },
    /// Not recorded.
    Pending,
    /// Recorded with another checksum: the file was edited after it was applied (`apply` refuses
    /// to run until that is resolved).
    Edited {
        /// The checksum recorded.
        recorded: i64,
        /// When it was recorded, ms since the Unix epoch.
        applied_at_ms: Option<i64>,
    },
}

/// One migration of [`MIGRATIONS`] and its [`State`].
#[derive(Debug, Clone)]
pub struct MigrationStatus {
    /// The migration (this build's file).
    pub migration: Migration,
    /// Where it stands.
    pub state: State,
}

/// What [`status`] found.
#[derive(Debug, Clone)]
pub struct Status {
    /// Whether the keyspace exists.
    pub keyspace_exists: bool,
    /// Whether its `schema_migrations` table exists.
    pub table_exists: bool,
    /// Every migration of [`MIGRATIONS`], in order.
    pub migrations: Vec<MigrationStatus>,
    /// Versions recorded that this build does not know (applied by a newer release), with their
    /// names.
    pub unknown: Vec<(u32, String)>,
}

impl Status {
    /// Whether every migration is applied unchanged.
    pub fn up_to_date(&self) -> bool {
        self.migrations
            .iter()
            .all(|m| matches!(m.state, State::Applied { .. }))
    }

    /// The migrations not yet applied.
    pub fn pending(&self) -> impl Iterator<Item = &MigrationStatus> {
        self.migrations.iter().filter(|m| m.state == State::Pending)
    }

    /// The migrations edited after they were applied.
    pub fn edited(&self) -> impl Iterator<Item = &MigrationStatus> {
        self.migrations
            .iter()
            .filter(|m| matches!(m.state, State::Edited { .. }))
    }
}

/// Every row `statement` (unpaged: the schema tables and `schema_migrations` are small) returns,
/// typed; errors name `what` was being read.
async fn read_rows<T>(
    session: &Session,
    statement: impl Into<scylla::statement::Statement>,
    values: impl scylla::serialize::row::SerializeRow,
    what: &'static str,
) -> Result<Vec<T>>
where
    T: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
{
    session
        .query_unpaged(statement, values)
        .await
        .map_err(|e| Error::cql(what, e))?
        .into_rows_result()
        .map_err(|e| Error::cql(what, e))?
        .rows::<T>()
        .map_err(|e| Error::cql(what, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| Error::cql(what, e))
}

/// Where each migration stands in `config.keyspace`, read-only: unlike [`apply`] it creates
/// neither the keyspace nor `schema_migrations` (a missing one means every migration is pending),
/// so an operator can look before changing anything.
pub async fn status(session: &Session, config: &CqlConfig) -> Result<Status> {
    config.validate()?;
    let ks = &config.keyspace;
    let what = "read the schema (system_schema)";
    // The keyspace name is validated, but a bound value keeps the schema reads plain.
    let keyspace_exists = !read_rows::<(String,)>(
        session,
        "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
        (ks,),
        what,
    )
    .await?
    .is_empty();
    let table_exists = keyspace_exists
        && !read_rows::<(String,)>(
            session,
            "SELECT table_name FROM system_schema.tables \
             WHERE keyspace_name = ? AND table_name = 'schema_migrations'",
            (ks,),
            what,
        )
        .await?
        .is_empty();
    type Row = (i32, Option<String>, Option<i64>, Option<CqlTimestamp>);
    let recorded: Vec<Row> = if table_exists {
        read_rows(
            session,
            format!("SELECT version, name, checksum, applied_at FROM {ks}.schema_migrations"),
            (),
            "read schema_migrations",
        )
        .await?
    } else {
        Vec::new()
    };
    let migrations = MIGRATIONS
        .iter()
        .map(|m| {
            let state = match recorded.iter().find(|r| r.0 as u32 == m.version) {
                None => State::Pending,
                Some((_, _, sum, at)) => {
                    let applied_at_ms = at.map(|t| t.0);
                    match sum {
                        Some(sum) if *sum == m.checksum() => State::Applied { applied_at_ms },
                        other => State::Edited {
                            recorded: other.unwrap_or(0),
                            applied_at_ms,
                        },
                    }
                }
            };
            MigrationStatus {
                migration: *m,
                state,
            }
        })
        .collect();
    let mut unknown: Vec<(u32, String)> = recorded
        .iter()
        .filter(|r| !MIGRATIONS.iter().any(|m| m.version == r.0 as u32))
        .map(|r| (r.0 as u32, r.1.clone().unwrap_or_default()))
        .collect();
    unknown.sort();
    Ok(Status {
        keyspace_exists,
        table_exists,
        migrations,
        unknown,
    })
}

async fn run_statements(session: &Session, m: &Migration, config: &CqlConfig) -> Result<()> {
    for stmt in m.statements(config) {
        match session.query_unpaged(stmt.as_str(), ()).await {
            Ok(_) => {}
            // `ALTER TABLE … ADD` has no `IF NOT EXISTS` on ScyllaDB: a column another instance
            // (or an interrupted earlier run) already added is the state this statement wants.
            Err(e) if is_add_column(&stmt) && column_exists(&e.to_string()) => {
                tracing::info!(migration = m.name, "columns already added");
            }
            Err(e) => return Err(Error::cql(format!("migration {} `{stmt}`", m.name), e)),
        }
    }
    Ok(())
}

fn is_add_column(stmt: &str) -> bool {
    let upper = stmt.to_ascii_uppercase();
    upper.starts_with("ALTER TABLE") && upper.contains(" ADD ")
}

/// Cassandra says "… already exists", ScyllaDB "… conflicts with an existing column".
fn column_exists(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("already exist") || e.contains("conflicts with an existing column")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_named_by_number() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn statements_fill_placeholders_and_drop_comments() {
        let config = CqlConfig {
            keyspace: "ks_test".into(),
            ..CqlConfig::default()
        };
        let stmts = MIGRATIONS[0].statements(&config);
        assert_eq!(stmts.len(), 1);
        assert!(stmts[0].starts_with(
            "CREATE KEYSPACE IF NOT EXISTS ks_test WITH replication = {'class': 'SimpleStrategy'"
        ));
        assert!(!stmts[0].contains("--"));
        for m in MIGRATIONS {
            for s in m.statements(&config) {
                assert!(
                    !s.contains('{') || s.contains("replication"),
                    "unfilled placeholder in {s}"
                );
            }
        }
    }
}
