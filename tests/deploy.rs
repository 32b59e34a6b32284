//! The deployment files against real tools, without a running consumer: the alert rules pass
//! `promtool check rules` and their unit tests and link their runbook sections, Alertmanager's
//! configuration passes `amtool check-config` and routes by severity, the Grafana dashboards
//! parse, take their datasource from a variable and use only metrics the code records, the
//! compose file passes `docker-compose config` and wires the fleet, the load generator and
//! Alertmanager, the Dockerfile is multi-stage and non-root and ships both binaries, the example
//! config parses and documents every field, and the operations guide covers every metric, alert
//! and DLQ header. (The live `/metrics` tests are in consumer/tests/observability.rs.)
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
    alert_rules, dashboard_exprs, exported_series_names, metric_names_in, read, root, rule_exprs,
    run, tool, yaml_file, yaml_to_json,
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
/// the repositories (Logic), not by the consumer. The Logic dashboard's cache row and the
/// `chatlog-cache` alerts use them.
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

/// Where the libraries that run inside Logic name their metrics: (crate source folder, the file
/// of its name constants). Every `pub const X: &str = "chatlog_…"` there is a metric family.
const LOGIC_METRIC_SOURCES: &[(&str, &str)] = &[
    ("store/src", "store/src/telemetry.rs"),
    ("producer/src", "producer/src/metrics.rs"),
];

/// The metric families a name file declares: constant name → metric name (string literals
/// only; aliases of other constants are skipped, their target is declared elsewhere).
fn metric_consts(rel: &str) -> BTreeMap<String, String> {
    let text = read(rel);
    let mut out = BTreeMap::new();
    for part in text.split("pub const ").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let Some((_, value)) = part.split_once('=') else {
            continue;
        };
        let value = value.trim_start();
        if let Some(rest) = value.strip_prefix('"') {
            let metric = rest.split('"').next().unwrap_or_default();
            if metric.starts_with("chatlog_") {
                out.insert(name, metric.to_owned());
            }
        }
    }
    out
}

/// The `.rs` files under a folder of the repository, recursively.
fn rust_files(rel: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root().join(rel)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The invocations of the `metrics` macros in a crate's sources: (macro, its argument text).
fn metric_macro_calls(src: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in rust_files(src) {
        let text = std::fs::read_to_string(&file).unwrap();
        for mac in ["counter!(", "gauge!(", "histogram!("] {
            let mut from = 0;
            while let Some(at) = text[from..].find(mac) {
                let start = from + at + mac.len();
                // The argument list up to the matching parenthesis.
                let mut depth = 1;
                let mut end = start;
                for (i, c) in text[start..].char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        end = start + i;
                        break;
                    }
                }
                out.push((
                    mac.trim_end_matches("!(").to_owned(),
                    text[start..end].to_owned(),
                ));
                from = start;
            }
        }
    }
    out
}

/// Logic's metric families (producer, seq, history, cache, repositories) as read from the code,
/// with the series names they render as (histograms: `_bucket`, `_sum`, `_count`).
fn logic_series_names() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut families = BTreeSet::new();
    let mut series = BTreeSet::new();
    for (src, names_file) in LOGIC_METRIC_SOURCES {
        let consts = metric_consts(names_file);
        assert!(
            !consts.is_empty(),
            "no metric name constants in {names_file}"
        );
        // A family is a histogram when some `histogram!` (or `describe_histogram!`) names it.
        let histograms: BTreeSet<&String> = metric_macro_calls(src)
            .iter()
            .filter(|(mac, _)| mac.ends_with("histogram"))
            .filter_map(|(_, args)| {
                let first = args.split([',', ')']).next().unwrap().trim();
                consts.get(first.rsplit("::").next().unwrap())
            })
            .collect();
        for metric in consts.values() {
            families.insert(metric.clone());
            if histograms.contains(metric) {
                for suffix in ["_bucket", "_sum", "_count"] {
                    series.insert(format!("{metric}{suffix}"));
                }
            } else {
                series.insert(metric.clone());
            }
        }
    }
    // The reader above must find what the crates declare (a reformatted file must not empty it).
    for typed in CACHE_METRICS.iter().chain(&[
        store_telemetry::SEQ_ALLOCATIONS,
        store_telemetry::HISTORY_REQUESTS,
        chatlog_producer::metrics::RECORDS,
        chatlog_producer::metrics::MUTATIONS,
        chatlog_producer::metrics::CLOCK_OFFSET,
    ]) {
        assert!(families.contains(*typed), "{typed} not read from the code");
    }
    for histogram in [
        chatlog_producer::metrics::SEND_DURATION,
        store_telemetry::HISTORY_REQUEST_DURATION,
    ] {
        assert!(
            series.contains(&format!("{histogram}_bucket")),
            "{histogram} not recognised as a histogram"
        );
    }
    (families, series)
}

