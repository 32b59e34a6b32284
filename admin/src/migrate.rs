//! `migrate status|up`: the CQL migrations of `cql/` (embedded in this build) against the
//! configured keyspace. `status` only reads (it creates neither the keyspace nor
//! `schema_migrations`); `up` is `chatlog_store::migrate::apply`, safe to repeat.

use chatlog_store::migrate::{self, MigrationStatus, State, Status};

use crate::cli::{MigrateAction, MigrateArgs};
use crate::connect::Ctx;
use crate::{Error, Outcome, Result};

/// Runs `migrate`.
pub async fn run(ctx: &Ctx, args: &MigrateArgs) -> Result<Outcome> {
    let cql = &ctx.config.cql;
    let session = ctx.cql().await.map_err(|e| {
        Error::Other(format!(
            "{e} (keyspace {}); is the CQL database up and the login right? (locally: \
             dev/stack.sh up, and eval \"$(dev/stack.sh env)\" for the login)",
            cql.keyspace
        ))
    })?;
    match args.action {
        MigrateAction::Status => {
            let status = migrate::status(&session, cql).await?;
            print!("{}", render_status(&cql.keyspace, &status));
            Ok(Outcome::problems_if(!status.up_to_date()))
        }
        MigrateAction::Up => {
            let report = migrate::apply(&session, cql).await?;
            let name = |v: u32| {
                migrate::MIGRATIONS
                    .iter()
                    .find(|m| m.version == v)
                    .map_or("?", |m| m.name)
            };
            for v in &report.skipped {
                println!("{v:04}  {:<28} already applied", name(*v));
            }
            for v in &report.applied {
                println!("{v:04}  {:<28} applied now", name(*v));
            }
            println!(
                "keyspace {}: {} applied now, {} already applied",
                cql.keyspace,
                report.applied.len(),
                report.skipped.len()
            );
            Ok(Outcome::Fine)
        }
    }
}

/// One line per migration, then a verdict line.
pub fn render_status(keyspace: &str, status: &Status) -> String {
    let mut out = String::new();
    if !status.keyspace_exists {
        out.push_str(&format!(
            "keyspace {keyspace} does not exist: every migration is pending\n"
        ));
    } else if !status.table_exists {
        out.push_str(&format!(
            "keyspace {keyspace} has no schema_migrations table: every migration is pending\n"
        ));
    }
    for m in &status.migrations {
        out.push_str(&line(m));
        out.push('\n');
    }
    for (version, name) in &status.unknown {
        out.push_str(&format!(
            "{version:04}  {name:<28} recorded, unknown to this build (applied by a newer \
             release?)\n"
        ));
    }
    let pending = status.pending().count();
    let edited = status.edited().count();
    if pending == 0 && edited == 0 {
        out.push_str(&format!(
            "keyspace {keyspace}: all {} migrations applied\n",
            status.migrations.len()
        ));
    } else {
        let mut what = Vec::new();
        if pending > 0 {
            what.push(format!("{pending} pending: run `chatlog migrate up`"));
        }
        if edited > 0 {
            what.push(format!(
                "{edited} EDITED after they were applied: restore the file as released and add \
                 a new migration instead (`migrate up` refuses to run)"
            ));
        }
        out.push_str(&format!("keyspace {keyspace}: {}\n", what.join("; ")));
    }
    out
}

fn line(m: &MigrationStatus) -> String {
    let head = format!("{:04}  {:<28}", m.migration.version, m.migration.name);
    match &m.state {
        State::Applied { applied_at_ms } => format!("{head} applied  {}", when(*applied_at_ms)),
        State::Pending => format!("{head} pending"),
        State::Edited {
            recorded,
            applied_at_ms,
        } => format!(
            "{head} EDITED   applied {} with checksum {recorded}, this build's file has {}",
            when(*applied_at_ms),
            m.migration.checksum()
        ),
    }
}

/// A recorded time as RFC 3339 (UTC, seconds).
pub fn when(ms: Option<i64>) -> String {
    match ms.and_then(|ms| u64::try_from(ms).ok()) {
        Some(ms) => humantime_serde::re::humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string(),
        None => "(time not recorded)".to_owned(),
    }
}
