//! Observability and deployment against real tools: the live `/metrics` of a running consumer
//! passes `promtool check metrics`, a real Prometheus server scrapes it and answers PromQL with the
//! number of messages the test persisted, the alert rules pass `promtool check rules` and their unit
//! tests, the compose file passes `docker-compose config`, the Grafana dashboard parses and uses only
//! exported metrics, the Dockerfile is multi-stage and non-root, the example config parses.
//!
//! A missing tool fails the test with the command that installs it; nothing is skipped.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chatlog_consumer::{Config, telemetry};
use common::{ConsumerProc, Env, all_messages, base_time_us, sessions};
use serde_json::Value;

// ------------------------------------------------------------------------------------------ helpers

/// The workspace root (where docker-compose.yml, Dockerfile and deploy/ live).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The absolute path of a required tool, or a failure saying how to install it.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is required by this test and is not on PATH: install the Debian package \
         `{package}` (`dev/stack.sh up tools` does it)"
    );
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    if !out.status.success() {
        panic!(
            "{shown} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A minimal HTTP/1.0 GET: (status, body). HTTP/1.0 keeps servers from chunking the body.
fn http_get(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP header end in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// Percent-encodes a query parameter value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The address the consumer logged as `chatlog-consumer: http listening on ADDR`.
fn http_addr(consumer: &ConsumerProc) -> SocketAddr {
    const LINE: &str = "chatlog-consumer: http listening on ";
    consumer.wait_log(LINE, Duration::from_secs(60));
    let log = consumer.log_text();
    let rest = &log[log.find(LINE).unwrap() + LINE.len()..];
    rest.lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("listening address")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The metric families of an exposition text: name → type (from `# TYPE` lines).
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.trim().to_owned()))
        .collect()
}

/// The value of the sample `series` (name with its labels exactly as rendered, e.g.
/// `chatlog_consumer_records_total{outcome="persisted"}`).
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().ok())?
    })
}

/// Every series name an exported family renders as (histograms: `_bucket`, `_sum`, `_count`).
fn exported_series_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for name in telemetry::ALL {
        if telemetry::HISTOGRAMS.contains(name) {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert((*name).to_owned());
        }
    }
    names
}

/// The metric names a PromQL expression references: identifiers that are not functions,
/// keywords, label names or inside strings/brackets.
fn metric_names_in(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
        // Aggregation operators may be followed by `by (…)` rather than their parenthesis.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut in_braces = 0;
    let mut in_brackets = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                // Skip the string literal.
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            '{' => in_braces += 1,
            '}' => in_braces -= 1,
            '[' => in_brackets += 1,
            ']' => in_brackets -= 1,
            '$' => {
                // A Grafana variable such as $__rate_interval or $instance.
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        if (c.is_ascii_alphabetic() || c == '_' || c == ':')
            && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_'))
        {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            let next = chars.get(j).copied();
            let is_function = next == Some('(');
            let in_label_list = label_list_context(&chars, start);
            if in_braces == 0
                && in_brackets == 0
                && !is_function
                && !in_label_list
                && !KEYWORDS.contains(&word.to_lowercase().as_str())
            {
                names.insert(word);
            }
            continue;
        }
        i += 1;
    }
    names
}

