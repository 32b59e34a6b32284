//! The consumer against the real stack: every message persisted once, windows exact, poison in the
//! DLQ with its reason, newer versions never replaced by older ones, SIGTERM exits 0.

mod common;

use std::time::Duration;

use chatlog_schemas::apache_avro::types::Value;
use common::{Env, base_time_us, message, workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_persists_every_message_once_and_windows_hold_the_newest() {
    let env = Env::new("happy", 4, 40).await;
    let per_session = 100; // > window size, and most sessions' records land in one batch
    let (sessions, base, messages) = workload("s", 30, per_session);
    env.produce(&messages).await;

    let consumer = env.spawn_consumer(&chatlog::unique("happy_txn"), &[]);
    env.wait_all(&sessions, per_session, &[&consumer]).await;
    env.assert_exact(&sessions, per_session, base).await;

    // The window's members are the producer's bytes, decodable to the very message sent.
    let w = env.window(&sessions[0]).await;
    assert_eq!(
        w.last().unwrap(),
        &message(&sessions[0], per_session, base, 0)
    );

    consumer.terminate_cleanly(Duration::from_secs(30)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_seqs_and_old_versions_never_replace_the_newest() {
    let env = Env::new("order", 1, 10).await;
    let s = chatlog::unique("ooo");
    let base = base_time_us();
    // Two producers interleave one session's seqs in reverse order.
    let mut msgs: Vec<_> = (1..=50)
        .rev()
        .map(|seq| message(&s, seq, base, 0))
        .collect();
    let (evens, odds): (Vec<_>, Vec<_>) = msgs.drain(..).partition(|m| m.seq % 2 == 0);
    let other = Env::new("order2", 1, 10).await; // a second, independent producer client
    let odd_records: Vec<_> = odds.iter().map(|m| other.record(m)).collect();
    tokio::join!(env.produce(&evens), env.produce_raw(&odd_records));

    // An edit of seq 50 (newer server time), then a stale replay of the original (older).
    let edited = message(&s, 50, base, 5);
    env.produce(std::slice::from_ref(&edited)).await;
    env.produce(&[message(&s, 50, base, 0)]).await;

    let consumer = env.spawn_consumer(&chatlog::unique("order_txn"), &["--max-records", "7"]);
    env.wait_session(&s, 50, Duration::from_secs(120), &[&consumer])
        .await;
    // Wait until the last record (the stale replay) is committed: the group's offset reaches the end.
    wait_committed(&env, 52).await;

    let window = env.window(&s).await;
    let seqs: Vec<i64> = window.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (41..=50).collect::<Vec<_>>());
    assert_eq!(
        window.last().unwrap(),
        &edited,
        "the window keeps the newest version"
    );

    let rows = env.rows(&s, 50).await;
    assert_eq!(
        rows.last().unwrap(),
        &(50, edited.server_time_us),
        "CQL keeps the newest version"
    );
}

async fn wait_committed(env: &Env, offset: i64) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", chatlog::kafka_bootstrap())
        .set("group.id", &env.group)
        .create()
        .unwrap();
    let probe = &probe;
    common::poll_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        move || async move {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&env.topic, 0);
            let committed = probe
                .committed_offsets(tpl, Duration::from_secs(10))
                .unwrap();
            let at = committed.find_partition(&env.topic, 0).unwrap().offset();
            if at == Offset::Offset(offset) {
                Ok(())
            } else {
                Err(at)
            }
        },
        |_| format!("offset {offset} never committed"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dlq_with_their_reason_and_good_ones_persist() {
    let env = Env::new("poison", 2, 20).await;
    let per_session = 40;
    let (sessions, base, good) = workload("p", 5, per_session);

    let valid = env.codec.encode(&good[0]).unwrap();
    let mut unknown_fp = valid.clone();
    unknown_fp[3] ^= 0x5a;
    let invalid_seq = {
        // A well-formed datum whose fields break validation (seq 0, empty sender).
        let mut m = message(&sessions[0], 1, base, 0);
        m.seq = 0;
        m.sender_id.clear();
        let value: Value = chatlog_schemas::to_value_v1(&m);
        env.codec
            .encode_value(env.codec.current_fingerprint(), value)
            .unwrap()
    };
    let k = |s: &str| Some(s.to_owned());
    let bad = [
        (
            k(&sessions[0]),
            Some(b"\x00garbage bytes".to_vec()),
            "bad_magic",
        ),
        (k(&sessions[0]), Some(unknown_fp), "unknown_fingerprint"),
        (
            k(&sessions[1]),
            Some(valid[..valid.len() / 2].to_vec()),
            "truncated",
        ),
        (k(&sessions[1]), Some(vec![0xC3; 4096]), "oversize"),
        (k(&sessions[2]), Some(invalid_seq), "invalid"),
        (k("someone-else"), Some(valid.clone()), "key_mismatch"),
        (k(&sessions[3]), None, "empty"),
        (None, Some(valid.clone()), "no_key"),
    ];

    // Interleave poison between good records.
    let mut records = Vec::new();
    let encoded: Vec<_> = good.iter().map(|m| env.record(m)).collect();
    for (i, chunk) in encoded.chunks(encoded.len() / bad.len()).enumerate() {
        records.extend_from_slice(chunk);
        if let Some((key, value, _)) = bad.get(i) {
            records.push((key.clone(), value.clone()));
        }
    }
    env.produce_raw(&records).await;

    let (_dir, config) = common::config_file(
        "poison_cfg",
        "[batch]\nmax_record_bytes = 2048\nlinger = \"20ms\"\n",
    );
    let consumer = env.spawn_consumer(
        &chatlog::unique("poison_txn"),
        &["--config", config.as_str()],
    );
    env.wait_all(&sessions, per_session, &[&consumer]).await;
    env.assert_exact(&sessions, per_session, base).await;

    let dlq = env.read_dlq(bad.len());
    let mut got: Vec<&str> = dlq.iter().map(|(r, _)| r.as_str()).collect();
    let mut want: Vec<&str> = bad.iter().map(|b| b.2).collect();
    got.sort();
    want.sort();
    // `truncated` may surface as `malformed` depending on where the datum ends; both name the fault.
    let got: Vec<&str> = got
        .into_iter()
        .map(|r| if r == "malformed" { "truncated" } else { r })
        .collect();
    let mut got = got;
    got.sort();
    assert_eq!(
        got, want,
        "every poison record exactly once in the DLQ with its reason"
    );
    for (reason, payload) in &dlq {
        let original = bad
            .iter()
            .find(|b| b.2 == reason || (reason == "malformed" && b.2 == "truncated"))
            .unwrap();
        assert_eq!(
            payload, &original.1,
            "the DLQ keeps the original bytes of {reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_a_key_goes_to_the_dlq_as_no_key_and_its_partition_moves_on() {
    let env = Env::new("nokey", 1, 10).await;
    let per_session = 5;
    let (sessions, base, good) = workload("nk", 2, per_session);
    // A valid message without a Kafka key: its partition was not chosen by its session, so the
    // per-session order it was produced in means nothing; it must not be persisted.
    let (_, keyless) = env.record(&good[0]);
    env.produce_raw(&[(None, keyless.clone())]).await;
    env.produce(&good).await;
    let consumer = env.spawn_consumer(&chatlog::unique("nokey_txn"), &[]);
    env.wait_all(&sessions, per_session, &[&consumer]).await;
    env.assert_exact(&sessions, per_session, base).await;
    let dlq = env.read_dlq_records(1);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].header("chatlog-dlq-reason"), "no_key");
    assert_eq!(dlq[0].key, None);
    assert_eq!(dlq[0].payload, keyless);
    drop(consumer);
}

/// A window lost (expired, FLUSHALL, a Redis rollback) while its session went on, then a late or
/// replayed record of an old seq, and a newer version of another: the window must not start from
/// those records alone — its head would claim to be the session's newest, hiding 26..30 from
/// "latest" — but from the table's newest rows, with the newer version in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_record_after_the_window_was_lost_restarts_it_from_the_table_not_below_the_head() {
    let env = Env::new("late", 1, 10).await;
    let s = chatlog::unique("late");
    let base = base_time_us();
    let messages: Vec<_> = (1..=30).map(|seq| message(&s, seq, base, 0)).collect();
    env.produce(&messages).await;
    let consumer = env.spawn_consumer(&chatlog::unique("late_txn"), &[]);
    env.wait_session(&s, 30, Duration::from_secs(120), &[&consumer])
        .await;
    wait_committed(&env, 30).await;

    let mut con = chatlog::redis_connection().await;
    let _: () = redis::cmd("DEL")
        .arg(chatlog_store::keys::window(&s))
        .query_async(&mut con)
        .await
        .unwrap();
    let newer = message(&s, 27, base, 5);
    env.produce(&[message(&s, 25, base, 0), newer.clone()])
        .await;
    wait_committed(&env, 32).await;

    let window = env.window(&s).await;
    let seqs: Vec<i64> = window.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (21..=30).collect::<Vec<_>>(),
        "the table's newest rows"
    );
    assert_eq!(window[6], newer, "the newer version of seq 27");
    consumer.terminate_cleanly(Duration::from_secs(30)).unwrap();
}
