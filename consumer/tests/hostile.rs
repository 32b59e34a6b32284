//! Hostile records and clients never stall the consumer (issue 14, items 2, 3, 7, 8): a record
//! larger than the DLQ can take goes there as a truncated copy, a record whose write can never
//! succeed goes there as `write_failed`, and the HTTP endpoint sheds slow and surplus connections.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chatlog::prometheus::sample;
use common::{DlqRecord, Env, config_file, dump_logs, message, poll_until, workload};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The hex SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    openssl::sha::sha256(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Produces one record with lz4 compression and a `message.max.bytes` far above the broker's
/// `max.message.bytes`: the broker checks the compressed batch, so it takes a record of any
/// size that compresses well — exactly what a careless (or hostile) client can do.
async fn produce_compressed(env: &Env, key: &str, payload: &[u8]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", chatlog::kafka_bootstrap())
        .set("compression.type", "lz4")
        .set("message.max.bytes", (16 * 1024 * 1024).to_string())
        .create()
        .expect("lz4 producer");
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&env.topic)
                .key(key)
                .payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("the broker takes a compressed record above its max.message.bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_compressed_record_goes_to_the_dlq_truncated_and_its_partition_moves_on() {
    let env = Env::new("oversize", 1, 20).await;
    let per_session = 20;
    let (sessions, base, good) = workload("ov", 2, per_session);
    let (before, after) = good.split_at(good.len() / 2);

    // 2 MiB: twice the default batch.max_record_bytes, and above what the DLQ topic (the
    // broker's default max.message.bytes) takes uncompressed.
    let poison: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    env.produce(before).await;
    produce_compressed(&env, &sessions[0], &poison).await;
    env.produce(after).await;

    let consumer = env.spawn_consumer(&chatlog::unique("oversize_txn"), &[]);
    // Rows land before their batch commits; this waits for the commit too (committed to the end).
    env.wait_all(&sessions, per_session, &[&consumer]).await;
    env.assert_exact(&sessions, per_session, base).await;

    let dlq = env.read_dlq_records(1);
    assert_eq!(dlq.len(), 1, "the poison record, once: {dlq:?}");
    let r: &DlqRecord = &dlq[0];
    assert_eq!(r.header("chatlog-dlq-reason"), "oversize");
    assert_eq!(r.key.as_deref(), Some(sessions[0].as_bytes()));
    assert_eq!(
        r.header("chatlog-dlq-truncated"),
        poison.len().to_string(),
        "the truncated copy says the original length"
    );
    assert_eq!(r.header("chatlog-dlq-sha256"), sha256_hex(&poison));
    let copy = r.payload.as_deref().unwrap_or_default();
    assert!(
        !copy.is_empty() && copy.len() < poison.len(),
        "a truncated copy: {} bytes",
        copy.len()
    );
    assert_eq!(copy, &poison[..copy.len()], "a prefix of the original");
    assert!(r.header("chatlog-dlq-detail").len() <= 512);
    assert_eq!(r.header("chatlog-dlq-offset"), before.len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_failed_wrongtype_window_goes_to_the_dlq_and_other_sessions_persist() {
    let env = Env::new("wrongtype", 1, 10).await;
    let per_session = 6;
    let (sessions, base, good) = workload("wt", 3, per_session);
    let bad = &sessions[0];
    let mut redis = chatlog::redis_connection().await;
    // The window key of one session holds a string: every append to it fails with WRONGTYPE.
    // (Its epoch key says "current epoch", or the script would start the window afresh.)
    let epoch = chatlog_store::epoch::current(&mut redis).await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(chatlog_store::keys::window_epoch(bad))
        .arg(epoch)
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(chatlog_store::keys::window(bad))
        .arg("not a window")
        .query_async(&mut redis)
        .await
        .unwrap();
    // Interleaved: every batch holds records of the bad session and of the good ones.
    env.produce(&good).await;

    let consumer = env.spawn_consumer(&chatlog::unique("wrongtype_txn"), &[]);
    // Every session's rows: the bad session's rows are written too (its CQL write succeeded;
    // only its window failed — see OPERATIONS.md, "write_failed").
    env.wait_all(&sessions, per_session, &[&consumer]).await;
    env.assert_exact(&sessions[1..], per_session, base).await;

    let dlq = env.read_dlq_records(per_session as usize);
    let mut offsets: Vec<i64> = dlq
        .iter()
        .map(|r| r.header("chatlog-dlq-offset").parse().unwrap())
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(
        offsets.len(),
        per_session as usize,
        "each record of the bad session once: {dlq:?}"
    );
    assert_eq!(dlq.len(), per_session as usize);
    for r in &dlq {
        assert_eq!(r.header("chatlog-dlq-reason"), "write_failed", "{r:?}");
        assert_eq!(r.header("chatlog-dlq-stage"), "redis", "{r:?}");
        assert!(
            r.header("chatlog-dlq-detail").contains("WRONGTYPE"),
            "{r:?}"
        );
        assert_eq!(r.key.as_deref(), Some(bad.as_bytes()));
        let m = env.codec.decode(r.payload.as_deref().unwrap()).unwrap();
        assert_eq!(m, message(bad, m.seq, base, 0), "the original record");
    }
    let _: () = redis::cmd("DEL")
        .arg(chatlog_store::keys::window(bad))
        .query_async(&mut redis)
        .await
        .unwrap();
    drop(consumer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_failed_row_the_table_refuses_leaves_no_window_entry() {
    let env = Env::new("cqlrefuse", 1, 10).await;
    let per_session = 5;
    let (sessions, base, good) = workload("cr", 2, per_session);
    // A session id the consumer's [limits] accept (max_id_bytes raised) but Cassandra refuses as
    // a partition key (longer than 65,535 bytes): an `Invalid` request, the row can never be
    // written, while Redis takes the window entry.
    let huge_session = format!("{}-{}", chatlog::unique("cr_huge"), "k".repeat(70_000));
    let (_dir, config) = config_file("cqlrefuse", "[limits]\nmax_id_bytes = 100000\n");
    let mut bad = message(&huge_session, 1, base, 0);
    bad.msg_id = "cr-huge-m1".into();
    bad.client_msg_id = "cr-huge-c1".into();
    let wide = chatlog_schemas::Codec::builder()
        .limits(chatlog_schemas::Limits {
            max_id_bytes: 100_000,
            ..Default::default()
        })
        .build()
        .unwrap();
    let record = wide.encode(&bad).unwrap();
    // An earlier incarnation appended its window entry (windows and rows are written at the same
    // time) and died before the row write failed: the replay must take the entry out again.
    // (Planted as proven: into a window that held older messages, an append adds it.)
    let mut redis = chatlog::redis_connection().await;
    chatlog_store::window::WindowWriter::new(chatlog_store::window::WindowConfig {
        size: 10,
        ..Default::default()
    })
    .append_proven(
        &mut redis,
        &std::collections::BTreeMap::from([(
            huge_session.clone(),
            vec![chatlog_store::window::WindowEntry {
                seq: 1,
                member: chatlog_store::window::member(bad.server_time_us, &record),
            }],
        )]),
    )
    .await
    .unwrap();
    // The bad record amid the good ones: one batch holds both.
    env.produce(&good[..good.len() / 2]).await;
    env.produce_raw(&[(Some(huge_session.clone()), Some(record))])
        .await;
    env.produce(&good[good.len() / 2..]).await;

    let consumer = env.spawn_consumer(&chatlog::unique("cqlrefuse_txn"), &["--config", &config]);
    env.wait_all(&sessions, per_session, &[&consumer]).await;
    env.assert_exact(&sessions, per_session, base).await;
    let dlq = env.read_dlq_records(1);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].header("chatlog-dlq-reason"), "write_failed");
    assert_eq!(dlq[0].header("chatlog-dlq-stage"), "cql");
    // No window shows the message whose row will never exist.
    let members: i64 = redis::cmd("ZCARD")
        .arg(chatlog_store::keys::window(&huge_session))
        .query_async(&mut redis)
        .await
        .unwrap();
    let entries: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
        .arg(chatlog_store::keys::window(&huge_session))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut redis)
        .await
        .unwrap();
    let seen: Vec<(usize, f64)> = entries.iter().map(|(m, s)| (m.len(), *s)).collect();

    assert_eq!(
        members, 0,
        "the refused message stays out of its window: {seen:?}"
    );
    drop(consumer);
}

/// The status line of a `GET path` on a fresh connection, or `None` if the connection closed.
async fn status_line(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    chatlog::http::get_line_async(addr, path)
        .await
        .ok()
        .map(|(line, _)| line)
}

/// Reads from `stream` until EOF or an error; `true` if that happened within `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoint_closes_slow_loris_connections_and_holds_its_connection_limit() {
    use chatlog_consumer::telemetry::{self, Health, HttpLimits};
    use tokio::io::AsyncWriteExt;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let health = std::sync::Arc::new(Health::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let limits = HttpLimits {
        header_read_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        max_connections: 3,
        connection_lifetime: Duration::from_secs(60),
    };
    let addr = telemetry::serve_with_limits(
        "127.0.0.1:0".parse().unwrap(),
        limits,
        handle,
        health,
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        status_line(addr, "/healthz").await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );

    // Slow loris: a request head trickling in never completes; the server closes it.
    let mut loris = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    loris.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    let writer = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if loris.write_all(b"X-Slow: 1\r\n").await.is_err() {
                break;
            }
        }
    };
    writer.await;
    assert!(
        closed_within(&mut loris, Duration::from_secs(3)).await,
        "a slow-loris connection must be closed"
    );
    assert!(started.elapsed() < Duration::from_secs(6));

    // The limit: 3 connections holding a slot (half a request head each); a 4th is turned away
    // at once, and served again once the others are gone.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    // Accepted in order: give the accept loop the moment it needs to take all three.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut refused = false;
    while Instant::now() < deadline && !refused {
        refused = status_line(addr, "/healthz").await.is_none();
    }
    assert!(refused, "a connection above the limit must be refused");
    for mut s in held.drain(..) {
        assert!(
            closed_within(&mut s, Duration::from_secs(3)).await,
            "held connections time out too"
        );
    }
    assert_eq!(
        status_line(addr, "/healthz").await.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "served again below the limit"
    );
    shutdown.cancel();

    // A keep-alive connection that idles after a request is closed at its lifetime, well before
    // its header-read timeout would close it.
    let limits = HttpLimits {
        header_read_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(2),
        max_connections: 3,
        connection_lifetime: Duration::from_secs(1),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let addr = telemetry::serve_with_limits(
        "127.0.0.1:0".parse().unwrap(),
        limits,
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle(),
        std::sync::Arc::new(Health::default()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "an idle keep-alive connection must be closed at its lifetime"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    shutdown.cancel();
}

/// A Redis outage makes every batch rewind: even with isolation after a single rewind, no good
/// record goes to the DLQ (nothing could be written, so the records are not at fault); the
/// partition is reported as not moving (`/readyz` 503 with the reason, the gauge at 1) and is
/// reported moving again once Redis is back and everything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_failed_is_never_claimed_in_an_outage_and_a_stalled_partition_is_reported() {
    let env = Env::new("stall", 1, 10).await;
    let per_session = 8;
    let (sessions, _, good) = workload("st", 3, per_session);
    let port = chatlog::free_port();
    let redis = chatlog::TestRedis::start(&["--port".into(), port.to_string()], port);
    let url = format!("redis://127.0.0.1:{port}/");
    let _ = chatlog::connect_to(port).await;
    let (_dir, config) = config_file(
        "stall_config",
        // The default stage budget (20 s) outlasts the window fence (5.6 s): the first attempt
        // ends at the fence, and isolating must still get its records written in time.
        "[retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\n\
         [redis]\nresponse_timeout = \"300ms\"\n\
         [isolation]\nrewinds = 1\nstall_after = \"3s\"\nrecord_budget = \"500ms\"\n",
    );
    let consumer = env.spawn_consumer(
        &chatlog::unique("stall_txn"),
        &["--config", config.as_str(), "--redis-url", url.as_str()],
    );
    consumer.wait_readyz(200, Duration::from_secs(60)).unwrap();

    redis.freeze();
    env.produce(&good).await;
    let body = consumer.wait_readyz(503, Duration::from_secs(60)).unwrap();
    assert!(body.contains("not moving"), "{body}");
    assert!(body.contains(&format!("{} [0]", env.topic)), "{body}");
    let (_, metrics) = consumer.get_async("/metrics").await.unwrap();
    assert_eq!(
        sample(&metrics, "chatlog_consumer_stalled_partitions"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        !env.committed_to_end().await,
        "nothing committed during the outage"
    );
    consumer
        .wait_log(
            "isolating: writing the batch record by record",
            Duration::from_secs(30),
        )
        .unwrap();

    redis.thaw();
    env.wait_all(&sessions, per_session, &[&consumer]).await;
    consumer.wait_readyz(200, Duration::from_secs(30)).unwrap();
    let (_, metrics) = consumer.get_async("/metrics").await.unwrap();
    assert_eq!(
        sample(&metrics, "chatlog_consumer_stalled_partitions"),
        Some(0.0)
    );
    assert!(
        env.read_dlq_records(0).is_empty(),
        "an outage sends nothing to the DLQ"
    );
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    for s in &sessions {
        let seqs: Vec<i64> = env
            .window_on(&mut con, s)
            .await
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, (1..=per_session).collect::<Vec<_>>(), "window of {s}");
    }
}

/// Runs one consumer with isolation after a single rewind and a write fault (`fault`: a hidden
/// `CHATLOG_FAULT_FAIL_WRITES*` variable and its value), over 3 sessions of 2 records produced
/// before it starts; returns the DLQ records and the log once everything is committed.
async fn isolate_with_failing_writes(
    prefix: &str,
    fault: (&str, &str),
    dlq_expected: usize,
) -> (Env, Vec<String>, Vec<DlqRecord>, String) {
    let env = Env::new(prefix, 1, 10).await;
    let (sessions, _, good) = workload(prefix, 3, 2);
    env.produce(&good).await;
    let (_dir, config) = config_file(
        &format!("{prefix}_config"),
        "[retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\n\
         [isolation]\nrewinds = 1\n",
    );
    let consumer = env.spawn_consumer_with_env(
        &chatlog::unique(&format!("{prefix}_txn")),
        &["--config", config.as_str()],
        &[fault],
    );
    poll_until(
        Duration::from_secs(90),
        Duration::from_millis(200),
        || async {
            if env.committed_to_end().await {
                Ok(())
            } else {
                Err(())
            }
        },
        |()| {
            dump_logs(&[&consumer]);
            "the consumer never committed to the end".to_owned()
        },
    )
    .await;
    let dlq = env.read_dlq_records(dlq_expected);
    let log = consumer.log_text();
    drop(consumer);
    (env, sessions, dlq, log)
}

/// Written first on the old code, where it failed (2 good records in the DLQ): an outage that
/// ends while an isolating pass runs fails some records while others are written, and the
/// records were blamed for it. Now the records that failed are written once more before any is
/// given up: none goes to the DLQ and every one is persisted, rows and windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolating_does_not_blame_records_for_an_outage_that_ends_mid_pass() {
    // The batch's write, then the first two records' writes of the isolating pass (sessions
    // are written side by side: two first records fail, the third is written).
    let (env, sessions, dlq, log) =
        isolate_with_failing_writes("midpass", ("CHATLOG_FAULT_FAIL_WRITES", "3"), 0).await;
    assert!(dlq.is_empty(), "good records sent to the DLQ: {dlq:?}");
    assert!(
        log.contains("records failed while others were written; writing them once more"),
        "the isolating pass never saw records fail while others were written:\n{log}"
    );
    for s in &sessions {
        let rows: Vec<i64> = env.rows(s, 2).await.iter().map(|r| r.0).collect();
        assert_eq!(rows, vec![1, 2], "rows of {s}");
        // A window holds its session's newest seqs from where it started: a session whose
        // seq 1 failed at first started its window at seq 2 (the table had no row 1 then), and
        // history reads seq 1 from the table.
        let window: Vec<i64> = env.window(s).await.iter().map(|m| m.seq).collect();
        assert!(
            window == vec![1, 2] || window == vec![2],
            "window of {s}: {window:?}"
        );
    }
}

/// A record whose write fails again on its second try, while a record written before is
/// written again after it (the probe), is at fault: it goes to the DLQ as `write_failed`, the
/// others are persisted, and the partition moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolating_gives_up_a_record_that_fails_twice_while_the_probe_succeeds() {
    // Every write of a seq 2 fails: the batch's, then each session's second record, twice.
    let (env, sessions, dlq, log) =
        isolate_with_failing_writes("twice", ("CHATLOG_FAULT_FAIL_WRITES_OF_SEQ", "2"), 3).await;
    assert!(log.contains("writing them once more"), "{log}");
    assert_eq!(dlq.len(), 3, "{dlq:?}\n{log}");
    let mut given_up = BTreeSet::new();
    for r in &dlq {
        assert_eq!(r.header("chatlog-dlq-reason"), "write_failed", "{r:?}");
        assert_eq!(r.header("chatlog-dlq-stage"), "cql", "{r:?}");
        let m = env.codec.decode(r.payload.as_deref().unwrap()).unwrap();
        given_up.insert((m.session_id, m.seq));
    }
    let want: BTreeSet<(String, i64)> = sessions.iter().map(|s| (s.clone(), 2)).collect();
    assert_eq!(given_up, want, "each session's seq 2, once: {dlq:?}");
    for s in &sessions {
        let rows: Vec<i64> = env.rows(s, 2).await.iter().map(|r| r.0).collect();
        let want: Vec<i64> = (1..=2)
            .filter(|seq| !given_up.contains(&(s.clone(), *seq)))
            .collect();
        assert_eq!(rows, want, "rows of {s}: all but the records given up");
    }
}