/// Whether position `at` lies in the parenthesised label list of `by`, `without`, `on`,
/// `ignoring`, `group_left` or `group_right`.
fn label_list_context(chars: &[char], at: usize) -> bool {
    let mut depth = 0i32;
    let mut k = at;
    while k > 0 {
        k -= 1;
        match chars[k] {
            ')' => depth += 1,
            '(' if depth > 0 => depth -= 1,
            '(' => {
                let before: String = chars[..k].iter().collect();
                let word: String = before
                    .trim_end()
                    .chars()
                    .rev()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                return matches!(
                    word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
            }
            _ => {}
        }
    }
    false
}

/// A Prometheus server run by a test; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` with a 1 s scrape of `targets` (job `chatlog-consumer`) and the alert
    /// rules of deploy/prometheus/alerts.yml, and waits until it is ready.
    fn start(targets: &[SocketAddr]) -> Prometheus {
        let bin = tool("prometheus", "prometheus");
        let dir = std::env::temp_dir().join(chatlog::unique("prometheus"));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{rules}'\n\
             scrape_configs:\n  - job_name: chatlog-consumer\n    static_configs:\n      \
             - targets: [{targets}]\n",
            rules = root().join("deploy/prometheus/alerts.yml").display(),
            targets = targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn prometheus");
        let mut p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(p.addr, "/-/ready") {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited with {status}; log:\n{}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 60 s; log:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant query; returns the `data` object, failing on any error status.
    fn query(&self, expr: &str) -> Value {
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={}", encode(expr)))
            .unwrap_or_else(|e| panic!("query {expr:?}: {e}"));
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("query {expr:?}: {e}; body {body}"));
        assert!(
            status == 200 && v["status"] == "success",
            "query {expr:?} failed ({status}): {body}"
        );
        v["data"].clone()
    }

    /// Polls `expr` until `ok` accepts its [`scalar`](Self::scalar) value, or fails after `limit`.
    fn wait_for(
        &self,
        expr: &str,
        ok: impl Fn(Option<f64>) -> bool,
        limit: Duration,
    ) -> Option<f64> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.scalar(expr);
            if ok(got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus still answers {got:?} to `{expr}` after {limit:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The single scalar an instant vector query returns, if it returned exactly one sample.
    fn scalar(&self, expr: &str) -> Option<f64> {
        let data = self.query(expr);
        let result = data["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// YAML text as JSON, through PyYAML (the YAML library docker-compose itself is built on).
fn yaml_to_json(text: &str) -> Value {
    let python = tool("python3", "python3");
    let out = chatlog::run_with_input(
        python,
        &[
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ],
        text.as_bytes(),
    );
    assert!(
        out.status.success(),
        "PyYAML could not parse the YAML (install the Debian package `python3-yaml`, a dependency \
         of `docker-compose`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("yaml → json")
}

/// A YAML file of the repository as JSON.
fn yaml_file(rel: &str) -> Value {
    yaml_to_json(&read(rel))
}

/// The dashboard's expressions: (panel title, expr).
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        for t in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((title.clone(), expr.to_owned()));
            }
        }
    }
    out
}

/// Alert and recording rule expressions of deploy/prometheus/alerts.yml: (rule name, expr).
fn rule_exprs() -> Vec<(String, String)> {
    let rules = yaml_file("deploy/prometheus/alerts.yml");
    let mut out = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .unwrap()
                .to_owned();
            out.push((name, rule["expr"].as_str().expect("expr").to_owned()));
        }
    }
    out
}

/// A dashboard expression with Grafana's variables replaced, ready for Prometheus.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("$instance", ".*")
        .replace("$job", "chatlog-consumer")
}

