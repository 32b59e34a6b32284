//! The Smart DAL's cached repositories against the local stack (real Cassandra and Redis): one
//! loader per cold key, no stale value after a write returns whatever the interleaving, reads
//! served while Redis is away and nothing stale once it is back.
//!
//! "Two processes" are two `Cache` values over one Redis: each has its own single-flight map and
//! its own retry queue, so only Redis coordinates them, as between two Logic hosts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatlog::{TestRedis, connect_to, free_port, fresh_keyspace, redis_connection, unique};
use chatlog_store::RedisConfig;
use chatlog_store::cache::{Cache, CacheConfig};
use chatlog_store::repo::users::{CachedUserRepo, CqlUserRepo, User, UserRepo, UserStatus};

fn user(user_id: &str, version: u64) -> User {
    User {
        user_id: user_id.to_owned(),
        nickname: format!("v{version}"),
        avatar_url: format!("https://example.invalid/{user_id}.png"),
        status: UserStatus::Active,
        ext: [("version".to_owned(), version.to_string())].into(),
        updated_at_ms: version as i64,
    }
}

fn version_of(user: &User) -> u64 {
    user.nickname[1..].parse().expect("nickname v<version>")
}

async fn cql_users() -> Arc<CqlUserRepo> {
    let (cql, config) = fresh_keyspace("repo").await;
    Arc::new(
        CqlUserRepo::new(cql, &config.keyspace)
            .await
            .expect("users repo"),
    )
}

fn cached<R: UserRepo>(inner: &Arc<R>, redis: redis::aio::ConnectionManager) -> CachedUserRepo<R> {
    let cache = Cache::new(redis.into(), CacheConfig::default(), "users").expect("cache");
    CachedUserRepo::new(inner.clone(), cache)
}

#[tokio::test]
async fn stampede_of_a_thousand_cold_gets_from_two_processes_reads_the_database_once() {
    let db = cql_users().await;
    let id = unique("u");
    db.upsert(&user(&id, 1)).await.unwrap();
    let a = cached(&db, redis_connection().await);
    let b = cached(&db, redis_connection().await);
    let gets = (0..1000).map(|i| {
        let repo = if i % 2 == 0 { &a } else { &b };
        repo.get(&id)
    });
    let users = futures::future::join_all(gets).await;
    for u in users {
        assert_eq!(u.unwrap().map(|u| version_of(&u)), Some(1));
    }
    assert_eq!(db.db_reads(), 1, "1,000 cold gets, one database read");
    // Warm now: another thousand never reach the database.
    let warm = futures::future::join_all((0..1000).map(|_| b.get(&id))).await;
    assert!(warm.iter().all(|u| u.as_ref().unwrap().is_some()));
    assert_eq!(db.db_reads(), 1);
}

#[tokio::test]
async fn absent_users_are_cached_as_absent_and_found_once_written() {
    let db = cql_users().await;
    let repo = cached(&db, redis_connection().await);
    let id = unique("nobody");
    assert_eq!(repo.get(&id).await.unwrap(), None);
    assert_eq!(repo.get(&id).await.unwrap(), None);
    assert_eq!(db.db_reads(), 1, "the absence is cached");
    repo.upsert(&user(&id, 3)).await.unwrap();
    assert_eq!(repo.get(&id).await.unwrap(), Some(user(&id, 3)));
    let many = repo
        .get_many(&[id.clone(), unique("nobody"), id.clone()])
        .await
        .unwrap();
    assert_eq!(many, vec![Some(user(&id, 3)), None, Some(user(&id, 3))]);
    repo.delete(&id).await.unwrap();
    assert_eq!(repo.get(&id).await.unwrap(), None);
    assert!(
        repo.get("bad}id").await.is_err(),
        "a hash-tag breaker is refused"
    );
}

/// The users table with a delay after each read: a loader holds what it read for a while before
/// filling the cache, the window in which a write slips in.
struct SlowReads {
    db: Arc<CqlUserRepo>,
    seed: AtomicU64,
}

impl SlowReads {
    fn pause(&self) -> Duration {
        // A cheap spread of 0–15 ms (xorshift of a counter): interleavings differ per read.
        let mut x = self.seed.fetch_add(0x9E37_79B9, Ordering::Relaxed) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Duration::from_millis(x % 16)
    }
}

