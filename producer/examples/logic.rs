//! How Logic uses chatlog's producer: build it once at startup, call `send` in the handler of a
//! client's "send message" request, ack the client with the returned seq and msg_id, and retry
//! retriable failures with the SAME `client_msg_id` (the retry re-produces the identical record,
//! so a message is never lost and never stored twice).
//!
//! Why this example exists: it is the whole integration surface for Logic — nothing else
//! (topics, Avro, seq segments, partitioning) needs to be known by the caller.
//!
//! Run against the local stack (`dev/stack.sh up`; `eval "$(dev/stack.sh env)"`):
//! `cargo run -p chatlog-producer --example logic`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chatlog_producer::{ContentType, NewMessage, Producer, ProducerConfig, SessionType};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    // Startup: the storage layout's keyspace must be migrated (the consumer does it too).
    let cql = chatlog_store::CqlConfig {
        nodes: vec![env("CHATLOG_CQL_NODES", "127.0.0.1:9042")],
        // A login when the database asks for one (the local stack's: `dev/stack.sh env`).
        username: env("CHATLOG_CQL_USERNAME", ""),
        password: chatlog_store::Secret::new(env("CHATLOG_CQL_PASSWORD", "")),
        ..Default::default()
    };
    let session = Arc::new(cql.connect().await?);
    chatlog_store::migrate::apply(&session, &cql).await?;
    let redis = chatlog_store::RedisConfig {
        url: env("CHATLOG_REDIS_URL", "redis://127.0.0.1:6390/"),
        ..Default::default()
    }
    .connect()
    .await?;
    let config = ProducerConfig {
        bootstrap_servers: env("CHATLOG_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        ..Default::default()
    };
    let producer = Producer::new(config, session, &cql.keyspace, redis).await?;

    // The request handler.
    let request = NewMessage {
        client_msg_id: "client-generated-uuid-1".into(),
        session_id: "group:42".into(),
        session_type: SessionType::Group,
        sender_id: "user:7".into(),
        content_type: ContentType::Text,
        content: "hello, group".into(),
        send_time_ms: 1_700_000_000_000,
        ext: BTreeMap::new(),
    };
    let mut attempt = 0;
    let sent = loop {
        match producer.send(request.clone()).await {
            Ok(sent) => break sent,
            Err(e) if e.is_retriable() && attempt < 3 => attempt += 1,
            Err(e) => return Err(e.into()), // e.g. Error::Invalid → reject the request
        }
    };
    println!(
        "ack: seq={} msg_id={} duplicate={} (partition {}, offset {})",
        sent.seq, sent.msg_id, sent.duplicate, sent.partition, sent.offset
    );

    producer.close(Duration::from_secs(10)).await?;
    Ok(())
}
