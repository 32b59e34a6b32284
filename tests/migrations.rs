//! The CQL migrations of `cql/` applied by chatlog's own migrator against the real database:
//! the first run applies all, the second is a no-op, and the tables exist.

use chatlog::{cql_nodes, cql_password, cql_username, stack_hint, unique};
use chatlog_store::{CqlConfig, migrate};

#[tokio::test]
async fn migrations_apply_once_and_record_themselves() {
    let config = CqlConfig {
        nodes: cql_nodes(),
        keyspace: unique("mig"),
        username: cql_username(),
        password: cql_password(),
        ..CqlConfig::default()
    };
    let session = config.connect().await.unwrap_or_else(|e| {
        panic!(
            "{}: {e}",
            stack_hint("CQL database", &cql_nodes().join(","))
        )
    });

    let first = migrate::apply(&session, &config).await.unwrap();
    let all: Vec<u32> = migrate::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(first.applied, all);
    assert!(first.skipped.is_empty());

    let second = migrate::apply(&session, &config).await.unwrap();
    assert!(
        second.applied.is_empty(),
        "second run applied {:?}",
        second.applied
    );
    assert_eq!(second.skipped, all);

    let ks = &config.keyspace;
    let tables: Vec<(String,)> = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (ks.as_str(),),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(String,)>()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for t in ["messages", "session_seq", "schema_migrations"] {
        assert!(
            tables.iter().any(|(n,)| n == t),
            "table {t} missing: {tables:?}"
        );
    }
    session
        .query_unpaged(format!("DROP KEYSPACE {ks}"), ())
        .await
        .unwrap();
}
