//! Real TLS against the local stack: its own CA (made by `dev/stack.sh`), Kafka's TLS listener and
//! client TLS on Cassandra's CQL port (with logins, as without TLS). A message is produced over
//! Kafka TLS, persisted by a consumer whose Kafka and CQL connections are TLS, and read back by
//! history over CQL TLS; a client that does not trust the stack's CA is refused by both.
//!
//! A stack started by an older `dev/stack.sh` has no TLS: [`chatlog::stack_tls`] says how to
//! restart it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatlog::{
    StackTls, TempDir, create_topic, new_message, redis_config, redis_connection, unique,
};
use chatlog_consumer::telemetry::Health;
use chatlog_consumer::{Config, Pipeline};
use chatlog_producer::{KafkaProtocol, KafkaSecurity};
use chatlog_producer::{NewMessage, Producer, ProducerConfig};
use chatlog_store::history::Source;
use chatlog_store::security::TlsFiles;
use chatlog_store::{CqlConfig, keys};

const TIMEOUT: Duration = Duration::from_secs(60);

fn tls_files(ca_file: &std::path::Path) -> TlsFiles {
    TlsFiles {
        ca_file: ca_file.to_owned(),
        cert_file: None,
        key_file: None,
        verify_peer: true,
    }
}

/// The stack's CQL login, over TLS, trusting `ca_file`.
fn cql_over_tls(tls: &StackTls, keyspace: &str, ca_file: &std::path::Path) -> CqlConfig {
    CqlConfig {
        nodes: tls.cql_nodes.clone(),
        tls: Some(tls_files(ca_file)),
        connect_timeout: Duration::from_secs(5),
        ..chatlog::cql_config(keyspace)
    }
}

/// Kafka over TLS, trusting `ca_file`; the broker's host name (127.0.0.1) is verified.
fn kafka_over_tls(ca_file: &std::path::Path) -> KafkaSecurity {
    KafkaSecurity {
        protocol: KafkaProtocol::Ssl,
        ssl_ca_location: Some(ca_file.to_owned()),
        ..KafkaSecurity::default()
    }
}

fn message(session_id: &str, i: usize) -> NewMessage {
    NewMessage {
        content: format!("over TLS #{i}").into_bytes(),
        ..new_message(session_id, &format!("tls-{i}"))
    }
}

