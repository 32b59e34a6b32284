//! P8: cached `get_user` reads per second (`CachedUserRepo<CqlUserRepo>`, warm) next to
//! `redis-benchmark GET` of a value of the same size at the same concurrency, and next to the
//! uncached CQL read (`CqlUserRepo::get`) with the same callers — both ratios from one run.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chatlog_store::cache::{Cache, CacheConfig};
use chatlog_store::repo::users::{CachedUserRepo, CqlUserRepo, User, UserRepo, UserStatus};
use serde_json::json;

use crate::cpu;
use crate::reads;
use crate::report::{Figure, Goal};

use super::versus::{self, Sides};
use super::world::{Collect, Reads};

/// Redis connections of the cache in P8 (as P5's history reader has).
const CACHE_CONNECTIONS: usize = 4;

/// The cached over the uncached read: the goal of issue 16.
const CQL_GOAL: f64 = 10.0;

/// A user with a profile of a typical size (~250 bytes cached).
fn user(user_id: &str) -> User {
    User {
        user_id: user_id.to_owned(),
        nickname: format!("nick {user_id}"),
        avatar_url: format!("https://cdn.example.com/avatars/{user_id}/256x256.png"),
        status: UserStatus::Active,
        ext: BTreeMap::from([
            ("locale".to_owned(), "en-GB".to_owned()),
            ("tz".to_owned(), "Europe/London".to_owned()),
        ]),
        updated_at_ms: 1_732_590_000_000,
    }
}

/// Runs P8 against Redis (`rpid`, its pid) and the run's keyspace `e2e_ks`.
pub(super) async fn run(cx: Reads<'_>, out: &mut Collect<'_>) -> Result<()> {
    let callers = cx.plan.callers;
    eprintln!(
        "[bench] P8: cached get_user, {callers} callers, {CACHE_CONNECTIONS} Redis connections"
    );
    let users: Vec<String> = (0..callers)
        .map(|i| format!("{}_u{i}", cx.world.run))
        .collect();
    let db = Arc::new(CqlUserRepo::new(cx.world.session.clone(), cx.e2e_ks).await?);
    for id in &users {
        db.upsert(&user(id)).await?;
    }
    let connections = chatlog::redis_config()
        .connect_many(CACHE_CONNECTIONS)
        .await?;
    let cache = Cache::new(connections, CacheConfig::default(), "users")?;
    let cached = Arc::new(CachedUserRepo::new(db.clone(), cache));
    // Warm: one load per user; the timed loops must then read no row.
    for id in &users {
        cached
            .get(id)
            .await?
            .with_context(|| format!("user {id} missing after its upsert"))?;
    }
    // The reference reads a plain string of the cached value's size (a user's entry is a hash of
    // value, epoch and lock fields, which GET cannot read).
    let value = serde_json::to_vec(&user(&users[0]))?;
    let get_key = format!("chatlog:{{{}_get}}:user", cx.world.run);
    redis::cmd("SET")
        .arg(&get_key)
        .arg(&value)
        .arg("EX")
        .arg(1800)
        .query_async::<()>(&mut cx.world.redis.clone())
        .await?;
    let loops = reads::Loops::of(cx.plan, cx.rpid, &users);
    let reads_before = db.db_reads();
    let measured = versus::measure(&loops, callers, 1, &["GET", get_key.as_str()], |c| {
        loops.user_reads(&cached, c)
    })
    .await?;
    let loads = db.db_reads() - reads_before;
    if loads > 0 {
        bail!("the warm cache read the database {loads} times during P8 (entries expired?)");
    }
    // The uncached read, same callers, right after; Cassandra's CPU is counted too.
    let procs = cpu::Procs::detect(cx.rpid);
    let before = procs.snapshot();
    let cql = loops.user_reads(&db, callers).await?;
    let cql_cpu = cpu::per_op_us(&before.until(&procs.snapshot(), &[]), cql.ops);
    // One caller too: there the CQL read's latency, not the machine's CPU, bounds it.
    let cql_one = loops.user_reads(&db, 1).await?;
    let cached_rate = measured.ours_many().rate;
    let cached_one = measured.ours_one().rate;
    eprintln!(
        "[bench]   CQL get {:.0}/s ({callers}), {:.0}/s (1); cached ÷ CQL {:.1}× ({callers}), \
         {:.1}× (1); p99 ms {:.2} ({callers}); CPU µs/op {cql_cpu:?}",
        cql.rate,
        cql_one.rate,
        cached_rate / cql.rate.max(1e-9),
        cached_one / cql_one.rate.max(1e-9),
        cql.p99_ms
    );
    out.figures.insert(
        "P8-cql".to_owned(),
        Figure::ratio(
            &format!("cached get_user reads/s ÷ uncached CQL get, {callers} callers"),
            cached_rate,
            cql.rate,
            "CqlUserRepo::get",
            "req/s",
            Goal::AtLeast(CQL_GOAL),
        ),
    );
    measured.record(
        &Sides {
            id: "P8",
            what: "cached get_user reads/s",
            ours: "cached_get_user",
            reference: "redis-benchmark GET",
            unit: "req/s",
            goal: 0.5,
        },
        json!({"connections": CACHE_CONNECTIONS, "value_bytes": value.len(),
               "database_reads_while_cached": loads,
               "cql": {"get_user": cql, "cpu_us_per_op": cql_cpu,
                       "ratio": cached_rate / cql.rate.max(1e-9),
                       "one_caller": {"get_user": cql_one,
                                      "ratio": cached_one / cql_one.rate.max(1e-9)}}}),
        out,
    );
    Ok(())
}
