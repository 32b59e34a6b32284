//! `verify windows [--session ID | --all [--match GLOB]] [--repair] [--concurrency N]`: each
//! window compared with the CQL table by [`chatlog_store::verify::verify_window`].
//!
//! A window is, in this order:
//! - **other-epoch**: written in another Redis epoch (Redis restarted from a snapshot or failed
//!   over since). History never serves it, whatever it holds, so it is no inconsistency; the
//!   consumer's next message for the session starts the window over. `--repair` deletes it.
//! - **consistent** (or absent): history may trust it.
//! - **inconsistent**: a hole, a member without a row, a member that differs from its row, a
//!   member that does not decode. `--repair` rebuilds it from the table
//!   ([`chatlog_store::verify::repair_window`]: DEL, read the newest W rows, append them through
//!   the consumer's writer — safe with a consumer writing the same session) and verifies it again;
//!   a window still inconsistent then (a message of a live consumer in flight) is repaired again,
//!   up to [`REPAIR_ATTEMPTS`] times.
//!
//! `--all` walks every window key with `SCAN … MATCH chatlog:{<glob>}:win COUNT 500` (a page at a
//! time, never `KEYS`), `--concurrency` windows at once. One line per window that is not
//! consistent, then a summary. Exit 1 if an inconsistent window remains (not repaired, or no
//! `--repair`) or a window could not be checked; 0 otherwise.

use std::collections::HashSet;

use chatlog_schemas::Codec;
use chatlog_store::history::History;
use chatlog_store::keys;
use chatlog_store::verify::{self, Report};
use futures::TryStreamExt;

use crate::cli::{VerifyArgs, VerifyWhat};
use crate::connect::Ctx;
use crate::{Error, Outcome, Result};

/// How often `--repair` rebuilds one window that a live consumer keeps changing under it.
pub const REPAIR_ATTEMPTS: u32 = 3;

/// Window keys asked for per `SCAN` call.
const SCAN_PAGE: usize = 500;

/// What a window is, by its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// No window (no members).
    Absent,
    /// Written in this epoch, and history may trust it.
    Consistent,
    /// Written in this epoch, and it disagrees with the table.
    Inconsistent,
    /// Written in another Redis epoch: never served.
    OtherEpoch,
}

impl Class {
    /// The class of the window `report` describes.
    pub fn of(report: &Report) -> Class {
        if report.window_members == 0 {
            Class::Absent
        } else if !report.window_epoch_current {
            Class::OtherEpoch
        } else if report.is_consistent() {
            Class::Consistent
        } else {
            Class::Inconsistent
        }
    }

    /// Whether history may serve the window as it is (or there is none).
    pub fn is_fine(self) -> bool {
        matches!(self, Class::Absent | Class::Consistent)
    }

    /// The class in words (problems in capitals).
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Absent => "no window",
            Class::Consistent => "consistent",
            Class::Inconsistent => "INCONSISTENT",
            Class::OtherEpoch => "other-epoch",
        }
    }
}

/// What `--repair` did to a window.
#[derive(Debug)]
enum Action {
    /// Nothing (not asked, or nothing to do).
    None,
    /// Rebuilt from the table: rows appended, attempts, and the report afterwards.
    Repaired {
        rows: usize,
        attempts: u32,
        after: Report,
    },
    /// Still inconsistent after every attempt (the last report), or the repair failed.
    NotRepaired(std::result::Result<Report, String>),
    /// Deleted (a window of another epoch).
    Deleted,
    /// Deleting it failed.
    NotDeleted(String),
}

/// One window checked.
#[derive(Debug)]
struct Checked {
    session_id: String,
    /// The report before any repair, or why the window could not be checked.
    report: std::result::Result<Report, String>,
    action: Action,
}

impl Checked {
    fn class(&self) -> Option<Class> {
        self.report.as_ref().ok().map(Class::of)
    }

    /// Whether a problem remains: an inconsistent window not repaired, or no verdict at all.
    fn problem_left(&self) -> bool {
        match (self.class(), &self.action) {
            (None, _) => true,
            (Some(Class::Inconsistent), Action::Repaired { .. }) => false,
            (Some(Class::Inconsistent), _) => true,
            _ => false,
        }
    }
}

/// The connections one check needs.
struct Tools<'a> {
    history: &'a History,
    redis: chatlog_store::RedisConnection,
    codec: Codec,
    repair: bool,
}

