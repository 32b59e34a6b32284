//! `inspect session <id> [--rows N] [--json]`: one session as the stores hold it. Read-only.
//!
//! - **seq allocator**: the Redis seq hash (`cur`, `max`, `step`, when the segment was installed,
//!   its epoch and TTL) — the fast path serves while the hash is of the serving Redis's epoch and
//!   `cur < max`; else the next allocation reserves a segment (or recovers above the ceiling) — and
//!   the CQL ceiling `session_seq.max_seq`.
//! - **window**: members, seq range, epoch (a window of another epoch is not served), TTL.
//! - **table**: the newest row (head), the rows read and their buckets.
//! - **side by side**: the newest N seqs, window member vs row (version, state) and a verdict
//!   ([`chatlog_store::verify::Verdict`]).
//! - **gaps**: seqs the table lacks between the lowest seq shown and its head, each run `pending`
//!   (younger than `settle_horizon`: a send may still land) or `missing` (final), as history
//!   reports them.
//!
//! Exit 1 when the window is inconsistent in the sense of `verify windows` (written in this
//! epoch, and disagreeing with the table); 0 otherwise — an absent window or one of another
//! epoch is not served, so nothing is wrong with what readers see.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatlog_schemas::MessageState;
use chatlog_store::seq::HashSnapshot;
use chatlog_store::verify::{Inspection, Side};
use chatlog_store::{epoch, keys, seq, verify};
use serde_json::{Value, json};

use crate::cli::{InspectArgs, InspectWhat};
use crate::connect::Ctx;
use crate::verify::Class;
use crate::{Error, Outcome, Result};

/// Everything `inspect session` shows.
struct View {
    session_id: String,
    rows: usize,
    /// The seq hash, if Redis has one.
    hash: Option<HashSnapshot>,
    /// The serving Redis's epoch.
    epoch: String,
    /// `session_seq.max_seq`.
    ceiling: Option<i64>,
    /// The window's TTL, ms (`None`: no window, or no expiry).
    window_ttl_ms: Option<i64>,
    inspection: Inspection,
    settle_horizon: Duration,
}

impl View {
    /// Whether the fast path can serve the next allocation.
    fn fast_path(&self) -> bool {
        self.hash.as_ref().is_some_and(|h| {
            h.epoch.as_deref() == Some(self.epoch.as_str())
                && matches!((h.cur, h.max), (Some(c), Some(m)) if c < m)
        })
    }

    fn class(&self) -> Class {
        Class::of(&self.inspection.report)
    }
}

/// Runs `inspect`.
pub async fn run(ctx: &Ctx, args: &InspectArgs) -> Result<Outcome> {
    let InspectWhat::Session { id, rows, json } = &args.what;
    if *rows == 0 {
        return Err(Error::Usage("--rows must be at least 1".into()));
    }
    let view = read(ctx, id, *rows).await?;
    if *json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&view))
                .map_err(|e| Error::Other(format!("JSON: {e}")))?
        );
    } else {
        print!("{}", render(&view));
    }
    Ok(Outcome::problems_if(view.class() == Class::Inconsistent))
}

async fn read(ctx: &Ctx, sid: &str, rows: usize) -> Result<View> {
    let history = ctx.history().await.map_err(|e| {
        Error::Other(format!(
            "{e} (keyspace {}, redis {}): is the stack up and the login right? (locally: \
             dev/stack.sh up, and eval \"$(dev/stack.sh env)\")",
            ctx.config.cql.keyspace, ctx.config.redis.url
        ))
    })?;
    let mut con = ctx.redis().await?;
    let hash = seq::read_hash(&mut con, sid).await?;
    let epoch = epoch::current(&mut con).await?;
    let window_ttl: i64 = redis::cmd("PTTL")
        .arg(keys::window(sid))
        .query_async(&mut con)
        .await
        .map_err(Error::redis("read the window's TTL"))?;
    let ceiling = read_ceiling(ctx, sid).await?;
    let inspection = verify::inspect_session(history, sid, rows).await?;
    Ok(View {
        session_id: sid.to_owned(),
        rows,
        hash,
        epoch,
        ceiling,
        window_ttl_ms: (window_ttl >= 0).then_some(window_ttl),
        inspection,
        settle_horizon: history.config().settle_horizon,
    })
}

/// `session_seq.max_seq` (the allocator's statement, at the session's consistency).
async fn read_ceiling(ctx: &Ctx, sid: &str) -> Result<Option<i64>> {
    let cql = ctx.cql().await?;
    let what = "read session_seq.max_seq";
    let statement = seq::select_ceiling_cql(&ctx.config.cql.keyspace);
    let rows = cql
        .query_unpaged(statement, (sid,))
        .await
        .map_err(|e| Error::Other(format!("CQL {what}: {e}")))?
        .into_rows_result()
        .map_err(|e| Error::Other(format!("CQL {what}: {e}")))?;
    let row = rows
        .maybe_first_row::<(Option<i64>,)>()
        .map_err(|e| Error::Other(format!("CQL {what}: {e}")))?;
    Ok(row.and_then(|(max,)| max))
}

