//! The test kit of chatlog's end-to-end tests and benchmarks: where the local stack's services are
//! (from the `CHATLOG_*` variables that `dev/stack.sh env` prints, with the same defaults) and unique
//! names so tests never share a topic, keyspace or session.
//!
//! # Layout
//!
//! - this file: the stack's addresses and logins, unique names, fresh keyspaces and topics,
//!   private `redis-server`s, signals, temporary folders.
//! - [`cluster`]: the cluster stack of `dev/cluster.sh` (3 Kafka brokers, a Redis Cluster): its
//!   addresses and a Redis master failover.
//! - [`process`]: the real `chatlog-consumer` as a child process (spawn, log, HTTP, stop,
//!   memory), for the consumer's tests, the chaos fleet and the benchmarks.
//! - [`http`]: the one HTTP GET (chunked bodies decoded) the harnesses speak.
//! - [`prometheus`]: the one reader of the Prometheus text format (families, samples, sums,
//!   histograms).
#![forbid(unsafe_code)]

pub mod cluster;
pub mod http;
pub mod process;
pub mod prometheus;

use std::sync::atomic::{AtomicU64, Ordering};

/// The Kafka bootstrap servers of the local stack.
pub fn kafka_bootstrap() -> String {
    env_or("CHATLOG_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
}

/// The local stack's Kafka listener that requires a SASL/PLAIN login, and its one user.
#[derive(Debug, Clone)]
pub struct KafkaSasl {
    /// Bootstrap address of the SASL_PLAINTEXT listener.
    pub bootstrap: String,
    /// The listener's user.
    pub username: String,
    /// That user's password (a local development credential).
    pub password: chatlog_store::Secret,
}

/// Where and how to log in to the local stack's SASL listener (`dev/stack.sh env`).
pub fn kafka_sasl() -> KafkaSasl {
    KafkaSasl {
        bootstrap: env_or("CHATLOG_STACK_KAFKA_SASL_BOOTSTRAP", "127.0.0.1:9094"),
        username: env_or("CHATLOG_STACK_KAFKA_SASL_USERNAME", "chatlog"),
        password: chatlog_store::Secret::new(env_or(
            "CHATLOG_STACK_KAFKA_SASL_PASSWORD",
            "chatlog-local-sasl",
        )),
    }
}

/// The local stack's TLS endpoints and the CA that signed their certificates (`dev/stack.sh env`).
#[derive(Debug, Clone)]
pub struct StackTls {
    /// PEM file of the stack's own CA.
    pub ca_file: std::path::PathBuf,
    /// Bootstrap address of Kafka's TLS listener.
    pub kafka_bootstrap: String,
    /// CQL contact points that accept TLS (the stack's CQL port takes TLS and plaintext alike).
    pub cql_nodes: Vec<String>,
}

/// Where the local stack speaks TLS. Panics with a hint when the stack was started by a
/// `dev/stack.sh` without TLS (no CA file).
pub fn stack_tls() -> StackTls {
    let default_ca = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default()
        .join(".cache/chatlog/stack/tls/ca.pem");
    let ca_file = std::env::var_os("CHATLOG_STACK_TLS_CA")
        .filter(|v| !v.is_empty())
        .map_or(default_ca, std::path::PathBuf::from);
    assert!(
        ca_file.is_file(),
        "the stack's CA {} is missing: this stack was started without TLS (an older \
         dev/stack.sh); restart it: dev/stack.sh down kafka && dev/stack.sh down cassandra && \
         dev/stack.sh up, then eval \"$(dev/stack.sh env)\"",
        ca_file.display()
    );
    StackTls {
        ca_file,
        kafka_bootstrap: env_or("CHATLOG_STACK_KAFKA_TLS_BOOTSTRAP", "127.0.0.1:9095"),
        cql_nodes: std::env::var("CHATLOG_STACK_CQL_TLS_NODES")
            .ok()
            .filter(|v| !v.is_empty())
            .map_or_else(cql_nodes, |v| v.split(',').map(str::to_owned).collect()),
    }
}

/// Makes a CA (`ca.pem`, `ca.key`) and a server certificate for 127.0.0.1 and localhost signed
/// by it (`server.pem`, `server.key`, `server-keystore.pem`) in `dir`, with the same script
/// command the stack makes its own with (`dev/stack.sh certs DIR`).
pub fn make_certs(dir: &std::path::Path) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dev/stack.sh");
    let out = std::process::Command::new(&script)
        .arg("certs")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "dev/stack.sh certs {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CQL contact points of the local stack.
pub fn cql_nodes() -> Vec<String> {
    env_or("CHATLOG_CQL_NODES", "127.0.0.1:9042")
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// The CQL login of the local stack: its Cassandra requires one (the default superuser, a local
/// development credential), so every test connects with credentials, as production does.
pub fn cql_username() -> String {
    env_or("CHATLOG_CQL_USERNAME", "cassandra")
}

/// The password of [`cql_username`].
pub fn cql_password() -> chatlog_store::Secret {
    chatlog_store::Secret::new(env_or("CHATLOG_CQL_PASSWORD", "cassandra"))
}

/// The CQL login as the environment variables `chatlog-consumer` reads, for its child processes
/// (not on the command line, where `ps` would show the password).
pub fn cql_login_env() -> [(&'static str, String); 2] {
    [
        ("CHATLOG_CQL_USERNAME", cql_username()),
        ("CHATLOG_CQL_PASSWORD", cql_password().expose().to_owned()),
    ]
}

/// The Redis URL of the local stack.
pub fn redis_url() -> String {
    env_or("CHATLOG_REDIS_URL", "redis://127.0.0.1:6390/")
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The producer's settings for the local stack and `topic`: the stack's Kafka, the defaults
/// otherwise (vary them with struct update syntax).
pub fn producer_config(topic: &str) -> chatlog_producer::ProducerConfig {
    chatlog_producer::ProducerConfig {
        bootstrap_servers: kafka_bootstrap(),
        topic: topic.to_owned(),
        ..chatlog_producer::ProducerConfig::default()
    }
}

/// A send for producer tests: a text `hello` from `u-1` in a group session, sent at a fixed time
/// (2023-11-14), no extensions. Tests vary it with struct update syntax
/// (`NewMessage { content, ..new_message(session, id) }`); stored messages come from
/// `chatlog_schemas::testing`.
pub fn new_message(session_id: &str, client_msg_id: &str) -> chatlog_producer::NewMessage {
    chatlog_producer::NewMessage {
        client_msg_id: client_msg_id.to_owned(),
        session_id: session_id.to_owned(),
        session_type: chatlog_producer::SessionType::Group,
        sender_id: "u-1".to_owned(),
        content_type: chatlog_producer::ContentType::Text,
        content: b"hello".to_vec(),
        send_time_ms: 1_700_000_000_000,
        ext: Default::default(),
    }
}

/// A name unique to this test process and call: `<prefix>_<pid>_<n>_<nanos>`, valid as a Kafka
/// topic, a CQL keyspace (when `prefix` is) and a session id.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
}

/// The message every test prints when a service of the stack is not reachable.
pub fn stack_hint(service: &str, address: &str) -> String {
    format!(
        "{service} is not reachable at {address}: start the local stack with `dev/stack.sh up` \
         (logs in ~/.cache/chatlog/stack/logs)"
    )
}

/// A [`chatlog_store::CqlConfig`] for the local stack and `keyspace`.
pub fn cql_config(keyspace: &str) -> chatlog_store::CqlConfig {
    chatlog_store::CqlConfig {
        nodes: cql_nodes(),
        keyspace: keyspace.to_owned(),
        username: cql_username(),
        password: cql_password(),
        ..chatlog_store::CqlConfig::default()
    }
}

/// A [`chatlog_store::RedisConfig`] for the local stack.
pub fn redis_config() -> chatlog_store::RedisConfig {
    chatlog_store::RedisConfig {
        url: redis_url(),
        ..chatlog_store::RedisConfig::default()
    }
}

/// History's settings with a window of `window_size` messages (the writers' `W`), everything
/// else the defaults; vary them with struct update syntax.
pub fn history_config(window_size: usize) -> chatlog_store::history::HistoryConfig {
    chatlog_store::history::HistoryConfig {
        window: chatlog_store::window::WindowConfig {
            size: window_size,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A history reader of `keyspace` with the default codec and settings.
pub async fn default_history(
    session: &std::sync::Arc<scylla::client::session::Session>,
    keyspace: &str,
    redis: &chatlog_store::RedisConnection,
) -> chatlog_store::history::History {
    chatlog_store::history::History::new(
        session.clone(),
        keyspace,
        redis.clone(),
        chatlog_schemas::Codec::default(),
        chatlog_store::history::HistoryConfig::default(),
    )
    .await
    .expect("history reader")
}

/// A new keyspace named `<prefix>_…` with every migration applied, and a session to it.
pub async fn fresh_keyspace(
    prefix: &str,
) -> (
    std::sync::Arc<scylla::client::session::Session>,
    chatlog_store::CqlConfig,
) {
    let config = cql_config(&unique(prefix));
    let session = config.connect().await.unwrap_or_else(|e| {
        panic!(
            "{}: {e}",
            stack_hint("CQL database", &cql_nodes().join(","))
        )
    });
    // Three tries: a schema change can outlast the request timeout on a loaded machine (a GC
    // pause), and the migrations are re-runnable (IF NOT EXISTS, columns already added).
    for attempt in 1.. {
        match chatlog_store::migrate::apply(&session, &config).await {
            Ok(_) => break,
            Err(e) if attempt < 3 => eprintln!("fresh_keyspace: migrations failed ({e}); again"),
            Err(e) => panic!("apply migrations: {e}"),
        }
    }
    (std::sync::Arc::new(session), config)
}

/// Creates a login role `<prefix>_…` with `password` through `admin` (a superuser session; the
/// stack's Cassandra checks logins and authorizes everything) and returns its name.
pub async fn create_cql_role(
    admin: &scylla::client::session::Session,
    prefix: &str,
    password: &str,
) -> String {
    let role = unique(prefix);
    admin
        .query_unpaged(
            format!("CREATE ROLE {role} WITH PASSWORD = '{password}' AND LOGIN = true"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("CREATE ROLE {role}: {e}"));
    role
}

/// Connects with `config`'s login but a wrong password (its own with a unique suffix) and asserts
/// the refusal is about authentication, and that neither the error nor the configuration's
/// `Debug` shows that password or any of `never_shown`.
pub async fn assert_wrong_cql_password_refused(
    config: &chatlog_store::CqlConfig,
    never_shown: &[&str],
) {
    let password = format!("{}-{}", config.password.expose(), unique("wrong"));
    let wrong = chatlog_store::CqlConfig {
        password: chatlog_store::Secret::new(password.clone()),
        ..config.clone()
    };
    let err = match wrong.connect().await {
        Ok(_) => panic!("a wrong CQL password was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.to_lowercase().contains("auth"), "{err}");
    let debug = format!("{wrong:?}");
    for secret in never_shown.iter().copied().chain([password.as_str()]) {
        assert!(!err.contains(secret), "an error shows the password: {err}");
        assert!(!debug.contains(secret), "Debug shows the password: {debug}");
    }
}

/// Drops a role made by [`create_cql_role`].
pub async fn drop_cql_role(admin: &scylla::client::session::Session, role: &str) {
    admin
        .query_unpaged(format!("DROP ROLE {role}"), &[])
        .await
        .unwrap_or_else(|e| panic!("DROP ROLE {role}: {e}"));
}

/// A reconnecting connection to the local stack's Redis.
pub async fn redis_connection() -> chatlog_store::RedisConnection {
    redis_config()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", stack_hint("Redis", &redis_url())))
}

/// Reads every partition of `topic` (`partitions` of them) from the beginning until `count`
/// records arrived (panics after 30 s with what it got), then checks through the watermarks that
/// the topic holds no other records. Runs on a blocking thread.
pub async fn read_topic(
    topic: &str,
    partitions: i32,
    count: usize,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .set("group.id", unique("read_topic"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)
                .expect("assign");
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "{topic}: {} of {count} records after 30 s",
                got.len()
            );
            if let Some(m) = consumer.poll(std::time::Duration::from_millis(200)) {
                got.push(m.expect("read").detach());
            }
        }
        let total: i64 = (0..partitions)
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, std::time::Duration::from_secs(10))
                    .expect("watermarks");
                high - low
            })
            .sum();
        assert_eq!(total, count as i64, "{topic} holds other records too");
        got
    })
    .await
    .expect("join")
}

/// Creates topic `name` with `partitions` partitions (replication 1) and waits until it exists.
pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_on(&kafka_bootstrap(), name, partitions, 1).await;
}

/// Creates topic `name` with `partitions` and `replication` on the Kafka at `bootstrap`.
pub async fn create_topic_on(bootstrap: &str, name: &str, partitions: i32, replication: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let timeout = std::time::Duration::from_secs(30);
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let results = tokio::time::timeout(
        timeout,
        admin.create_topics(
            &[NewTopic::new(
                name,
                partitions,
                TopicReplication::Fixed(replication),
            )],
            &opts,
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("{}", stack_hint("Kafka", bootstrap)))
    .unwrap_or_else(|e| panic!("{}: {e}", stack_hint("Kafka", bootstrap)));
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

/// Creates topic `name` unless it exists (partitions as given for a new one).
pub async fn ensure_topic(name: &str, partitions: i32) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .expect("metadata client");
    let exists = probe
        .fetch_metadata(Some(name), std::time::Duration::from_secs(10))
        .map(|m| {
            m.topics()
                .iter()
                .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
        })
        .unwrap_or(false);
    if !exists {
        create_topic(name, partitions).await;
    }
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs `program` with `args`, `input` on its standard input, and returns what it did (status,
/// stdout, stderr). Panics, naming the program, if it cannot be started.
pub fn run_with_input(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
    input: &[u8],
) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let program = program.as_ref();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.to_string_lossy()));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input)
        .expect("write to stdin");
    child.wait_with_output().expect("wait for the program")
}

/// A free TCP port on 127.0.0.1 (bound once and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A private `redis-server` owned by one test (for AUTH/TLS tests that must not touch the shared
/// one, and for tests that restart Redis or take it back in time), killed on drop.
pub struct TestRedis {
    /// The port it listens on (TLS port when started with TLS).
    pub port: u16,
    args: Vec<String>,
    child: std::process::Child,
    dir: TempDir,
}

impl TestRedis {
    /// Starts `redis-server` with `args` (use `{port}` for the port) and waits until `ready`
    /// succeeds (e.g. a PING through the client under test) or 10 s pass. No persistence unless
    /// `args` turn it on (`--appendonly yes`); `SAVE` works either way.
    pub fn start(args: &[String], port: u16) -> TestRedis {
        let dir = TempDir::new("redis");
        let child = Self::spawn(args, &dir.0);
        TestRedis {
            port,
            args: args.to_vec(),
            child,
            dir,
        }
    }

    fn spawn(args: &[String], dir: &std::path::Path) -> std::process::Child {
        std::process::Command::new("redis-server")
            // Defaults first: a test's own arguments override them.
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(args)
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; dev/stack.sh installs it)")
    }

    /// The server's data folder (`dump.rdb`, `appendonlydir/`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir.0
    }

    /// Kills the server with SIGKILL, as a crash would: nothing is saved.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again (killing it first if it runs) with the same arguments and data
    /// folder: it comes back with whatever its files hold — the last `SAVE`, the AOF, or files a
    /// test put there. Wait for it with the client under test, as after `start`.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.args, &self.dir.0);
    }

    /// Freezes the server (SIGSTOP): it keeps its connections but answers nothing, replicates
    /// nothing, until [`thaw`](Self::thaw). Dropping a frozen server still kills it.
    pub fn freeze(&self) {
        signal(self.child.id(), "-STOP").expect("freeze redis-server");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        signal(self.child.id(), "-CONT").expect("thaw redis-server");
    }
}