/// What the dashboards and the alerts may use: the consumer's series and Logic's (producer,
/// seq, history, cache, repositories), as the code names them.
fn known_series_names() -> BTreeSet<String> {
    let mut names = exported_series_names();
    names.extend(logic_series_names().1);
    names
}

/// GitHub's anchors of a Markdown file's headings (outside code fences): lower case, spaces to
/// `-`, punctuation dropped, `-1`, `-2`… for repeated headings.
fn markdown_anchors(text: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let slug = github_slug(&line[hashes..]);
        let mut anchor = slug.clone();
        let mut n = 0;
        while !anchors.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
    }
    anchors
}

/// GitHub's slug of a heading's text.
fn github_slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The repository's web address (Cargo.toml, `[workspace.package] repository`).
fn repository_url() -> String {
    let manifest = read("Cargo.toml");
    let section = manifest
        .split("[workspace.package]")
        .nth(1)
        .expect("Cargo.toml has [workspace.package]");
    let section = section.split("\n[").next().unwrap();
    let line = section
        .lines()
        .find(|l| l.trim_start().starts_with("repository"))
        .expect("[workspace.package] repository");
    let url = line.split('"').nth(1).expect("repository = \"…\"");
    assert!(url.starts_with("https://"), "repository {url}");
    url.trim_end_matches('/').to_owned()
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
    let ops_text = read("docs/OPERATIONS.md");
    let anchors = markdown_anchors(&ops_text);
    let ops = ops_text.to_lowercase();
    let repository = repository_url();
    let mut alerts = BTreeSet::new();
    for (name, rule) in &alert_rules() {
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
        // runbook_url: the alert's own section of docs/OPERATIONS.md on the repository's site.
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no runbook_url annotation"));
        let (page, anchor) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} has no #anchor"));
        assert_eq!(
            page,
            format!("{repository}/blob/main/docs/OPERATIONS.md"),
            "{name}: runbook_url points at docs/OPERATIONS.md of the repository"
        );
        assert!(
            anchors.contains(anchor),
            "{name}: runbook_url anchor #{anchor} is no heading of docs/OPERATIONS.md"
        );
        assert_eq!(
            anchor,
            github_slug(name),
            "{name}: runbook_url links another alert's section"
        );
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
    // Rules use only what the consumer or the Logic libraries record.
    let exported = known_series_names();
    for (name, expr) in rule_exprs() {
        for metric in metric_names_in(&expr) {
            assert!(
                exported.contains(&metric) || metric == "up",
                "{name}: `{metric}` in `{expr}` is recorded neither by the consumer nor by \
                 chatlog-store or chatlog-producer"
            );
        }
    }
}

// ------------------------------------------------------------------------------- dashboards

/// The provisioned dashboards: (file name, parsed JSON), every `*.json` of
/// deploy/grafana/dashboards.
fn dashboards() -> Vec<(String, Value)> {
    let dir = root().join("deploy/grafana/dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            let value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"));
            (name, value)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Where a dashboard's panel, target or variable gets its data: the `${datasource}` variable,
/// of type prometheus.
fn assert_uses_datasource_variable(what: &str, datasource: &Value) {
    assert_eq!(
        datasource["type"], "prometheus",
        "{what}: datasource {datasource}"
    );
    assert_eq!(
        datasource["uid"], "${datasource}",
        "{what}: the datasource must be the dashboard variable `${{datasource}}`, not {datasource}"
    );
}