/// Runs `verify`.
pub async fn run(ctx: &Ctx, args: &VerifyArgs) -> Result<Outcome> {
    let VerifyWhat::Windows {
        session,
        all,
        repair,
        concurrency,
        matching,
    } = &args.what;
    let tools = Tools {
        history: ctx.history().await.map_err(|e| {
            Error::Other(format!(
                "{e} (keyspace {}, redis {}): is the stack up and the login right? \
                 (locally: dev/stack.sh up, and eval \"$(dev/stack.sh env)\")",
                ctx.config.cql.keyspace, ctx.config.redis.url
            ))
        })?,
        redis: ctx.redis().await?,
        codec: ctx.codec()?,
        repair: *repair,
    };
    let mut summary = Summary::default();
    match (session, all) {
        (Some(sid), false) => {
            let checked = check(&tools, sid).await;
            if let Ok(report) = &checked.report {
                println!("{report}");
            }
            println!("{}", line(&checked));
            print!("{}", action_lines(&checked));
            summary.add(&checked);
        }
        (None, true) => {
            if *concurrency == 0 {
                return Err(Error::Usage("--concurrency must be at least 1".into()));
            }
            let matching = matching.as_deref().unwrap_or("*");
            // SCAN walks one node's keyspace: on a Redis Cluster, every master's in turn.
            let masters = ctx.config.redis.connect_masters(&tools.redis).await?;
            walk(&tools, &masters, matching, *concurrency, &mut summary).await?;
        }
        _ => {
            return Err(Error::Usage(
                "verify windows: give --session ID or --all".into(),
            ));
        }
    }
    println!("{summary}");
    Ok(Outcome::problems_if(summary.problems_left > 0))
}

/// Every window key matching `matching` (a session id glob), `concurrency` at once; one line per
/// window that is not consistent.
async fn walk(
    tools: &Tools<'_>,
    nodes: &[chatlog_store::RedisConnection],
    matching: &str,
    concurrency: usize,
    summary: &mut Summary,
) -> Result<()> {
    let pattern = keys::window(matching);
    // (cursor, node): a cursor of `None` moves on to the next node; past the last, the end.
    let pages = futures::stream::try_unfold((Some(0u64), 0usize), move |(cursor, node)| {
        let pattern = pattern.clone();
        async move {
            let (cursor, node) = match cursor {
                Some(cursor) => (cursor, node),
                None => (0, node + 1),
            };
            let Some(con) = nodes.get(node) else {
                return Ok(None);
            };
            let mut con = con.clone();
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_PAGE)
                .query_async(&mut con)
                .await
                .map_err(Error::redis(format!("SCAN the window keys ({pattern})")))?;
            let next = (next != 0).then_some(next);
            Ok::<_, Error>(Some((keys, (next, node))))
        }
    });
    // SCAN may return a key twice: each window is checked once.
    let mut seen = HashSet::new();
    let results = pages
        .map_ok(|keys| futures::stream::iter(keys.into_iter().map(Ok)))
        .try_flatten()
        .try_filter_map(|key: String| {
            let sid = keys::session_of_window(&key)
                .filter(|sid| seen.insert(sid.to_string()))
                .map(str::to_owned);
            futures::future::ready(Ok(sid))
        })
        .map_ok(|sid| async move { Ok::<_, Error>(check(tools, &sid).await) })
        .try_buffer_unordered(concurrency);
    let mut results = std::pin::pin!(results);
    while let Some(checked) = results.try_next().await? {
        if checked.class() != Some(Class::Consistent) && checked.class() != Some(Class::Absent) {
            println!("{}", line(&checked));
            print!("{}", action_lines(&checked));
        }
        summary.add(&checked);
    }
    Ok(())
}

/// Verifies one window and, with `--repair`, repairs or deletes it.
async fn check(tools: &Tools<'_>, session_id: &str) -> Checked {
    let mut checked = Checked {
        session_id: session_id.to_owned(),
        report: verify::verify_window(tools.history, session_id)
            .await
            .map_err(|e| e.to_string()),
        action: Action::None,
    };
    if !tools.repair {
        return checked;
    }
    let mut con = tools.redis.clone();
    checked.action = match checked.class() {
        Some(Class::OtherEpoch) => match verify::delete_window(&mut con, session_id).await {
            Ok(()) => Action::Deleted,
            Err(e) => Action::NotDeleted(e.to_string()),
        },
        Some(Class::Inconsistent) => repair(tools, &mut con, session_id).await,
        _ => Action::None,
    };
    checked
}

/// Rebuilds a window and verifies it, again while a live consumer's message in flight leaves it
/// inconsistent, up to [`REPAIR_ATTEMPTS`] times.
async fn repair(
    tools: &Tools<'_>,
    con: &mut chatlog_store::RedisConnection,
    session_id: &str,
) -> Action {
    let mut last = Err(String::new());
    for attempt in 1..=REPAIR_ATTEMPTS {
        let rows = match verify::repair_window(tools.history, con, &tools.codec, session_id).await {
            Ok(rows) => rows,
            Err(e) => return Action::NotRepaired(Err(format!("repair failed: {e}"))),
        };
        match verify::verify_window(tools.history, session_id).await {
            Ok(after) if Class::of(&after).is_fine() => {
                return Action::Repaired {
                    rows,
                    attempts: attempt,
                    after,
                };
            }
            Ok(after) => last = Ok(after),
            Err(e) => last = Err(format!("verify after the repair failed: {e}")),
        }
    }
    Action::NotRepaired(last)
}

