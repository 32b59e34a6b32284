//! The deployment files against real tools, without a running consumer: the alert rules pass
//! `promtool check rules` and their unit tests, the Grafana dashboard parses and uses only
//! exported metrics, the compose file passes `docker-compose config` and wires the fleet, the
//! Dockerfile is multi-stage and non-root, the example config parses and documents every field,
//! and the operations guide covers every metric, alert and DLQ header. (The live `/metrics`
//! tests are in consumer/tests/observability.rs.)
//!
//! A missing tool fails the test with the command that installs it; nothing is skipped.

#[path = "../consumer/tests/common/deploy_files.rs"]
mod deploy_files;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chatlog_consumer::{Config, telemetry};
use chatlog_store::telemetry as store_telemetry;
use deploy_files::{
    dashboard_exprs, exported_series_names, metric_names_in, read, root, rule_exprs, run, tool,
    yaml_file, yaml_to_json,
};
use serde_json::Value;

// ------------------------------------------------------------------------------- alert rules

const REQUIRED_ALERTS: &[&str] = &[
    "ChatlogConsumerDown",
    "ChatlogConsumerAbsent",
    "ChatlogConsumerLagHigh",
    "ChatlogDlqRateHigh",
    "ChatlogTransactionAbortRateHigh",
    "ChatlogCacheDegradedReads",
    "ChatlogCacheMarksPending",
];

/// The cached repositories' metrics (chatlog-store's cache): exported by the processes that run
/// the repositories (Logic), not by the consumer. The dashboard's cache row and the
/// `chatlog-cache` alerts use them, and only them besides the consumer's.
const CACHE_METRICS: &[&str] = &[
    store_telemetry::CACHE_REQUESTS,
    store_telemetry::CACHE_LOADS,
    store_telemetry::CACHE_LOCK_WAITS,
    store_telemetry::CACHE_DEGRADED_READS,
    store_telemetry::CACHE_FILLS_REFUSED,
    store_telemetry::CACHE_MARKS_FAILED,
    store_telemetry::CACHE_PENDING_MARKS,
    store_telemetry::CACHE_COALESCED,
];

/// What the dashboard and the alerts may use: the consumer's series and the cache's.
fn known_series_names() -> BTreeSet<String> {
    let mut names = exported_series_names();
    names.extend(CACHE_METRICS.iter().map(|m| (*m).to_owned()));
    names
}

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
    // Rules use only what the consumer (or, for the cache, chatlog-store) exports.
    let exported = known_series_names();
    for (name, expr) in rule_exprs() {
        for metric in metric_names_in(&expr) {
            assert!(
                exported.contains(&metric) || metric == "up",
                "{name}: `{metric}` in `{expr}` is exported neither by the consumer nor by the cache"
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

    // Only metrics the consumer or the cache exports (plus Prometheus's `up`).
    let exported = known_series_names();
    let exprs = dashboard_exprs(&dashboard);
    for (title, expr) in &exprs {
        let names = metric_names_in(expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr}");
        for name in names {
            assert!(
                exported.contains(&name) || name == "up",
                "{title}: `{name}` in `{expr}` is exported neither by the consumer nor by the cache"
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
    // The cache row: hit ratio by repo, loads, lock waits, degraded reads, refused fills,
    // pending marks.
    assert!(
        has(&|x| x.contains(store_telemetry::CACHE_REQUESTS)
            && x.contains("result=\"hit\"")
            && x.contains(" / ")
            && x.contains("by (repo)")),
        "cache hit ratio by repo"
    );
    for (metric, what) in [
        (store_telemetry::CACHE_LOADS, "cache loads"),
        (store_telemetry::CACHE_LOCK_WAITS, "cache lock waits"),
        (store_telemetry::CACHE_DEGRADED_READS, "degraded reads"),
        (store_telemetry::CACHE_FILLS_REFUSED, "refused fills"),
        (store_telemetry::CACHE_PENDING_MARKS, "pending marks"),
    ] {
        assert!(has(&|x| x.contains(metric) && x.contains("repo")), "{what}");
    }
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
    let mounts = volumes(&services["prometheus"]);
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
    let gmounts = volumes(&services["grafana"]);
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

/// The volumes of a compose service as `source:target[:mode]` (the short syntax; the long one
/// by its source).
fn volumes(service: &Value) -> Vec<String> {
    service["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| {
            v.as_str()
                .or_else(|| v["source"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
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
    // The commands a stage's RUN instructions run, one a line.
    let runs_of = |stage: &[(String, String)]| -> String {
        stage
            .iter()
            .filter(|(op, _)| op == "RUN")
            .map(|(_, a)| a.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let runs = runs_of(builder);
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
    let runtime_runs = runs_of(runtime);
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
    for name in telemetry::ALL.iter().chain(CACHE_METRICS) {
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