/// A connection to a private server on `port`, once it answers (it may still be starting or
/// loading its data).
pub async fn connect_to(port: u16) -> chatlog_store::RedisConnection {
    let config = chatlog_store::RedisConfig {
        url: format!("redis://127.0.0.1:{port}/"),
        // Above the longest WAIT below: a loaded CI machine can take seconds to replicate.
        response_timeout: std::time::Duration::from_secs(15),
        ..chatlog_store::RedisConfig::default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match config.connect().await {
            Ok(mut con) => {
                if redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .is_ok()
                {
                    return con;
                }
            }
            Err(e) if std::time::Instant::now() > deadline => panic!("redis on {port}: {e}"),
            Err(_) => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redis on {port} never answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits until `con` (a connection manager that reconnects by itself) answers PING again after
/// its server restarted or was promoted.
pub async fn until_answers(con: &mut chatlog_store::RedisConnection) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while redis::cmd("PING").query_async::<String>(con).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Runs one admin command on `con` and returns its reply.
pub async fn admin<T: redis::FromRedisValue>(
    con: &mut chatlog_store::RedisConnection,
    args: &[&str],
) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(con)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// A private primary with one replica, linked (`master_link_status:up` on the replica).
pub async fn primary_and_replica() -> (
    TestRedis,
    chatlog_store::RedisConnection,
    TestRedis,
    chatlog_store::RedisConnection,
) {
    let primary_port = free_port();
    let primary = TestRedis::start(&["--port".into(), primary_port.to_string()], primary_port);
    let replica_port = free_port();
    let replica = TestRedis::start(
        &[
            "--port".into(),
            replica_port.to_string(),
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary_port.to_string(),
        ],
        replica_port,
    );
    let primary_con = connect_to(primary_port).await;
    let mut replica_con = connect_to(replica_port).await;
    until_linked(&mut replica_con).await;
    (primary, primary_con, replica, replica_con)
}

/// Cuts a replica off its primary, as a network partition would: the primary drops it and, from
/// now on, refuses it (a password the replica does not have), while connections already open on
/// the primary stay logged in. Writes after this never reach the replica.
pub async fn cut_replica_link(primary: &mut chatlog_store::RedisConnection) {
    let _: () = admin(primary, &["CONFIG", "SET", "requirepass", "cut-the-link"]).await;
    let _: i64 = admin(primary, &["CLIENT", "KILL", "TYPE", "replica"]).await;
}

/// Waits until the replica behind `con` reports its link to its primary up (synced).
pub async fn until_linked(con: &mut chatlog_store::RedisConnection) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let info: String = admin(con, &["INFO", "replication"]).await;
        if info.contains("master_link_status:up") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never linked: {info}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Copies the files of folder `from` into `to` (created if needed), recursively: a snapshot of a
/// server's data folder to restore later.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Sends `signal` (e.g. `-STOP`, `-TERM`) to process `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .context("run kill")?;
    anyhow::ensure!(status.success(), "kill {signal} {pid} failed: {status}");
    Ok(())
}

/// Sends SIGCONT to a process when dropped, so a failing test (or harness) never leaves a stopped
/// process behind for the tests that follow.
pub struct Resume(pub u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = signal(self.0, "-CONT");
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// Creates `<tmp>/<unique prefix>`.
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Calls `probe` every `every` until it returns `Ok`, or panics after `limit` with `failure` of
/// the last `Err` (what it saw instead).
pub async fn poll_until<T, E, Fut>(
    limit: std::time::Duration,
    every: std::time::Duration,
    mut probe: impl FnMut() -> Fut,
    failure: impl FnOnce(E) -> String,
) -> T
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() > deadline => panic!("{}", failure(e)),
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}
