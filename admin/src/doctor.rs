//! `doctor`: every dependency checked the way the consumer will use it — Kafka with the configured
//! security (brokers, the topic and the DLQ topic, the transaction log), CQL with the login
//! (server version, keyspace, migrations, published consumer limits), Redis with its password
//! (version, role), and this host's clock against Redis and CQL. Kafka's version (its finalized
//! `metadata.version`) is asked by [`kafka_version`] itself, since librdkafka does not tell it.
//! One line per check with a verdict (`ok`, `warn`, `FAIL`); exit 1 if any check fails. The three
//! services are checked at once, each step bounded by `--timeout`, so one that does not answer
//! neither hides nor delays the others' lines.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chatlog_store::migrate::{self, State};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use scylla::client::session::Session;

use crate::cli::DoctorArgs;
use crate::connect::Ctx;
use crate::{Outcome, Result};

pub mod kafka_version;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but worth a look (does not change the exit code).
    Warn,
    /// Broken: the consumer (or the producer) would fail on it.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One checked thing.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked (`kafka`, `cql migrations`, `clock redis`…).
    pub name: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found, and for a problem what to do.
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
        Check {
            name,
            verdict,
            detail: detail.into(),
        }
    }
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check::new(name, Verdict::Ok, detail)
    }
    fn warn(name: &'static str, detail: impl Into<String>) -> Check {
        Check::new(name, Verdict::Warn, detail)
    }
    fn fail(name: &'static str, detail: impl Into<String>) -> Check {
        Check::new(name, Verdict::Fail, detail)
    }
}

/// Runs `doctor`: prints one line per check and a summary.
pub async fn run(ctx: &Ctx, args: &DoctorArgs) -> Result<Outcome> {
    let checks = checks(ctx, args).await;
    print!("{}", render(&checks));
    Ok(Outcome::problems_if(
        checks.iter().any(|c| c.verdict == Verdict::Fail),
    ))
}

/// Every check, in a fixed order (Kafka, CQL, Redis, clocks, consumer limits).
pub async fn checks(ctx: &Ctx, args: &DoctorArgs) -> Vec<Check> {
    let (kafka, (cql, cql_clock, limits), (redis, redis_clock)) =
        tokio::join!(kafka(ctx, args), cql(ctx, args), redis(ctx, args));
    let mut all = kafka;
    all.extend(cql);
    all.extend(redis);
    all.push(redis_clock);
    all.push(cql_clock);
    all.extend(limits);
    all
}

/// The checks as aligned lines, then `doctor: N ok, N warn, N FAIL`.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!("{:<20} {:<4}  {}\n", c.name, c.verdict, c.detail));
    }
    let count = |v| checks.iter().filter(|c| c.verdict == v).count();
    out.push_str(&format!(
        "doctor: {} ok, {} warn, {} FAIL\n",
        count(Verdict::Ok),
        count(Verdict::Warn),
        count(Verdict::Fail)
    ));
    out
}

/// `fut` within `limit`; a timeout or an error becomes its text.
async fn bounded<T, E: fmt::Display>(
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}", humantime(limit))),
    }
}

fn humantime(d: Duration) -> humantime_serde::re::humantime::FormattedDuration {
    humantime_serde::re::humantime::format_duration(d)
}

// ---------------------------------------------------------------------------------------------
// Kafka

const KAFKA_HINT: &str = "is Kafka up (locally: dev/stack.sh up) and do kafka.bootstrap_servers \
                          and kafka.security match its listener?";

