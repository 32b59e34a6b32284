//! Applies chatlog's CQL migrations to the database named by `CHATLOG_CQL_NODES` (default
//! 127.0.0.1:9042) and `CHATLOG_CQL_KEYSPACE` (default `chatlog`). Why an example: the demo and
//! operators need the migrations without cqlsh; the consumer's `migrate` subcommand does the same.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = chatlog_store::CqlConfig::default();
    if let Ok(nodes) = std::env::var("CHATLOG_CQL_NODES") {
        config.nodes = nodes.split(',').map(str::to_owned).collect();
    }
    if let Ok(ks) = std::env::var("CHATLOG_CQL_KEYSPACE") {
        config.keyspace = ks;
    }
    let session = config.connect().await?;
    let report = chatlog_store::migrate::apply(&session, &config).await?;
    println!(
        "migrations: keyspace {} — applied {:?}, already there {:?}",
        config.keyspace, report.applied, report.skipped
    );
    Ok(())
}
