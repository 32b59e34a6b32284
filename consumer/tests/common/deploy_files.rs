//! Readers of the repository's deployment files, shared by the consumer's live-metrics test and
//! the root package's `tests/deploy.rs` (which includes this file with `#[path]`): the workspace
//! root, required tools, YAML through PyYAML, the dashboard's and alert rules' PromQL, and the
//! metric names an expression references.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chatlog_consumer::telemetry;
use serde_json::Value;

/// The workspace root (where docker-compose.yml, Dockerfile and deploy/ live), from either the
/// consumer package or the root package.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("docker-compose.yml").is_file())
        .expect("workspace root with docker-compose.yml")
        .to_path_buf()
}
/// The absolute path of a required tool, or a failure saying how to install it.
pub fn tool(name: &str, package: &str) -> PathBuf {
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

/// Runs `cmd`; fails with its output unless it exits 0.
pub fn run(cmd: &mut Command) -> Output {
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

/// Every series name an exported family renders as (histograms: `_bucket`, `_sum`, `_count`).
pub fn exported_series_names() -> BTreeSet<String> {
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
pub fn metric_names_in(expr: &str) -> BTreeSet<String> {
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
pub fn label_list_context(chars: &[char], at: usize) -> bool {
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

/// A file of the repository as text.
pub fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// YAML text as JSON, through PyYAML (the YAML library docker-compose itself is built on).
pub fn yaml_to_json(text: &str) -> Value {
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
pub fn yaml_file(rel: &str) -> Value {
    yaml_to_json(&read(rel))
}

/// The dashboard's expressions: (panel title, expr).
pub fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
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

/// The alerting rules of deploy/prometheus/alerts.yml (recording rules left out): (alert name,
/// the rule).
pub fn alert_rules() -> Vec<(String, Value)> {
    let rules = yaml_file("deploy/prometheus/alerts.yml");
    let mut out = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            if let Some(name) = rule["alert"].as_str() {
                out.push((name.to_owned(), rule.clone()));
            }
        }
    }
    out
}

/// Alert and recording rule expressions of deploy/prometheus/alerts.yml: (rule name, expr).
pub fn rule_exprs() -> Vec<(String, String)> {
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
pub fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("$instance", ".*")
        .replace("$job", "chatlog-consumer")
}