/// A message state in a few characters: `NORMAL`, `EDITED×2`, `RECALLED`, `DELETED`.
fn state(s: &MessageState) -> String {
    match s {
        MessageState::Edited { count, .. } => format!("EDITED×{count}"),
        other => other.symbol().to_owned(),
    }
}

/// A side as `version state`, or `-`.
fn side(s: Option<&Side>) -> String {
    match s {
        None => "-".to_owned(),
        Some(Side {
            version,
            state: Ok(st),
        }) => format!("{version} {}", state(st)),
        Some(Side {
            version,
            state: Err(_),
        }) => format!("{version} undecodable"),
    }
}

/// µs since the Unix epoch as RFC 3339 (UTC, ms).
fn time_us(us: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0));
    humantime_serde::re::humantime::format_rfc3339_millis(t).to_string()
}

fn time_ms(ms: i64) -> String {
    time_us(ms.saturating_mul(1000))
}

fn ttl(ms: Option<i64>) -> String {
    ms.map_or("none".to_owned(), |ms| {
        // Whole seconds: the milliseconds are noise here.
        let d = Duration::from_secs(u64::try_from(ms / 1000).unwrap_or(0));
        humantime_serde::re::humantime::format_duration(d).to_string()
    })
}

fn opt(v: Option<i64>) -> String {
    v.map_or("-".to_owned(), |v| v.to_string())
}

fn range(r: Option<(i64, i64)>) -> String {
    r.map_or("-".to_owned(), |(a, b)| format!("{a}..={b}"))
}

