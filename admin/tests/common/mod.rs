//! Running the `chatlog` binary against the local stack: the stack's variables
//! (`eval "$(dev/stack.sh env)"`: CHATLOG_KAFKA_BOOTSTRAP, CHATLOG_CQL_NODES and the CQL login,
//! CHATLOG_REDIS_URL) are the ones the binary reads, so a test only names what it owns (keyspace,
//! topics).
#![allow(dead_code)] // each test binary uses a part

use std::process::Command;

/// What one run of `chatlog` did.
#[derive(Debug)]
pub struct Ran {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error (logs).
    pub stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `chatlog` with the stack's connection settings (inherited), `--keyspace keyspace`, and
/// `CHATLOG_LOG=warn`.
pub fn chatlog(keyspace: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatlog"));
    cmd.args(["--keyspace", keyspace])
        .env("CHATLOG_LOG", "warn");
    cmd
}

/// Runs `cmd` with `args` to its end (off the async runtime's threads).
pub async fn run(mut cmd: Command, args: &[&str]) -> Ran {
    cmd.args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("start chatlog");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
