//! The end-to-end demo behind `dev/demo.sh`: why it exists is to show the whole pipeline working on
//! one machine in a minute — Logic's producer library sends messages, a real `chatlog-consumer`
//! persists them to CQL and Redis, and history reads them back.
//!
//! Steps: apply migrations, create the topics, start the consumer binary, send `--messages`
//! messages over `--sessions` sessions through `chatlog_producer::Producer` with a progress bar,
//! wait until the database holds every one, print a summary (persisted, rates, a sample window, the
//! metrics address), then stop the consumer with SIGTERM.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatlog_producer::{NewMessage, Producer};
use chatlog_schemas::{Codec, ContentType, SessionType};
use chatlog_store::history::{History, HistoryConfig};
use chatlog_store::messages::{DEFAULT_BUCKET_SIZE, bucket_of};
use clap::Parser;
use futures::StreamExt;

/// chatlog end-to-end demo.
#[derive(Debug, Parser)]
struct Args {
    /// The chatlog-consumer binary to run.
    #[arg(long, default_value = "target/release/chatlog-consumer")]
    consumer_bin: String,
    /// Messages to send.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Sessions they are spread over.
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// Sends in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Topic partitions (created if missing).
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Address of the consumer's /metrics endpoint.
    #[arg(long, default_value = "127.0.0.1:9464")]
    http_listen: String,
    /// Where the consumer's log goes.
    #[arg(long, default_value = "/tmp/chatlog-demo-consumer.log")]
    consumer_log: String,
    /// After the summary, keep the consumer (and its /metrics) running until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

/// The last `n` lines of the consumer's log, for an error that says why it is gone.
fn log_tail(path: &str, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keyspace = "chatlog";
    let topic = "chat.messages";

    let cql = chatlog::cql_config(keyspace);
    let session = Arc::new(cql.connect().await?);
    let report = chatlog_store::migrate::apply(&session, &cql).await?;
    println!(
        "migrations: applied {:?}, already applied {:?}",
        report.applied, report.skipped
    );
    chatlog::ensure_topic(topic, args.partitions).await;
    chatlog::ensure_topic("chat.messages.dlq", 1).await;

    let log = std::fs::File::create(&args.consumer_log)?;
    let mut consumer = Command::new(&args.consumer_bin)
        .args(["--bootstrap-servers", &chatlog::kafka_bootstrap()])
        .args(["--cql-nodes", &chatlog::cql_nodes().join(",")])
        .args(["--redis-url", &chatlog::redis_url()])
        .args(["--http-listen", &args.http_listen])
        .args(["--transactional-id", "chatlog-demo-consumer-0"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", args.consumer_bin))?;
    println!(
        "consumer started (pid {}, log {})",
        consumer.id(),
        args.consumer_log
    );

    let redis = chatlog::redis_connection().await;
    let producer = Producer::new(
        chatlog::producer_config(topic),
        session.clone(),
        keyspace,
        redis.clone(),
    )
    .await?;

    let run = chatlog::unique("demo");
    let sessions: Vec<String> = (0..args.sessions).map(|i| format!("{run}-s{i}")).collect();
    let bar = indicatif::ProgressBar::new(args.messages as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "sending  {bar:40} {pos}/{len} {per_sec} eta {eta}",
        )?,
    );
    let started = Instant::now();
    let mut sends = Box::pin(
        futures::stream::iter(0..args.messages)
            .map(|i| {
                let producer = producer.clone();
                let session_id = sessions[i % sessions.len()].clone();
                async move {
                    producer
                        .send(NewMessage {
                            client_msg_id: format!("{session_id}-c{i}"),
                            session_id,
                            session_type: SessionType::Group,
                            sender_id: format!("user-{}", i % 97),
                            content_type: ContentType::Text,
                            content: format!("hello #{i} from the chatlog demo").into_bytes(),
                            send_time_ms: chatlog::now_ms(),
                            ext: Default::default(),
                        })
                        .await
                }
            })
            .buffer_unordered(args.concurrency),
    );
    let mut failed = 0usize;
    while let Some(result) = sends.next().await {
        if let Err(e) = result {
            failed += 1;
            bar.println(format!("send failed: {e}"));
        }
        bar.inc(1);
    }
    bar.finish();
    drop(sends);
    let send_secs = started.elapsed().as_secs_f64();
    producer.close(Duration::from_secs(10)).await?;
    let sent = args.messages - failed;

    // Persisted = rows of this run's sessions in the database.
    let counter = chatlog_store::messages::RowCounter::new(&session, keyspace).await?;
    let max_seq = (args.messages / args.sessions + 1) as i64 * 2;
    let deadline = Instant::now() + Duration::from_secs(300);
    let persisted = loop {
        let n = counter
            .sessions(
                &session,
                &sessions,
                0..=bucket_of(max_seq, DEFAULT_BUCKET_SIZE),
            )
            .await?;
        if n as usize >= sent || Instant::now() > deadline {
            break n as usize;
        }
        // A consumer that died will not persist the rest: say so now, with its last words,
        // rather than after the deadline.
        if let Some(status) = consumer.try_wait()? {
            anyhow::bail!(
                "the consumer exited ({status}) with {n} of {sent} messages persisted; the end of \
                 its log ({}):\n{}",
                args.consumer_log,
                log_tail(&args.consumer_log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let total_secs = started.elapsed().as_secs_f64();

    let history = History::new(
        session.clone(),
        keyspace,
        redis,
        Codec::default(),
        HistoryConfig::default(),
    )
    .await?;
    let page = history.latest(&sessions[0], 5).await?;

    println!();
    println!("chatlog demo summary");
    println!(
        "  messages sent       {sent} ({failed} failed) in {send_secs:.2} s = {:.0} msg/s",
        sent as f64 / send_secs
    );
    println!(
        "  messages persisted  {persisted} of {sent} (CQL rows of this run's {} sessions)",
        sessions.len()
    );
    println!(
        "  end-to-end rate     {:.0} msg/s (first send → last row persisted)",
        persisted as f64 / total_secs
    );
    println!(
        "  sample window       session {} (source: {:?}):",
        sessions[0], page.source
    );
    for m in &page.messages {
        println!(
            "    seq {:>4}  {}  {}",
            m.seq,
            m.msg_id,
            String::from_utf8_lossy(&m.content)
        );
    }
    println!(
        "  metrics             http://{}/metrics (also /healthz, /readyz){}",
        args.http_listen,
        if args.keep_running {
            "; the consumer keeps running: Ctrl-C stops it"
        } else {
            "; served until the consumer stops below (--keep-running keeps it up)"
        }
    );
    if args.keep_running {
        tokio::signal::ctrl_c().await?;
    }

    // Stop the consumer as an orchestrator would: SIGTERM, then it commits and exits 0.
    let _ = chatlog::signal(consumer.id(), "-TERM");
    let status = consumer.wait()?;
    println!("  consumer stopped    {status}");
    anyhow::ensure!(
        persisted == sent,
        "{} messages were not persisted",
        sent - persisted
    );
    anyhow::ensure!(failed == 0, "{failed} sends failed");
    Ok(())
}