// -------------------------------------------------------------------------------- the live endpoint

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_and_prometheus_counts_the_persisted_messages() {
    let promtool = tool("promtool", "prometheus");
    let env = Env::new("obs", 2, 20).await;
    let sessions = sessions("o", 8);
    let base = base_time_us();
    let per_session = 25;
    let good = all_messages(&sessions, per_session, base);
    env.produce(&good).await;
    // Two poison records, so the DLQ series move too.
    env.produce_raw(&[
        (Some(sessions[0].clone()), Some(b"\x00not avro".to_vec())),
        (Some(sessions[1].clone()), None),
    ])
    .await;

    let mut consumer = env.spawn_consumer(&chatlog::unique("obs_txn"), &[]);
    let addr = http_addr(&consumer);

    let (status, body) = http_get(addr, "/healthz").expect("GET /healthz");
    assert_eq!(status, 200, "/healthz: {body}");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http_get(addr, "/readyz").expect("GET /readyz");
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "/readyz answers 200 or 503: {body}");
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} ({body}) after 60 s; log:\n{}",
            consumer.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    env.wait_for_rows(
        &sessions,
        per_session,
        good.len(),
        Duration::from_secs(120),
        &[&consumer],
    )
    .await;

    // The counters move when the transaction commits, right after the rows are visible.
    let persisted = format!("{}{{outcome=\"persisted\"}}", telemetry::RECORDS);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (status, text) = http_get(addr, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        if sample(&text, &persisted) == Some(good.len() as f64) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics never showed {} persisted records:\n{text}",
            good.len()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    println!("---- /metrics sample ----\n{text}");

    // promtool lints the exposition (naming, units, help text, histogram shape).
    let out = chatlog::run_with_input(&promtool, &["check", "metrics"], text.as_bytes());
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every family is exported with its type; histograms have buckets (not summaries).
    let fams = families(&text);
    // The lag gauge has its own test (it needs librdkafka statistics with an assignment).
    for name in telemetry::ALL.iter().filter(|n| **n != telemetry::LAG) {
        let want = if telemetry::HISTOGRAMS.contains(name) {
            "histogram"
        } else if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        assert_eq!(
            fams.get(*name).map(String::as_str),
            Some(want),
            "{name} in /metrics"
        );
    }
    assert_eq!(
        sample(&text, &format!("{}{{outcome=\"dlq\"}}", telemetry::RECORDS)),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("{}{{reason=\"bad_magic\"}}", telemetry::DLQ_RECORDS)
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("{}{{reason=\"empty\"}}", telemetry::DLQ_RECORDS)
        ),
        Some(1.0)
    );
    // Initialised at start: present at 0 although nothing was aborted or retried.
    assert_eq!(
        sample(
            &text,
            &format!("{}{{result=\"aborted\"}}", telemetry::TRANSACTIONS)
        ),
        Some(0.0)
    );
    assert_eq!(sample(&text, telemetry::READY), Some(1.0));
    for stage in telemetry::STAGES {
        let count = format!("{}_count{{stage=\"{stage}\"}}", telemetry::STAGE_DURATION);
        assert!(
            sample(&text, &count).is_some_and(|n| n >= 1.0),
            "{count} in /metrics"
        );
        assert!(
            text.contains(&format!(
                "{}_bucket{{stage=\"{stage}\",le=",
                telemetry::STAGE_DURATION
            )),
            "explicit buckets for stage {stage}"
        );
    }
    // No unbounded labels: no session id appears anywhere in the exposition.
    for s in &sessions {
        assert!(
            !text.contains(s.as_str()),
            "session id {s} leaked into /metrics"
        );
    }
    // Dashboards and alerts use only what a live consumer exports.
    let mut live: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    live.insert(telemetry::LAG.to_owned());
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/chatlog-consumer.json"))
            .expect("dashboard JSON");
    for (what, expr) in dashboard_exprs(&dashboard).into_iter().chain(rule_exprs()) {
        for name in metric_names_in(&expr) {
            assert!(
                live.contains(&name) || name == "up",
                "{what}: `{name}` in `{expr}` is not in the live /metrics"
            );
        }
    }

    // A real Prometheus scrapes the consumer; PromQL returns exactly what was persisted.
    let prometheus = Prometheus::start(&[addr]);
    let query = format!("sum({persisted})");
    let want = good.len() as f64;
    let got = prometheus.wait_for(&query, |v| v == Some(want), Duration::from_secs(60));
    println!("Prometheus: {query} = {got:?} (persisted by the test: {want})");
    assert_eq!(prometheus.scalar("up{job=\"chatlog-consumer\"}"), Some(1.0));

    // Prometheus's own parser accepts every dashboard expression, and the panels have data.
    for (_title, expr) in dashboard_exprs(&dashboard) {
        prometheus.query(&grafana_to_promql(&expr));
    }
    // The throughput panel has a sample (0/s here: the counter was complete before the first
    // scrape).
    let throughput = "sum(rate(chatlog_consumer_records_total{outcome=\"persisted\"}[1m]))";
    prometheus.wait_for(throughput, |v| v.is_some(), Duration::from_secs(30));
    // The rules loaded and evaluate without errors.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(prometheus.addr, "/api/v1/rules").unwrap();
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let rules: Vec<&Value> = v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(rules.len(), rule_exprs().len(), "every rule loaded: {body}");
        let evaluated = rules
            .iter()
            .all(|r| r["health"] == "ok" && r["lastEvaluation"] != "0001-01-01T00:00:00Z");
        if evaluated {
            break;
        }
        for r in &rules {
            assert_ne!(r["health"], "err", "rule failed: {r}");
        }
        assert!(Instant::now() < deadline, "rules not evaluated: {body}");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(prometheus);

    consumer.terminate();
    let status = consumer.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM must exit 0, got {status}");
}