/// The text report.
fn render(v: &View) -> String {
    let i = &v.inspection;
    let r = &i.report;
    let mut o = String::new();
    let _ = writeln!(o, "session {}", v.session_id);

    let _ = writeln!(o, "seq allocator");
    match &v.hash {
        None => {
            let _ = writeln!(
                o,
                "  redis hash     none (the next allocation reserves a segment above the ceiling)"
            );
        }
        Some(h) => {
            let _ = writeln!(
                o,
                "  redis hash     cur {}  max {}  step {}  installed {}  ttl {}",
                opt(h.cur),
                opt(h.max),
                opt(h.step),
                h.at_ms.map_or("-".to_owned(), time_ms),
                ttl(h.ttl_ms)
            );
            let epoch_current = h.epoch.as_deref() == Some(v.epoch.as_str());
            let _ = writeln!(
                o,
                "  hash epoch     {}",
                if epoch_current {
                    "current"
                } else {
                    "OTHER (Redis went back in time since: the next allocation recovers above \
                     the ceiling, leaving a gap)"
                }
            );
            let fast = if v.fast_path() {
                format!(
                    "usable ({} seqs left in the segment)",
                    h.max.unwrap_or(0) - h.cur.unwrap_or(0)
                )
            } else if epoch_current {
                "segment used up (the next allocation reserves one)".to_owned()
            } else {
                "not usable".to_owned()
            };
            let _ = writeln!(o, "  fast path      {fast}");
        }
    }
    let _ = writeln!(
        o,
        "  cql ceiling    {}",
        v.ceiling.map_or(
            "none (session_seq has no row: no seq allocated through the allocator)".to_owned(),
            |c| format!("{c} (session_seq.max_seq: above every seq handed out)")
        )
    );

    let _ = writeln!(o, "window (W = {})", r.window_size);
    let _ = writeln!(
        o,
        "  members        {}  seqs {}",
        r.window_members,
        range(r.window_range)
    );
    let _ = writeln!(
        o,
        "  epoch          {}",
        match (r.window_members, r.window_epoch_current) {
            (0, _) => "-",
            (_, true) => "current (history serves it)",
            (_, false) => "OTHER (not served: history reads the table until the next message)",
        }
    );
    let _ = writeln!(o, "  ttl            {}", ttl(v.window_ttl_ms));

    let _ = writeln!(o, "table");
    let _ = writeln!(
        o,
        "  head           {}",
        i.table_head
            .map_or("none (no rows)".to_owned(), |(s, t)| format!(
                "seq {s} (server time {})",
                time_us(t)
            ))
    );
    let _ = writeln!(
        o,
        "  rows read      {} seqs {} in buckets {} (walked down from {})",
        i.rows_read,
        range(r.db_range),
        range(i.buckets),
        opt(i.head_bound)
    );

    let _ = writeln!(o, "newest {} seqs (of --rows {})", i.seqs.len(), v.rows);
    let cells: Vec<[String; 4]> = i
        .seqs
        .iter()
        .map(|s| {
            [
                s.seq.to_string(),
                side(s.window.as_ref()),
                side(s.table.as_ref()),
                s.verdict.as_str().to_owned(),
            ]
        })
        .collect();
    let header = [
        "seq".to_owned(),
        "window (version state)".to_owned(),
        "table (version state)".to_owned(),
        "verdict".to_owned(),
    ];
    let widths: Vec<usize> = (0..4)
        .map(|c| {
            cells
                .iter()
                .chain(std::iter::once(&header))
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&cells) {
        let _ = writeln!(
            o,
            "  {:>w0$}  {:<w1$}  {:<w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }

    match (i.seqs.last(), i.table_head) {
        (Some(low), Some((head, _))) => {
            let _ = writeln!(
                o,
                "gaps in the table between seq {} and the head {head} (settle horizon {})",
                low.seq,
                humantime_serde::re::humantime::format_duration(v.settle_horizon)
            );
            if i.gaps.is_empty() {
                let _ = writeln!(o, "  none");
            }
            for g in &i.gaps {
                let what = if g.pending {
                    "pending (may still land)"
                } else {
                    "missing (final)"
                };
                let seqs = if g.from == g.to {
                    g.from.to_string()
                } else {
                    format!("{}..={}", g.from, g.to)
                };
                let count = if g.from == g.to {
                    String::new()
                } else {
                    format!(" ({} seqs)", g.to - g.from + 1)
                };
                let _ = writeln!(o, "  {seqs:>w$}  {what}{count}", w = widths[0]);
            }
        }
        _ => {
            let _ = writeln!(o, "gaps: - (no rows)");
        }
    }
    let _ = writeln!(
        o,
        "verdict: {}{}",
        match v.class() {
            Class::Absent => "no window (history reads the table)",
            Class::Consistent => "window consistent",
            Class::Inconsistent => "window INCONSISTENT",
            Class::OtherEpoch => "window of another epoch (not served: history reads the table)",
        },
        if v.class() == Class::Inconsistent {
            format!(
                " (chatlog verify windows --session {} --repair rebuilds it from the table)",
                v.session_id
            )
        } else {
            String::new()
        }
    );
    o
}

fn side_json(s: Option<&Side>) -> Value {
    match s {
        None => Value::Null,
        Some(Side { version, state: st }) => match st {
            Ok(st) => json!({"version": version, "state": st.symbol(),
                "edit_count": st.edit_count()}),
            Err(why) => json!({"version": version, "undecodable": why}),
        },
    }
}

fn range_json(r: Option<(i64, i64)>) -> Value {
    r.map_or(Value::Null, |(a, b)| json!([a, b]))
}

fn to_json(v: &View) -> Value {
    let i = &v.inspection;
    let r = &i.report;
    json!({
        "session_id": v.session_id,
        "seq": {
            "hash": v.hash.as_ref().map(|h| json!({
                "cur": h.cur, "max": h.max, "step": h.step, "installed_at_ms": h.at_ms,
                "epoch": h.epoch, "epoch_current": h.epoch.as_deref() == Some(v.epoch.as_str()),
                "ttl_ms": h.ttl_ms,
            })),
            "fast_path_usable": v.fast_path(),
            "cql_ceiling": v.ceiling,
        },
        "window": {
            "size": r.window_size,
            "members": r.window_members,
            "range": range_json(r.window_range),
            "epoch_current": r.window_epoch_current,
            "ttl_ms": v.window_ttl_ms,
            "class": v.class().as_str().to_lowercase(),
        },
        "table": {
            "head": i.table_head.map(|(s, _)| s),
            "head_server_time_us": i.table_head.map(|(_, t)| t),
            "rows_read": i.rows_read,
            "range": range_json(r.db_range),
            "buckets": range_json(i.buckets),
            "head_bound": i.head_bound,
        },
        "seqs": i.seqs.iter().map(|s| json!({
            "seq": s.seq,
            "window": side_json(s.window.as_ref()),
            "table": side_json(s.table.as_ref()),
            "verdict": s.verdict.as_str().to_lowercase(),
            "problem": s.verdict.is_problem(),
        })).collect::<Vec<_>>(),
        "gaps": i.gaps.iter().map(|g| json!({
            "from": g.from, "to": g.to,
            "status": if g.pending { "pending" } else { "missing" },
        })).collect::<Vec<_>>(),
        "settle_horizon_ms": v.settle_horizon.as_millis() as u64,
        "verify": {
            "consistent": r.is_consistent(),
            "missing_in_window": r.missing_in_window,
            "older_than_window": r.older_than_window,
            "extra_in_window": r.extra_in_window,
            "differing": r.differing.iter().map(|d| json!({
                "seq": d.seq, "window_version": d.window_version, "table_version": d.db_version,
                "content_differs": d.content_differs,
            })).collect::<Vec<_>>(),
            "undecodable": r.undecodable,
        },
        "now_ms": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
    })
}
