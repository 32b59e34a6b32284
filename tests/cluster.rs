//! chatlog on the cluster stack (`dev/cluster.sh up`): three Kafka brokers with replication
//! factor 3 and `min.insync.replicas` 2, and a Redis Cluster of three masters with a replica
//! each. CQL is the single node of `dev/stack.sh`.
//!
//! What a Cluster changes for chatlog is the batching across sessions — the seq fast path of many
//! sessions in one script, a batch's window appends in one pipeline, the repositories' reads of
//! many keys in one round trip — since a Cluster refuses any call or pipeline that spans slots.
//! These tests spread sessions over every master and check every path end to end, then fail a
//! master over (the Redis epoch of its slots changes) in the middle of a session's traffic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chatlog::{cluster, fresh_keyspace, new_message, poll_until, unique};
use chatlog_consumer::telemetry::Health;
use chatlog_consumer::{Config, Pipeline};
use chatlog_producer::{NewMessage, Producer, ProducerConfig};
use chatlog_schemas::SessionType;
use chatlog_store::history::{History, Source};
use chatlog_store::repo::conversations::ConversationRepo;
use chatlog_store::repo::sessions::{Member, MemberRole, SessionInfo, SessionRepo};
use chatlog_store::repo::{Dal, DalConfig};
use chatlog_store::{CqlConfig, RedisConnection, keys};
use scylla::client::session::Session;

const TIMEOUT: Duration = Duration::from_secs(90);

/// Held by each test for its whole run: a failover changes the epoch of a third of the slots,
/// and a window written just before it is (rightly) not served after it, which would fail a
/// test that expects windows and runs beside it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A keyspace, a replicated topic and the cluster's Redis.
struct World {
    session: Arc<Session>,
    cql: CqlConfig,
    topic: String,
    redis: RedisConnection,
}

impl World {
    async fn new(name: &str) -> World {
        let (session, cql) = fresh_keyspace(name).await;
        let topic = unique(&format!("{name}_topic"));
        cluster::create_topic(&topic, 3).await;
        World {
            session,
            cql,
            topic,
            redis: cluster::redis_connection().await,
        }
    }

    async fn producer(&self) -> Producer {
        Producer::new(
            ProducerConfig {
                bootstrap_servers: cluster::kafka_bootstrap(),
                topic: self.topic.clone(),
                linger: Duration::from_millis(1),
                ..ProducerConfig::default()
            },
            self.session.clone(),
            &self.cql.keyspace,
            self.redis.clone(),
        )
        .await
        .expect("producer on the cluster stack")
    }

    async fn history(&self) -> History {
        chatlog::default_history(&self.session, &self.cql.keyspace, &self.redis).await
    }

    /// A consumer on its own thread: `(stop, its thread)`.
    async fn consumer(&self) -> Consumer {
        let mut config = Config::default();
        config.kafka.bootstrap_servers = cluster::kafka_bootstrap();
        config.kafka.topic = self.topic.clone();
        config.kafka.dlq_topic = unique("cluster_dlq");
        config.kafka.group_id = unique("cluster_group");
        config.kafka.transactional_id = unique("cluster_txn");
        config.cql = self.cql.clone();
        config.redis = cluster::redis_config();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        // The token's type is tokio_util's, which this package does not name: inferred.
        let shutdown = Default::default();
        let pipeline =
            Pipeline::connect(config, Clone::clone(&shutdown), Arc::new(Health::default()))
                .await
                .expect("consumer connected to the cluster stack");
        let worker = std::thread::spawn(move || pipeline.run());
        Consumer { shutdown, worker }
    }
}

struct Consumer {
    shutdown: tokio_util::sync::CancellationToken,
    worker: std::thread::JoinHandle<chatlog_consumer::Result<()>>,
}

impl Consumer {
    fn assert_running(&self) {
        assert!(!self.worker.is_finished(), "the consumer stopped");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let worker = self.worker;
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .unwrap()
            .expect("the pipeline thread")
            .expect("the consumer stopped cleanly");
    }
}

fn message(session_id: &str, i: usize) -> NewMessage {
    NewMessage {
        content: format!("{session_id} #{i}").into_bytes(),
        ..new_message(session_id, &format!("c-{i}"))
    }
}

/// Every session's history, once it holds `n` messages (read from `source` when given):
/// `(seq, content)` in order.
async fn read_all(
    history: &History,
    consumer: &Consumer,
    sessions: &[String],
    n: usize,
    source: Option<Source>,
) -> BTreeMap<String, Vec<(i64, Vec<u8>)>> {
    let mut out = BTreeMap::new();
    for sid in sessions {
        let read = poll_until(
            TIMEOUT,
            Duration::from_millis(100),
            || async {
                consumer.assert_running();
                let page = history
                    .latest(sid, n + 5)
                    .await
                    .map_err(|e| e.to_string())?;
                if page.messages.len() < n || source.is_some_and(|s| s != page.source) {
                    return Err(format!(
                        "{} of {n} messages, from {:?}",
                        page.messages.len(),
                        page.source
                    ));
                }
                Ok(page
                    .messages
                    .into_iter()
                    .map(|m| (m.seq, m.content))
                    .collect())
            },
            |e| format!("session {sid} never showed {n} messages (from {source:?}): {e}"),
        )
        .await;
        out.insert(sid.clone(), read);
    }
    out
}

