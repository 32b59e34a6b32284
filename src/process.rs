//! The real `chatlog-consumer` binary as a child process, for the consumer's tests, the chaos
//! fleet and the benchmarks alike: spawn it with its arguments, extra environment and a log file,
//! read what it logged, find the HTTP address it bound, GET its endpoints, wait until ready,
//! stop it (SIGTERM, SIGKILL after some patience), and read its memory from `/proc`. A process is
//! killed when its value drops, so a failing test leaves nothing running.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// What the consumer logs once its HTTP endpoint is bound, followed by the address.
pub const HTTP_LISTENING: &str = "http listening on ";

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(50);

/// How long the consumer may take to bind its HTTP endpoint.
const HTTP_START: Duration = Duration::from_secs(60);

/// A running consumer (or one that ran: its exit status stays readable).
pub struct ConsumerProcess {
    /// Behind a lock so every method takes `&self`: a test waits on one process while it also
    /// lends it to a log dump or a readiness wait.
    child: Mutex<Child>,
    pid: u32,
    log: PathBuf,
    /// Where this process's lines start in `log` (a log file may be shared by successive
    /// instances, as the chaos fleet's per-ordinal logs are).
    log_from: usize,
    http: OnceLock<SocketAddr>,
}

impl ConsumerProcess {
    /// Starts `bin` with `args`, the stack's CQL login and `env` in its environment (and no
    /// `CHATLOG_CONSUMER_CONFIG` inherited from the caller's), stdout discarded and stderr — its
    /// log — appended to `log`.
    pub fn spawn<S: AsRef<OsStr>>(
        bin: &Path,
        args: impl IntoIterator<Item = S>,
        env: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<ConsumerProcess> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let log_from = file.metadata().map_or(0, |m| m.len() as usize);
        let child = Command::new(bin)
            .args(args)
            .env_remove("CHATLOG_CONSUMER_CONFIG")
            .envs(crate::cql_login_env())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (build it: cargo build -p chatlog-consumer)",
                    bin.display()
                )
            })?;
        Ok(ConsumerProcess {
            pid: child.id(),
            child: Mutex::new(child),
            log: log.to_owned(),
            log_from,
            http: OnceLock::new(),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its log file (shared with earlier instances when they were given the same one).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What this process has logged so far.
    pub fn log_text(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(self.log_from..).unwrap_or_default()).into_owned()
    }

    /// The log's last lines, for an error message.
    fn log_tail(&self) -> String {
        const LINES: usize = 200;
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(LINES);
        format!(
            "log {} (last {} lines):\n{}",
            self.log.display(),
            lines.len() - from,
            lines[from..].join("\n")
        )
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its exit status, if it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// Calls `probe` every 50 ms until it answers `Some`; an error (with the log) if it fails,
    /// `limit` passes, or the process exits first. `awaited` names what was waited for.
    fn poll<T>(
        &self,
        limit: Duration,
        awaited: &dyn Fn() -> String,
        mut probe: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + limit;
        loop {
            // The exit is read before the probe, so what the process did just before exiting
            // is seen.
            let exited = self.exited();
            if let Some(done) = probe()? {
                return Ok(done);
            }
            if let Some(status) = exited {
                bail!(
                    "the consumer exited ({status}) before {}; {}",
                    awaited(),
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!("not {} within {limit:?}; {}", awaited(), self.log_tail());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the log contains `needle`; an error (with the log) once `limit` passes or the
    /// process exits without having logged it.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> anyhow::Result<()> {
        self.poll(limit, &|| format!("logging {needle:?}"), || {
            Ok(self.log_text().contains(needle).then_some(()))
        })
    }

    /// The address its HTTP endpoint bound (it logs [`HTTP_LISTENING`] and the address; the
    /// harnesses let it pick a free port), waiting up to a minute for it.
    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        if let Some(addr) = self.http.get() {
            return Ok(*addr);
        }
        self.wait_log(HTTP_LISTENING, HTTP_START)?;
        let text = self.log_text();
        let addr = text
            .lines()
            .find_map(|l| l.split(HTTP_LISTENING).nth(1))
            // The address ends where the line's text does: a human line may end in a colour
            // code, a JSON line in `"`.
            .map(|rest| {
                let end = rest
                    .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .context("the listening line vanished")?;
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("the consumer logged {addr:?} as its address"))?;
        Ok(*self.http.get_or_init(|| addr))
    }

    /// `GET path` on its HTTP endpoint: (status, body).
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let addr = self.http_addr()?;
        crate::http::get(addr, path).with_context(|| format!("GET {path} on {addr}"))
    }

    /// [`get`](Self::get) off the async workers.
    pub async fn get_async(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let addr = self.http_addr()?;
        crate::http::get_async(addr, path)
            .await
            .with_context(|| format!("GET {path} on {addr}"))
    }

    /// Polls `/readyz` until it answers `want` and returns that body; an error (with the log) if
    /// it answers anything but 200 or 503, the process exits, or `limit` passes.
    pub fn wait_readyz(&self, want: u16, limit: Duration) -> anyhow::Result<String> {
        let mut last = None;
        self.poll(limit, &|| format!("answering {want} on /readyz"), || {
            // A refused connection is no answer yet: the exit or the deadline ends the wait.
            let (status, body) = match self.get("/readyz") {
                Ok(answer) => answer,
                Err(e) => {
                    last = Some(format!("{e:#}"));
                    return Ok(None);
                }
            };
            anyhow::ensure!(
                status == 200 || status == 503,
                "/readyz answers 200 or 503, not {status}: {body}"
            );
            last = Some(format!("{status}: {body}"));
            Ok((status == want).then_some(body))
        })
        .with_context(|| {
            let last = last.as_deref().unwrap_or("nothing");
            format!("/readyz last answered {last}")
        })
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-TERM` …) with kill(1).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        crate::signal(self.pid, signal)
    }

    /// SIGTERM: it finishes and commits its current batch, then exits. Does not wait.
    pub fn terminate(&self) {
        if self.exited().is_none() {
            let _ = self.signal("-TERM");
        }
    }

    /// SIGKILL, as a crash: no chance to finish anything. Returns once it is gone.
    pub fn kill(&self) -> Option<ExitStatus> {
        let mut child = self.child();
        let _ = child.kill();
        child.wait().ok()
    }

    /// Waits for it to exit; an error (with the log) if it still runs after `limit`.
    pub fn wait_exit(&self, limit: Duration) -> anyhow::Result<ExitStatus> {
        self.poll(limit, &|| "exiting".to_owned(), || Ok(self.exited()))
    }

    /// SIGTERM, then waits up to `patience` for it to exit, SIGKILL after that; its exit status
    /// either way (a killed process's says so).
    pub fn stop(&self, patience: Duration) -> anyhow::Result<ExitStatus> {
        self.terminate();
        self.wait_exit(patience).or_else(|_| {
            self.kill()
                .with_context(|| format!("pid {} survives SIGKILL", self.pid))
        })
    }

    /// SIGTERM, and an error unless it exits 0 within `patience` (it is killed then).
    pub fn terminate_cleanly(&self, patience: Duration) -> anyhow::Result<()> {
        self.terminate();
        let status = self.wait_exit(patience)?;
        anyhow::ensure!(
            status.success(),
            "SIGTERM must exit 0, got {status}; {}",
            self.log_tail()
        );
        Ok(())
    }

    /// A field of its `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM` …); `None` once it is gone.
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        proc_status_kib(self.pid, field)
    }

    /// Its peak resident memory so far (`VmHWM`), KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM")
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM` …).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User + system CPU seconds of process `pid` (`/proc/<pid>/stat`, USER_HZ = 100); `None` once
/// it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces and parentheses) start after the last ')'.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm)": state is index 0, utime index 11, stime index 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The `i`-th command-line argument as a number, or `default` (the examples' optional sizes).
pub fn arg_or(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The pid of the local stack's `service` (`kafka`, `cassandra`) from `dev/stack.sh`'s pid files
/// (`$CHATLOG_STACK_DIR`, else `~/.cache/chatlog/stack`); `None` unless it is running.
pub fn stack_pid(service: &str) -> Option<u32> {
    let dir = std::env::var_os("CHATLOG_STACK_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/chatlog/stack"))
        })?;
    std::fs::read_to_string(dir.join("run").join(format!("{service}.pid")))
        .ok()?
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|pid| cpu_seconds(*pid).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_grow_with_work_and_end_with_the_process() {
        let me = std::process::id();
        let before = cpu_seconds(me).expect("this process's CPU");
        // Spin until the kernel's tick (1/100 s) has counted some of it.
        let started = Instant::now();
        while cpu_seconds(me).expect("this process's CPU") <= before {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "CPU time never grew"
            );
            std::hint::black_box((0..10_000u64).sum::<u64>());
        }
        assert_eq!(cpu_seconds(u32::MAX), None, "no such process");
    }

    #[test]
    fn proc_status_reads_this_process_memory() {
        // RSS first: the peak read after it is at least as high.
        let rss = proc_status_kib(std::process::id(), "VmRSS").expect("VmRSS");
        let hwm = proc_status_kib(std::process::id(), "VmHWM").expect("VmHWM");
        assert!(hwm >= rss && rss > 0, "VmHWM {hwm} VmRSS {rss}");
        assert_eq!(proc_status_kib(std::process::id(), "NoSuchField"), None);
    }

    #[test]
    fn a_process_is_stopped_by_sigterm_and_its_log_read_from_its_own_start() {
        let dir = crate::TempDir::new("process");
        let log = dir.0.join("shared.log");
        std::fs::write(&log, "an earlier instance's line\n").unwrap();
        let p = ConsumerProcess::spawn(
            Path::new("sh"),
            ["-c", "echo ready >&2; exec sleep 60"],
            &[],
            &log,
        )
        .unwrap();
        p.wait_log("ready", Duration::from_secs(10)).unwrap();
        assert!(!p.log_text().contains("earlier"), "{}", p.log_text());
        assert!(p.wait_log("never", Duration::from_millis(100)).is_err());
        let status = p.stop(Duration::from_secs(10)).unwrap();
        assert!(!status.success(), "sleep dies of SIGTERM: {status}");
        assert_eq!(p.exited(), Some(status));
    }

    #[test]
    fn wait_log_fails_at_once_when_the_process_exits() {
        let dir = crate::TempDir::new("process");
        let p = ConsumerProcess::spawn(
            Path::new("sh"),
            ["-c", "echo bye >&2; exit 3"],
            &[],
            &dir.0.join("c.log"),
        )
        .unwrap();
        let started = Instant::now();
        let err = p.wait_log("never", Duration::from_secs(60)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(30), "{err}");
        assert!(format!("{err}").contains("exit status: 3"), "{err}");
        assert!(format!("{err}").contains("bye"), "{err}");
    }
}
