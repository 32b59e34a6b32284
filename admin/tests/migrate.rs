//! `chatlog migrate status|up` against the local stack's CQL database: `status` only reads (a
//! keyspace it looks at is not created), `up` applies everything pending and is safe to repeat,
//! and an edited migration is reported as such.

mod common;

use chatlog_store::migrate::MIGRATIONS;

/// Whether `keyspace` exists.
async fn keyspace_exists(session: &scylla::client::session::Session, keyspace: &str) -> bool {
    session
        .query_unpaged(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .expect("read system_schema")
        .into_rows_result()
        .expect("rows")
        .rows_num()
        > 0
}

/// The migration lines of `status`' output (`NNNN  name  state …`) as (version, state).
fn states(stdout: &str) -> Vec<(u32, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let version = words.next()?.parse().ok()?;
            let _name = words.next()?;
            Some((version, words.next()?.to_owned()))
        })
        .collect()
}

fn all(state: &str) -> Vec<(u32, String)> {
    MIGRATIONS
        .iter()
        .map(|m| (m.version, state.to_owned()))
        .collect()
}

#[tokio::test]
async fn migrate_status_then_up() {
    let keyspace = chatlog::unique("migrate");
    let session = chatlog::cql_config(&keyspace)
        .connect()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}",
                chatlog::stack_hint("CQL database", &chatlog::cql_nodes().join(","))
            )
        });

    let ran = common::run(common::chatlog(&keyspace), &["migrate", "status"]).await;
    assert_eq!(ran.code, Some(1), "{ran}");
    assert_eq!(states(&ran.stdout), all("pending"), "{ran}");
    assert!(ran.stdout.contains("does not exist"), "{ran}");
    assert!(ran.stdout.contains("chatlog migrate up"), "{ran}");
    assert!(
        !keyspace_exists(&session, &keyspace).await,
        "status created keyspace {keyspace}"
    );

    let ran = common::run(common::chatlog(&keyspace), &["migrate", "up"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert_eq!(
        ran.stdout.matches("applied now").count(),
        MIGRATIONS.len() + 1, // one per migration, and the total line
        "{ran}"
    );
    assert!(keyspace_exists(&session, &keyspace).await);

    let ran = common::run(common::chatlog(&keyspace), &["migrate", "status"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert_eq!(states(&ran.stdout), all("applied"), "{ran}");

    // Again: nothing left to do.
    let ran = common::run(common::chatlog(&keyspace), &["migrate", "up"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(
        ran.stdout.contains(&format!(
            "0 applied now, {} already applied",
            MIGRATIONS.len()
        )),
        "{ran}"
    );
}

#[tokio::test]
async fn migrate_status_reports_an_edited_migration() {
    let (session, cql) = chatlog::fresh_keyspace("migrate_edited").await;
    // As if 0002's file had been changed after it was applied: the recorded checksum differs.
    session
        .query_unpaged(
            format!(
                "UPDATE {}.schema_migrations SET checksum = ? WHERE version = 2",
                cql.keyspace
            ),
            (MIGRATIONS[1].checksum().wrapping_add(1),),
        )
        .await
        .expect("change the recorded checksum");

    let ran = common::run(common::chatlog(&cql.keyspace), &["migrate", "status"]).await;

    assert_eq!(ran.code, Some(1), "{ran}");
    let mut expected = all("applied");
    expected[1].1 = "EDITED".to_owned();
    assert_eq!(states(&ran.stdout), expected, "{ran}");
    assert!(ran.stdout.contains("1 EDITED"), "{ran}");
}