/// Checks one dashboard: structure, layout, the datasource variable everywhere, and returns its
/// expressions.
fn check_dashboard(file: &str, dashboard: &Value, provisioned_uid: &str) -> Vec<(String, String)> {
    assert!(
        dashboard["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40),
        "{file}: uid"
    );
    assert!(dashboard["title"].is_string(), "{file}: title");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{file}: schemaVersion"
    );
    assert!(
        dashboard.get("id").is_none_or(Value::is_null),
        "{file}: provisioned dashboards carry no id"
    );

    // The datasource is a variable (type datasource, Prometheus ones), defaulting to the
    // provisioned one, so the dashboard imports into any Grafana.
    let variables: Vec<&Value> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let ds = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .unwrap_or_else(|| panic!("{file}: no `datasource` variable"));
    assert_eq!(ds["type"], "datasource", "{file}: datasource variable type");
    assert_eq!(
        ds["query"], "prometheus",
        "{file}: datasource variable query"
    );
    assert_eq!(
        ds["current"]["value"], provisioned_uid,
        "{file}: the datasource variable defaults to the provisioned datasource"
    );
    for v in &variables {
        if v["type"] == "query" {
            assert_uses_datasource_variable(
                &format!("{file}: variable {}", v["name"]),
                &v["datasource"],
            );
        }
    }

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title").to_owned();
        let title = format!("{file}: {title}");
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "{file}: duplicate panel id {id}");
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
            assert!(
                panel["panels"].as_array().is_none_or(Vec::is_empty),
                "{title}: a collapsed row hides its panels from these checks"
            );
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
        assert_uses_datasource_variable(&title, &panel["datasource"]);
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            if !t["datasource"].is_null() {
                assert_uses_datasource_variable(&format!("{title}: target"), &t["datasource"]);
            }
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
            // Labels are bounded: nothing groups or names series by a session or a user.
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            for text in [expr, legend] {
                for unbounded in ["session", "user", "msg_id", "client_msg"] {
                    assert!(
                        !text.contains(unbounded),
                        "{title}: `{unbounded}` in {text:?}: no unbounded label on a dashboard"
                    );
                }
            }
        }
    }

    // Every variable the expressions use is defined.
    let exprs: Vec<(String, String)> = dashboard_exprs(dashboard)
        .into_iter()
        .map(|(t, e)| (format!("{file}: {t}"), e))
        .collect();
    let vars: BTreeSet<String> = variables
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    for (title, expr) in &exprs {
        for part in expr.split('$').skip(1) {
            let var: String = part
                .trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            assert!(
                var.starts_with("__") || vars.contains(&var),
                "{title}: undefined variable ${var}"
            );
        }
    }
    exprs
}