/// Producer → Kafka TLS listener → consumer (Kafka TLS for its group consumer, transactional
/// producer and DLQ producer; CQL over TLS with the stack's login) → CQL → history over CQL TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_consumer_and_history_through_tls_end_to_end() {
    let tls = chatlog::stack_tls();
    let cql = cql_over_tls(&tls, &unique("tls"), &tls.ca_file);
    let session = Arc::new(
        cql.connect()
            .await
            .unwrap_or_else(|e| panic!("CQL over TLS to {:?}: {e}", tls.cql_nodes)),
    );
    chatlog_store::migrate::apply(&session, &cql)
        .await
        .expect("migrations over CQL TLS");
    let topic = unique("tls_topic");
    create_topic(&topic, 1).await;

    let producer = Producer::new(
        ProducerConfig {
            bootstrap_servers: tls.kafka_bootstrap.clone(),
            topic: topic.clone(),
            linger: Duration::from_millis(1),
            security: kafka_over_tls(&tls.ca_file),
            ..ProducerConfig::default()
        },
        session.clone(),
        &cql.keyspace,
        redis_connection().await,
    )
    .await
    .expect("producer over Kafka TLS");
    let sid = unique("tls_session");
    let sent = producer
        .send_batch((0..5).map(|i| message(&sid, i)).collect())
        .await;
    let seqs: Vec<i64> = sent
        .into_iter()
        .map(|r| r.expect("acknowledged through the TLS listener").seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    producer.close(TIMEOUT).await.expect("close");

    let mut config = Config::default();
    config.kafka.bootstrap_servers = tls.kafka_bootstrap.clone();
    config.kafka.security = kafka_over_tls(&tls.ca_file);
    config.kafka.topic = topic.clone();
    config.kafka.dlq_topic = unique("tls_dlq");
    config.kafka.group_id = unique("tls_group");
    config.kafka.transactional_id = unique("tls_txn");
    config.cql = cql.clone();
    config.redis = redis_config();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    // The shutdown token's type is tokio_util's, which this package does not depend on: it is
    // inferred from Pipeline::connect.
    let shutdown = Default::default();
    let pipeline = Pipeline::connect(config, Clone::clone(&shutdown), Arc::new(Health::default()))
        .await
        .expect("consumer connected over Kafka TLS and CQL TLS");
    let worker = std::thread::spawn(move || pipeline.run());

    let redis = redis_connection().await;
    let history = chatlog::default_history(&session, &cql.keyspace, &redis).await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let page = history.latest(&sid, 10).await.expect("history read");
        if page.messages.len() == 5 {
            break;
        }
        assert!(
            !worker.is_finished(),
            "the consumer stopped: {:?}",
            worker.join()
        );
        assert!(
            Instant::now() < deadline,
            "the consumer persisted {} of 5 messages in {TIMEOUT:?}",
            page.messages.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    let outcome = tokio::task::spawn_blocking(move || worker.join())
        .await
        .unwrap()
        .expect("the pipeline thread");
    outcome.expect("the consumer stopped cleanly");

    // Without the window, every message comes from the table, read over CQL TLS.
    let mut con = redis.clone();
    redis::cmd("DEL")
        .arg(keys::window(&sid))
        .query_async::<()>(&mut con)
        .await
        .expect("DEL window");
    let page = history.latest(&sid, 10).await.expect("history read");
    assert_eq!(page.source, Source::Database);
    let read: Vec<(i64, String, Vec<u8>)> = page
        .messages
        .into_iter()
        .map(|m| (m.seq, m.client_msg_id, m.content))
        .collect();
    let expected: Vec<(i64, String, Vec<u8>)> = (0..5)
        .map(|i| {
            let m = message(&sid, i);
            (i as i64 + 1, m.client_msg_id, m.content)
        })
        .collect();
    assert_eq!(read, expected);
}

/// Both TLS endpoints verify: a client that trusts another CA is refused by Kafka's listener and
/// by the CQL port, plaintext to Kafka's TLS listener gets nothing through, and over CQL TLS the
/// login is still checked (a wrong password is refused and never shown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_endpoints_refuse_an_untrusted_ca_and_keep_cql_logins() {
    let tls = chatlog::stack_tls();
    let other = TempDir::new("tls_other_ca");
    chatlog::make_certs(&other.0);
    let other_ca = other.0.join("ca.pem");

    // CQL: the stack's CA and login work; another CA fails the handshake; a wrong password over
    // TLS is refused as an authentication error.
    let keyspace = unique("tls_login");
    let good = cql_over_tls(&tls, &keyspace, &tls.ca_file);
    good.connect()
        .await
        .expect("CQL over TLS with the stack's CA")
        .query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .expect("a query over CQL TLS");
    let untrusted = cql_over_tls(&tls, &keyspace, &other_ca);
    let err = untrusted
        .connect()
        .await
        .expect_err("a server certificate from an untrusted CA must be refused")
        .to_string();
    assert!(!err.to_lowercase().contains("auth"), "a TLS failure: {err}");
    chatlog::assert_wrong_cql_password_refused(&good, &[]).await;

    // Kafka: the producer with another CA, and plaintext to the TLS listener, get nothing
    // acknowledged.
    let topic = unique("tls_refused");
    create_topic(&topic, 1).await;
    let session = Arc::new(good.connect().await.unwrap());
    chatlog_store::migrate::apply(&session, &good)
        .await
        .expect("migrations");
    for (what, security) in [
        ("another CA", kafka_over_tls(&other_ca)),
        ("plaintext", KafkaSecurity::default()),
    ] {
        let attempt = Producer::new(
            ProducerConfig {
                bootstrap_servers: tls.kafka_bootstrap.clone(),
                topic: topic.clone(),
                message_timeout: Duration::from_secs(3),
                security,
                ..ProducerConfig::default()
            },
            session.clone(),
            &keyspace,
            redis_connection().await,
        )
        .await;
        // Creating the client connects lazily: the refusal shows in the send.
        let producer = attempt.expect("the producer is created");
        let sid = unique("tls_refused");
        let err = producer
            .send(message(&sid, 0))
            .await
            .expect_err(&format!("{what} must get nothing through the TLS listener"));
        println!("{what}: {err}");
    }
}