/// One line about a window that is not consistent.
fn line(checked: &Checked) -> String {
    let sid = &checked.session_id;
    match (&checked.report, checked.class()) {
        (Err(e), _) => format!("FAILED        {sid}: {e}"),
        (Ok(r), Some(Class::OtherEpoch)) => format!(
            "other-epoch   {sid}: {}; written in another Redis epoch, not served by history \
             (the next message starts it over)",
            shape(r)
        ),
        (Ok(r), class) => format!(
            "{:<13} {sid}: {}; {}",
            class.map_or("?", Class::as_str),
            shape(r),
            findings(r)
        ),
    }
}

/// What `--repair` did, one indented line (empty when nothing).
fn action_lines(checked: &Checked) -> String {
    match &checked.action {
        Action::None => String::new(),
        Action::Repaired {
            rows,
            attempts,
            after,
        } => format!(
            "  repaired: {rows} rows from the table appended{}; now {}, {}\n",
            if *attempts > 1 {
                format!(" ({attempts} attempts)")
            } else {
                String::new()
            },
            shape(after),
            Class::of(after).as_str()
        ),
        Action::NotRepaired(Ok(after)) => format!(
            "  NOT REPAIRED after {REPAIR_ATTEMPTS} attempts (a consumer writing it meanwhile? \
             run again): {}; {}\n",
            shape(after),
            findings(after)
        ),
        Action::NotRepaired(Err(e)) => format!("  NOT REPAIRED: {e}\n"),
        Action::Deleted => {
            "  deleted (history reads the table until the next message)\n".to_owned()
        }
        Action::NotDeleted(e) => format!("  NOT DELETED: {e}\n"),
    }
}

fn range(r: Option<(i64, i64)>) -> String {
    r.map_or("-".to_owned(), |(a, b)| format!("{a}..={b}"))
}

/// The window's and the table's extent.
fn shape(r: &Report) -> String {
    format!(
        "window {} members seqs {}, table {} rows seqs {}",
        r.window_members,
        range(r.window_range),
        r.db_rows,
        range(r.db_range)
    )
}

/// What is wrong, on one line (at most a few seqs of each kind).
fn findings(r: &Report) -> String {
    fn seqs(list: &[i64]) -> String {
        const SHOWN: usize = 8;
        let mut s = list
            .iter()
            .take(SHOWN)
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if list.len() > SHOWN {
            s.push_str(&format!(",… ({} in all)", list.len()));
        }
        format!("[{s}]")
    }
    let differing: Vec<i64> = r.differing.iter().map(|d| d.seq).collect();
    format!(
        "missing in window {}, extra in window {}, differing {}, undecodable {}",
        seqs(&r.missing_in_window),
        seqs(&r.extra_in_window),
        seqs(&differing),
        seqs(&r.undecodable)
    )
}

/// The counts printed last.
#[derive(Debug, Default)]
struct Summary {
    checked: usize,
    consistent: usize,
    absent: usize,
    inconsistent: usize,
    other_epoch: usize,
    repaired: usize,
    deleted: usize,
    failed: usize,
    problems_left: usize,
}

impl Summary {
    fn add(&mut self, c: &Checked) {
        self.checked += 1;
        match c.class() {
            None => self.failed += 1,
            Some(Class::Absent) => self.absent += 1,
            Some(Class::Consistent) => self.consistent += 1,
            Some(Class::Inconsistent) => self.inconsistent += 1,
            Some(Class::OtherEpoch) => self.other_epoch += 1,
        }
        match c.action {
            Action::Repaired { .. } => self.repaired += 1,
            Action::Deleted => self.deleted += 1,
            _ => {}
        }
        if c.problem_left() {
            self.problems_left += 1;
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "checked {}: {} consistent, {} inconsistent, {} other-epoch, {} repaired, {} deleted",
            self.checked,
            self.consistent,
            self.inconsistent,
            self.other_epoch,
            self.repaired,
            self.deleted
        )?;
        if self.absent > 0 {
            write!(f, ", {} without a window", self.absent)?;
        }
        if self.failed > 0 {
            write!(f, ", {} FAILED to check", self.failed)?;
        }
        write!(
            f,
            "; verdict: {}",
            if self.problems_left == 0 {
                "fine"
            } else {
                "PROBLEMS LEFT"
            }
        )
    }
}