#[test]
fn dashboards_are_valid_use_the_datasource_variable_and_cover_the_pipeline() {
    // The datasource the panels default to is the provisioned one.
    let provisioning = yaml_file("deploy/grafana/provisioning/datasources/prometheus.yml");
    let ds = &provisioning["datasources"][0];
    assert_eq!(ds["type"], "prometheus");
    let uid = ds["uid"].as_str().expect("provisioned datasource uid");

    let dashboards = dashboards();
    let files: BTreeSet<&str> = dashboards.iter().map(|(f, _)| f.as_str()).collect();
    for want in ["chatlog-consumer.json", "chatlog-logic.json"] {
        assert!(files.contains(want), "deploy/grafana/dashboards/{want}");
    }
    let mut uids = BTreeSet::new();
    let mut by_file: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (file, dashboard) in &dashboards {
        assert!(
            uids.insert(dashboard["uid"].as_str().unwrap_or_default().to_owned()),
            "{file}: dashboard uid {} is taken",
            dashboard["uid"]
        );
        by_file.insert(file.clone(), check_dashboard(file, dashboard, uid));
    }

    // Only metrics the code records (the consumer's, and the Logic libraries': producer, seq,
    // history, cache, repositories), plus Prometheus's `up`.
    let exported = known_series_names();
    for (title, expr) in by_file.values().flatten() {
        let names = metric_names_in(expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr}");
        for name in names {
            assert!(
                exported.contains(&name) || name == "up",
                "{title}: `{name}` in `{expr}` is recorded neither by the consumer nor by \
                 chatlog-store or chatlog-producer (a typo, or a renamed metric?)"
            );
        }
    }

    // The consumer's panels an operator needs.
    let consumer = &by_file["chatlog-consumer.json"];
    let has = |exprs: &[(String, String)], pred: &dyn Fn(&str) -> bool| {
        exprs.iter().any(|(_, e)| pred(e))
    };
    let e = |name: &'static str| move |x: &str| x.contains(name);
    assert!(
        has(consumer, &|x| x.contains(telemetry::RECORDS)
            && x.contains("rate(")),
        "throughput"
    );
    assert!(has(consumer, &e(telemetry::LAG)), "lag");
    assert!(has(consumer, &e(telemetry::BATCH_RECORDS)), "batch size");
    for q in ["0.5", "0.99"] {
        assert!(
            has(consumer, &|x| x
                .contains(&format!("histogram_quantile({q}"))
                && x.contains(telemetry::STAGE_DURATION)
                && x.contains("stage")),
            "stage p{q}"
        );
    }
    assert!(
        has(consumer, &|x| x.contains(telemetry::TRANSACTIONS)
            && (x.contains("aborted") || x.contains("result"))),
        "aborts"
    );
    assert!(has(consumer, &e(telemetry::DLQ_RECORDS)), "DLQ");
    assert!(
        has(consumer, &e(telemetry::E2E_LATENCY)),
        "end-to-end latency"
    );
    // The consumer's dashboard shows only what a consumer exports (its live test,
    // consumer/tests/observability.rs, scrapes one and compares).
    let consumer_series = exported_series_names();
    for (title, expr) in consumer {
        for name in metric_names_in(expr) {
            assert!(
                consumer_series.contains(&name) || name == "up",
                "{title}: `{name}` is not a consumer metric: Logic's go on chatlog-logic.json"
            );
        }
    }

    // The Logic dashboard: the cache row (hit ratio by repo, loads, lock waits, degraded reads,
    // refused fills, pending marks), and every family the Logic libraries record.
    let logic = &by_file["chatlog-logic.json"];
    assert!(
        has(logic, &|x| x.contains(store_telemetry::CACHE_REQUESTS)
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
        assert!(
            has(logic, &|x| x.contains(metric) && x.contains("repo")),
            "{what}"
        );
    }
    for q in ["0.5", "0.99"] {
        for (histogram, by) in [
            (chatlog_producer::metrics::SEND_DURATION, "by (le)"),
            (store_telemetry::HISTORY_REQUEST_DURATION, "by (op, le)"),
        ] {
            assert!(
                has(logic, &|x| x.contains(&format!("histogram_quantile({q}"))
                    && x.contains(&format!("{histogram}_bucket"))
                    && x.contains(by)),
                "{histogram} p{q} {by}"
            );
        }
    }
    assert!(
        has(logic, &|x| x.contains(store_telemetry::SEQ_ALLOCATIONS)
            && x.contains("by (path)")),
        "seq allocations by path"
    );
    let families = logic_series_names().0;
    let used: BTreeSet<String> = logic
        .iter()
        .flat_map(|(_, e)| metric_names_in(e))
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).map(str::to_owned))
                .filter(|family| families.contains(family))
                .unwrap_or(n)
        })
        .collect();
    for family in families {
        assert!(
            used.contains(&family),
            "{family} (recorded by a Logic library) has no panel on chatlog-logic.json"
        );
    }
}

/// The literal label keys of a `metrics` macro's arguments (`NAME, "key" => value, …`).
fn label_keys(args: &str) -> Vec<String> {
    // Each `=>` is preceded by its key: every part but the last ends with one.
    let parts: Vec<&str> = args.split("=>").collect();
    parts[..parts.len() - 1]
        .iter()
        .filter_map(|part| {
            let key = part.rsplit(',').next().unwrap().trim();
            key.strip_prefix('"')
                .and_then(|k| k.strip_suffix('"'))
                .map(str::to_owned)
        })
        .collect()
}

/// Whether a label key names something unbounded (a session, a user, a message, a key).
fn is_unbounded_label(key: &str) -> bool {
    ["session", "user", "sender", "msg", "client", "_id", "key"]
        .iter()
        .any(|u| key.contains(u))
}