/// `kafka`, `kafka topic`, `kafka dlq topic`, `kafka transactions`.
async fn kafka(ctx: &Ctx, args: &DoctorArgs) -> Vec<Check> {
    let k = &ctx.config.kafka;
    let names = [
        "kafka",
        "kafka topic",
        "kafka dlq topic",
        "kafka transactions",
    ];
    let not_checked = |why: &str| {
        names[1..]
            .iter()
            .map(|n| Check::fail(n, format!("not checked: {why}")))
            .collect::<Vec<_>>()
    };
    let mut base = match ctx.kafka_base() {
        Ok(b) => b,
        Err(e) => {
            let mut out = vec![Check::fail(
                "kafka",
                format!("{}: invalid client settings: {e}", k.bootstrap_servers),
            )];
            out.extend(not_checked("the Kafka client settings are invalid"));
            return out;
        }
    };
    let security = base
        .get("security.protocol")
        .unwrap_or("plaintext")
        .to_ascii_lowercase();
    // Asking about a topic must never create it (a broker with auto.create.topics.enable would).
    base.set("allow.auto.create.topics", "false");
    let timeout = args.timeout;
    let topics = [
        k.topic.clone(),
        k.dlq_topic.clone(),
        "__transaction_state".to_owned(),
    ];
    let probe = base.clone();
    // librdkafka's metadata calls block: off the runtime's threads, each bounded by `timeout`.
    let fetch = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = probe
            .create()
            .map_err(|e| format!("cannot create a client: {e}"))?;
        topics
            .iter()
            .map(|t| {
                consumer
                    .fetch_metadata(Some(t), timeout)
                    .map_err(|e| format!("metadata request: {e}"))
            })
            .collect::<Result<Vec<Metadata>, String>>()
    });
    // The version is asked meanwhile, so it adds nothing to the time the metadata takes.
    let (fetched, version) = tokio::join!(
        fetch,
        version_part(&security, &k.bootstrap_servers, timeout)
    );
    let fetched = fetched.unwrap_or_else(|e| Err(format!("metadata task failed: {e}")));
    let metas = match fetched {
        Ok(m) => m,
        Err(e) => {
            let mut out = vec![Check::fail(
                "kafka",
                format!("{} ({security}): {e}; {KAFKA_HINT}", k.bootstrap_servers),
            )];
            out.extend(not_checked("Kafka unreachable"));
            return out;
        }
    };
    let brokers = metas[0].brokers();
    let (version_verdict, version) = version;
    let mut out = vec![Check::new(
        "kafka",
        version_verdict,
        format!(
            "{} ({security}): {} broker{} ({}), {version}",
            k.bootstrap_servers,
            brokers.len(),
            plural(brokers.len()),
            brokers
                .iter()
                .map(|b| format!("{}@{}:{}", b.id(), b.host(), b.port()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )];
    let topic_missing = |what: &str, name: &str| {
        format!(
            "{what} {name} does not exist on {}: create it (docs/OPERATIONS.md, \"Deploying\"; \
             locally the kit's create_topic or kafka-topics.sh --create) or fix kafka.{}",
            k.bootstrap_servers,
            if what == "topic" {
                "topic"
            } else {
                "dlq_topic"
            }
        )
    };
    // The topic.
    out.push(match topic(&metas[0], &k.topic) {
        TopicState::Missing => Check::fail("kafka topic", topic_missing("topic", &k.topic)),
        TopicState::Error(e) => Check::fail("kafka topic", format!("{}: {e}", k.topic)),
        TopicState::Partitions { count, leaderless } => {
            leaderless_check("kafka topic", &k.topic, count, leaderless)
        }
    });
    // The DLQ topic, and whether a record the consumer accepts fits in it whole.
    out.push(match topic(&metas[1], &k.dlq_topic) {
        TopicState::Missing => {
            Check::fail("kafka dlq topic", topic_missing("DLQ topic", &k.dlq_topic))
        }
        TopicState::Error(e) => Check::fail("kafka dlq topic", format!("{}: {e}", k.dlq_topic)),
        TopicState::Partitions { count, leaderless } => {
            let check = leaderless_check("kafka dlq topic", &k.dlq_topic, count, leaderless);
            if check.verdict != Verdict::Ok {
                check
            } else {
                dlq_size_check(ctx, check, timeout).await
            }
        }
    });
    out.push(transactions(&base, &metas[0], &metas[2], timeout).await);
    out
}

/// The `kafka` line's version part and its verdict. Only a PLAINTEXT listener is asked (see
/// [`kafka_version`]): with TLS or SASL the version is unknown, which is no problem of the cluster.
/// A plaintext broker that lists its topics but does not answer ApiVersions (or answers something
/// else) is worth a look: a warning.
async fn version_part(security: &str, bootstrap: &str, timeout: Duration) -> (Verdict, String) {
    if security != "plaintext" {
        return (
            Verdict::Ok,
            format!(
                "version unknown: the doctor asks it over plaintext only, and the listener is \
                 {security}"
            ),
        );
    }
    match bounded(timeout, kafka_version::probe(bootstrap)).await {
        Ok(version) => (Verdict::Ok, version.to_string()),
        Err(e) => (
            Verdict::Warn,
            format!("version unknown: ApiVersions request: {e}"),
        ),
    }
}

enum TopicState {
    Missing,
    Error(String),
    Partitions { count: usize, leaderless: usize },
}

fn topic(meta: &Metadata, name: &str) -> TopicState {
    use rdkafka::types::RDKafkaRespErr;
    match meta.topics().iter().find(|t| t.name() == name) {
        None => TopicState::Missing,
        Some(t) => match t.error() {
            Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => TopicState::Missing,
            Some(e) => TopicState::Error(format!("{e:?}")),
            None if t.partitions().is_empty() => TopicState::Missing,
            None => TopicState::Partitions {
                count: t.partitions().len(),
                leaderless: t.partitions().iter().filter(|p| p.leader() < 0).count(),
            },
        },
    }
}

fn leaderless_check(name: &'static str, topic: &str, count: usize, leaderless: usize) -> Check {
    let detail = format!("{topic}: {count} partition{}", plural(count));
    if leaderless > 0 {
        Check::fail(
            name,
            format!("{detail}, {leaderless} without a leader: are all brokers up?"),
        )
    } else {
        Check::ok(name, detail)
    }
}

/// Appends the DLQ topic's `max.message.bytes` to `check`; warns when a record the consumer accepts
/// (`batch.max_record_bytes`) plus its DLQ headers would not fit whole (it would go as a truncated
/// copy, see docs/OPERATIONS.md).
async fn dlq_size_check(ctx: &Ctx, mut check: Check, timeout: Duration) -> Check {
    let k = &ctx.config.kafka;
    let needed = ctx
        .config
        .batch
        .max_record_bytes
        .saturating_add(chatlog_consumer::kafka::DLQ_OVERHEAD);
    match chatlog_consumer::kafka::dlq_topic_max_bytes(k, timeout).await {
        Some(max) if max < needed => {
            check.verdict = Verdict::Warn;
            check.detail = format!(
                "{}, max.message.bytes {max} < batch.max_record_bytes + 16384 = {needed}: the \
                 largest accepted records would reach the DLQ as truncated copies (kafka-configs.sh \
                 --alter --entity-type topics --entity-name {} --add-config \
                 max.message.bytes={needed})",
                check.detail, k.dlq_topic
            );
        }
        Some(max) => check.detail = format!("{}, max.message.bytes {max}", check.detail),
        None => {
            check.verdict = Verdict::Warn;
            check.detail = format!(
                "{}, max.message.bytes unknown (DescribeConfigs refused?): the consumer assumes \
                 1000000",
                check.detail
            );
        }
    }
    check
}

/// Whether the consumer's transactions can start: the transaction log exists, or the brokers'
/// `transaction.state.log.replication.factor` is at most the number of brokers (else the first
/// transaction fails to create it, and the consumer never gets going).
async fn transactions(
    base: &rdkafka::ClientConfig,
    cluster: &Metadata,
    log: &Metadata,
    timeout: Duration,
) -> Check {
    const NAME: &str = "kafka transactions";
    if let TopicState::Partitions { count, .. } = topic(log, "__transaction_state") {
        return Check::ok(
            NAME,
            format!("transaction log __transaction_state: {count} partitions"),
        );
    }
    let brokers = cluster.brokers();
    let Some(broker) = brokers.first() else {
        return Check::fail(NAME, "no broker in the metadata");
    };
    let admin: AdminClient<DefaultClientContext> = match base.create() {
        Ok(a) => a,
        Err(e) => return Check::warn(NAME, format!("cannot create an admin client: {e}")),
    };
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let spec = [ResourceSpecifier::Broker(broker.id())];
    let factor = bounded(timeout, admin.describe_configs(&spec, &opts))
        .await
        .and_then(|results| {
            results
                .into_iter()
                .find_map(|r| {
                    r.ok()?
                        .get("transaction.state.log.replication.factor")?
                        .value
                        .as_deref()?
                        .parse::<usize>()
                        .ok()
                })
                .ok_or_else(|| "transaction.state.log.replication.factor not shown".to_owned())
        });
    match factor {
        Err(e) => Check::warn(
            NAME,
            format!(
                "the transaction log does not exist yet and the broker's settings cannot be read \
                 ({e}): the first transaction will tell"
            ),
        ),
        Ok(f) if f > brokers.len() => Check::fail(
            NAME,
            format!(
                "the transaction log does not exist yet and cannot be created: \
                 transaction.state.log.replication.factor = {f} > {} broker{}; set it (and \
                 transaction.state.log.min.isr) at most to the number of brokers",
                brokers.len(),
                plural(brokers.len())
            ),
        ),
        Ok(f) => Check::ok(
            NAME,
            format!(
                "the transaction log will be created by the first transaction (replication \
                 factor {f}, {} broker{})",
                brokers.len(),
                plural(brokers.len())
            ),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// CQL

/// `cql`, `cql keyspace`, `cql migrations`; the CQL clock check; the consumer limits check.
async fn cql(ctx: &Ctx, args: &DoctorArgs) -> (Vec<Check>, Check, Vec<Check>) {
    let c = &ctx.config.cql;
    let nodes = c.nodes.join(",");
    let login = if c.username.is_empty() {
        "no login".to_owned()
    } else {
        format!("as {}", c.username)
    };
    let session = match bounded(args.timeout, ctx.cql()).await {
        Ok(s) => s,
        Err(e) => {
            let why = "not checked: CQL unreachable";
            return (
                vec![
                    Check::fail(
                        "cql",
                        format!(
                            "{nodes} ({login}): {e}; is the database up (locally: dev/stack.sh \
                             up) and are cql.nodes and the login (CHATLOG_CQL_USERNAME/PASSWORD) \
                             right?"
                        ),
                    ),
                    Check::fail("cql batch size", why),
                    Check::fail("cql keyspace", why),
                    Check::fail("cql migrations", why),
                ],
                Check::fail("clock cql", why),
                vec![Check::fail("consumer limits", why)],
            );
        }
    };
    let version = bounded(args.timeout, release_version(&session)).await;
    let mut out = vec![match version {
        Ok(v) => Check::ok("cql", format!("{nodes} ({login}): release_version {v}")),
        Err(e) => Check::fail(
            "cql",
            format!("{nodes} ({login}): connected, but system.local cannot be read: {e}"),
        ),
    }];
    out.push(batch_size_check(
        ctx.config.writer.max_bytes,
        bounded(args.timeout, batch_thresholds(&session)).await,
    ));
    let status = bounded(args.timeout, migrate::status(&session, c)).await;
    let ks = &c.keyspace;
    let mut limits_readable = false;
    match &status {
        Err(e) => {
            out.push(Check::fail(
                "cql keyspace",
                format!("{ks}: cannot read the schema: {e}"),
            ));
            out.push(Check::fail(
                "cql migrations",
                "not checked: the schema cannot be read",
            ));
        }
        Ok(s) => {
            if s.keyspace_exists {
                out.push(Check::ok("cql keyspace", format!("{ks} exists")));
                out.push(tablets_check(
                    ks,
                    bounded(args.timeout, keyspace_tablets(&session, ks)).await,
                ));
            } else {
                out.push(Check::fail(
                    "cql keyspace",
                    format!(
                        "{ks} does not exist on {nodes}: run `chatlog migrate up` (or fix \
                         cql.keyspace)"
                    ),
                ));
            }
            let total = s.migrations.len();
            let versions = |it: &mut dyn Iterator<Item = &migrate::MigrationStatus>| {
                it.map(|m| m.migration.name).collect::<Vec<_>>().join(", ")
            };
            let pending = versions(&mut s.pending());
            let edited = versions(&mut s.edited());
            out.push(if !edited.is_empty() {
                Check::fail(
                    "cql migrations",
                    format!(
                        "{ks}: EDITED after they were applied: {edited}; see `chatlog migrate \
                         status`"
                    ),
                )
            } else if !pending.is_empty() {
                Check::fail(
                    "cql migrations",
                    format!(
                        "{ks}: {} of {total} pending ({pending}): run `chatlog migrate up`",
                        s.pending().count()
                    ),
                )
            } else {
                let newest = s
                    .migrations
                    .last()
                    .map_or(String::new(), |m| match m.state {
                        State::Applied { applied_at_ms } => format!(
                            ", newest {} applied {}",
                            m.migration.name,
                            crate::migrate::when(applied_at_ms)
                        ),
                        _ => String::new(),
                    });
                Check::ok(
                    "cql migrations",
                    format!("{ks}: all {total} applied{newest}"),
                )
            });
            limits_readable = s.migrations.iter().any(|m| {
                m.migration.name.contains("consumer_limits")
                    && matches!(m.state, State::Applied { .. })
            });
        }
    }
    let clock = skew_check(
        "clock cql",
        "CQL",
        args,
        bounded(args.timeout, cql_clock(&session)).await,
    );
    let limits = if limits_readable {
        consumer_limits(ctx, &session, args).await
    } else {
        Check::warn(
            "consumer limits",
            "not checked: the consumer_limits table is not there yet (migrations pending)",
        )
    };
    (out, clock, vec![limits])
}

/// The node's batch size thresholds, KiB: (warn, fail). Apache Cassandra 4.0+ shows its
/// settings in `system_views.settings` (also under the `_in_kb` names), ScyllaDB in
/// `system.config`.
async fn batch_thresholds(session: &Session) -> Result<(u64, u64), String> {
    const NAMES: &str =
        "name IN ('batch_size_warn_threshold_in_kb', 'batch_size_fail_threshold_in_kb')";
    let mut tried = Vec::new();
    for table in ["system_views.settings", "system.config"] {
        let rows = match session
            .query_unpaged(format!("SELECT name, value FROM {table} WHERE {NAMES}"), ())
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tried.push(format!("{table}: {e}"));
                continue;
            }
        };
        let rows = rows.into_rows_result().map_err(|e| e.to_string())?;
        let (mut warn, mut fail) = (None, None);
        for row in rows
            .rows::<(String, Option<String>)>()
            .map_err(|e| e.to_string())?
        {
            let (name, value) = row.map_err(|e| e.to_string())?;
            let kib = value.as_deref().and_then(kib_setting);
            if name.starts_with("batch_size_warn") {
                warn = kib;
            } else {
                fail = kib;
            }
        }
        match (warn, fail) {
            (Some(w), Some(f)) => return Ok((w, f)),
            _ => tried.push(format!("{table} does not give both thresholds as KiB")),
        }
    }
    Err(tried.join("; "))
}

/// A setting in KiB as the node shows it: `5` (Cassandra), `"128"` (ScyllaDB's JSON text).
fn kib_setting(value: &str) -> Option<u64> {
    value.trim().trim_matches('"').parse().ok()
}

/// The verdict on the node's batch thresholds against `writer.max_bytes`: a batch above the fail
/// threshold is refused (the consumer would retry it, then isolate, then dead-letter it), one
/// above the warn threshold is logged by the node as a `WARN`, once per batch. `writer.max_bytes`
/// caps the writer's *estimate* of a batch, not the node's own measure: the check says "below",
/// never "safe".
fn batch_size_check(max_bytes: usize, read: Result<(u64, u64), String>) -> Check {
    const NAME: &str = "cql batch size";
    let max_kib = max_bytes.div_ceil(1024);
    let bytes = |kib: u64| kib.saturating_mul(1024);
    match read {
        Err(e) => Check::warn(
            NAME,
            format!("cannot read the node's batch thresholds: {e}"),
        ),
        Ok((_, fail)) if (max_bytes as u64) > bytes(fail) => Check::fail(
            NAME,
            format!(
                "writer.max_bytes is {max_kib} KiB, above the node's batch_size_fail_threshold \
                 ({fail} KiB): full partition batches would be refused; lower writer.max_bytes \
                 or raise the threshold"
            ),
        ),
        Ok((warn, fail)) if (max_bytes as u64) > bytes(warn) => Check::ok(
            NAME,
            format!(
                "writer.max_bytes {max_kib} KiB is below the fail threshold ({fail} KiB); the \
                 node logs a WARN for each batch above {warn} KiB (expected: docs/OPERATIONS.md, \
                 \"Sizing\")"
            ),
        ),
        Ok((warn, fail)) => Check::ok(
            NAME,
            format!(
                "writer.max_bytes {max_kib} KiB is below both thresholds ({warn} and {fail} KiB)"
            ),
        ),
    }
}

/// What ScyllaDB says of `keyspace`'s tablets: `Ok(None)` on a database without
/// `system_schema.scylla_keyspaces` (Cassandra, old ScyllaDB: no tablets), `Ok(Some(None))` for a
/// ScyllaDB keyspace on vnodes (no row, or no `initial_tablets`), `Ok(Some(Some(n)))` with tablets.
async fn keyspace_tablets(
    session: &Session,
    keyspace: &str,
) -> Result<Option<Option<i32>>, String> {
    let rows = match session
        .query_unpaged(
            "SELECT initial_tablets FROM system_schema.scylla_keyspaces WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
    {
        Ok(r) => r,
        Err(e) if e.to_string().contains("scylla_keyspaces") => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let row = rows
        .into_rows_result()
        .map_err(|e| e.to_string())?
        .maybe_first_row::<(Option<i32>,)>()
        .map_err(|e| e.to_string())?;
    Ok(Some(row.and_then(|(n,)| n)))
}

/// The verdict on a keyspace's tablets: chatlog needs lightweight transactions (the seq ceiling,
/// the migrations' record, the member count), which ScyllaDB does not support in a keyspace with
/// tablets.
fn tablets_check(keyspace: &str, read: Result<Option<Option<i32>>, String>) -> Check {
    match read {
        Ok(None) => Check::ok(
            "cql tablets",
            format!("{keyspace}: no tablets (not ScyllaDB): lightweight transactions work"),
        ),
        Ok(Some(None)) => Check::ok(
            "cql tablets",
            format!("{keyspace}: vnodes, tablets off: lightweight transactions work"),
        ),
        Ok(Some(Some(n))) => Check::fail(
            "cql tablets",
            format!(
                "{keyspace} uses tablets (initial_tablets {n}): ScyllaDB does not support the \
                 lightweight transactions chatlog needs there (seq ceiling, migrations); create \
                 the keyspace with `AND tablets = {{'enabled': false}}` before migrating \
                 (docs/OPERATIONS.md, \"Deploying\")"
            ),
        ),
        Err(e) => Check::warn(
            "cql tablets",
            format!("{keyspace}: cannot read system_schema.scylla_keyspaces: {e}"),
        ),
    }
}

async fn release_version(session: &Session) -> Result<String, String> {
    let (v,) = session
        .query_unpaged("SELECT release_version FROM system.local", ())
        .await
        .map_err(|e| e.to_string())?
        .into_rows_result()
        .map_err(|e| e.to_string())?
        .single_row::<(Option<String>,)>()
        .map_err(|e| e.to_string())?;
    Ok(v.unwrap_or_else(|| "(not shown)".to_owned()))
}

/// One sample of the coordinator's clock: (its time in µs since the epoch, this host's time
/// halfway through the round trip, the round trip).
async fn cql_clock(session: &Session) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for _ in 0..3 {
        let sent = Instant::now();
        let local = now_us();
        let (ms,) = session
            .query_unpaged("SELECT toUnixTimestamp(now()) FROM system.local", ())
            .await
            .map_err(|e| e.to_string())?
            .into_rows_result()
            .map_err(|e| e.to_string())?
            .single_row::<(i64,)>()
            .map_err(|e| e.to_string())?;
        samples.push(Sample::new(ms.saturating_mul(1000), local, sent.elapsed()));
    }
    Ok(samples)
}

/// The limits consumers published for the topic (producers compare theirs with them at start).
async fn consumer_limits(ctx: &Ctx, session: &Session, args: &DoctorArgs) -> Check {
    const NAME: &str = "consumer limits";
    let k = &ctx.config.kafka;
    let read = chatlog_store::limits::read(session, &ctx.config.cql.keyspace, &k.topic);
    match bounded(args.timeout, read).await {
        Err(e) => Check::warn(NAME, format!("cannot read consumer_limits: {e}")),
        Ok(rows) if rows.is_empty() => Check::warn(
            NAME,
            format!(
                "none published for topic {}: no consumer has started on it yet (producers then \
                 compare with the consumer defaults)",
                k.topic
            ),
        ),
        Ok(rows) => {
            let newest = rows.iter().map(|r| r.published_at_ms).max();
            let differ = rows.iter().any(|r| {
                r.limits != rows[0].limits || r.max_record_bytes != rows[0].max_record_bytes
            });
            let detail = format!(
                "{} instance{} published for topic {}, newest {}",
                rows.len(),
                plural(rows.len()),
                k.topic,
                crate::migrate::when(newest)
            );
            if differ {
                Check::warn(
                    NAME,
                    format!(
                        "{detail}; the instances' limits differ (a rolling change? producers \
                         follow the strictest)"
                    ),
                )
            } else {
                Check::ok(NAME, detail)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Redis

/// `redis`, `redis role`; the Redis clock check.
async fn redis(ctx: &Ctx, args: &DoctorArgs) -> (Vec<Check>, Check) {
    let url = chatlog_store::config::redact_url(&ctx.config.redis.url);
    let auth = if ctx.config.redis.password.expose().is_empty() {
        "no password"
    } else {
        "with password"
    };
    let mut con = match bounded(args.timeout, ctx.redis()).await {
        Ok(c) => c,
        Err(e) => {
            let why = "not checked: Redis unreachable";
            return (
                vec![
                    Check::fail(
                        "redis",
                        format!(
                            "{url} ({auth}): {e}; is Redis up (locally: dev/stack.sh up) and are \
                             redis.url and CHATLOG_REDIS_PASSWORD right?"
                        ),
                    ),
                    Check::fail("redis role", why),
                ],
                Check::fail("clock redis", why),
            );
        }
    };
    let mut out = Vec::new();
    if ctx.config.redis.cluster_nodes.is_empty() {
        out.extend(redis_server(&mut con, args, &url, auth).await);
    } else {
        out.extend(redis_cluster(ctx, &mut con, args, auth).await);
    }
    let clock = skew_check(
        "clock redis",
        "Redis",
        args,
        bounded(args.timeout, redis_clock(&mut con)).await,
    );
    (out, clock)
}

/// `redis` and `redis role` of the server behind `con` (`url` as shown).
async fn redis_server(
    con: &mut chatlog_store::RedisConnection,
    args: &DoctorArgs,
    url: &str,
    auth: &str,
) -> Vec<Check> {
    let info = bounded(args.timeout, async {
        let server: String = redis::cmd("INFO").arg("server").query_async(con).await?;
        let replication: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(con)
            .await?;
        Ok::<_, redis::RedisError>((server, replication))
    })
    .await;
    match info {
        Err(e) => vec![
            Check::fail(
                "redis",
                format!("{url} ({auth}): connected, but INFO failed: {e}"),
            ),
            Check::fail("redis role", "not checked: INFO failed"),
        ],
        Ok((server, replication)) => vec![
            version_check(url, auth, &server, &replication),
            role_check(&replication),
        ],
    }
}

/// On a Redis Cluster: `redis cluster` (the slots, masters and replicas, as the cluster sees
/// itself), then `redis` and `redis role` of every master serving slots — the scripts and the
/// windows run on each of them, so one node's answer says nothing of the others.
async fn redis_cluster(
    ctx: &Ctx,
    con: &mut chatlog_store::RedisConnection,
    args: &DoctorArgs,
    auth: &str,
) -> Vec<Check> {
    let text = bounded(args.timeout, async {
        redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(con)
            .await
    })
    .await;
    let nodes = match text {
        Ok(text) => chatlog_store::connection::parse_cluster_nodes(&text),
        Err(e) => {
            return vec![Check::fail(
                "redis cluster",
                format!(
                    "CLUSTER NODES failed: {e}; are redis.cluster_nodes nodes of a Redis Cluster?"
                ),
            )];
        }
    };
    let mut out = vec![cluster_check(&nodes)];
    let config = &ctx.config.redis;
    for master in nodes
        .iter()
        .filter(|n| n.master && !n.failed && !n.slots.is_empty())
    {
        let url = chatlog_store::config::redact_url(&config.node_url(&master.address));
        match bounded(args.timeout, config.connect_node(&master.address)).await {
            Ok(mut one) => out.extend(redis_server(&mut one, args, &url, auth).await),
            Err(e) => out.push(Check::fail(
                "redis",
                format!("{url} ({auth}): a master serving slots, unreachable: {e}"),
            )),
        }
    }
    out
}

/// `redis cluster`: every slot served by a live master, no failed node, a live replica per master.
fn cluster_check(nodes: &[chatlog_store::connection::ClusterNode]) -> Check {
    const NAME: &str = "redis cluster";
    const SLOTS: usize = 16384;
    let masters: Vec<_> = nodes
        .iter()
        .filter(|n| n.master && !n.failed && !n.slots.is_empty())
        .collect();
    let served: usize = masters.iter().map(|n| n.slot_count()).sum();
    let replicas = |m: &chatlog_store::connection::ClusterNode| {
        nodes
            .iter()
            .filter(|r| !r.master && !r.failed && r.master_id.as_deref() == Some(m.id.as_str()))
            .count()
    };
    let failed: Vec<&str> = nodes
        .iter()
        .filter(|n| n.failed)
        .map(|n| n.address.as_str())
        .collect();
    let alone: Vec<&str> = masters
        .iter()
        .filter(|m| replicas(m) == 0)
        .map(|m| m.address.as_str())
        .collect();
    let live_replicas: usize = masters.iter().map(|m| replicas(m)).sum();
    let head = format!(
        "{} masters serving {served} of {SLOTS} slots, {live_replicas} live replicas",
        masters.len()
    );
    if served < SLOTS {
        return Check::fail(
            NAME,
            format!(
                "{head}; failed: {failed:?}: commands on the other slots fail until a replica                  takes them over (or an operator reassigns them: redis-cli --cluster fix)"
            ),
        );
    }
    if !failed.is_empty() || !alone.is_empty() {
        return Check::warn(
            NAME,
            format!(
                "{head}; failed nodes: {failed:?}; masters without a live replica: {alone:?}                  (a master's failure then leaves its slots unserved)"
            ),
        );
    }
    Check::ok(NAME, format!("{head}, one or more per master"))
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The version the scripts need: effects replication (the default since Redis 5; the scripts read
/// `INFO` and `TIME` before writing), and 7 or newer for the seq fast path's cheap epoch check
/// (older servers run the full check per call; see store/src/epoch.rs). The scripts also need
/// `run_id` and `master_replid` in `INFO` (some managed services hide them).
fn version_check(url: &str, auth: &str, server: &str, replication: &str) -> Check {
    const NAME: &str = "redis";
    let version = info_field(server, "redis_version").unwrap_or("unknown");
    let head = format!("{url} ({auth}): redis_version {version}");
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let hex = |v: Option<&str>| {
        v.is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if !hex(info_field(server, "run_id")) || !hex(info_field(replication, "master_replid")) {
        return Check::fail(
            NAME,
            format!(
                "{head}: INFO shows no run_id or master_replid, which the epoch check of every \
                 script reads (they would fail); use a server that shows them"
            ),
        );
    }
    match major {
        0..=4 => Check::fail(
            NAME,
            format!(
                "{head}: too old — the scripts read INFO and TIME before writing, which needs \
                 script effects replication (the default since Redis 5); 7 or newer recommended"
            ),
        ),
        5 | 6 => Check::warn(
            NAME,
            format!(
                "{head}: works, but the seq fast path then runs the full epoch check per call \
                 (slower); 7 or newer recommended"
            ),
        ),
        _ => Check::ok(NAME, head),
    }
}

/// Writes (seqs, windows) need the master: a replica refuses them.
fn role_check(replication: &str) -> Check {
    const NAME: &str = "redis role";
    match info_field(replication, "role") {
        Some("master") => {
            let replicas = info_field(replication, "connected_slaves").unwrap_or("0");
            Check::ok(NAME, format!("master, {replicas} connected replicas"))
        }
        Some(role) => {
            let master = match (
                info_field(replication, "master_host"),
                info_field(replication, "master_port"),
            ) {
                (Some(h), Some(p)) => format!(" of {h}:{p}"),
                _ => String::new(),
            };
            Check::fail(
                NAME,
                format!(
                    "{role}{master}: the consumer and the producer write, which needs the master; \
                     point redis.url at it"
                ),
            )
        }
        None => Check::warn(NAME, "INFO replication shows no role"),
    }
}

async fn redis_clock(con: &mut chatlog_store::RedisConnection) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for _ in 0..3 {
        let sent = Instant::now();
        let local = now_us();
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(con)
            .await
            .map_err(|e| e.to_string())?;
        samples.push(Sample::new(
            secs.saturating_mul(1_000_000).saturating_add(micros),
            local,
            sent.elapsed(),
        ));
    }
    Ok(samples)
}

// ---------------------------------------------------------------------------------------------
// Clocks

/// One reading of a server's clock.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The server's clock minus this host's, µs, this host's read halfway through the round trip.
    pub skew_us: i64,
    /// The round trip.
    pub rtt: Duration,
}

impl Sample {
    /// `server_us` read in a round trip of `rtt` that began at `local_before_us` (this host).
    pub fn new(server_us: i64, local_before_us: i64, rtt: Duration) -> Sample {
        let half = i64::try_from(rtt.as_micros() / 2).unwrap_or(i64::MAX);
        Sample {
            skew_us: server_us.saturating_sub(local_before_us.saturating_add(half)),
            rtt,
        }
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The verdict on the best (shortest round trip) of `samples`: above `max_skew` FAIL, above half
/// of it warn. The uncertainty is half the round trip (plus 1 ms for CQL's millisecond clock).
pub fn skew_verdict(samples: &[Sample], max_skew: Duration) -> Option<(Verdict, Sample)> {
    let best = *samples.iter().min_by_key(|s| s.rtt)?;
    let skew = Duration::from_micros(best.skew_us.unsigned_abs());
    let verdict = if skew > max_skew {
        Verdict::Fail
    } else if skew > max_skew / 2 {
        Verdict::Warn
    } else {
        Verdict::Ok
    };
    Some((verdict, best))
}

fn skew_check(
    name: &'static str,
    service: &str,
    args: &DoctorArgs,
    samples: Result<Vec<Sample>, String>,
) -> Check {
    let samples = match samples {
        Ok(s) => s,
        Err(e) => return Check::fail(name, format!("cannot read {service}'s clock: {e}")),
    };
    let Some((verdict, best)) = skew_verdict(&samples, args.max_skew) else {
        return Check::fail(name, format!("no reading of {service}'s clock"));
    };
    let ms = best.skew_us as f64 / 1000.0;
    let side = if best.skew_us >= 0 {
        "ahead of"
    } else {
        "behind"
    };
    let detail = format!(
        "{service} is {:.1} ms {side} this host (round trip {:.1} ms; limit {})",
        ms.abs(),
        best.rtt.as_secs_f64() * 1000.0,
        humantime(args.max_skew)
    );
    match verdict {
        Verdict::Ok => Check::ok(name, detail),
        _ => Check::new(
            name,
            verdict,
            format!(
                "{detail}: check NTP/chrony on this host and on {service}'s; the consumer refuses \
                 records stamped further ahead than limits.max_skew"
            ),
        ),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_batch_size_check_fails_above_the_fail_threshold_and_notes_the_warn_one() {
        let defaults = batch_size_check(40 * 1024, Ok((5, 50)));
        assert_eq!(defaults.verdict, Verdict::Ok, "{}", defaults.detail);
        assert!(defaults.detail.contains("WARN for each batch above 5 KiB"));
        let quiet = batch_size_check(40 * 1024, Ok((128, 1024)));
        assert_eq!(quiet.verdict, Verdict::Ok);
        assert!(quiet.detail.contains("below both"), "{}", quiet.detail);
        let refused = batch_size_check(60 * 1024, Ok((5, 50)));
        assert_eq!(refused.verdict, Verdict::Fail, "{}", refused.detail);
        assert!(refused.detail.contains("60 KiB"), "{}", refused.detail);
        assert_eq!(
            batch_size_check(50 * 1024, Ok((5, 50))).verdict,
            Verdict::Ok
        );
        let unread = batch_size_check(40 * 1024, Err("no table".into()));
        assert_eq!(unread.verdict, Verdict::Warn);
        assert_eq!(kib_setting("5"), Some(5));
        assert_eq!(kib_setting(" \"128\" "), Some(128));
        assert_eq!(kib_setting("5KiB"), None);
    }

    fn cluster(text: &str) -> Check {
        cluster_check(&chatlog_store::connection::parse_cluster_nodes(text))
    }

    #[test]
    fn the_cluster_check_wants_every_slot_served_and_a_replica_per_master() {
        let whole = "\
a 127.0.0.1:16001@26001 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:16002@26002 master - 0 0 2 connected 5461-10922
c 127.0.0.1:16003@26003 master - 0 0 3 connected 10923-16383
d 127.0.0.1:16004@26004 slave a 0 0 1 connected
e 127.0.0.1:16005@26005 slave b 0 0 2 connected
f 127.0.0.1:16006@26006 slave c 0 0 3 connected
";
        let ok = cluster(whole);
        assert_eq!(ok.verdict, Verdict::Ok, "{}", ok.detail);
        assert!(
            ok.detail
                .starts_with("3 masters serving 16384 of 16384 slots, 3 live replicas")
        );

        // A master failed and no replica took over yet: its slots are not served.
        let down = whole.replace(
            "b 127.0.0.1:16002@26002 master -",
            "b 127.0.0.1:16002@26002 master,fail -",
        );
        let fail = cluster(&down);
        assert_eq!(fail.verdict, Verdict::Fail, "{}", fail.detail);
        assert!(
            fail.detail.contains("10922 of 16384 slots"),
            "{}",
            fail.detail
        );
        assert!(fail.detail.contains("127.0.0.1:16002"), "{}", fail.detail);

        // Every slot served, but a replica is gone: one more failure would lose slots.
        let lonely = whole.replace("slave c 0 0 3 connected", "slave,fail c 0 0 3 connected");
        let warn = cluster(&lonely);
        assert_eq!(warn.verdict, Verdict::Warn, "{}", warn.detail);
        assert!(warn.detail.contains("127.0.0.1:16003"), "{}", warn.detail);
        assert!(warn.detail.contains("127.0.0.1:16006"), "{}", warn.detail);
    }

    use super::*;

    fn sample(skew_ms: i64, rtt_ms: u64) -> Sample {
        Sample {
            skew_us: skew_ms * 1000,
            rtt: Duration::from_millis(rtt_ms),
        }
    }

    #[test]
    fn skew_is_judged_on_the_shortest_round_trip_against_the_limit_and_its_half() {
        let limit = Duration::from_millis(500);
        let judge = |s: &[Sample]| skew_verdict(s, limit).map(|(v, b)| (v, b.skew_us));
        assert_eq!(judge(&[]), None);
        assert_eq!(
            judge(&[sample(900, 50), sample(10, 1)]),
            Some((Verdict::Ok, 10_000))
        );
        assert_eq!(judge(&[sample(-300, 1)]).unwrap().0, Verdict::Warn);
        assert_eq!(judge(&[sample(600, 1)]).unwrap().0, Verdict::Fail);
        assert_eq!(judge(&[sample(-600, 1)]).unwrap().0, Verdict::Fail);
        assert_eq!(judge(&[sample(250, 1)]).unwrap().0, Verdict::Ok);
    }

    #[test]
    fn a_sample_compensates_half_the_round_trip() {
        // Sent at 1_000_000 µs, answered after 10 ms: the server read its clock at ~1_005_000.
        let s = Sample::new(1_005_000, 1_000_000, Duration::from_millis(10));
        assert_eq!(s.skew_us, 0);
    }

    #[test]
    fn a_keyspace_with_tablets_fails_the_check() {
        assert_eq!(tablets_check("ks", Ok(None)).verdict, Verdict::Ok);
        assert_eq!(tablets_check("ks", Ok(Some(None))).verdict, Verdict::Ok);
        let with = tablets_check("ks", Ok(Some(Some(0))));
        assert_eq!(with.verdict, Verdict::Fail);
        assert!(with.detail.contains("'enabled': false"), "{}", with.detail);
        assert_eq!(
            tablets_check("ks", Err("timeout".into())).verdict,
            Verdict::Warn
        );
    }

    #[test]
    fn redis_versions_and_roles() {
        let repl = "role:master\nconnected_slaves:0\nmaster_replid:ab12\n";
        let server = |v: &str| format!("redis_version:{v}\nrun_id:0f9a\n");
        assert_eq!(
            version_check("u", "a", &server("7.0.15"), repl).verdict,
            Verdict::Ok
        );
        assert_eq!(
            version_check("u", "a", &server("6.2.1"), repl).verdict,
            Verdict::Warn
        );
        assert_eq!(
            version_check("u", "a", &server("4.0.9"), repl).verdict,
            Verdict::Fail
        );
        assert_eq!(
            version_check("u", "a", "redis_version:7.2.0\n", repl).verdict,
            Verdict::Fail
        );
        assert_eq!(role_check(repl).verdict, Verdict::Ok);
        let replica = role_check("role:slave\nmaster_host:10.0.0.1\nmaster_port:6379\n");
        assert_eq!(replica.verdict, Verdict::Fail);
        assert!(
            replica.detail.contains("10.0.0.1:6379"),
            "{}",
            replica.detail
        );
    }
}