/// The lag gauge exists per assigned partition and reaches 0 once every record is committed
/// (the offsets are committed through the transactional producer, so the consumer's own view of
/// its committed offsets must come from the offsets the pipeline stores after each commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_gauge_reaches_zero_once_everything_is_committed() {
    let env = Env::new("obslag", 2, 10).await;
    let sessions = sessions("l", 6);
    let base = base_time_us();
    let per_session = 20;
    let good = all_messages(&sessions, per_session, base);
    env.produce(&good).await;
    let consumer = env.spawn_consumer(&chatlog::unique("obslag_txn"), &[]);
    let addr = http_addr(&consumer);
    env.wait_for_rows(
        &sessions,
        per_session,
        good.len(),
        Duration::from_secs(120),
        &[&consumer],
    )
    .await;
    // Statistics arrive every 5 s; give them a few rounds.
    let want: Vec<String> = (0..2)
        .map(|p| format!("{}{{partition=\"{p}\"}}", telemetry::LAG))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = http_get(addr, "/metrics").expect("GET /metrics");
        let lags: Vec<Option<f64>> = want.iter().map(|s| sample(&text, s)).collect();
        if lags.iter().all(|l| *l == Some(0.0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after every record was committed, {} should be 0 on partitions 0 and 1, got \
             {lags:?}. Kafka transactions commit the offsets, so librdkafka's `consumer_lag` \
             (hi - committed, with `committed` fetched once at assignment) stays -1 or stale: the \
             pipeline must `store_offsets` after each commit and the statistics callback report \
             `consumer_lag_stored` (see the report of issue 6).\n{text}",
            telemetry::LAG
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// /healthz answers as soon as the process runs; /readyz stays 503 (and the ready gauge 0) while
/// the consumer cannot reach Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_kafka_is_unreachable() {
    let keyspace = chatlog::fresh_keyspace("obsready").await.1.keyspace;
    let log = std::env::temp_dir().join(format!("{}.log", chatlog::unique("obsready")));
    let child = Command::new(env!("CARGO_BIN_EXE_chatlog-consumer"))
        .args(["--bootstrap-servers", &format!("127.0.0.1:{}", free_port())])
        .args(["--topic", &chatlog::unique("obsready_in")])
        .args(["--transactional-id", &chatlog::unique("obsready_txn")])
        .args(["--cql-nodes", &chatlog::cql_nodes().join(",")])
        .args(["--keyspace", &keyspace])
        .args(["--redis-url", &chatlog::redis_url()])
        .args(["--http-listen", "127.0.0.1:0"])
        .env_remove("CHATLOG_CONSUMER_CONFIG")
        .envs(chatlog::cql_login_env())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("spawn chatlog-consumer");
    let consumer = ConsumerProc { child, log };
    let addr = http_addr(&consumer);
    assert_eq!(http_get(addr, "/healthz").unwrap().0, 200);
    // Well past CQL and Redis connecting: the transactional producer cannot reach a broker.
    std::thread::sleep(Duration::from_secs(3));
    let (status, body) = http_get(addr, "/readyz").unwrap();
    assert_eq!(status, 503, "/readyz without Kafka: {body}");
    assert!(body.starts_with("not ready"), "{body}");
    let (_, text) = http_get(addr, "/metrics").unwrap();
    assert_eq!(sample(&text, telemetry::READY), Some(0.0), "{text}");
}

// ------------------------------------------------------------------------------- alert rules

const REQUIRED_ALERTS: &[&str] = &[
    "ChatlogConsumerDown",
    "ChatlogConsumerAbsent",
    "ChatlogConsumerLagHigh",
    "ChatlogDlqRateHigh",
    "ChatlogTransactionAbortRateHigh",
];

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let promtool = tool("promtool", "prometheus");
    let dir = root().join("deploy/prometheus");
    let out = run(Command::new(&promtool)
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let out = run(Command::new(&promtool)
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let out = run(Command::new(&promtool)
        .args(["check", "config", "prometheus.yml"])
        .current_dir(&dir));
    println!("{}", String::from_utf8_lossy(&out.stdout));

    // Every alert: a severity, a summary and a runbook section that exists.
    let ops = read("docs/OPERATIONS.md").to_lowercase();
    let rules = yaml_file("deploy/prometheus/alerts.yml");
    let mut alerts = BTreeSet::new();
    for rule in rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
    {
        let Some(name) = rule["alert"].as_str() else {
            continue;
        };
        alerts.insert(name.to_owned());
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{name}: summary"
        );
        let runbook = rule["annotations"]["runbook"].as_str().unwrap_or_default();
        let anchor = format!("docs/operations.md#{}", name.to_lowercase());
        assert_eq!(runbook.to_lowercase(), anchor, "{name}: runbook");
        assert!(
            ops.contains(&format!("### {}", name.to_lowercase())),
            "docs/OPERATIONS.md has no `### {name}` section"
        );
    }
    for name in REQUIRED_ALERTS {
        assert!(alerts.contains(*name), "alerts.yml lacks {name}");
    }

    // The unit tests make every alert fire at least once and stay silent at least once.
    let tests = yaml_file("deploy/prometheus/alerts.test.yml");
    let mut fired = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for t in tests["tests"].as_array().unwrap() {
        for case in t["alert_rule_test"].as_array().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            let expected = case["exp_alerts"].as_array().map_or(0, Vec::len);
            if expected > 0 {
                fired.insert(name);
            } else {
                silent.insert(name);
            }
        }
    }
    for name in &alerts {
        assert!(fired.contains(name), "no unit test makes {name} fire");
        assert!(silent.contains(name), "no unit test keeps {name} silent");
    }
    // Rules use only what the consumer exports.
    let exported = exported_series_names();
    for (name, expr) in rule_exprs() {
        for metric in metric_names_in(&expr) {
            assert!(
                exported.contains(&metric) || metric == "up",
                "{name}: `{metric}` in `{expr}` is not exported by the consumer"
            );
        }
    }
}

