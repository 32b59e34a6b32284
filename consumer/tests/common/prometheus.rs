//! A real Prometheus server for the live-metrics tests: scrapes consumers every second, loads
//! deploy/prometheus/alerts.yml, answers instant queries.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::deploy_files::{root, tool};
use chatlog::http::get as http_get;

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

/// A Prometheus server run by a test; killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` with a 1 s scrape of `targets` (job `chatlog-consumer`) and the alert
    /// rules of deploy/prometheus/alerts.yml, and waits until it is ready.
    pub fn start(targets: &[SocketAddr]) -> Prometheus {
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
        let addr: SocketAddr = format!("127.0.0.1:{}", chatlog::free_port())
            .parse()
            .unwrap();
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant query; returns the `data` object, failing on any error status.
    pub fn query(&self, expr: &str) -> Value {
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
    pub fn wait_for(
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
    pub fn scalar(&self, expr: &str) -> Option<f64> {
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