/// No metric the code records takes a label that could hold a session, a user or a message:
/// label keys of every `counter!`/`gauge!`/`histogram!` call of the consumer and the Logic
/// libraries.
#[test]
fn recorded_metrics_take_no_unbounded_label() {
    let mut keys = BTreeSet::new();
    for src in ["consumer/src", "store/src", "producer/src"] {
        for (mac, args) in metric_macro_calls(src) {
            for key in label_keys(&args) {
                assert!(
                    !is_unbounded_label(&key),
                    "{src}: {mac}!({args}) has the label `{key}`: labels must be bounded"
                );
                keys.insert(key);
            }
        }
    }
    // The reader found the labels it should (a change of style must not blind it).
    for key in ["outcome", "stage", "reason", "repo", "path", "op", "result"] {
        assert!(keys.contains(key), "label `{key}` not found: {keys:?}");
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
        "load",
        "alertmanager",
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

    // The load generator: the operator tool from the same image, with the consumers' config
    // file and credentials, sending for ever once every consumer is healthy (so the dashboard
    // shows traffic right after `up`), restarted if it fails.
    let load = &services["load"];
    let image = consumers[0].1["image"].clone();
    assert_eq!(load["image"], image, "load runs the consumers' image");
    assert_eq!(
        load["entrypoint"],
        serde_json::json!(["/usr/local/bin/chatlog"]),
        "load runs the operator tool"
    );
    let command: Vec<&str> = load["command"]
        .as_array()
        .expect("load command")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(command.first(), Some(&"load"), "{command:?}");
    for flag in ["--forever", "--rate", "--quiet"] {
        assert!(command.contains(&flag), "load {flag}: {command:?}");
    }
    for key in [
        "CHATLOG_CONSUMER_CONFIG",
        "CHATLOG_CQL_USERNAME",
        "CHATLOG_CQL_PASSWORD",
        "CHATLOG_REDIS_PASSWORD",
    ] {
        assert_eq!(
            env(load, key),
            env(consumers[0].1, key),
            "load takes the consumers' {key}"
        );
        assert!(env(load, key).is_some(), "load: {key}");
    }
    assert_eq!(
        env(load, "CHATLOG_TRANSACTIONAL_ID"),
        None,
        "load is no consumer"
    );
    assert_eq!(
        volumes(load),
        volumes(consumers[0].1),
        "load mounts the consumers' config file"
    );
    for (name, _) in &consumers {
        assert_eq!(
            load["depends_on"][name.as_str()]["condition"],
            "service_healthy",
            "load starts once {name} is healthy"
        );
    }
    assert!(
        load["restart"].as_str().is_some_and(|r| r != "no"),
        "load restarts after a failure"
    );
    assert!(load["ports"].is_null(), "load publishes nothing");
    // The doctor one-shot, when there is one: the operator tool's `doctor`, run once.
    if let Some(doctor) = services.get("doctor") {
        assert_eq!(doctor["image"], image);
        assert_eq!(doctor["entrypoint"], load["entrypoint"]);
        assert_eq!(doctor["command"], serde_json::json!(["doctor"]));
        assert_eq!(doctor["restart"], "no");
        assert_eq!(
            env(doctor, "CHATLOG_CQL_PASSWORD"),
            env(consumers[0].1, "CHATLOG_CQL_PASSWORD")
        );
    }

    // Alertmanager: a pinned image, its config file mounted where its --config.file says,
    // published on 127.0.0.1 only, and Prometheus sends it the alerts.
    let am = &services["alertmanager"];
    let am_image = am["image"].as_str().expect("alertmanager image");
    let version = am_image
        .strip_prefix("prom/alertmanager:v")
        .unwrap_or_else(|| panic!("prom/alertmanager:vX.Y.Z, not {am_image}"));
    assert!(
        version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
        "a pinned Alertmanager version, not {am_image}"
    );
    let am_config = am["command"]
        .as_array()
        .expect("alertmanager command")
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix("--config.file="))
        .expect("alertmanager --config.file");
    assert!(
        volumes(am)
            .iter()
            .any(|m| m.contains(&format!("deploy/alertmanager/alertmanager.yml:{am_config}"))),
        "deploy/alertmanager/alertmanager.yml mounted at {am_config}: {:?}",
        volumes(am)
    );
    let am_ports: Vec<String> = am["ports"]
        .as_array()
        .expect("alertmanager ports")
        .iter()
        .map(|p| {
            p.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| p.to_string())
        })
        .collect();
    assert!(
        am_ports
            .iter()
            .any(|p| p.starts_with("127.0.0.1:9093:9093")),
        "Alertmanager on 127.0.0.1:9093: {am_ports:?}"
    );
    let alertmanagers: Vec<String> = prometheus_yml["alerting"]["alertmanagers"]
        .as_array()
        .expect("prometheus.yml alerting.alertmanagers")
        .iter()
        .flat_map(|a| a["static_configs"].as_array().cloned().unwrap_or_default())
        .flat_map(|c| c["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    assert!(
        alertmanagers.contains(&"alertmanager:9093".to_owned()),
        "Prometheus sends its alerts to the alertmanager service: {alertmanagers:?}"
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

// ------------------------------------------------------------------------------- Alertmanager

/// Where Alertmanager sends an alert with these labels: the receiver `amtool` names.
fn amtool_route(amtool: &Path, labels: &[&str]) -> String {
    let out = run(Command::new(amtool)
        .args(["config", "routes", "test", "--config.file=alertmanager.yml"])
        .args(labels)
        .current_dir(root().join("deploy/alertmanager")));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn alertmanager_config_passes_amtool_and_routes_by_severity() {
    let amtool = tool("amtool", "prometheus-alertmanager");
    let out = run(Command::new(&amtool)
        .args(["check-config", "alertmanager.yml"])
        .current_dir(root().join("deploy/alertmanager")));
    println!("{}", String::from_utf8_lossy(&out.stdout));

    // As shipped nothing is delivered anywhere: no receiver has an integration (the file says
    // how to add one), so a fresh `docker compose up` sends no traffic out of the machine.
    let config = yaml_file("deploy/alertmanager/alertmanager.yml");
    let receivers = config["receivers"].as_array().expect("receivers");
    for r in receivers {
        let integrations: Vec<&String> = r
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.ends_with("_configs"))
            .collect();
        assert!(
            integrations.is_empty(),
            "receiver {} delivers through {integrations:?}: ship it commented out",
            r["name"]
        );
    }

    // Every alert of alerts.yml reaches a receiver chosen by its severity: critical ones the
    // pager, warnings the chat.
    let mut routed = BTreeMap::new();
    for (name, rule) in &alert_rules() {
        let severity = rule["labels"]["severity"].as_str().unwrap();
        let receiver = amtool_route(
            &amtool,
            &[
                &format!("alertname={name}"),
                &format!("severity={severity}"),
            ],
        );
        routed.insert(name.to_owned(), receiver.clone());
        let want = if severity == "critical" {
            "pager"
        } else {
            "chat"
        };
        assert_eq!(
            receiver, want,
            "{name} (severity {severity}) goes to {want}"
        );
    }
    println!("routes: {routed:?}");
    assert!(routed.values().any(|r| r == "pager") && routed.values().any(|r| r == "chat"));
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
        runs.contains("cargo build --release --locked -p chatlog-consumer -p chatlog-admin"),
        "builds the consumer and the operator tool from the lock file"
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
    // Both binaries land in /usr/local/bin: `chatlog-consumer` and the operator tool `chatlog`
    // (`docker run --entrypoint chatlog …`).
    let installed: BTreeSet<String> = runtime
        .iter()
        .filter(|(op, a)| op == "COPY" && a.starts_with("--from=builder"))
        .flat_map(|(_, a)| {
            let parts: Vec<&str> = a.split_whitespace().skip(1).collect();
            let (dest, sources) = parts.split_last().unwrap();
            sources
                .iter()
                .map(|src| {
                    let file = src.rsplit('/').next().unwrap();
                    if dest.ends_with('/') {
                        format!("{dest}{file}")
                    } else {
                        (*dest).to_owned()
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for bin in ["/usr/local/bin/chatlog-consumer", "/usr/local/bin/chatlog"] {
        assert!(
            installed.contains(bin),
            "the image ships {bin}: {installed:?}"
        );
    }
    assert!(
        text.contains("--entrypoint chatlog"),
        "the Dockerfile says how to run the operator tool"
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
fn label_key_reader_finds_unbounded_labels() {
    let keys = label_keys(
        "crate::telemetry::X, \"repo\" => repo, \"session_id\" => id.to_string(), \"result\" => \"hit\"",
    );
    assert_eq!(keys, ["repo", "session_id", "result"]);
    assert!(is_unbounded_label(&keys[1]));
    assert!(!is_unbounded_label(&keys[0]) && !is_unbounded_label(&keys[2]));
    assert!(label_keys("telemetry::READY").is_empty());
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