// ------------------------------------------------------------------------------- dashboard

#[test]
fn dashboard_json_is_valid_and_covers_the_pipeline() {
    let text = read("deploy/grafana/dashboards/chatlog-consumer.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    assert!(
        dashboard["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40)
    );
    assert!(dashboard["title"].is_string());
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert!(
        dashboard.get("id").is_none_or(Value::is_null),
        "provisioned dashboards carry no id"
    );

    // The datasource the panels use is the provisioned one.
    let provisioning = yaml_file("deploy/grafana/provisioning/datasources/prometheus.yml");
    let ds = &provisioning["datasources"][0];
    assert_eq!(ds["type"], "prometheus");
    let uid = ds["uid"].as_str().expect("provisioned datasource uid");

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title").to_owned();
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let g = &panel["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(w >= 1 && h >= 1 && x + w <= 24, "{title}: gridPos {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.clone()) {
                    panic!("panels {other:?} and {title:?} overlap at ({cx}, {cy})");
                }
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            [
                "timeseries",
                "stat",
                "gauge",
                "bargauge",
                "heatmap",
                "table"
            ]
            .contains(&panel["type"].as_str().unwrap_or_default()),
            "{title}: panel type {}",
            panel["type"]
        );
        assert_eq!(panel["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(panel["datasource"]["uid"], uid, "{title}: datasource uid");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().expect("refId").to_owned()),
                "{title}: duplicate refId"
            );
            let expr = t["expr"].as_str().expect("expr");
            assert!(!expr.trim().is_empty(), "{title}: empty expr");
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{title}: unbalanced parentheses in {expr}"
            );
        }
    }

    // Only metrics the consumer exports (plus Prometheus's `up`).
    let exported = exported_series_names();
    let exprs = dashboard_exprs(&dashboard);
    for (title, expr) in &exprs {
        let names = metric_names_in(expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr}");
        for name in names {
            assert!(
                exported.contains(&name) || name == "up",
                "{title}: `{name}` in `{expr}` is not exported by the consumer"
            );
        }
    }
    // Every variable the expressions use is defined.
    let vars: BTreeSet<String> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    for (title, expr) in &exprs {
        for part in expr.split('$').skip(1) {
            let var: String = part
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            assert!(
                var.starts_with("__") || vars.contains(&var),
                "{title}: undefined variable ${var}"
            );
        }
    }

    // The panels an operator needs.
    let has = |pred: &dyn Fn(&str) -> bool| exprs.iter().any(|(_, e)| pred(e));
    let e = |name: &'static str| move |x: &str| x.contains(name);
    assert!(
        has(&|x| x.contains(telemetry::RECORDS) && x.contains("rate(")),
        "throughput"
    );
    assert!(has(&e(telemetry::LAG)), "lag");
    assert!(has(&e(telemetry::BATCH_RECORDS)), "batch size");
    for q in ["0.5", "0.99"] {
        assert!(
            has(&|x| x.contains(&format!("histogram_quantile({q}"))
                && x.contains(telemetry::STAGE_DURATION)
                && x.contains("stage")),
            "stage p{q}"
        );
    }
    assert!(
        has(&|x| x.contains(telemetry::TRANSACTIONS)
            && (x.contains("aborted") || x.contains("result"))),
        "aborts"
    );
    assert!(has(&e(telemetry::DLQ_RECORDS)), "DLQ");
    assert!(has(&e(telemetry::E2E_LATENCY)), "end-to-end latency");
}

// ------------------------------------------------------------------------------- compose