/// The whole path on the cluster stack: sessions on all three masters send at once, so the
/// seq fast path's lane calls and the consumer's window appends hold sessions of many slots
/// (each split into one call per slot); every session gets seqs 1..n in send order, every window
/// serves history, and one user's conversation list — whose latest entries and cached rows
/// live on every master — reads them all with their unread counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_pipeline_spreads_sessions_over_every_master_end_to_end() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let world = World::new("cluster_e2e").await;
    let sessions = cluster::sessions_on_every_master("cl", 6).await;
    let producer = world.producer().await;
    let dal = Dal::new(
        world.session.clone(),
        &world.cql.keyspace,
        world.redis.clone().into(),
        DalConfig::default(),
    )
    .await
    .expect("repositories on the cluster");
    let user = unique("cluster_user");
    for sid in &sessions {
        let info = SessionInfo {
            session_id: sid.clone(),
            session_type: SessionType::Group,
            name: sid.clone(),
            owner_id: String::new(),
            member_count: 0,
            created_at_ms: 1,
            updated_at_ms: 1,
        };
        dal.sessions.upsert(&info).await.expect("upsert session");
        let member = Member {
            user_id: user.clone(),
            role: MemberRole::Member,
            joined_at_ms: 1,
        };
        dal.join(sid, &member).await.expect("join");
    }

    const N: usize = 8;
    let sends = sessions.iter().map(|sid| {
        let producer = &producer;
        async move {
            let mut seqs = Vec::new();
            for i in 0..N {
                let sent = producer.send(message(sid, i)).await;
                seqs.push(sent.expect("acknowledged on the cluster stack").seq);
            }
            seqs
        }
    });
    let seqs = futures::future::join_all(sends).await;
    for (sid, seqs) in sessions.iter().zip(&seqs) {
        assert_eq!(seqs, &(1..=N as i64).collect::<Vec<_>>(), "session {sid}");
    }
    producer.close(TIMEOUT).await.expect("close");

    let consumer = world.consumer().await;
    let history = world.history().await;
    let read = read_all(&history, &consumer, &sessions, N, Some(Source::Window)).await;
    for (sid, messages) in &read {
        let expected: Vec<(i64, Vec<u8>)> = (0..N)
            .map(|i| (i as i64 + 1, message(sid, i).content))
            .collect();
        assert_eq!(messages, &expected, "session {sid}");
    }

    let list = poll_until(
        TIMEOUT,
        Duration::from_millis(100),
        || async {
            let page = dal
                .conversations
                .conversations(&user, 100, None)
                .await
                .map_err(|e| e.to_string())?;
            let done = page
                .conversations
                .iter()
                .filter(|c| c.max_seq == N as i64)
                .count();
            if done == sessions.len() {
                Ok(page)
            } else {
                Err(format!(
                    "{done} of {} conversations at seq {N}",
                    sessions.len()
                ))
            }
        },
        |e| format!("the conversation list never caught up: {e}"),
    )
    .await;
    assert_eq!(list.total, sessions.len());
    for c in &list.conversations {
        assert_eq!(c.unread, N as i64, "{}", c.session_id);
        assert_eq!(
            c.latest.as_ref().map(|l| l.seq),
            Some(N as i64),
            "{}",
            c.session_id
        );
    }
    consumer.stop().await;
}

/// A manual failover of the master that serves a session, in the middle of its traffic: the
/// promoted replica has every write, but a new replication history, so the Redis epoch of the
/// slot changes. The seq hash of the old epoch is not trusted (allocation recovers above the CQL
/// ceiling: later seqs, never a repeat), the window of the old epoch is not served and starts
/// again from the table, and history shows every message once, in send order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_failover_keeps_seqs_rising_and_the_window_whole() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let world = World::new("cluster_failover").await;
    let sid = unique("cluster_fo");
    let producer = world.producer().await;
    let consumer = world.consumer().await;
    let history = world.history().await;

    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(producer.send(message(&sid, i)).await.expect("send").seq);
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    read_all(
        &history,
        &consumer,
        std::slice::from_ref(&sid),
        5,
        Some(Source::Window),
    )
    .await;

    let slot = keys::slot(&keys::seq(&sid));
    let (old, new) = cluster::failover(slot).await;
    assert_ne!(old, new);

    for i in 5..10 {
        let sent = poll_until(
            TIMEOUT,
            Duration::from_millis(100),
            || producer.send(message(&sid, i)),
            |e| format!("send {i} after the failover: {e}"),
        )
        .await;
        seqs.push(sent.seq);
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs rise across the failover, never repeat: {seqs:?}"
    );
    producer.close(TIMEOUT).await.expect("close");

    // History reads around the gap the recovery left (its seqs are never handed out), so the
    // source is not asked for; the window is checked as the operators' `verify` does.
    let read = read_all(&history, &consumer, std::slice::from_ref(&sid), 10, None).await;
    let messages = &read[&sid];
    let report = poll_until(
        TIMEOUT,
        Duration::from_millis(100),
        || async {
            let r = chatlog_store::verify::verify_window(&history, &sid)
                .await
                .map_err(|e| e.to_string())?;
            if r.window_epoch_current && r.is_consistent() && r.window_members == seqs.len() {
                Ok(r)
            } else {
                Err(r.to_string())
            }
        },
        |e| format!("the window never started again in the new epoch: {e}"),
    )
    .await;
    assert_eq!(report.window_range, Some((1, seqs[9])));
    let expected: Vec<(i64, Vec<u8>)> = seqs
        .iter()
        .zip(0..)
        .map(|(&seq, i)| (seq, message(&sid, i).content))
        .collect();
    assert_eq!(messages, &expected, "every message once, in send order");
    consumer.stop().await;
}