impl UserRepo for SlowReads {
    async fn get(&self, user_id: &str) -> chatlog_store::Result<Option<User>> {
        let read = self.db.get(user_id).await;
        tokio::time::sleep(self.pause()).await;
        read
    }
    async fn get_many(&self, ids: &[String]) -> chatlog_store::Result<Vec<Option<User>>> {
        self.db.get_many(ids).await
    }
    async fn upsert(&self, user: &User) -> chatlog_store::Result<()> {
        tokio::time::sleep(self.pause()).await;
        self.db.upsert(user).await
    }
    async fn delete(&self, user_id: &str) -> chatlog_store::Result<()> {
        self.db.delete(user_id).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_reads_never_follow_a_returned_write_under_slow_loaders() {
    let db = cql_users().await;
    let slow = Arc::new(SlowReads {
        db: db.clone(),
        seed: AtomicU64::new(7),
    });
    let processes = [
        Arc::new(cached(&slow, redis_connection().await)),
        Arc::new(cached(&slow, redis_connection().await)),
    ];
    let id = unique("u");
    processes[0].upsert(&user(&id, 0)).await.unwrap();
    // Writes: version k returned at `returned[k]` (µs since `t0`).
    let t0 = Instant::now();
    let writes = 150u64;
    let returned: Arc<Vec<AtomicU64>> = Arc::new((0..=writes).map(|_| AtomicU64::new(0)).collect());
    let writer = {
        let (repo, id, returned) = (processes[0].clone(), id.clone(), returned.clone());
        tokio::spawn(async move {
            for k in 1..=writes {
                repo.upsert(&user(&id, k)).await.unwrap();
                returned[k as usize].store(t0.elapsed().as_micros() as u64 + 1, Ordering::SeqCst);
            }
        })
    };
    let readers: Vec<_> = (0..8)
        .map(|r| {
            let (repo, id) = (processes[r % 2].clone(), id.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let started = t0.elapsed().as_micros() as u64;
                    let u = repo.get(&id).await.unwrap().expect("the user exists");
                    seen.push((started, version_of(&u)));
                    if version_of(&u) == writes {
                        return seen;
                    }
                }
            })
        })
        .collect();
    writer.await.unwrap();
    let mut reads = 0;
    let mut stale = Vec::new();
    for reader in readers {
        for (started, version) in reader.await.unwrap() {
            reads += 1;
            // The newest write that had returned before this read started.
            let floor = (1..=writes)
                .rev()
                .find(|&k| {
                    let at = returned[k as usize].load(Ordering::SeqCst);
                    at != 0 && at <= started
                })
                .unwrap_or(0);
            if version < floor {
                stale.push((started, version, floor));
            }
        }
    }
    assert!(
        reads > writes as usize,
        "readers raced the writer ({reads} reads)"
    );
    assert!(
        stale.is_empty(),
        "{} stale reads of {reads}: {:?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
}

/// A private Redis with a short command timeout, so reads while it is away degrade quickly.
async fn private_redis(server: &TestRedis) -> redis::aio::ConnectionManager {
    connect_to(server.port).await;
    RedisConfig {
        url: format!("redis://127.0.0.1:{}/", server.port),
        response_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        ..RedisConfig::default()
    }
    .connect()
    .await
    .expect("private redis")
}

#[tokio::test]
async fn degraded_reads_while_redis_is_down_and_no_stale_value_after_it_restarts_from_a_snapshot() {
    let db = cql_users().await;
    let port = free_port();
    let mut server = TestRedis::start(&["--port".into(), port.to_string()], port);
    let repo = cached(&db, private_redis(&server).await);
    let id = unique("u");
    db.upsert(&user(&id, 1)).await.unwrap();
    assert_eq!(
        repo.get(&id).await.unwrap().map(|u| version_of(&u)),
        Some(1)
    );
    // The snapshot holds the cached v1; then Redis goes down.
    let mut admin = connect_to(port).await;
    let _: String = redis::cmd("SAVE").query_async(&mut admin).await.unwrap();
    server.kill();
    let before = db.db_reads();
    assert_eq!(
        repo.get(&id).await.unwrap().map(|u| version_of(&u)),
        Some(1),
        "served by CQL"
    );
    // The worst case: a writer that changed the row and died before it could mark the entry.
    db.upsert(&user(&id, 2)).await.unwrap();
    assert_eq!(
        repo.get(&id).await.unwrap().map(|u| version_of(&u)),
        Some(2),
        "served by CQL"
    );
    assert_eq!(db.db_reads(), before + 2, "both reads went to the database");
    // Back from the snapshot: the entry says v1, filled in another lifetime of Redis.
    server.restart();
    let mut admin = connect_to(port).await;
    let raw = |con: &mut redis::aio::ConnectionManager| {
        let key = chatlog_store::keys::user(&id);
        let mut con = con.clone();
        async move {
            let v: Option<Vec<u8>> = redis::cmd("HGET")
                .arg(key)
                .arg("v")
                .query_async(&mut con)
                .await
                .unwrap();
            v.map(|v| String::from_utf8_lossy(&v).into_owned())
        }
    };
    assert!(
        raw(&mut admin).await.unwrap().contains("\"v1\""),
        "the snapshot brought v1 back"
    );
    // Once the cache answers again it refills from CQL instead of trusting v1.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(
            repo.get(&id).await.unwrap().map(|u| version_of(&u)),
            Some(2)
        );
        if raw(&mut admin).await.is_some_and(|v| v.contains("\"v2\"")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cache never refilled after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        repo.get(&id).await.unwrap().map(|u| version_of(&u)),
        Some(2),
        "a hit now"
    );
}

#[tokio::test]
async fn degraded_while_redis_is_frozen_the_writer_never_reads_what_it_failed_to_mark() {
    let db = cql_users().await;
    let port = free_port();
    let server = TestRedis::start(&["--port".into(), port.to_string()], port);
    let writer = cached(&db, private_redis(&server).await);
    let other = cached(&db, private_redis(&server).await);
    let id = unique("u");
    writer.upsert(&user(&id, 1)).await.unwrap();
    assert_eq!(
        writer.get(&id).await.unwrap().map(|u| version_of(&u)),
        Some(1)
    );
    // Frozen: same lifetime afterwards (no epoch change), so only the kept mark protects.
    server.freeze();
    writer.upsert(&user(&id, 2)).await.unwrap();
    assert_eq!(
        writer.get(&id).await.unwrap().map(|u| version_of(&u)),
        Some(2),
        "degraded read"
    );
    server.thaw();
    // The writer's own next read sends the kept mark before it reads.
    assert_eq!(
        writer.get(&id).await.unwrap().map(|u| version_of(&u)),
        Some(2)
    );
    // Others: the background retry lands within a few rounds (the documented residual window).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = other.get(&id).await.unwrap().map(|u| version_of(&u));
        if v == Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the kept mark never landed: other reads {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