#[test]
fn compose_file_passes_docker_compose_config_and_wires_the_fleet() {
    let compose = tool("docker-compose", "docker-compose");
    // The file refuses to render without its three passwords (compose hardening, issue 14).
    const COMPOSE_PASSWORDS: [(&str, &str); 3] = [
        ("GRAFANA_ADMIN_PASSWORD", "test"),
        ("SCYLLA_PASSWORD", "test"),
        ("REDIS_PASSWORD", "test"),
    ];
    let started = Instant::now();
    let out = run(Command::new(&compose)
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .envs(COMPOSE_PASSWORDS)
        .current_dir(root()));
    println!(
        "docker-compose -f docker-compose.yml config -q: exit {} in {:?}{}",
        out.status,
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    // The resolved file (anchors merged, paths absolute) as docker-compose renders it.
    let out = run(Command::new(&compose)
        .args(["-f", "docker-compose.yml", "config"])
        .envs(COMPOSE_PASSWORDS)
        .current_dir(root()));
    let config = yaml_to_json(&String::from_utf8_lossy(&out.stdout));
    let services = config["services"].as_object().expect("services");
    for name in [
        "kafka",
        "kafka-topics",
        "scylla",
        "redis",
        "migrate",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name}");
    }
    let env = |svc: &Value, key: &str| svc["environment"][key].as_str().map(str::to_owned);

    // Kafka in KRaft mode (no ZooKeeper anywhere), ScyllaDB, Redis.
    let kafka = &services["kafka"];
    assert!(
        kafka["image"]
            .as_str()
            .unwrap()
            .starts_with("apache/kafka:")
    );
    assert!(
        env(kafka, "KAFKA_PROCESS_ROLES")
            .unwrap()
            .contains("controller")
    );
    assert!(!services.keys().any(|k| k.contains("zookeeper")));
    assert!(
        services["scylla"]["image"]
            .as_str()
            .unwrap()
            .starts_with("scylladb/scylla:")
    );
    assert!(
        services["redis"]["image"]
            .as_str()
            .unwrap()
            .starts_with("redis:")
    );

    // The one-shot migration job runs `chatlog-consumer migrate` and is not restarted.
    let migrate = &services["migrate"];
    assert_eq!(migrate["command"], serde_json::json!(["migrate"]));
    assert_eq!(migrate["restart"], "no");
    assert_eq!(migrate["build"]["dockerfile"], "Dockerfile");

    // At least two consumers of one group, each with its own transactional id, started after the
    // migration and the topics, with a grace period above shutdown.timeout.
    let deployed = Config::from_file(&root().join("deploy/consumer/chatlog-consumer.toml"))
        .expect("deploy/consumer/chatlog-consumer.toml parses");
    deployed.validate().expect("and validates");
    let consumers: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("chatlog-consumer"))
        })
        .filter(|(_, s)| s["command"] == serde_json::json!(["run"]))
        .collect();
    assert!(consumers.len() >= 2, "two consumers: {consumers:?}");
    let mut txn_ids = BTreeSet::new();
    for (name, svc) in &consumers {
        let id = env(svc, "CHATLOG_TRANSACTIONAL_ID").unwrap_or_else(|| panic!("{name}: txn id"));
        assert!(
            txn_ids.insert(id.clone()),
            "{name}: transactional id {id} is shared"
        );
        assert!(
            env(svc, "CHATLOG_GROUP_ID").is_none(),
            "{name}: one group for the fleet"
        );
        assert_eq!(
            env(svc, "CHATLOG_CONSUMER_CONFIG").as_deref(),
            Some("/etc/chatlog/consumer.toml")
        );
        for job in ["migrate", "kafka-topics"] {
            assert_eq!(
                svc["depends_on"][job]["condition"], "service_completed_successfully",
                "{name} waits for {job}"
            );
        }
        let grace = svc["stop_grace_period"].as_str().unwrap_or("10s");
        let grace = grace.trim_end_matches('s').parse::<u64>().unwrap();
        assert!(
            Duration::from_secs(grace) > deployed.shutdown.timeout,
            "{name}: stop_grace_period {grace}s must exceed shutdown.timeout"
        );
        assert!(
            svc["restart"].as_str().is_some_and(|r| r != "no"),
            "{name}: restarts"
        );
    }
    assert_eq!(deployed.http.listen.port(), 9464);
    assert!(
        deployed.http.listen.ip().is_unspecified(),
        "reachable from Prometheus"
    );

    // Prometheus scrapes every consumer and loads the alert rules.
    let prom = &services["prometheus"];
    let mounts: Vec<String> = prom["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_str()
                .map_or_else(|| v["source"].to_string(), str::to_owned)
        })
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.contains("deploy/prometheus/alerts.yml")),
        "{mounts:?}"
    );
    let prometheus_yml = yaml_file("deploy/prometheus/prometheus.yml");
    assert!(
        prometheus_yml["rule_files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "alerts.yml")
    );
    let job = prometheus_yml["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "chatlog-consumer")
        .expect("scrape job chatlog-consumer (the alerts select it)");
    let targets: BTreeSet<String> = job["static_configs"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    for (name, _) in &consumers {
        assert!(
            targets.contains(&format!("{name}:9464")),
            "{name} scraped: {targets:?}"
        );
    }

    // Grafana gets the datasource and the dashboard where the provider looks for it.
    let grafana = &services["grafana"];
    let gmounts: Vec<String> = grafana["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect();
    let provider = yaml_file("deploy/grafana/provisioning/dashboards/chatlog.yml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert!(
        gmounts
            .iter()
            .any(|m| m.contains("deploy/grafana/dashboards:") && m.contains(&format!(":{path}"))),
        "dashboards mounted at {path}: {gmounts:?}"
    );
    assert!(
        gmounts
            .iter()
            .any(|m| m.contains("deploy/grafana/provisioning:/etc/grafana/provisioning")),
        "{gmounts:?}"
    );

    // Every bind-mounted file exists.
    for (name, svc) in services {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let Some(spec) = v.as_str() else { continue };
            let source = spec.split(':').next().unwrap();
            if source.starts_with('/') {
                assert!(
                    Path::new(source).exists(),
                    "{name}: {source} does not exist"
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------- Dockerfile

#[test]
fn dockerfile_is_multi_stage_and_runs_as_non_root() {
    // Join continuation lines, drop comments: one instruction per entry.
    let text = read("Dockerfile");
    let mut instructions: Vec<(String, String)> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (op, args) = current.split_once(' ').unwrap_or((current.as_str(), ""));
        instructions.push((op.to_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    let known = [
        "FROM",
        "RUN",
        "COPY",
        "WORKDIR",
        "ARG",
        "ENV",
        "USER",
        "EXPOSE",
        "ENTRYPOINT",
        "CMD",
        "STOPSIGNAL",
        "LABEL",
        "HEALTHCHECK",
    ];
    for (op, _) in &instructions {
        assert!(known.contains(&op.as_str()), "unknown instruction {op}");
    }
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| op == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "multi-stage build");
    let stage = |k: usize| {
        let end = stages.get(k + 1).copied().unwrap_or(instructions.len());
        &instructions[stages[k]..end]
    };
    let builder = stage(0);
    assert!(
        builder[0].1.starts_with("rust:"),
        "builder FROM rust: {}",
        builder[0].1
    );
    assert!(builder[0].1.to_lowercase().contains(" as builder"));
    let runs: String = builder
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, a)| a.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for pkg in ["cmake", "build-essential"] {
        assert!(
            runs.contains(pkg),
            "the builder installs {pkg} (librdkafka)"
        );
    }
    assert!(
        runs.contains("cargo build --release --locked -p chatlog-consumer"),
        "builds the consumer from the lock file"
    );

    let runtime = stage(stages.len() - 1);
    assert!(
        runtime[0].1.starts_with("debian:") && runtime[0].1.contains("-slim"),
        "runtime on Debian slim: {}",
        runtime[0].1
    );
    assert!(
        runtime
            .iter()
            .any(|(op, a)| op == "COPY" && a.starts_with("--from=builder")),
        "the runtime copies the binary from the builder"
    );
    // Libraries linked dynamically in the builder must exist at run time (OpenSSL: rdkafka's
    // `ssl` feature and the CQL driver's TLS).
    let runtime_runs: String = runtime
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, a)| a.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    if runs.contains("libssl-dev") {
        assert!(
            runtime_runs.contains("libssl3"),
            "the runtime installs libssl3"
        );
    }
    assert!(
        runtime_runs.contains("ca-certificates"),
        "TLS needs CA certificates"
    );
    let user = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, a)| a.clone())
        .expect("a USER instruction");
    let name = user.split(':').next().unwrap();
    assert!(
        !["root", "0", ""].contains(&name),
        "runs as non-root, not {user}"
    );
    let entry = runtime
        .iter()
        .find(|(op, _)| op == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(&entry.1).expect("exec-form ENTRYPOINT");
    assert!(entry[0].ends_with("/chatlog-consumer"));
    assert!(
        runtime
            .iter()
            .any(|(op, a)| op == "EXPOSE" && a.contains("9464"))
    );

    // The build context keeps local state out.
    let ignore = read(".dockerignore");
    for entry in ["target", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore: {entry}"
        );
    }
}

// ------------------------------------------------------------------------------- config

/// The dotted paths of every leaf field of `Config`, read from its `{:#?}` rendering (so a new
/// field anywhere appears here without touching this test).
fn config_fields() -> BTreeSet<String> {
    let debug = format!("{:#?}", Config::default());
    let mut path: Vec<String> = Vec::new();
    let mut fields = BTreeSet::new();
    for line in debug.lines() {
        let indent = line.len() - line.trim_start().len();
        let depth = indent / 4;
        let trimmed = line.trim();
        let Some((key, value)) = trimmed.split_once(": ") else {
            continue;
        };
        if !key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        {
            continue;
        }
        path.truncate(depth.saturating_sub(1));
        let is_struct = value.ends_with('{') && value.starts_with(|c: char| c.is_ascii_uppercase());
        if is_struct {
            path.push(key.to_owned());
        } else {
            let mut p = path.clone();
            p.push(key.to_owned());
            fields.insert(p.join("."));
        }
    }
    fields
}

#[test]
fn example_config_parses_validates_and_documents_every_field() {
    for file in [
        "consumer/chatlog-consumer.example.toml",
        "deploy/consumer/chatlog-consumer.toml",
    ] {
        let config = Config::from_file(&root().join(file))
            .unwrap_or_else(|e| panic!("{file} does not parse: {e}"));
        config
            .validate()
            .unwrap_or_else(|e| panic!("{file} does not validate: {e}"));
    }
    // The example holds the defaults.
    let example =
        Config::from_file(&root().join("consumer/chatlog-consumer.example.toml")).unwrap();
    assert_eq!(
        format!("{example:?}"),
        format!("{:?}", Config::default()),
        "the example config states the defaults"
    );

    // Every field appears, set or commented out (`# key = …`), under its section.
    let text = read("consumer/chatlog-consumer.example.toml");
    let mut section = String::new();
    let mut documented = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
            continue;
        }
        let line = line.trim_start_matches('#').trim();
        if let Some((key, _)) = line.split_once(" = ") {
            let key = key.trim().trim_matches('"');
            if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                documented.insert(if section.is_empty() {
                    key.to_owned()
                } else {
                    format!("{section}.{key}")
                });
            }
        }
    }
    let fields = config_fields();
    assert!(fields.len() > 30, "fields read from Debug: {fields:?}");
    // `[kafka.properties]` is a table of free-form librdkafka keys.
    documented.insert("kafka.properties".to_owned());
    let missing: Vec<&String> = fields.difference(&documented).collect();
    assert!(missing.is_empty(), "the example config lacks {missing:?}");
    assert!(text.contains("[kafka.properties]"));
}

// ------------------------------------------------------------------------------- operations guide

#[test]
fn operations_guide_covers_every_metric_alert_and_dlq_header() {
    let ops = read("docs/OPERATIONS.md");
    for name in telemetry::ALL {
        assert!(
            ops.contains(name),
            "docs/OPERATIONS.md does not explain {name}"
        );
    }
    for (name, _) in rule_exprs() {
        assert!(
            ops.contains(&name),
            "docs/OPERATIONS.md does not explain alert {name}"
        );
    }
    for header in [
        "chatlog-dlq-reason",
        "chatlog-dlq-detail",
        "chatlog-dlq-topic",
        "chatlog-dlq-partition",
        "chatlog-dlq-offset",
    ] {
        assert!(ops.contains(header), "DLQ header {header}");
    }
    for reason in telemetry::DLQ_REASONS {
        assert!(ops.contains(&format!("`{reason}`")), "DLQ reason {reason}");
    }
    for topic in [
        "chatlog-consumer migrate",
        "transactional",
        "partitions",
        "/readyz",
    ] {
        assert!(ops.contains(topic), "{topic}");
    }
}

#[test]
fn metric_name_parser_finds_only_metrics() {
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| (*s).to_owned()).collect() };
    let cases: &[(&str, &[&str])] = &[
        (
            "sum by (stage, le) (rate(chatlog_x_bucket{instance=~\"$instance\",le=\"+Inf\"}[$__rate_interval])) \
             / on (instance) group_left (version) chatlog_y and up{job=\"a\"} > bool 0",
            &["chatlog_x_bucket", "chatlog_y", "up"],
        ),
        ("sum(up{job=\"chatlog-consumer\"})", &["up"]),
        ("sum(max by (partition) (chatlog_lag))", &["chatlog_lag"]),
        ("absent(up{job=\"x\"} == 1)", &["up"]),
        (
            "histogram_quantile(0.99, sum without (instance) (rate(a_bucket[5m]))) > 5",
            &["a_bucket"],
        ),
    ];
    for (expr, want) in cases {
        assert_eq!(metric_names_in(expr), set(want), "{expr}");
    }
}