/// A client built while a master is down (a process that starts, or restarts, in the middle of a
/// failover — found by the cluster chaos run, where a consumer restarted 0.1 s before a master
/// was killed): its first map of the slots names the dead master. Once the replica has taken
/// over, and again once the old node is back as a replica, commands on those slots must reach
/// the new master, not time out against a map that is never refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_client_built_during_a_failover_reaches_the_new_master() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let sid = unique("cluster_late");
    let key = keys::latest(&sid);
    let slot = keys::slot(&key);
    // The consumer's settings: the default response timeout.
    let connecting = chatlog_store::RedisConfig {
        cluster_nodes: cluster::redis_nodes(),
        ..chatlog_store::RedisConfig::default()
    };
    let connecting = tokio::spawn(async move { connecting.connect().await });
    let stopped = cluster::stop_master(slot).await;
    let mut late = connecting
        .await
        .unwrap()
        .expect("a cluster client while a master is down");
    cluster::until_promoted(&stopped, slot).await;
    let set = |mut con: RedisConnection, value: &'static str| {
        let key = key.clone();
        async move {
            // A pipeline, as the window writer sends.
            redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg(value)
                .ignore()
                .cmd("GET")
                .arg(&key)
                .query_async::<(String,)>(&mut con)
                .await
                .map_err(|e| e.to_string())
        }
    };
    poll_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || set(late.clone(), "after the failover"),
        |e| format!("a client built during the failover never reached the new master: {e}"),
    )
    .await;
    cluster::restart(&stopped).await;
    poll_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || set(late.clone(), "after the old master came back"),
        |e| format!("a client built during the failover lost the slot again: {e}"),
    )
    .await;
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut late)
        .await
        .expect("GET");
    assert_eq!(value, "after the old master came back");
}

/// A master that hangs instead of dying (a stalled VM, a full disk, `SIGSTOP`): its sockets stay
/// open and nothing answers, so a client only sees timeouts — never the refused connection or the
/// `MOVED` that make it read the slots again. Once the replica has taken the slots over, a client
/// that was talking to the hung master must find the new one by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_client_leaves_a_hung_master_for_its_replica() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let sid = unique("cluster_hung");
    let key = keys::latest(&sid);
    let slot = keys::slot(&key);
    // The consumer's settings: the default response timeout.
    let mut con = chatlog_store::RedisConfig {
        cluster_nodes: cluster::redis_nodes(),
        ..chatlog_store::RedisConfig::default()
    }
    .connect()
    .await
    .expect("a cluster client");
    redis::cmd("SET")
        .arg(&key)
        .arg("before")
        .query_async::<()>(&mut con)
        .await
        .expect("SET before the hang");
    let (master, replica) = cluster::master_and_replica(slot).await;
    let pid = cluster::pid_of(&master).await;
    chatlog::signal(pid, "-STOP").expect("SIGSTOP the master");
    // Continued even if the test fails before it does, so the cluster is whole for the next test.
    let resume = chatlog::Resume(pid);
    let stopped = cluster::Stopped { master, replica };
    cluster::until_promoted(&stopped, slot).await;
    let wrote = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            let set = redis::cmd("SET")
                .arg(&key)
                .arg("after")
                .query_async::<()>(&mut con.clone())
                .await;
            match set {
                Ok(()) => return Ok(()),
                Err(e) if e.is_timeout() || e.is_io_error() => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    drop(resume);
    wrote
        .expect("the client kept timing out against the hung master for 40 s")
        .expect("SET after the failover");
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut con)
        .await
        .expect("GET");
    assert_eq!(value, "after");
    match &con {
        RedisConnection::Cluster(handle) => {
            assert!(handle.rebuilds() >= 1, "found through a new client")
        }
        RedisConnection::Single(_) => panic!("a cluster connection"),
    }
}
